// The console's actions, each a form in a dialog: every one is a POST to
// cavra's API, and every refusal is shown as the API worded it.

import * as api from "./api.js";
import { openLineage, openPlaybook, openRunDetails } from "./details.js";
import {
  badge,
  checkbox,
  clearFormProblems,
  facts,
  field,
  formatTime,
  h,
  inputFromDate,
  loadInto,
  openDialog,
  say,
  showFormProblem,
  table,
  timeElement,
  utcFromInput,
} from "./dom.js";
import { actorField, allowed, refresh, state, storedActor, withActor } from "./state.js";

const PATH = {
  deliver: "",
  plan: "/retry-plan",
  run: "/worker-run",
  playbook: "/connector-recovery-playbook",
  attempts: "/attempts",
};

/**
 * Wire `form` to `perform(body)`: build the body, send it with the submit
 * button disabled, show a refusal in the dialog's alert area (marking the
 * fields it points at), or hand the answer to `done`.
 */
function handleSubmit(form, alertArea, build, perform, done) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFormProblems(form, alertArea);
    const submitter = event.submitter || form.querySelector("[type=submit]");
    let body;
    try {
      body = build(submitter);
    } catch (error) {
      showFormProblem(form, alertArea, error);
      return;
    }
    const buttons = Array.from(form.querySelectorAll("button[type=submit]"));
    buttons.forEach((button) => (button.disabled = true));
    form.setAttribute("aria-busy", "true");
    try {
      const result = await perform(body, submitter);
      await done(result, submitter);
    } catch (error) {
      if (error.status !== 401) {
        showFormProblem(form, alertArea, error);
      }
    } finally {
      buttons.forEach((button) => (button.disabled = false));
      form.removeAttribute("aria-busy");
    }
  });
}

function localProblem(detail, pointer) {
  return new api.ApiError(0, {
    title: "Check the form",
    detail,
    errors: pointer ? [{ pointer, detail }] : [],
  });
}

function numberInput(name, attributes) {
  return h("input", { type: "number", name, inputmode: "decimal", ...attributes });
}

/** The value of a number input, or undefined when left empty. */
function numberValue(form, name) {
  const text = form.elements[name].value.trim();
  return text === "" ? undefined : Number(text);
}

function connectorChecks(name, legend, { checked = false, pointerBase } = {}) {
  const connectors = state.connectors;
  const box = h("fieldset", { class: "checks", "data-pointer": pointerBase }, h("legend", {}, legend));
  if (!connectors.length) {
    box.appendChild(h("p", { class: "state state-empty" }, "No connector is configured."));
  }
  for (const connector of connectors) {
    box.appendChild(
      checkbox(`${connector.connector_id} (${connector.type}, ${connector.state})`, {
        name,
        value: connector.connector_id,
        checked: checked && connector.state === "active",
      }),
    );
  }
  return box;
}

function checkedValues(form, name) {
  return Array.from(form.querySelectorAll(`input[name="${name}"]:checked`), (input) => input.value);
}

// -- deliver -------------------------------------------------------------

const ACK_STATES = ["accepted", "deferred", "escalated", "resolved", "dismissed"];

function ackRow(rows, index) {
  const now = inputFromDate(new Date());
  const row = h(
    "fieldset",
    { class: "ack-row" },
    h("legend", {}, `Acknowledgement ${index + 1}`),
    field(
      "Notification id",
      h("input", { name: "notification_id", required: true, maxlength: 200, "data-pointer": `/package/acknowledgements/${index}/notification_id` }),
    ),
    field(
      "Role",
      h("input", { name: "role", required: true, maxlength: 100, "data-pointer": `/package/acknowledgements/${index}/role` }),
    ),
    field(
      "State",
      h(
        "select",
        { name: "state", "data-pointer": `/package/acknowledgements/${index}/state` },
        ACK_STATES.map((value) => h("option", { value }, value)),
      ),
    ),
    field(
      "Acknowledged at (UTC)",
      h("input", {
        name: "acknowledged_at",
        type: "datetime-local",
        step: 1,
        required: true,
        value: now,
        "data-pointer": `/package/acknowledgements/${index}/acknowledged_at`,
      }),
    ),
    h(
      "p",
      {},
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: () => {
            if (rows.children.length > 1) {
              row.remove();
              renumber(rows);
            }
          },
        },
        `Remove acknowledgement ${index + 1}`,
      ),
    ),
  );
  return row;
}

