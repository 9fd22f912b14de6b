// The console's only way out: cavra's own API, on the origin that served it.
//
// The API token lives in sessionStorage (this tab only, gone when it closes):
// never in localStorage, a cookie or a URL. Every call sends it as a bearer
// token; a 401 forgets it and tells the page, which asks for a new one.

export const PREFIX =
  "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery";

const TOKEN_KEY = "cavra.console.token";

/** An answer that was not a success: the problem document the API sent. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
  }
}

let onUnauthorized = () => {};

/** Call `handler(problem)` whenever the API answers 401. */
export function handleUnauthorized(handler) {
  onUnauthorized = handler;
}

export function storedToken() {
  return window.sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  window.sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  window.sessionStorage.removeItem(TOKEN_KEY);
}

function url(path, query) {
  const target = new URL(PREFIX + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") {
      target.searchParams.set(name, String(value));
    }
  }
  return target.pathname + target.search;
}

function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  window.crypto.getRandomValues(bytes);
  return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Send one request and return `{status, text, document}`.
 *
 * Throws ApiError for any answer that is not 2xx, with the problem document
 * (or one made up from the status when the body was not one).
 */
export async function send(method, path, { query, body, text: raw } = {}) {
  const headers = { Accept: "application/json" };
  const token = storedToken();
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined || raw !== undefined) {
    headers["Content-Type"] = "application/json";
    // A key per request: a POST the network replays is answered, not made twice.
    headers["Idempotency-Key"] = newIdempotencyKey();
    // `raw` is a JSON document sent as it was written, not re-serialised.
    init.body = raw !== undefined ? raw : JSON.stringify(body);
  }

  let response;
  try {
    response = await window.fetch(url(path, query), init);
  } catch (error) {
    throw new ApiError(0, {
      title: "No answer",
      detail: "The API did not answer; check that `cavra api` is running and reachable.",
    });
  }
  const text = await response.text();
  let document = null;
  if (text) {
    try {
      document = JSON.parse(text);
    } catch (error) {
      document = null;
    }
  }
  if (!response.ok) {
    const problem =
      document && typeof document === "object"
        ? document
        : { title: `HTTP ${response.status}`, detail: response.statusText || "" };
    const failure = new ApiError(response.status, problem);
    if (response.status === 401) {
      forgetToken();
      onUnauthorized(problem);
    }
    throw failure;
  }
  return { status: response.status, text, document };
}

export async function get(path, query) {
  return (await send("GET", path, { query })).document;
}

export async function post(path, body) {
  return (await send("POST", path, { body })).document;
}

/** POST `text`, a JSON document, exactly as written. */
export async function postText(path, text) {
  return (await send("POST", path, { text })).document;
}
