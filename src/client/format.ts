/**
 * How the chat client shows what it receives: chat lines, error frames in plain words, and the
 * escaping that keeps other users' text from driving the terminal.
 *
 * @module
 */

import { ERRORS, isErrorCode, type JsonObject } from "../protocol/mod.ts";

// C0 and C1 controls (ESC, CR, BEL, ...), DEL, and the Unicode bidi and line/paragraph separators
// that could hide, reorder or fake text on a terminal. Tab and newline are handled separately.
const UNSAFE =
  // deno-lint-ignore no-control-regex
  /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** Prefix of continuation lines of a multi-line message, so they cannot pass for a new message. */
export const CONTINUATION = "    ";

/**
 * Makes untrusted text safe to print: control and bidi characters become visible `\uXXXX`
 * escapes. With `multiline`, newlines are kept and continuation lines indented; otherwise they are
 * escaped too.
 */
export function sanitize(text: string, multiline = false): string {
  const escape = (char: string) => `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`;
  if (!multiline) return text.replace(UNSAFE, escape).replaceAll("\n", "\\n");
  return text.replace(UNSAFE, escape).replaceAll("\n", `\n${CONTINUATION}`);
}

function pad2(value: number): string {
  return String(value).padStart(2, "0");
}

/** Formats a local time as `HH:MM:SS`. */
export function formatTime(date: Date): string {
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
}

function text(value: unknown, fallback: string): string {
  if (typeof value === "string") return value;
  if (value === undefined || value === null) return fallback;
  return JSON.stringify(value);
}

/**
 * Formats a received `message` frame as `[HH:MM:SS] name (ip): text`, stamped with the local
 * time `date`. All parts are sanitised; missing fields show as `anon` / `?`.
 */
export function formatIncoming(frame: JsonObject, date: Date): string {
  const sender = sanitize(text(frame.sender, "anon"));
  const ip = sanitize(text(frame.sender_ip, "?"));
  const content = sanitize(text(frame.content, ""), true);
  return `[${formatTime(date)}] ${sender} (${ip}): ${content}`;
}

/** Explains a received `error` frame in plain words, followed by the server's own sentence. */
export function formatError(frame: JsonObject): string {
  const code = text(frame.code, "");
  const plain = isErrorCode(code) ? ERRORS[code].plain : "The server reported an error";
  const detail = typeof frame.error === "string" && frame.error !== "" ? frame.error : code;
  return detail ? `${plain} (${sanitize(detail)})` : plain;
}
