// The Evidence Console: who is signed in, which section is shown, and the
// buttons that start actions. Everything shown comes from cavra's own API.

import { ACTIONS } from "./actions.js";
import * as api from "./api.js";
import { clear, h, problemSentence, say } from "./dom.js";
import { state } from "./state.js";
import { LOADERS, loadConnectors, wireViews } from "./views.js";

const $ = (id) => document.getElementById(id);
const VIEWS = Object.keys(LOADERS);
let currentView = null;

function viewFromHash() {
  const name = window.location.hash.replace(/^#/, "");
  return VIEWS.includes(name) ? name : "dashboard";
}

function showView(name) {
  currentView = name;
  for (const section of document.querySelectorAll("[data-view]")) {
    section.hidden = section.dataset.view !== name;
  }
  for (const link of document.querySelectorAll("[data-view-link]")) {
    if (link.dataset.viewLink === name) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
  document.title = `${document.querySelector(`[data-view="${name}"] h2`).textContent} · cavra Evidence Console`;
  return LOADERS[name]();
}

// -- signing in -------------------------------------------------------------

function closeDialogs() {
  for (const dialog of document.querySelectorAll("dialog[open]")) {
    dialog.close();
  }
}

function showSignIn(reason) {
  closeDialogs();
  state.session = null;
  $("app").hidden = true;
  $("session-bar").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-reason").textContent = reason;
  const input = $("token-input");
  input.value = "";
  input.focus();
}

/** Ask the API who we are; show the console, or the token prompt. */
async function loadSession(greeting) {
  let session;
  try {
    session = await api.get("/session");
  } catch (error) {
    if (error.status !== 401) {
      showSignIn(`The console could not ask the API who you are. ${problemSentence(error)}`);
    }
    return;
  }
  if (session.tokens_required && !session.authenticated) {
    showSignIn("This cavra needs an API token: enter yours to continue.");
    return;
  }
  state.session = session;
  showConsole();
  if (greeting && session.authenticated) {
    say(`Signed in as ${session.actor} (${session.role}).`, "success");
  }
}

function showConsole() {
  const session = state.session;
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("session-bar").hidden = false;

  const who = clear($("session-who"));
  if (session.authenticated) {
    who.append("Signed in as ", h("strong", { "data-actor": session.actor }, session.actor), ", role ", h("strong", { "data-role": session.role }, session.role));
  } else {
    who.append("No API token is configured: this cavra serves its own machine only, and records the name each form gives.");
  }
  $("sign-out").hidden = !session.authenticated;

  // Only the actions the role may take are offered at all.
  for (const element of document.querySelectorAll("[data-operation]")) {
    element.hidden = !session.allowed_operations.includes(element.dataset.operation);
  }
  const offered = document.querySelectorAll("#view-dashboard .action-bar [data-operation]:not([hidden])").length;
  const none = $("no-actions");
  none.hidden = offered > 0;
  none.textContent = offered
    ? ""
    : `Your role (${session.role || "none"}) reads only: every figure, plan, run and the evidence log, and the export for auditors.`;

  loadConnectors().catch(() => {});
  showView(viewFromHash());
}

function wireSignIn() {
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("token-input");
    const token = input.value.trim();
    input.value = "";
    if (!token) {
      $("sign-in-reason").textContent = "Enter your API token.";
      input.focus();
      return;
    }
    api.storeToken(token);
    await loadSession(true);
  });
  $("sign-out").addEventListener("click", () => {
    api.forgetToken();
    showSignIn("Signed out: the token was forgotten by this tab.");
  });
  api.handleUnauthorized((problem) => {
    showSignIn(`The API refused the token: ${problem.detail || "it is not valid"} Sign in again.`);
  });
}

function wireActions() {
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-action]");
    if (button && ACTIONS[button.dataset.action]) {
      ACTIONS[button.dataset.action]();
    }
    const refresh = event.target.closest("[data-refresh]");
    if (refresh && LOADERS[refresh.dataset.refresh]) {
      LOADERS[refresh.dataset.refresh]();
    }
  });
}

function start() {
  wireSignIn();
  wireActions();
  wireViews((name) => currentView === name && state.session !== null);
  window.addEventListener("hashchange", () => {
    if (state.session) {
      showView(viewFromHash());
      $("main").focus();
    }
  });
  loadSession(false);
}

start();