function renumber(rows) {
  Array.from(rows.children).forEach((row, index) => {
    row.querySelector("legend").textContent = `Acknowledgement ${index + 1}`;
    row.querySelector("p:last-child button").textContent = `Remove acknowledgement ${index + 1}`;
    for (const control of row.querySelectorAll("[data-pointer]")) {
      control.dataset.pointer = control.dataset.pointer.replace(/acknowledgements\/\d+/, `acknowledgements/${index}`);
    }
  });
}

export function openDeliver() {
  const rows = h("div", { class: "ack-rows" });
  rows.appendChild(ackRow(rows, 0));
  const form = h(
    "form",
    { id: "deliver-form", novalidate: true },
    field("Drill id", h("input", { name: "drill_id", required: true, maxlength: 200, "data-pointer": "/package/drill_id" })),
    field(
      "Package assembled at (UTC)",
      h("input", { name: "generated_at", type: "datetime-local", step: 1, required: true, value: inputFromDate(new Date()), "data-pointer": "/package/generated_at" }),
    ),
    field(
      "Assembled by",
      h("input", {
        name: "package_generated_by",
        required: true,
        maxlength: 200,
        value: (state.session && state.session.actor) || storedActor(),
        "data-pointer": "/package/generated_by",
      }),
      "Who or what put the package together (a person or the drill runner).",
    ),
    h("h3", {}, "Acknowledgements"),
    rows,
    h(
      "p",
      {},
      h("button", { type: "button", class: "secondary", onclick: () => rows.appendChild(ackRow(rows, rows.children.length)) }, "Add acknowledgement"),
    ),
    connectorChecks("connectors", "Deliver to connectors", { checked: true, pointerBase: "/connectors" }),
    actorField("/generated_by"),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit" }, "Deliver")),
  );
  const { alert, close } = openDialog("Deliver ack audit", form, { wide: true });
  handleSubmit(
    form,
    alert,
    () => {
      const connectors = checkedValues(form, "connectors");
      if (!connectors.length) {
        throw localProblem("Choose at least one connector to deliver to.", "/connectors");
      }
      const acknowledgements = Array.from(rows.children, (row) => ({
        notification_id: row.querySelector("[name=notification_id]").value.trim(),
        role: row.querySelector("[name=role]").value.trim(),
        state: row.querySelector("[name=state]").value,
        acknowledged_at: utcFromInput(row.querySelector("[name=acknowledged_at]").value),
      }));
      return withActor(
        form,
        {
          source: "console",
          connectors,
          package: {
            drill_id: form.elements.drill_id.value.trim(),
            generated_at: utcFromInput(form.elements.generated_at.value),
            generated_by: form.elements.package_generated_by.value.trim(),
            acknowledgements,
          },
        },
        "generated_by",
      );
    },
    (body) => api.post(PATH.deliver, body),
    async (report) => {
      close();
      const summary = report.deliveries
        .map((d) => `${d.connector_id}: ${d.outcome}${d.error_class ? ` (${d.error_class})` : ""}${d.skipped_reason ? ` (${d.skipped_reason})` : ""}`)
        .join("; ");
      say(`Package of drill ${report.drill_id} delivered: ${summary}.`, "success");
      await refresh("dashboard", "failed");
    },
  );
}

// -- import attempts ---------------------------------------------------

const IMPORT_EXAMPLE = `{
  "packages": [ ...audit packages cavra has not stored yet (optional)... ],
  "attempts": [
    {
      "package_id": "…",
      "connector_id": "audit-hook",
      "outcome": "failed",
      "error_class": "http_status",
      "http_status": 503,
      "started_at": "2026-12-03T17:48:00Z",
      "finished_at": "2026-12-03T17:48:01Z"
    }
  ]
}`;

