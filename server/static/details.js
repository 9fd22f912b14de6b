// Read-only dialogs: one lineage and its decision, one worker run, one
// recovery playbook.

import * as api from "./api.js";
import { lineageTimeline } from "./charts.js";
import {
  badge,
  facts,
  formatDuration,
  formatTime,
  h,
  loadInto,
  openDialog,
  table,
  timeElement,
} from "./dom.js";

function chartWidth(element) {
  return Math.max(300, Math.min(960, Math.floor(element.clientWidth || 720)));
}

/** Open the lineage `lineageId`: its decision explained, its numbers and timeline. */
export function openLineage(lineageId) {
  const area = h("div", { class: "load-area", "data-lineage": lineageId });
  const { body } = openDialog(`Lineage ${lineageId}`, area, { wide: true });
  return loadInto(
    area,
    () => api.get(`/lineages/${encodeURIComponent(lineageId)}`),
    (lineage) => renderLineage(lineage, chartWidth(body)),
  );
}

function renderLineage(lineage, width) {
  const decision = lineage.decision;
  const parts = [
    facts([
      ["Connector", `${lineage.connector_id} (${lineage.connector_type})`],
      ["Lineage state", badge(lineage.state), "state"],
      ["Attempts", String(lineage.attempt_count), "attempt_count"],
      ["First attempt", timeElement(lineage.first_attempt_at)],
      ["Latest attempt", timeElement(lineage.last_attempt_at)],
      ["Drill", lineage.drill_id],
      ["Package", h("code", { class: "id" }, lineage.package_id)],
    ]),
    h("h3", {}, "The decision now"),
  ];
  if (decision) {
    parts.push(decisionBlock(decision, "decision"));
  } else {
    parts.push(
      h(
        "p",
        { class: "state state-empty", "data-decision": "none" },
        lineage.state === "recovered"
          ? "No decision: the lineage is recovered, and a recovered lineage is never delivered again."
          : "No decision: the lineage has no failed attempt to decide on.",
      ),
    );
  }

  const latest = lineage.latest_plan_decision;
  parts.push(h("h3", {}, "In the latest plan"));
  if (latest && decision && sameDecision(latest.decision, decision)) {
    parts.push(
      h(
        "p",
        { "data-decision": "plan-decision" },
        "Plan ",
        h("code", {}, latest.retry_plan_id),
        ", made ",
        timeElement(latest.generated_at),
        `, decided the same: ${latest.decision.action} (${latest.decision.reason}).`,
      ),
    );
  } else if (latest) {
    parts.push(
      h("p", {}, "Plan ", h("code", {}, latest.retry_plan_id), ", made ", timeElement(latest.generated_at), ", decided:"),
      decisionBlock(latest.decision, "plan-decision"),
    );
  } else {
    parts.push(h("p", { class: "state state-empty" }, "No retry plan has decided on this lineage yet."));
  }

  parts.push(h("h3", {}, "Timeline"));
  parts.push(lineageTimeline(lineage, decision || (latest && latest.decision), new Date(), width));
  if (lineage.attempts_truncated) {
    parts.push(h("p", { class: "help" }, "Only the newest 100 attempts are shown; the oldest are left out."));
  }
  return parts;
}

const DECISION_FIELDS = [
  "action",
  "reason",
  "explanation",
  "retry_count",
  "max_retry_attempts",
  "retry_delay_seconds",
  "not_before",
  "not_after",
];

function sameDecision(one, other) {
  return (
    DECISION_FIELDS.every((name) => one[name] === other[name]) &&
    JSON.stringify(one.failed_status_codes) === JSON.stringify(other.failed_status_codes)
  );
}

/** A decision: its action and reason, the explanation, and the numbers behind it. */
export function decisionBlock(decision, role) {
  const statuses = decision.failed_status_codes || [];
  const window =
    decision.not_before || decision.not_after
      ? h("span", {}, timeElement(decision.not_before), " to ", timeElement(decision.not_after))
      : h("span", {}, "none: the decision was reached before any window was computed");
  return h(
    "div",
    { class: `decision decision-${decision.action}`, "data-decision": role },
    h("p", { class: "decision-verdict" }, badge(decision.action), " ", h("code", {}, decision.reason)),
    h("p", { class: "explanation" }, decision.explanation),
    facts(
      [
        ["Attempts made (retry_count)", String(decision.retry_count), "retry_count"],
        ["Attempts allowed (max_retry_attempts)", String(decision.max_retry_attempts), "max_retry_attempts"],
        [
          "Backoff delay (retry_delay_seconds)",
          `${decision.retry_delay_seconds} s${decision.retry_delay_seconds >= 60 ? ` (${formatDuration(decision.retry_delay_seconds)})` : ""}`,
          "retry_delay_seconds",
        ],
        [
          "Failed HTTP statuses (failed_status_codes)",
          statuses.length ? statuses.join(", ") : "none (no failure had an HTTP answer)",
          "failed_status_codes",
        ],
        ["Retry window (not_before to not_after)", window, "window"],
      ],
      { class: "facts numbers" },
    ),
  );
}

