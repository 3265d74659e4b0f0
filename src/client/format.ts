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

/**
 * Formats when a message was sent: `HH:MM:SS` on the day of `now`, else `YYYY-MM-DD HH:MM:SS`
 * (a replayed message may be days old, and a bare time would pass it off as today's).
 */
export function formatStamp(date: Date, now: Date): string {
  const day = `${date.getFullYear()}-${pad2(date.getMonth() + 1)}-${pad2(date.getDate())}`;
  const today = `${now.getFullYear()}-${pad2(now.getMonth() + 1)}-${pad2(now.getDate())}`;
  return day === today ? formatTime(date) : `${day} ${formatTime(date)}`;
}

/** The time of a message: its `ts` (version 2) if valid, else `fallback` (its arrival). */
export function messageTime(frame: JsonObject, fallback: Date): Date {
  if (typeof frame.ts !== "string") return fallback;
  const date = new Date(frame.ts);
  return Number.isNaN(date.getTime()) ? fallback : date;
}

function text(value: unknown, fallback: string): string {
  if (typeof value === "string") return value;
  if (value === undefined || value === null) return fallback;
  return JSON.stringify(value);
}

/** Content that starts with this is an action (`/me waves` shows as `* alice waves`). */
export const ACTION_PREFIX = "/me ";

/** Options of {@link formatIncoming}. */
export interface IncomingStyle {
  /** Whether to show the sender's address (default true). */
  ip?: boolean;
}

/**
 * Formats a received `message` frame as `[HH:MM:SS] name (ip): text` (or `[HH:MM:SS] name:
 * text` without the address), stamped with the time the server gave it (`ts`), or else `now`,
 * its arrival. An action (`/me waves`) shows as `[HH:MM:SS] * name waves`. All parts are
 * sanitised; missing fields show as `anon` / `?`.
 */
export function formatIncoming(frame: JsonObject, now: Date, style: IncomingStyle = {}): string {
  const sender = sanitize(text(frame.sender, "anon"));
  const ip = style.ip ?? true ? ` (${sanitize(text(frame.sender_ip, "?"))})` : "";
  return formatLine(sender + ip, text(frame.content, ""), messageTime(frame, now), now);
}

/** Formats a line this client sent, as others see it but without the address. */
export function formatOwn(content: string, name: string, now: Date): string {
  return formatLine(sanitize(name), content, now, now);
}

function formatLine(who: string, content: string, at: Date, now: Date): string {
  const stamp = `[${formatStamp(at, now)}]`;
  if (content.startsWith(ACTION_PREFIX)) {
    return `${stamp} * ${who} ${sanitize(content.slice(ACTION_PREFIX.length), true)}`;
  }
  return `${stamp} ${who}: ${sanitize(content, true)}`;
}

/**
 * Formats a member as `name (ip)`, or `name (ip, you)` for this client; without the address
 * (`ip` false) `name` or `name (you)`. Sanitised.
 */
export function formatMember(
  member: { name: string; ip: string },
  you = false,
  ip = true,
): string {
  const notes = [...(ip ? [sanitize(member.ip)] : []), ...(you ? ["you"] : [])];
  return `${sanitize(member.name)}${notes.length > 0 ? ` (${notes.join(", ")})` : ""}`;
}

const LEFT_REASONS: Record<string, string> = {
  quit: "",
  dropped: " (dropped)",
  shutdown: " (server shutting down)",
  node_lost: " (server node lost)",
};

/** Formats a presence change: `* alice joined`, `* bob left (dropped)`. */
export function formatPresence(name: string, change: "joined" | "left", reason?: unknown): string {
  if (change === "joined") return `* ${sanitize(name)} joined`;
  const why = typeof reason !== "string"
    ? ""
    : Object.hasOwn(LEFT_REASONS, reason)
    ? LEFT_REASONS[reason]
    : ` (${sanitize(reason)})`;
  return `* ${sanitize(name)} left${why}`;
}

/** `1 message`, `2 messages`, ... */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** Explains a received `error` frame in plain words, followed by the server's own sentence. */
export function formatError(frame: JsonObject): string {
  const code = text(frame.code, "");
  const plain = isErrorCode(code) ? ERRORS[code].plain : "The server reported an error";
  const detail = typeof frame.error === "string" && frame.error !== "" ? frame.error : code;
  // The server's own words only when they add something ("Server is shutting down" does not).
  const words = (line: string) => line.toLowerCase().replace(/[^a-z0-9]+/g, " ").trim();
  if (!detail || words(plain).includes(words(detail).replace(/^the /, ""))) return plain;
  return `${plain} (${sanitize(detail)})`;
}
