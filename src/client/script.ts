/**
 * Scripted mode of the chat client (stdin is not a terminal): every non-blank stdin line is sent
 * as one message; the client ends once stdin has ended and its messages are written, or after
 * lingering a while longer to receive.
 *
 * With a version 2 server "written" is not enough: the client waits (through reconnects, up to
 * a timeout) until the server acked every line, and fails naming the lines it did not, so a
 * script's exit code says whether its messages were delivered.
 *
 * @module
 */

import readline from "node:readline";
import process from "node:process";
import type { JsonObject } from "../protocol/mod.ts";
import { type ChatLink, messageFrame } from "./link.ts";
import { ClientError, EXIT_UNCONFIRMED } from "./exit.ts";
import { plural, sanitize } from "./format.ts";

/** Default time to wait for the server's acks after stdin ended, milliseconds. */
export const ACK_TIMEOUT_MS = 30_000;
/** Lines quoted when some were not confirmed. */
const LINES_SHOWN = 5;
/** Characters quoted of each such line. */
const LINE_CHARS = 60;

/** Options of {@link runScripted}. */
export interface ScriptOptions {
  /** `sender` of every message. */
  name: string;
  /** How long to keep receiving after stdin ended (and the acks came), milliseconds. */
  lingerMs: number;
  /**
   * How long to wait for the acks after stdin ended, milliseconds (default
   * {@link ACK_TIMEOUT_MS}; `lingerMs` if that is longer).
   */
  ackTimeoutMs?: number;
  /** Where the lines come from (default `process.stdin`). */
  input?: NodeJS.ReadableStream;
  /** Reports a skipped line. */
  warn(text: string): void;
}

/**
 * Sends stdin lines over `link` until stdin ends, waits until they are written (acked, with a
 * version 2 server), lingers, and closes the link.
 *
 * @throws {ClientError} if the link gives up reconnecting (pin mismatch or password refused),
 * or `EXIT_UNCONFIRMED` if the server did not ack every line in time or refused some.
 */
export async function runScripted(link: ChatLink, options: ScriptOptions): Promise<void> {
  const lines = readline.createInterface({
    input: options.input ?? process.stdin,
    crlfDelay: Infinity,
    terminal: false,
  });
  let failure: ClientError | undefined;
  const failed = link.failed.then((error) => failure = error);
  const lineNumbers = new Map<JsonObject, number>();
  const reading = (async () => {
    let number = 0;
    for await (const line of lines) {
      number++;
      if (line.trim() === "") continue;
      let frame;
      try {
        frame = messageFrame(line, options.name);
      } catch (error) {
        options.warn(`Skipped line ${number}: ${(error as Error).message}`);
        continue;
      }
      lineNumbers.set(frame, number);
      // Waiting for each write keeps memory flat when stdin is large or the server away.
      if (!await link.send(frame).then(() => true, () => false)) return;
    }
  })();
  const ackTimeoutMs = Math.max(options.ackTimeoutMs ?? ACK_TIMEOUT_MS, options.lingerMs);
  let timedOut = false;
  try {
    await Promise.race([reading, failed]);
    if (!failure && link.acking) timedOut = await within(link.settled(), ackTimeoutMs, failed);
    else if (!failure) await Promise.race([link.flushed(), failed]);
    if (!failure && options.lingerMs > 0) await within(failed, options.lingerMs);
  } finally {
    lines.close();
    await link.close();
  }
  if (failure) throw failure;
  const problem = unconfirmedReport(link, lineNumbers, timedOut ? ackTimeoutMs : undefined);
  if (problem) throw new ClientError(EXIT_UNCONFIRMED, problem);
}

/** Waits for `promise` or `also`, at most `ms`; returns whether the time ran out. */
async function within(
  promise: Promise<unknown>,
  ms: number,
  also: Promise<unknown> = promise,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<boolean>((resolve) => timer = setTimeout(resolve, ms, true));
  try {
    return await Promise.race([promise.then(() => false), also.then(() => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Says which lines were refused or never acked; `undefined` when all are confirmed. */
function unconfirmedReport(
  link: ChatLink,
  lineNumbers: Map<JsonObject, number>,
  timeoutMs: number | undefined,
): string | undefined {
  const sent = lineNumbers.size;
  const quote = (frame: JsonObject) => {
    const text = String(frame.content);
    const short = text.length > LINE_CHARS ? `${text.slice(0, LINE_CHARS)}...` : text;
    return `  line ${lineNumbers.get(frame) ?? "?"}: ${JSON.stringify(sanitize(short))}`;
  };
  const parts: string[] = [];
  const refused = link.refused();
  if (refused.length > 0) {
    parts.push(`${plural(refused.length, "message")} of ${sent} refused by the server:`);
    for (const { frame, reason } of refused.slice(0, LINES_SHOWN)) {
      parts.push(`${quote(frame)} (${sanitize(reason)})`);
    }
  }
  const missing = link.unconfirmed();
  if (missing.length > 0) {
    const when = timeoutMs === undefined ? "" : ` within ${timeoutMs / 1000} s`;
    parts.push(
      `${plural(missing.length, "message")} of ${sent} not confirmed by the server${when}; ` +
        "they may not have been delivered:",
    );
    parts.push(...missing.slice(0, LINES_SHOWN).map(quote));
  }
  const hidden = Math.max(0, refused.length - LINES_SHOWN) +
    Math.max(0, missing.length - LINES_SHOWN);
  if (hidden > 0) parts.push(`  ... and ${hidden} more`);
  return parts.length > 0 ? parts.join("\n") : undefined;
}
