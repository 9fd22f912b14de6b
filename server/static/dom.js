// Small DOM helpers: building elements, formatting values, load states,
// messages and accessible dialogs. Text always goes in as text nodes, never
// as HTML, so nothing the API returns is ever interpreted as markup.

/** `h("p", {class: "x"}, "text", child)`: an element with attributes and children. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) {
      continue;
    }
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) {
      continue;
    }
    if (Array.isArray(child)) {
      append(element, child);
    } else if (child instanceof Node) {
      element.appendChild(child);
    } else {
      element.appendChild(document.createTextNode(String(child)));
    }
  }
}

export function clear(element) {
  while (element.firstChild) {
    element.removeChild(element.firstChild);
  }
  return element;
}

// -- formatting ----------------------------------------------------------

/** "2026-12-03 18:28:41 UTC" for an RFC 3339 time; "—" for none. */
export function formatTime(value) {
  if (!value) {
    return "—";
  }
  const moment = new Date(value);
  if (Number.isNaN(moment.getTime())) {
    return String(value);
  }
  return moment.toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

/** A `<time>` element showing formatTime(value). */
export function timeElement(value) {
  if (!value) {
    return h("span", { class: "none" }, "—");
  }
  return h("time", { datetime: value }, formatTime(value));
}

/** "15 min", "2 h 5 min", "45 s" for a number of seconds. */
export function formatDuration(seconds) {
  const total = Math.round(Number(seconds) || 0);
  if (total < 60) {
    return `${total} s`;
  }
  const minutes = Math.floor(total / 60);
  if (minutes < 60) {
    const rest = total % 60;
    return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 48) {
    const rest = minutes % 60;
    return rest ? `${hours} h ${rest} min` : `${hours} h`;
  }
  const days = Math.floor(hours / 24);
  const rest = hours % 24;
  return rest ? `${days} d ${rest} h` : `${days} d`;
}

/** The value of a `datetime-local` input, read as UTC, as RFC 3339; "" when empty. */
export function utcFromInput(value) {
  if (!value) {
    return "";
  }
  const withSeconds = value.length === 16 ? `${value}:00` : value;
  return `${withSeconds}Z`;
}

/** A moment as a `datetime-local` input value in UTC (to the second). */
export function inputFromDate(moment) {
  return moment.toISOString().slice(0, 19);
}

export function short(id) {
  return id ? String(id).slice(0, 12) + "…" : "—";
}

// -- load states ---------------------------------------------------------

const loadTurns = new WeakMap();

/**
 * Fill `area` while `load()` runs: a loading note, then what `render(result)`
 * returns, or an empty note when `isEmpty(result)`, or the error.
 *
 * Each state is marked on the area (`data-state`: loading, ready, empty,
 * error) so that styles, tests and assistive technology tell them apart.
 */
export async function loadInto(area, load, render, { isEmpty, empty } = {}) {
  // Only the latest load of an area fills it: an older answer arriving late
  // (filters changed meanwhile) is dropped.
  const turn = (loadTurns.get(area) || 0) + 1;
  loadTurns.set(area, turn);
  area.setAttribute("aria-busy", "true");
  area.dataset.state = "loading";
  clear(area).appendChild(h("p", { class: "state state-loading" }, "Loading…"));
  let result;
  try {
    result = await load();
  } catch (error) {
    if (loadTurns.get(area) !== turn) {
      return null;
    }
    area.dataset.state = "error";
    area.removeAttribute("aria-busy");
    clear(area).appendChild(problemBlock(error, "Could not load this part: "));
    return null;
  }
  if (loadTurns.get(area) !== turn) {
    return null;
  }
  area.removeAttribute("aria-busy");
  if (isEmpty && isEmpty(result)) {
    area.dataset.state = "empty";
    clear(area).appendChild(h("p", { class: "state state-empty" }, empty || "Nothing yet."));
    return result;
  }
  area.dataset.state = "ready";
  clear(area);
  append(area, [render(result)]);
  return result;
}

/** A block describing an API error: its title, detail and each offending place. */
export function problemBlock(error, prefix = "") {
  const problem = (error && error.problem) || { detail: String(error && error.message) };
  const block = h(
    "div",
    { class: "state state-error problem", "data-status": error && error.status },
    h("p", {}, prefix, problemSentence(error)),
  );
  const places = problem.errors || [];
  if (places.length) {
    block.appendChild(
      h(
        "ul",
        {},
        places.map((place) => {
          const where = place.parameter || place.pointer;
          return h("li", {}, where ? [h("code", {}, where), " "] : null, place.detail || "");
        }),
      ),
    );
  }
  return block;
}

/** "Forbidden (403): The plan's author cannot approve it…" */
export function problemSentence(error) {
  const problem = (error && error.problem) || {};
  const status = error && error.status ? ` (${error.status})` : "";
  const title = problem.title || "Error";
  const detail = problem.detail || (error && error.message) || "";
  return `${title}${status}: ${detail}`;
}

// -- messages ------------------------------------------------------------

/**
 * Say something in the page's live region; errors are alerts.
 *
 * A message replaces the previous one of the same kind, so the region does
 * not grow without end.
 */
export function say(text, kind = "info") {
  const region = document.getElementById("messages");
  const message = h(
    "p",
    { class: `message message-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", {}, text),
    h(
      "button",
      {
        type: "button",
        class: "dismiss",
        "aria-label": "Dismiss message",
        onclick: () => message.remove(),
      },
      "×",
    ),
  );
  clear(region).appendChild(message);
  return message;
}

export function sayProblem(error, prefix = "") {
  return say(prefix + problemSentence(error), "error");
}

// -- dialogs -------------------------------------------------------------

let dialogCount = 0;

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), ' +
  'select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

/**
 * Open a modal dialog titled `title` holding `content` (elements).
 *
 * Focus moves into it and stays there (Tab and Shift+Tab wrap around),
 * Escape closes it, and on close focus returns to what had it before.
 * Returns `{dialog, body, alert, close}`; `alert` is the dialog's own
 * message area (announced even though the page behind is inert).
 */
export function openDialog(title, content, { wide = false, onClose } = {}) {
  dialogCount += 1;
  const titleId = `dialog-title-${dialogCount}`;
  const opener = document.activeElement;
  const alert = h("div", { class: "dialog-alert", role: "alert" });
  const body = h("div", { class: "dialog-body" });
  const closeButton = h(
    "button",
    { type: "button", class: "dialog-close secondary", "aria-label": `Close: ${title}` },
    "Close",
  );
  const dialog = h(
    "dialog",
    { class: wide ? "dialog dialog-wide" : "dialog", "aria-labelledby": titleId },
    h("div", { class: "dialog-head" }, h("h2", { id: titleId }, title), closeButton),
    alert,
    body,
  );
  append(body, [content]);
  document.body.appendChild(dialog);

  const close = () => {
    if (dialog.open) {
      dialog.close();
    }
  };
  closeButton.addEventListener("click", close);
  dialog.addEventListener("cancel", (event) => {
    event.preventDefault();
    close();
  });
  dialog.addEventListener("keydown", (event) => {
    if (event.key !== "Tab") {
      return;
    }
    const items = Array.from(dialog.querySelectorAll(FOCUSABLE)).filter(
      (item) => !item.closest("[hidden]") && item.getClientRects().length > 0,
    );
    if (!items.length) {
      event.preventDefault();
      return;
    }
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && (document.activeElement === first || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && (document.activeElement === last || !dialog.contains(document.activeElement))) {
      event.preventDefault();
      first.focus();
    }
  });
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (onClose) {
      onClose();
    }
    if (opener && opener.isConnected && typeof opener.focus === "function") {
      opener.focus();
    }
  });

  dialog.showModal();
  const firstField = body.querySelector(
    "input:not([type=hidden]):not([disabled]), select, textarea, button:not([disabled])",
  );
  (firstField || closeButton).focus();
  return { dialog, body, alert, close };
}

/** Show `error` in a dialog's alert area, and mark the fields it points at. */
export function showFormProblem(form, alertArea, error) {
  clearFormProblems(form, alertArea);
  alertArea.appendChild(problemBlock(error));
  // The button pressed may be far below: bring the refusal into view.
  alertArea.scrollIntoView({ block: "nearest" });
  const places = (error.problem && error.problem.errors) || [];
  places.forEach((place, index) => {
    if (place.pointer === undefined) {
      return;
    }
    let field = findPointerField(form, place.pointer);
    // A field holding a whole document (data-pointer-root) takes the
    // problems of any place in it, each note naming its pointer.
    const root = field ? null : form.querySelector("[data-pointer-root]");
    field = field || root;
    if (!field) {
      return;
    }
    const noteId = `${form.id || "form"}-problem-${index}`;
    field.setAttribute("aria-invalid", "true");
    const note = h(
      "span",
      { class: "field-problem", id: noteId },
      root && place.pointer ? [h("code", {}, place.pointer), " "] : null,
      place.detail || "",
    );
    // After the field's earlier notes, so that they read in order.
    let after = field;
    while (after.nextElementSibling && after.nextElementSibling.classList.contains("field-problem")) {
      after = after.nextElementSibling;
    }
    after.insertAdjacentElement("afterend", note);
    const described = field.getAttribute("aria-describedby");
    field.setAttribute("aria-describedby", described ? `${described} ${noteId}` : noteId);
  });
}

function findPointerField(form, pointer) {
  for (const field of form.querySelectorAll("[data-pointer]")) {
    if (field.dataset.pointer === pointer) {
      return field;
    }
  }
  return null;
}

export function clearFormProblems(form, alertArea) {
  clear(alertArea);
  for (const note of form.querySelectorAll(".field-problem")) {
    note.remove();
  }
  for (const field of form.querySelectorAll("[aria-invalid]")) {
    field.removeAttribute("aria-invalid");
    const described = (field.getAttribute("aria-describedby") || "")
      .split(" ")
      .filter((id) => id && !id.includes("-problem-"))
      .join(" ");
    if (described) {
      field.setAttribute("aria-describedby", described);
    } else {
      field.removeAttribute("aria-describedby");
    }
  }
}

// -- form parts ----------------------------------------------------------

let fieldCount = 0;

/** A labelled input (or select/textarea given as `control`) in a `<p class="field">`. */
export function field(label, control, help) {
  fieldCount += 1;
  if (!control.id) {
    control.id = `field-${fieldCount}`;
  }
  const parts = [h("label", { for: control.id }, label), control];
  if (help) {
    const helpId = `${control.id}-help`;
    control.setAttribute("aria-describedby", helpId);
    parts.push(h("span", { class: "help", id: helpId }, help));
  }
  return h("p", { class: "field" }, parts);
}

export function checkbox(label, attributes = {}) {
  fieldCount += 1;
  const id = attributes.id || `check-${fieldCount}`;
  return h(
    "p",
    { class: "check" },
    h("input", { type: "checkbox", id, ...attributes }),
    h("label", { for: id }, label),
  );
}

/** A table with a caption, header cells and rows of cells (values or elements). */
export function table(caption, headers, rows, attributes = {}) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      attributes,
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h(
            "tr",
            row.attributes || {},
            (row.cells || row).map((cell, index) =>
              index === 0 && row.rowHeader !== false ? h("th", { scope: "row" }, cell) : h("td", {}, cell),
            ),
          ),
        ),
      ),
    ),
  );
}

/** A `<dl>` of label/value pairs. */
export function facts(pairs, attributes = {}) {
  return h(
    "dl",
    { class: "facts", ...attributes },
    pairs.map(([label, value, key]) =>
      h("div", key ? { "data-fact": key } : {}, h("dt", {}, label), h("dd", {}, value)),
    ),
  );
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || text}` }, text);
}