/** Open worker run `run` (a run document): summary, notes, selected retries, executions. */
export function openRunDetails(run) {
  const executions = h("div", { class: "load-area" });
  const content = [
    facts([
      ["Kind", run.dry_run ? "Dry run: nothing delivered" : "Live run", "kind"],
      ["Trigger", run.trigger],
      ["Started", timeElement(run.started_at)],
      ["By", run.generated_by],
      ["Schedule window", h("span", {}, timeElement(run.schedule.window_start), " to ", timeElement(run.schedule.window_end))],
      ["Due to retry", String(run.summary.retryable_count)],
      ["Waiting", String(run.summary.waiting_count)],
      ["Suppressed", String(run.summary.suppressed_count)],
      ["Selected", String(run.summary.selected_retry_count), "selected"],
      ["Executed", String(run.summary.executed_count), "executed"],
      ["Skipped", String(run.summary.skipped_count)],
    ]),
    h("h3", {}, "Notes"),
    h("ul", { class: "notes" }, run.notes.map((note) => h("li", {}, note))),
    h("h3", {}, "Selected retries"),
    selectedRetriesTable(run.selected_retries, `Retries selected by run ${run.run_id}`),
    h("h3", {}, "Executions"),
    executions,
  ];
  openDialog(`${run.dry_run ? "Dry run" : "Live run"} ${run.run_id}`, content, { wide: true });
  loadInto(
    executions,
    () => api.get("/executions", { run_id: run.run_id, limit: 100 }),
    (page) =>
      table(
        `Executions of run ${run.run_id}`,
        ["Execution", "Lineage", "Connector", "Attempt", "Outcome", "HTTP status", "Took", "Started"],
        page.items.map((execution) => [
          h("code", {}, execution.execution_id),
          h("code", {}, execution.lineage_id),
          execution.connector_id,
          String(execution.attempt_number),
          h("span", {}, badge(execution.outcome), execution.skipped_reason ? ` ${execution.skipped_reason}` : ""),
          execution.http_status ?? "—",
          execution.duration_ms === null || execution.duration_ms === undefined ? "—" : `${execution.duration_ms} ms`,
          timeElement(execution.started_at),
        ]),
      ),
    {
      isEmpty: (page) => page.items.length === 0,
      empty: run.dry_run
        ? "None: a dry run executes nothing."
        : "None: this live run sent no approved retry.",
    },
  );
}

export function selectedRetriesTable(selected, caption) {
  if (!selected.length) {
    return h("p", { class: "state state-empty" }, "None.");
  }
  return table(
    caption,
    ["Lineage", "Connector", "Reason", "Next attempt", "Outcome", "Explanation"],
    selected.map((retry) => ({
      attributes: { "data-lineage": retry.lineage_id },
      cells: [
        h("code", {}, retry.lineage_id),
        retry.connector_id,
        h("code", {}, retry.reason),
        String(retry.next_attempt_number),
        h(
          "span",
          {},
          badge(retry.outcome),
          retry.skipped_reason ? ` ${retry.skipped_reason}` : "",
        ),
        retry.explanation,
      ],
    })),
  );
}

/** The items of a playbook with their steps; `closeButton(item)` may add an action. */
export function playbookItems(playbook, closeButton = () => null) {
  if (!playbook.items.length) {
    return h(
      "p",
      { class: "state state-empty" },
      "No connector had enough failures in the lookback: every connector looked at was healthy.",
    );
  }
  return h(
    "ul",
    { class: "playbook-items" },
    playbook.items.map((item) =>
      h(
        "li",
        { class: "playbook-item", "data-connector": item.connector_id },
        h(
          "h4",
          {},
          item.connector_id,
          " ",
          badge(item.state),
          " ",
          item.closure_state ? badge(item.closure_state, "closure") : badge("open", "open"),
        ),
        facts([
          ["Failures in the lookback", String(item.failure_count)],
          [
            "By class",
            Object.entries(item.failures_by_class)
              .map(([name, count]) => `${name}: ${count}`)
              .join(", "),
          ],
          ["HTTP statuses", item.failed_status_codes.length ? item.failed_status_codes.join(", ") : "none"],
          ["Latest failure", timeElement(item.latest_failure && item.latest_failure.started_at)],
        ]),
        h(
          "ol",
          { class: "steps" },
          item.steps.map((step) =>
            h("li", { "data-step": step.code }, h("strong", {}, step.title), h("p", {}, step.detail)),
          ),
        ),
        item.notes.length ? h("ul", { class: "notes" }, item.notes.map((note) => h("li", {}, note))) : null,
        closeButton(item),
      ),
    ),
  );
}

export function openPlaybook(playbook) {
  openDialog(
    `Recovery playbook ${playbook.playbook_id}`,
    [
      h(
        "p",
        {},
        `Made ${formatTime(playbook.generated_at)} by ${playbook.generated_by}: `,
        `${playbook.item_count} connectors with at least ${playbook.min_failure_count} failures in the last ${playbook.lookback_hours} hours.`,
      ),
      playbookItems(playbook),
    ],
    { wide: true },
  );
}
