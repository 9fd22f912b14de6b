// The console's sections: the dashboard, failed deliveries, worker history,
// recovery and the evidence log. Each loads what it shows when it is shown.

import { openClosure, openPlanReview, openResume, openRevoke } from "./actions.js";
import * as api from "./api.js";
import { activityCharts } from "./charts.js";
import { openLineage, openRunDetails, playbookItems } from "./details.js";
import {
  badge,
  clear,
  facts,
  h,
  loadInto,
  say,
  sayProblem,
  short,
  table,
  timeElement,
  utcFromInput,
} from "./dom.js";
import { exportEvidence } from "./jsonl.js";
import { allowed, onRefresh, state } from "./state.js";

const $ = (id) => document.getElementById(id);

/**
 * Keyset paging over one list: the cursors of the pages seen so far, so
 * that "previous" goes back and "next" goes on with the API's next_cursor.
 */
class Pager {
  constructor() {
    this.reset();
  }

  reset() {
    this.cursors = [null];
    this.index = 0;
    this.next = null;
  }

  get cursor() {
    return this.cursors[this.index];
  }

  controls(label, reload) {
    const previous = h(
      "button",
      {
        type: "button",
        class: "secondary",
        disabled: this.index === 0,
        onclick: () => {
          this.index -= 1;
          reload();
        },
      },
      "Previous page",
    );
    const next = h(
      "button",
      {
        type: "button",
        class: "secondary",
        disabled: !this.next,
        onclick: () => {
          this.cursors = this.cursors.slice(0, this.index + 1);
          this.cursors.push(this.next);
          this.index += 1;
          reload();
        },
      },
      "Next page",
    );
    return h("nav", { class: "pager", "aria-label": `${label} pages` }, previous, h("span", { class: "page-number" }, `Page ${this.index + 1}`), next);
  }
}

function chartWidth(element) {
  return Math.max(300, Math.min(960, Math.floor(element.clientWidth || 720)));
}

// -- connectors (shared by several parts) ---------------------------------

export async function loadConnectors() {
  const answer = await api.get("/connectors");
  state.connectors = answer.items;
  for (const select of document.querySelectorAll("[data-connector-select]")) {
    const chosen = select.value;
    while (select.options.length > 1) {
      select.remove(1);
    }
    for (const connector of state.connectors) {
      select.appendChild(h("option", { value: connector.connector_id }, connector.connector_id));
    }
    select.value = state.connectors.some((c) => c.connector_id === chosen) ? chosen : "";
  }
  return answer;
}

// -- dashboard ------------------------------------------------------------

const CARDS = [
  ["plans", "Audit retry plans", null],
  ["retryable", "Retryable audit deliveries", "retryable_count"],
  ["waiting", "Waiting deliveries", "waiting_count"],
  ["suppressed", "Suppressed deliveries", "suppressed_count"],
  ["runs", "Worker runs", "run_count"],
  ["dry-runs", "Worker dry runs", "dry_run_count"],
  ["executed-runs", "Executed (live) runs", "executed_count"],
  ["selected", "Selected retries", "selected_retry_count"],
  ["paused", "Paused connectors", "paused_connector_count"],
  ["executed-retries", "Retries executed", "executed_retry_count"],
  ["delivered-retries", "Retries delivered", "delivered_retry_count"],
  ["failed-retries", "Retries failed", "failed_retry_count"],
];

const ALERTS = {
  critical: "Critical: failed audit evidence is due to retry now.",
  warning: "Warning: failed audit evidence is waiting for its retry window.",
  healthy: "Healthy: no failed audit evidence is waiting.",
};

function loadCards() {
  const alertLine = $("alert-level");
  alertLine.hidden = true;
  return loadInto(
    $("cards"),
    async () => {
      const [dashboard, plans] = await Promise.all([api.get("/worker-dashboard"), api.get("/retry-plans", { limit: 50 })]);
      return { dashboard, plans };
    },
    ({ dashboard, plans }) => {
      const level = dashboard.alert_level;
      alertLine.hidden = false;
      alertLine.dataset.level = level;
      clear(alertLine).append(badge(level), " ", ALERTS[level], " Figures as of ", timeElement(dashboard.generated_at), ".");
      const planCount = `${plans.items.length}${plans.next_cursor ? "+" : ""}`;
      return h(
        "dl",
        { class: "cards" },
        CARDS.map(([key, label, figure]) =>
          h(
            "div",
            { class: "card", "data-card": key },
            h("dt", {}, label),
            h("dd", { class: "value" }, figure ? String(dashboard[figure]) : planCount),
          ),
        ),
      );
    },
  );
}

