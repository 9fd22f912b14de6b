// The evidence export: every entry of the log, oldest first, one JSON object
// a line, then the closing line `{"export": {"entry_count": N,
// "last_entry_hash": H, "exported_at": T}}` that tells a whole export from
// one cut short: the same lines as `cavra evidence export` writes.
//
// Entries are copied from the API's answers as text, never parsed and
// written again: JSON.stringify would turn 2.0 into 2, and the entry's hash
// covers the text an auditor re-hashes. The API writes each page with
// Python's `json.dumps(ensure_ascii=False)`; the export writes each entry
// with the same escapes and `separators=(",", ":")`, so dropping the white
// space between tokens is all it takes.

import { send } from "./api.js";

/** The text of each element of the top-level `items` array, without white space between tokens. */
export function rawItems(text) {
  let position = 0;
  const length = text.length;

  function skipSpace() {
    while (position < length && " \t\r\n".includes(text[position])) {
      position += 1;
    }
  }

  function readString() {
    const start = position;
    position += 1;
    while (position < length) {
      const character = text[position];
      if (character === "\\") {
        position += 2;
      } else if (character === '"') {
        position += 1;
        return text.slice(start, position);
      } else {
        position += 1;
      }
    }
    throw new Error("unterminated string in the evidence page");
  }

  // One value, copied without the white space between its tokens.
  function readValue() {
    skipSpace();
    const character = text[position];
    if (character === '"') {
      return readString();
    }
    if (character === "{" || character === "[") {
      const closing = character === "{" ? "}" : "]";
      const parts = [character];
      position += 1;
      skipSpace();
      if (text[position] === closing) {
        position += 1;
        return character + closing;
      }
      for (;;) {
        if (character === "{") {
          skipSpace();
          parts.push(readString());
          skipSpace();
          position += 1; // the colon
          parts.push(":");
        }
        parts.push(readValue());
        skipSpace();
        const separator = text[position];
        position += 1;
        if (separator === closing) {
          parts.push(closing);
          return parts.join("");
        }
        parts.push(",");
      }
    }
    const start = position;
    while (position < length && !",}] \t\r\n".includes(text[position])) {
      position += 1;
    }
    return text.slice(start, position);
  }

  skipSpace();
  if (text[position] !== "{") {
    throw new Error("an evidence page is a JSON object");
  }
  position += 1;
  for (;;) {
    skipSpace();
    if (text[position] === "}") {
      break;
    }
    const key = JSON.parse(readString());
    skipSpace();
    position += 1;
    skipSpace();
    if (key !== "items") {
      readValue();
    } else {
      if (text[position] !== "[") {
        throw new Error("items is not an array");
      }
      const items = [];
      position += 1;
      skipSpace();
      if (text[position] === "]") {
        return items;
      }
      for (;;) {
        items.push(readValue());
        skipSpace();
        const separator = text[position];
        position += 1;
        if (separator === "]") {
          return items;
        }
      }
    }
    skipSpace();
    if (text[position] === ",") {
      position += 1;
    }
  }
  throw new Error("the evidence page has no items");
}

/** A time as cavra writes it: UTC, with six fractional digits when there is a fraction. */
export function cavraTime(moment) {
  const text = moment.toISOString();
  const fraction = text.slice(20, 23);
  return fraction === "000" ? `${text.slice(0, 19)}Z` : `${text.slice(0, 19)}.${fraction}000Z`;
}

/**
 * Page through `GET .../evidence` and return the export's text and its
 * entry count. `progress(count)` is called after every page.
 */
export async function exportEvidence(progress = () => {}) {
  const lines = [];
  let cursor = null;
  let lastHash = null;
  do {
    const query = { limit: 500 };
    if (cursor) {
      query.cursor = cursor;
    }
    const answer = await send("GET", "/evidence", { query });
    for (const item of rawItems(answer.text)) {
      lines.push(item + "\n");
    }
    const items = answer.document.items;
    if (items.length) {
      lastHash = items[items.length - 1].entry_hash;
    }
    cursor = answer.document.next_cursor;
    progress(lines.length);
  } while (cursor);
  const closing = { export: { entry_count: lines.length, last_entry_hash: lastHash, exported_at: cavraTime(new Date()) } };
  return { text: lines.join("") + JSON.stringify(closing) + "\n", count: lines.length };
}
