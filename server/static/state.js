// What the console knows about the caller, and how parts of the page ask
// each other to reload.

import { ApiError } from "./api.js";
import { field, h } from "./dom.js";

const ACTOR_KEY = "cavra.console.actor";

export const state = {
  /** The answer of GET .../session. */
  session: null,
  /** The configured connectors (GET .../connectors), once loaded. */
  connectors: [],
};

/** May the caller call `operationId`? */
export function allowed(operationId) {
  const session = state.session;
  return Boolean(session && session.allowed_operations.includes(operationId));
}

/** True when the API takes the actor from the token, not from the body. */
export function tokensRequired() {
  return Boolean(state.session && state.session.tokens_required);
}

export function storedActor() {
  return window.sessionStorage.getItem(ACTOR_KEY) || "";
}

export function storeActor(name) {
  if (name) {
    window.sessionStorage.setItem(ACTOR_KEY, name);
  } else {
    window.sessionStorage.removeItem(ACTOR_KEY);
  }
}

/**
 * The field asking for the actor's name, for a form whose body names its
 * actor under `pointer`; null when the API takes the name from the token.
 */
export function actorField(pointer) {
  if (tokensRequired()) {
    return null;
  }
  return field(
    "Your name, recorded as the actor",
    h("input", { name: "actor", required: true, maxlength: 200, autocomplete: "name", value: storedActor(), "data-pointer": pointer }),
    "No API token is configured, so cavra records the name you give.",
  );
}

/**
 * `body` with the actor's name from `form` under `name` when the API runs
 * without tokens (it needs a name then); unchanged otherwise, since the
 * token's name is what the API records.
 */
export function withActor(form, body, name) {
  if (tokensRequired()) {
    return body;
  }
  const input = form.elements.actor;
  const actor = input ? input.value.trim() : "";
  if (!actor) {
    throw new ApiError(0, {
      title: "Who is acting?",
      detail: "This cavra runs without API tokens, so it records the name you give: enter your name.",
      errors: [{ pointer: `/${name}`, detail: "is needed without API tokens: enter your name" }],
    });
  }
  storeActor(actor);
  return { ...body, [name]: actor };
}

const refreshers = new Map();

/** Register `load` as the way to reload the part called `name`. */
export function onRefresh(name, load) {
  refreshers.set(name, load);
}

/** Reload the parts named (those registered); errors show in the parts. */
export async function refresh(...names) {
  await Promise.all(names.filter((name) => refreshers.has(name)).map((name) => refreshers.get(name)()));
}