const plansPager = new Pager();

function loadPlans() {
  return loadInto(
    $("plans"),
    () => api.get("/retry-plans", { limit: 10, cursor: plansPager.cursor }),
    (page) => {
      plansPager.next = page.next_cursor;
      const review = allowed("createApprovals") ? "Review and approve" : "Review";
      return [
        table(
          "Retry plans, newest first",
          ["Made", "By", "Decisions", "Retry", "Wait", "Suppress", "Alert", "Plan"],
          page.items.map((plan) => ({
            attributes: { "data-plan": plan.retry_plan_id },
            cells: [
              timeElement(plan.generated_at),
              plan.generated_by,
              String(plan.decision_count),
              String(plan.retryable_count),
              String(plan.waiting_count),
              String(plan.suppressed_count),
              badge(plan.alert_level),
              h(
                "button",
                {
                  type: "button",
                  class: "secondary",
                  "aria-label": `${review}: plan ${plan.retry_plan_id}`,
                  onclick: () => openPlanReview(plan.retry_plan_id),
                },
                review,
              ),
            ],
          })),
        ),
        plansPager.controls("Retry plans", loadPlans),
      ];
    },
    { isEmpty: (page) => page.items.length === 0 && plansPager.index === 0, empty: "No retry plan yet: a release manager makes one with Plan audit retry." },
  );
}

const approvalsPager = new Pager();

function loadApprovals() {
  return loadInto(
    $("approvals"),
    () => api.get("/approvals", { limit: 10, cursor: approvalsPager.cursor }),
    (page) => {
      approvalsPager.next = page.next_cursor;
      const mayRevoke = allowed("revokeApproval");
      return [
        table(
          "Approvals and denials, newest first",
          ["Given", "By", "Verdict", "State", "Plan", "Decisions used", "Expires", "Reason", "Action"],
          page.items.map((approval) => ({
            attributes: { "data-approval": approval.approval_id },
            cells: [
              timeElement(approval.created_at),
              `${approval.approved_by}${approval.actor_verified ? " (token)" : ""}`,
              badge(approval.verdict),
              badge(approval.state),
              h("code", {}, short(approval.retry_plan_id)),
              `${approval.used_count} of ${approval.decision_count}`,
              timeElement(approval.expires_at),
              approval.reason,
              mayRevoke && approval.state === "active"
                ? h(
                    "button",
                    {
                      type: "button",
                      class: "secondary",
                      "aria-label": `Revoke ${approval.approval_id}`,
                      onclick: () => openRevoke(approval),
                    },
                    "Revoke",
                  )
                : "—",
            ],
          })),
        ),
        approvalsPager.controls("Approvals", loadApprovals),
      ];
    },
    { isEmpty: (page) => page.items.length === 0 && approvalsPager.index === 0, empty: "No approval or denial yet." },
  );
}

function loadConnectorsPanel() {
  return loadInto(
    $("connectors"),
    loadConnectors,
    (answer) => {
      const mayResume = allowed("resumeConnector");
      return table(
        "Configured connectors and their health",
        ["Connector", "Type", "State", "Consecutive failures", "Last failure", "Last success", "Action"],
        answer.items.map((connector) => ({
          attributes: { "data-connector": connector.connector_id },
          cells: [
            connector.connector_id,
            connector.type,
            h("span", {}, badge(connector.state), connector.state_reason ? ` ${connector.state_reason}` : ""),
            String(connector.consecutive_failures),
            h("span", {}, timeElement(connector.last_failure_at), connector.last_failure_class ? ` (${connector.last_failure_class})` : ""),
            timeElement(connector.last_success_at),
            mayResume && connector.state !== "active"
              ? h("button", { type: "button", class: "secondary", onclick: () => openResume(connector) }, `Resume ${connector.connector_id}`)
              : "—",
          ],
        })),
      );
    },
    { isEmpty: (answer) => answer.items.length === 0, empty: "No connector is configured: start cavra api with --connectors FILE." },
  );
}