/** Why `text` is not a document the import can take, or null when it is. */
function importDocumentProblem(text) {
  if (!text.trim()) {
    return "Paste the JSON document, or choose a .json file.";
  }
  let document;
  try {
    document = JSON.parse(text);
  } catch (error) {
    return `This is not valid JSON (${error.message}); nothing was sent.`;
  }
  if (document === null || typeof document !== "object" || Array.isArray(document)) {
    return "The document must be a JSON object with \"attempts\" (and optionally \"packages\"); nothing was sent.";
  }
  return null;
}

export function openImportAttempts() {
  const text = h("textarea", {
    name: "document",
    rows: 14,
    spellcheck: "false",
    autocomplete: "off",
    class: "json-document",
    placeholder: IMPORT_EXAMPLE,
    "data-pointer-root": "true",
  });
  const file = h("input", { type: "file", name: "file", accept: ".json,application/json" });
  const fileNote = h("span", { class: "help", "aria-live": "polite" });
  file.addEventListener("change", () => {
    const chosen = file.files && file.files[0];
    if (!chosen) {
      return;
    }
    // Read here, in the browser: the file goes nowhere but into the text box.
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      text.value = String(reader.result);
      fileNote.textContent = `Read ${chosen.name} (${chosen.size} bytes) into the document below.`;
    });
    reader.addEventListener("error", () => {
      fileNote.textContent = `Could not read ${chosen.name}.`;
    });
    reader.readAsText(chosen);
  });
  const form = h(
    "form",
    { id: "import-form", novalidate: true },
    h(
      "p",
      { class: "help" },
      "Record delivery attempts made outside cavra, so that they get retry decisions like any other: ",
      "up to 1,000 attempts, in the order they happened, with the packages cavra has not stored yet. ",
      "All or nothing: if one attempt cannot be recorded, none is.",
    ),
    field("Read a .json file", file),
    fileNote,
    field(
      "Attempts document (JSON)",
      text,
      "Sent to POST .../attempts as written: an object with attempts and optionally packages.",
    ),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit" }, "Import attempts")),
  );
  const { alert, close } = openDialog("Import attempts", form, { wide: true });
  handleSubmit(
    form,
    alert,
    () => {
      const problem = importDocumentProblem(text.value);
      if (problem) {
        throw new api.ApiError(0, { title: "Check the document", detail: problem, errors: [{ pointer: "", detail: problem }] });
      }
      return text.value;
    },
    (document) => api.postText(PATH.attempts, document),
    async (result) => {
      close();
      const lineages = new Map();
      for (const attempt of result.attempts) {
        // The attempts come in order: a lineage's last one says its state.
        lineages.set(attempt.lineage_id, { attempt, count: (lineages.get(attempt.lineage_id)?.count || 0) + 1 });
      }
      const states = new Map();
      for (const { attempt } of lineages.values()) {
        states.set(attempt.lineage_state, (states.get(attempt.lineage_state) || 0) + 1);
      }
      const stateText = Array.from(states, ([name, count]) => `${count} ${name}`).join(", ");
      say(`${result.recorded_count} attempts recorded, in ${lineages.size} lineages now ${stateText}.`, "success");
      await refresh("dashboard", "failed");
      openDialog(
        `Imported ${result.recorded_count} attempts`,
        table(
          "Lineages of the imported attempts, with their state now",
          ["Lineage", "Connector", "Attempts recorded", "Latest", "Lineage state", "Decision"],
          Array.from(lineages.values(), ({ attempt, count }) => [
            h("code", {}, attempt.lineage_id),
            attempt.connector_id,
            String(count),
            h(
              "span",
              {},
              `attempt ${attempt.attempt_number}: `,
              badge(attempt.outcome),
              attempt.error_class ? ` ${attempt.error_class}` : "",
              attempt.http_status ? ` ${attempt.http_status}` : "",
            ),
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
          ]),
          { id: "import-result" },
        ),
        { wide: true },
      );
    },
  );
}

// -- plan ----------------------------------------------------------------

const POLICY_FIELDS = [
  ["max_retry_attempts", "Most attempts in a lineage", { min: 1, max: 100, step: 1 }, "1 to 100; default 3"],
  ["retry_delay_minutes", "Backoff delay (minutes)", { min: 0, max: 10080, step: "any" }, "0 only with immediate retries allowed; default 15"],
  ["backoff_multiplier", "Backoff multiplier", { min: 1, max: 10, step: "any" }, "1 to 10; default 2"],
  ["max_delay_minutes", "Longest delay (minutes)", { min: 0, max: 43200, step: "any" }, "default 1440"],
  ["jitter", "Jitter", { min: 0, max: 1, step: "any" }, "0 to 1; default 0"],
  ["max_age_hours", "Oldest package to retry (hours)", { min: 1, max: 8760, step: "any" }, "default 168"],
  ["retry_window_hours", "Retry window (hours)", { min: 1, max: 720, step: "any" }, "default 24"],
];

function policyFieldset() {
  return h(
    "fieldset",
    { class: "policy" },
    h("legend", {}, "Retry policy overrides (optional: leave empty for each connector's own policy)"),
    POLICY_FIELDS.map(([name, label, limits, help]) =>
      field(label, numberInput(name, { ...limits, "data-pointer": `/retry_policy/${name}` }), help),
    ),
    checkbox("Allow immediate retries (allow_immediate_retry)", { name: "allow_immediate_retry", "data-pointer": "/retry_policy/allow_immediate_retry" }),
  );
}

function policyValue(form) {
  const policy = {};
  for (const [name] of POLICY_FIELDS) {
    const value = numberValue(form, name);
    if (value !== undefined) {
      if (Number.isNaN(value)) {
        throw localProblem(`${name} must be a number.`, `/retry_policy/${name}`);
      }
      policy[name] = value;
    }
  }
  if (form.elements.allow_immediate_retry.checked) {
    policy.allow_immediate_retry = true;
  }
  return Object.keys(policy).length ? policy : undefined;
}

export function openPlan() {
  const form = h(
    "form",
    { id: "plan-form", novalidate: true },
    h(
      "p",
      { class: "help" },
      "A plan decides every failed delivery (retry, wait or suppress) and explains why. It delivers nothing.",
    ),
    policyFieldset(),
    actorField("/generated_by"),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit" }, "Make the plan")),
  );
  const { alert, close } = openDialog("Plan audit retry", form);
  handleSubmit(
    form,
    alert,
    () => {
      const body = {};
      const policy = policyValue(form);
      if (policy) {
        body.retry_policy = policy;
      }
      return withActor(form, body, "generated_by");
    },
    (body) => api.post(PATH.plan, body),
    async (plan) => {
      close();
      say(
        `Plan ${plan.retry_plan_id} made: ${plan.decision_count} decisions (${plan.retryable_count} retry, ${plan.waiting_count} wait, ${plan.suppressed_count} suppress).`,
        "success",
      );
      await refresh("dashboard");
    },
  );
}

// -- review, approve, deny -------------------------------------------------

function approvable(decision) {
  return decision.action === "retry" || (decision.action === "wait" && decision.reason === "delay_not_elapsed");
}

/** Review plan `planId`: every decision explained; approve or deny some when allowed. */
export function openPlanReview(planId) {
  const area = h("div", { class: "load-area" });
  const dialog = openDialog(`Retry plan ${planId}`, area, { wide: true });
  loadInto(
    area,
    () => api.get(`/retry-plans/${encodeURIComponent(planId)}`),
    (plan) => renderPlanReview(plan, dialog),
  );
}