const RANGES = {
  "24h": { hours: 24, bucket: 60 },
  "7d": { hours: 24 * 7, bucket: 360 },
  "30d": { hours: 24 * 30, bucket: 1440 },
};

function loadActivity() {
  const form = $("activity-form");
  const range = RANGES[form.elements.range.value] || RANGES["24h"];
  const until = new Date();
  const since = new Date(until.getTime() - range.hours * 3600 * 1000);
  const area = $("activity");
  return loadInto(
    area,
    () =>
      api.get("/attempt-activity", {
        connector_id: form.elements.connector_id.value,
        since: since.toISOString(),
        until: until.toISOString(),
        bucket_minutes: range.bucket,
      }),
    (activity) => activityCharts(activity, chartWidth(area)),
    {
      isEmpty: (activity) =>
        !activity.connectors.some((c) => c.buckets.some((b) => b.failed || b.delivered || b.recovered)),
      empty: "No delivery attempt in this period.",
    },
  );
}

export async function loadDashboard() {
  await Promise.all([loadCards(), loadPlans(), loadApprovals(), loadConnectorsPanel(), loadActivity()]);
}

// -- failed deliveries ------------------------------------------------------

const failedPager = new Pager();

function failedQuery() {
  const form = $("failed-filters");
  return {
    outcome: "failed",
    connector_id: form.elements.connector_id.value,
    error_class: form.elements.error_class.value.trim(),
    lineage_state: form.elements.lineage_state.value,
    since: utcFromInput(form.elements.since.value),
    until: utcFromInput(form.elements.until.value),
    limit: form.elements.limit.value,
  };
}

function filtered(query) {
  return ["connector_id", "error_class", "lineage_state", "since", "until"].some((name) => query[name]);
}

export function loadFailed() {
  const query = failedQuery();
  return loadInto(
    $("failed-table"),
    () => api.get("/attempts", { ...query, cursor: failedPager.cursor }),
    (page) => {
      failedPager.next = page.next_cursor;
      return [
        table(
          `Failed deliveries, newest first (page ${failedPager.index + 1})`,
          ["Started", "Connector", "Failure class", "HTTP status", "Attempt", "Lineage state", "Decision"],
          page.items.map((attempt) => ({
            attributes: { "data-attempt": attempt.attempt_id, "data-lineage": attempt.lineage_id },
            cells: [
              timeElement(attempt.started_at),
              attempt.connector_id,
              h("code", {}, attempt.error_class || "—"),
              attempt.http_status ?? "—",
              String(attempt.attempt_number),
              badge(attempt.lineage_state),
              h(
                "button",
                {
                  type: "button",
                  class: "secondary",
                  "aria-label": `Explain lineage ${attempt.lineage_id}`,
                  onclick: () => openLineage(attempt.lineage_id),
                },
                "Explain",
              ),
            ],
          })),
          { class: "failed-deliveries" },
        ),
        failedPager.controls("Failed deliveries", loadFailed),
      ];
    },
    {
      isEmpty: (page) => page.items.length === 0 && failedPager.index === 0,
      empty: filtered(query) ? "No failed delivery matches these filters." : "No failed delivery recorded.",
    },
  );
}

// -- worker history ---------------------------------------------------------

const runsPager = new Pager();

export function loadRuns() {
  const dryRun = $("runs-filters").elements.dry_run.value;
  return loadInto(
    $("runs-table"),
    () => api.get("/worker-runs", { dry_run: dryRun, limit: 10, cursor: runsPager.cursor }),
    (page) => {
      runsPager.next = page.next_cursor;
      return [
        table(
          "Worker runs, newest first",
          ["Started", "Kind", "Trigger", "By", "Due", "Selected", "Executed", "Skipped", "Notes", "Run"],
          page.items.map((run) => ({
            attributes: { "data-run": run.run_id },
            cells: [
              timeElement(run.started_at),
              badge(run.dry_run ? "dry run" : "live", run.dry_run ? "dry" : "live"),
              run.trigger,
              run.generated_by,
              String(run.summary.retryable_count),
              String(run.summary.selected_retry_count),
              String(run.summary.executed_count),
              String(run.summary.skipped_count),
              run.notes[0] || "",
              h(
                "button",
                { type: "button", class: "secondary", "aria-label": `Open run ${run.run_id}`, onclick: () => openRunDetails(run) },
                "Open",
              ),
            ],
          })),
        ),
        runsPager.controls("Worker runs", loadRuns),
      ];
    },
    { isEmpty: (page) => page.items.length === 0 && runsPager.index === 0, empty: "No worker run recorded." },
  );
}

// -- recovery -------------------------------------------------------------

const playbooksPager = new Pager();

function loadReport() {
  return loadInto(
    $("recovery-report"),
    () => api.get("/connector-recovery-report"),
    (report) => [
      h(
        "dl",
        { class: "cards" },
        [
          ["open", "Open items", report.open_count],
          ["overdue", `Open for more than ${report.slo_minutes} minutes`, report.overdue_count],
          ["closed", "Closed items", report.closed_count],
        ].map(([key, label, value]) =>
          h("div", { class: "card", "data-card": `recovery-${key}` }, h("dt", {}, label), h("dd", { class: "value" }, String(value))),
        ),
      ),
      report.overdue_items.length
        ? table(
            "Overdue items, oldest first",
            ["Connector", "Playbook", "Made", "Due", "State"],
            report.overdue_items.map((item) => [
              item.connector_id,
              h("code", {}, short(item.playbook_id)),
              timeElement(item.generated_at),
              timeElement(item.due_at),
              item.closure_state || "open",
            ]),
          )
        : null,
    ],
  );
}

function loadPlaybooks() {
  return loadInto(
    $("playbooks"),
    () => api.get("/connector-recovery-playbooks", { limit: 5, cursor: playbooksPager.cursor }),
    (page) => {
      playbooksPager.next = page.next_cursor;
      const mayClose = allowed("closeRecovery");
      return [
        page.items.map((playbook) =>
          h(
            "article",
            { class: "playbook", "data-playbook": playbook.playbook_id },
            h("h4", {}, "Playbook ", h("code", {}, playbook.playbook_id)),
            facts([
              ["Made", timeElement(playbook.generated_at)],
              ["By", playbook.generated_by],
              ["Looked for", `${playbook.min_failure_count} failures in ${playbook.lookback_hours} hours`],
              ["Items", String(playbook.item_count)],
            ]),
            playbookItems(playbook, (item) =>
              mayClose
                ? h(
                    "p",
                    {},
                    h(
                      "button",
                      { type: "button", onclick: () => openClosure(playbook, item) },
                      `Close recovery: ${item.connector_id}`,
                    ),
                  )
                : null,
            ),
            playbook.closures && playbook.closures.length
              ? table(
                  `Closures of ${playbook.playbook_id}, oldest first`,
                  ["Connector", "State", "Reference", "By", "When", "Verified by"],
                  playbook.closures.map((closure) => [
                    closure.connector_id,
                    badge(closure.closure_state),
                    closure.external_ref || "—",
                    closure.closed_by,
                    timeElement(closure.closed_at),
                    closure.verification_refs.length ? closure.verification_refs.join(", ") : "—",
                  ]),
                )
              : null,
          ),
        ),
        playbooksPager.controls("Playbooks", loadPlaybooks),
      ];
    },
    { isEmpty: (page) => page.items.length === 0 && playbooksPager.index === 0, empty: "No recovery playbook yet." },
  );
}

export async function loadRecovery() {
  await Promise.all([loadReport(), loadPlaybooks()]);
}

// -- evidence ---------------------------------------------------------------

const entriesPager = new Pager();