function renderPlanReview(plan, dialog) {
  const mayApprove = allowed("createApprovals");
  const summary = facts([
    ["Made", timeElement(plan.generated_at)],
    ["By", plan.generated_by],
    ["Decisions", `${plan.decision_count}: ${plan.retryable_count} retry, ${plan.waiting_count} wait, ${plan.suppressed_count} suppress`],
    ["Plan hash", h("code", { class: "id" }, plan.plan_hash)],
  ]);
  const decisions = h(
    "ul",
    { class: "decisions" },
    plan.retry_decisions.map((decision) => {
      const heading = `${decision.connector_id} · ${decision.lineage_id}`;
      const detail = [
        h("p", { class: "decision-verdict" }, badge(decision.action), " ", h("code", {}, decision.reason)),
        h("p", { class: "explanation" }, decision.explanation),
        h(
          "p",
          { class: "help" },
          `Attempts ${decision.retry_count} of ${decision.max_retry_attempts}; window `,
          timeElement(decision.not_before),
          " to ",
          timeElement(decision.not_after),
          ". ",
          h(
            "button",
            { type: "button", class: "link", onclick: () => openLineage(decision.lineage_id) },
            `Open lineage ${decision.lineage_id}`,
          ),
        ),
      ];
      if (!mayApprove) {
        return h("li", { class: "decision-item", "data-decision-id": decision.decision_id }, h("h3", {}, heading), detail);
      }
      return h(
        "li",
        { class: "decision-item", "data-decision-id": decision.decision_id },
        checkbox(approvable(decision) ? heading : `${heading} (may be denied, not approved)`, {
          name: "decision_ids",
          value: decision.decision_id,
          "data-approvable": approvable(decision) ? "true" : "false",
        }),
        detail,
      );
    }),
  );
  if (!mayApprove) {
    return [summary, h("h3", {}, "Decisions"), decisions];
  }

  const soon = new Date(Date.now() + 24 * 3600 * 1000);
  const form = h(
    "form",
    { id: "approval-form", novalidate: true },
    h("fieldset", { class: "checks", "data-pointer": "/decision_ids" }, h("legend", {}, "Decisions to approve or deny"), decisions),
    checkbox("Every retry decision of the plan (all_retry_decisions)", { name: "all_retry_decisions", "data-pointer": "/all_retry_decisions" }),
    field("Reason", h("textarea", { name: "reason", required: true, maxlength: 1000, rows: 3, "data-pointer": "/reason" }), "Kept as evidence with the approval."),
    field(
      "Expires at (UTC)",
      h("input", { name: "expires_at", type: "datetime-local", step: 1, value: inputFromDate(soon), "data-pointer": "/expires_at" }),
      "At most 7 days ahead; empty for the default, 24 hours.",
    ),
    actorField("/approved_by"),
    h(
      "p",
      { class: "dialog-actions" },
      h("button", { type: "submit", name: "verdict", value: "approve" }, "Approve"),
      h("button", { type: "submit", name: "verdict", value: "deny", class: "danger" }, "Deny"),
    ),
  );
  handleSubmit(
    form,
    dialog.alert,
    (submitter) => {
      const verdict = submitter && submitter.value === "deny" ? "deny" : "approve";
      const body = { verdict, reason: form.elements.reason.value.trim(), plan_hash: plan.plan_hash };
      if (form.elements.all_retry_decisions.checked) {
        body.all_retry_decisions = true;
      } else {
        const ids = checkedValues(form, "decision_ids");
        if (!ids.length) {
          throw localProblem("Choose the decisions to approve or deny, or every retry decision.", "/decision_ids");
        }
        body.decision_ids = ids;
      }
      if (!body.reason) {
        throw localProblem("Give a reason: it is kept as evidence.", "/reason");
      }
      const expires = utcFromInput(form.elements.expires_at.value);
      if (expires) {
        body.expires_at = expires;
      }
      return withActor(form, body, "approved_by");
    },
    (body) => api.post(`/retry-plans/${encodeURIComponent(plan.retry_plan_id)}/approvals`, body),
    async (approval) => {
      dialog.close();
      say(
        `${approval.verdict === "deny" ? "Denial" : "Approval"} ${approval.approval_id} recorded for ${approval.decision_count} decisions of plan ${approval.retry_plan_id}; it expires ${formatTime(approval.expires_at)}.`,
        "success",
      );
      await refresh("dashboard");
    },
  );
  return [summary, form];
}

export function openRevoke(approval) {
  const form = h(
    "form",
    { id: "revoke-form", novalidate: true },
    h(
      "p",
      {},
      `Take back ${approval.verdict === "deny" ? "denial" : "approval"} ${approval.approval_id} of plan ${approval.retry_plan_id}: `,
      "no live run will send its decisions; approve them again to let one.",
    ),
    field("Reason", h("textarea", { name: "reason", required: true, maxlength: 1000, rows: 3, "data-pointer": "/reason" })),
    actorField("/revoked_by"),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit", class: "danger" }, "Revoke")),
  );
  const { alert, close } = openDialog(`Revoke ${approval.approval_id}`, form);
  handleSubmit(
    form,
    alert,
    () => {
      const reason = form.elements.reason.value.trim();
      if (!reason) {
        throw localProblem("Give a reason: it is kept as evidence.", "/reason");
      }
      return withActor(form, { reason }, "revoked_by");
    },
    (body) => api.post(`/approvals/${encodeURIComponent(approval.approval_id)}/revoke`, body),
    async (revoked) => {
      close();
      say(`Approval ${revoked.approval_id} revoked.`, "success");
      await refresh("dashboard");
    },
  );
}

// -- the worker ----------------------------------------------------------

export function openWorkerRun() {
  const form = h(
    "form",
    { id: "run-form", novalidate: true },
    checkbox("Dry run: record what would be sent, deliver nothing", { name: "dry_run", checked: true }),
    field(
      "Most retries to send (max_retry_deliveries)",
      numberInput("max_retry_deliveries", { min: 1, max: 100, step: 1, value: 5, "data-pointer": "/max_retry_deliveries" }),
    ),
    h(
      "p",
      { class: "help" },
      "A live run re-delivers only approved decisions. Before it, the console makes a dry run and lists what would be re-delivered, for you to confirm.",
    ),
    actorField("/generated_by"),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit" }, "Run the worker")),
  );
  const dialog = openDialog("Run audit worker", form);
  let limit;
  handleSubmit(
    form,
    dialog.alert,
    () => {
      limit = numberValue(form, "max_retry_deliveries");
      const body = { dry_run: true };
      if (limit !== undefined) {
        body.max_retry_deliveries = limit;
      }
      return withActor(form, body, "generated_by");
    },
    (body) => api.post(PATH.run, body),
    async (dryRun) => {
      dialog.close();
      await refresh("dashboard", "runs");
      if (form.elements.dry_run.checked) {
        say(`Dry run ${dryRun.run_id} recorded: ${dryRun.summary.selected_retry_count} retries would be sent.`, "success");
        openRunDetails(dryRun);
      } else {
        await confirmLiveRun(dryRun, limit);
      }
    },
  );
}

/**
 * Whether a live run would send `retry` (a dry run's selected retry), and
 * why not: the dry run names the approval that holds now, if any; for the
 * others the latest word on the lineage says why they are held back.
 */
async function approvalStanding(retry) {
  if (retry.approval_id) {
    return { usable: true, text: `approved (${retry.approval_id})` };
  }
  const standing = await latestWord(retry.lineage_id);
  if ("approval_id" in retry && standing.usable) {
    // The dry run found that this approval does not hold for this decision.
    return { usable: false, text: `approval ${standing.approvalId} does not hold for this decision now: held back` };
  }
  return standing;
}

/** The latest word on `lineageId`, and whether it lets a live run send it now. */
async function latestWord(lineageId) {
  const page = await api.get("/approvals", { lineage_id: lineageId, limit: 1 });
  const latest = page.items[0];
  if (!latest) {
    return { usable: false, text: "no approval: held back" };
  }
  if (latest.verdict === "deny") {
    return { usable: false, text: `denied (${latest.approval_id}): held back` };
  }
  const approval = await api.get(`/approvals/${encodeURIComponent(latest.approval_id)}`);
  const item = approval.decisions.find((d) => d.lineage_id === lineageId);
  if (approval.state === "active" && item && item.state === "pending") {
    return {
      usable: true,
      approvalId: approval.approval_id,
      text: `approved (${approval.approval_id}), expires ${formatTime(approval.expires_at)}`,
    };
  }
  return { usable: false, text: `approval ${approval.approval_id} is ${item ? item.state : approval.state}: held back` };
}