function loadChain() {
  return loadInto(
    $("chain-status"),
    () => api.get("/evidence/verify"),
    (report) => {
      if (report.intact) {
        return h(
          "div",
          { class: "chain chain-intact", "data-intact": "true" },
          h("p", {}, badge("intact"), ` The chain is intact: ${report.verified_entry_count} of ${report.entry_count} entries verified.`),
          facts([
            ["Last entry hash", report.last_entry_hash ? h("code", { class: "id" }, report.last_entry_hash) : "none (the log is empty)"],
            ["Checked", timeElement(report.verified_at)],
          ]),
        );
      }
      const broken = report.first_broken_entry;
      return h(
        "div",
        { class: "chain chain-broken", "data-intact": "false" },
        h(
          "p",
          { role: "alert" },
          badge("broken"),
          ` The chain breaks at entry ${broken.sequence}`,
          broken.kind ? ` (${broken.kind} ${broken.subject_id || ""})` : "",
          `: ${broken.problem}, ${broken.detail}.`,
        ),
        facts([
          ["Entries sound before it", `${report.verified_entry_count} of ${report.entry_count}`],
          ["Last sound entry hash", report.last_entry_hash ? h("code", { class: "id" }, report.last_entry_hash) : "none"],
          ["Checked", timeElement(report.verified_at)],
        ]),
      );
    },
  );
}

function loadEntries() {
  return loadInto(
    $("evidence-entries"),
    () => api.get("/evidence", { limit: 25, cursor: entriesPager.cursor }),
    (page) => {
      entriesPager.next = page.next_cursor;
      return [
        table(
          "Evidence entries, oldest first",
          ["Sequence", "Kind", "Subject", "Actor", "Recorded", "Entry hash"],
          page.items.map((entry) => [
            String(entry.sequence),
            entry.kind,
            h("code", {}, entry.subject_id),
            `${entry.actor}${entry.actor_verified ? " (token)" : " (unverified)"}`,
            timeElement(entry.recorded_at),
            h("code", { title: entry.entry_hash }, short(entry.entry_hash)),
          ]),
        ),
        entriesPager.controls("Evidence entries", loadEntries),
      ];
    },
    { isEmpty: (page) => page.items.length === 0 && entriesPager.index === 0, empty: "The evidence log is empty." },
  );
}

export async function loadEvidence() {
  await Promise.all([loadChain(), loadEntries()]);
}

async function downloadExport(button) {
  button.disabled = true;
  say("Exporting the evidence log…", "info");
  try {
    const { text, count } = await exportEvidence((seen) => {
      button.textContent = `Exporting… ${seen} entries`;
    });
    const stamp = new Date().toISOString().replace(/[-:]/g, "").slice(0, 15);
    const name = `cavra-evidence-${stamp}Z.jsonl`;
    const link = h("a", { href: URL.createObjectURL(new Blob([text], { type: "application/jsonl" })), download: name, hidden: true });
    document.body.appendChild(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    say(`Exported ${count} evidence entries to ${name}.`, "success");
  } catch (error) {
    if (error.status !== 401) {
      sayProblem(error, "The export failed: ");
    }
  } finally {
    button.disabled = false;
    button.textContent = "Export evidence (.jsonl)";
  }
}

// -- wiring -----------------------------------------------------------------

export const LOADERS = {
  dashboard: loadDashboard,
  failed: loadFailed,
  runs: loadRuns,
  recovery: loadRecovery,
  evidence: loadEvidence,
};

/** Hook the sections' own forms and buttons up, once. */
export function wireViews(isShown) {
  $("activity-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadActivity();
  });
  const failedForm = $("failed-filters");
  failedForm.addEventListener("submit", (event) => {
    event.preventDefault();
    failedPager.reset();
    loadFailed();
  });
  failedForm.addEventListener("reset", () => {
    window.setTimeout(() => {
      failedPager.reset();
      loadFailed();
    });
  });
  $("runs-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    runsPager.reset();
    loadRuns();
  });
  $("verify-again").addEventListener("click", loadChain);
  $("export-evidence").addEventListener("click", (event) => downloadExport(event.currentTarget));

  // Actions elsewhere ask for reloads by name; only what is shown reloads.
  for (const [name, load] of Object.entries(LOADERS)) {
    onRefresh(name, () => (isShown(name) ? load() : Promise.resolve()));
  }
}