async function confirmLiveRun(dryRun, limit) {
  const selected = dryRun.selected_retries;
  const standings = await Promise.all(selected.map((retry) => approvalStanding(retry).catch(() => null)));
  const approved = standings.filter((standing) => standing && standing.usable).length;
  const list = selected.length
    ? h(
        "ul",
        { class: "redeliveries" },
        selected.map((retry, index) =>
          h(
            "li",
            { "data-lineage": retry.lineage_id, "data-approved": standings[index] && standings[index].usable ? "true" : "false" },
            h("strong", {}, `${retry.connector_id}: attempt ${retry.next_attempt_number} of lineage `),
            h("code", {}, retry.lineage_id),
            h("p", {}, retry.explanation),
            h("p", { class: "standing" }, standings[index] ? standings[index].text : "approval could not be read"),
          ),
        ),
      )
    : h("p", { class: "state state-empty" }, "Nothing is due: a live run would deliver nothing.");

  const form = h(
    "form",
    { id: "live-run-form", novalidate: true },
    h(
      "p",
      { class: "confirm-summary" },
      `Dry run ${dryRun.run_id} selected ${selected.length} due retries; ${approved} of them have a usable approval and would be re-delivered now. The others are held back.`,
    ),
    list,
    h("ul", { class: "notes" }, dryRun.notes.map((note) => h("li", {}, note))),
    actorField("/generated_by"),
    h(
      "p",
      { class: "dialog-actions" },
      h("button", { type: "submit", class: "danger" }, approved ? `Run live: re-deliver ${approved}` : "Run live anyway"),
      h("button", { type: "button", class: "secondary", "data-cancel": "true" }, "Cancel"),
    ),
  );
  const dialog = openDialog("Confirm the live run", form, { wide: true });
  form.querySelector("[data-cancel]").addEventListener("click", () => {
    dialog.close();
    say("Live run cancelled: nothing was delivered.", "info");
  });
  handleSubmit(
    form,
    dialog.alert,
    () => {
      const body = { dry_run: false };
      if (limit !== undefined) {
        body.max_retry_deliveries = limit;
      }
      return withActor(form, body, "generated_by");
    },
    (body) => api.post(PATH.run, body),
    async (run) => {
      dialog.close();
      const delivered = run.selected_retries.filter((retry) => retry.outcome === "delivered").length;
      say(`Live run ${run.run_id}: ${run.summary.executed_count} retries sent, ${delivered} delivered.`, "success");
      await refresh("dashboard", "runs", "failed");
      openRunDetails(run);
    },
  );
}

// -- connectors ----------------------------------------------------------

export function openResume(connector) {
  const form = h(
    "form",
    { id: "resume-form", novalidate: true },
    h(
      "p",
      {},
      `Connector ${connector.connector_id} is ${connector.state} (${connector.state_reason || "no reason recorded"}). `,
      "Resume it once the cause is fixed: its waiting retries are decided afresh.",
    ),
    actorField("/generated_by"),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit" }, `Resume ${connector.connector_id}`)),
  );
  const { alert, close } = openDialog(`Resume ${connector.connector_id}`, form);
  handleSubmit(
    form,
    alert,
    () => withActor(form, {}, "generated_by"),
    (body) => api.post(`/connectors/${encodeURIComponent(connector.connector_id)}/resume`, body),
    async (resumed) => {
      close();
      say(`Connector ${resumed.connector_id} is ${resumed.state} again.`, "success");
      await refresh("dashboard");
    },
  );
}

// -- recovery ------------------------------------------------------------

export function openPlaybookRequest() {
  const form = h(
    "form",
    { id: "playbook-form", novalidate: true },
    field(
      "Failures that make a connector an item",
      numberInput("min_failure_count", { min: 1, max: 1000, step: 1, value: 2, "data-pointer": "/min_failure_count" }),
    ),
    field("Look back (hours)", numberInput("lookback_hours", { min: 1, max: 720, step: 1, value: 24, "data-pointer": "/lookback_hours" })),
    connectorChecks("connector_ids", "Only these connectors (none chosen: every connector)", { pointerBase: "/connector_ids" }),
    actorField("/generated_by"),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit" }, "Make the playbook")),
  );
  const { alert, close } = openDialog("Recovery playbook", form);
  handleSubmit(
    form,
    alert,
    () => {
      const body = {};
      const count = numberValue(form, "min_failure_count");
      const hours = numberValue(form, "lookback_hours");
      if (count !== undefined) body.min_failure_count = count;
      if (hours !== undefined) body.lookback_hours = hours;
      const ids = checkedValues(form, "connector_ids");
      if (ids.length) body.connector_ids = ids;
      return withActor(form, body, "generated_by");
    },
    (body) => api.post(PATH.playbook, body),
    async (playbook) => {
      close();
      say(`Playbook ${playbook.playbook_id} made: ${playbook.item_count} connectors need recovery.`, "success");
      await refresh("recovery");
      openPlaybook(playbook);
    },
  );
}

const CLOSURE_STATES = [
  ["resolved", "resolved: the connector delivers again (cite a delivery)"],
  ["mitigated", "mitigated: closed, without a delivery to cite"],
  ["deferred", "deferred: stays open"],
  ["escalated", "escalated: stays open"],
  ["reopened", "reopened: opens a closed item again"],
];

export function openClosure(playbook, item) {
  const refs = h("div", { class: "load-area" });
  const form = h(
    "form",
    { id: "closure-form", novalidate: true },
    h("p", {}, `Close the item of ${item.connector_id} in playbook ${playbook.playbook_id}.`),
    field(
      "Closure state",
      h("select", { name: "closure_state", "data-pointer": "/closure_state" }, CLOSURE_STATES.map(([value, label]) => h("option", { value }, label))),
    ),
    field("External reference", h("input", { name: "external_ref", maxlength: 200, "data-pointer": "/external_ref" }), "A ticket or incident id, e.g. INC-4711."),
    field("Notes", h("textarea", { name: "notes", maxlength: 4000, rows: 3, "data-pointer": "/notes" })),
    h(
      "fieldset",
      { class: "checks", "data-pointer": "/verification_refs" },
      h("legend", {}, `Verification: deliveries to ${item.connector_id} since the playbook was made`),
      refs,
    ),
    actorField("/closed_by"),
    h("p", { class: "dialog-actions" }, h("button", { type: "submit" }, "Record the closure")),
  );
  const dialog = openDialog(`Close recovery: ${item.connector_id}`, form, { wide: true });
  loadInto(
    refs,
    () =>
      api.get("/executions", {
        connector_id: item.connector_id,
        outcome: "delivered",
        since: playbook.generated_at,
        limit: 50,
      }),
    (page) =>
      page.items.map((execution) =>
        checkbox(
          `${execution.execution_id}: attempt ${execution.attempt_number} of ${execution.lineage_id}, delivered ${formatTime(execution.finished_at || execution.started_at)}`,
          { name: "verification_refs", value: execution.execution_id },
        ),
      ),
    {
      isEmpty: (page) => page.items.length === 0,
      empty: `No execution delivered to ${item.connector_id} since the playbook was made. A resolved closure needs one: approve a retry and run the worker live, or close as mitigated, deferred or escalated.`,
    },
  );
  handleSubmit(
    form,
    dialog.alert,
    () => {
      const body = { connector_id: item.connector_id, closure_state: form.elements.closure_state.value };
      const ref = form.elements.external_ref.value.trim();
      const notes = form.elements.notes.value.trim();
      if (ref) body.external_ref = ref;
      if (notes) body.notes = notes;
      const cited = checkedValues(form, "verification_refs");
      if (cited.length) body.verification_refs = cited;
      return withActor(form, body, "closed_by");
    },
    (body) => api.post(`/connector-recovery-playbooks/${encodeURIComponent(playbook.playbook_id)}/closures`, body),
    async (closure) => {
      dialog.close();
      say(`Item ${closure.connector_id} of ${closure.playbook_id} is now ${closure.closure_state}.`, "success");
      await refresh("recovery");
    },
  );
}

/** The action buttons of the page call these by their `data-action`. */
export const ACTIONS = {
  deliver: openDeliver,
  plan: openPlan,
  run: openWorkerRun,
  playbook: openPlaybookRequest,
  import: openImportAttempts,
};
