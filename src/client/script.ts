/**
 * Scripted mode of the chat client (stdin is not a terminal): every non-blank stdin line is sent
 * as one message; the client ends once stdin has ended and its messages are written, or after
 * lingering a while longer to receive. Lines end with `\n` or `\r\n`; a `\r` anywhere else is
 * part of the message.
 *
 * With a version 2 server "written" is not enough: the client waits (through reconnects, up to
 * a timeout) until the server acked every line, and fails naming the lines it did not, so a
 * script's exit code says whether its messages were delivered. A line too large to send counts
 * as not delivered, whatever the server.
 *
 * @module
 */

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
/**
 * Characters kept of one input line: more is never sendable (a frame holds 64 KiB), and the
 * rest of such a line is only counted, so a huge input without line ends takes no memory.
 */
const MAX_LINE_CHARS = 1 << 20;

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

/** A line that could not be sent. */
interface Skipped {
  number: number;
  text: string;
  reason: string;
}

/**
 * The lines of `input` (ending with `\n` or `\r\n`, the last one maybe without), numbered from 1,
 * each cut to {@link MAX_LINE_CHARS} (`cut` says so).
 */
async function* readLines(
  input: NodeJS.ReadableStream,
): AsyncGenerator<{ number: number; text: string; cut: boolean }> {
  const decoder = new TextDecoder();
  let pending = "";
  let cut = false;
  let number = 0;
  const line = () => {
    const text = pending.endsWith("\r") && !cut ? pending.slice(0, -1) : pending;
    pending = "";
    const result = { number: ++number, text, cut };
    cut = false;
    return result;
  };
  for await (const chunk of input) {
    let text = typeof chunk === "string" ? chunk : decoder.decode(chunk as Uint8Array, {
      stream: true,
    });
    let end;
    while ((end = text.indexOf("\n")) >= 0) {
      append(text.slice(0, end));
      text = text.slice(end + 1);
      yield line();
    }
    append(text);
  }
  append(decoder.decode());
  if (pending !== "" || cut) yield line();

  function append(text: string): void {
    if (pending.length + text.length > MAX_LINE_CHARS) {
      pending += text.slice(0, MAX_LINE_CHARS - pending.length);
      cut = true;
    } else pending += text;
  }
}

/**
 * Sends stdin lines over `link` until stdin ends, waits until they are written (acked, with a
 * version 2 server), lingers, and closes the link.
 *
 * @throws {ClientError} if the link gives up reconnecting (pin mismatch or password refused),
 * or `EXIT_UNCONFIRMED` if the server did not ack every line in time or refused some.
 */
export async function runScripted(link: ChatLink, options: ScriptOptions): Promise<void> {
  let failure: ClientError | undefined;
  const failed = link.failed.then((error) => failure = error);
  const lineNumbers = new Map<JsonObject, number>();
  const skipped: Skipped[] = [];
  const input = options.input ?? process.stdin;
  const reading = (async () => {
    for await (const { number, text: line, cut } of readLines(input)) {
      if (line.trim() === "") continue;
      let frame;
      try {
        if (cut) {
          throw new RangeError(
            `Cannot send message: more than ${MAX_LINE_CHARS} characters exceeds the server's limit`,
          );
        }
        frame = messageFrame(line, options.name);
      } catch (error) {
        const reason = (error as Error).message;
        options.warn(`Skipped line ${number}: ${reason}`);
        skipped.push({ number, text: line, reason });
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
    if ("destroy" in input && typeof input.destroy === "function") input.destroy();
    await link.close();
  }
  if (failure) throw failure;
  const problem = unconfirmedReport(
    link,
    lineNumbers,
    skipped,
    timedOut ? ackTimeoutMs : undefined,
  );
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

/**
 * Says which lines were not sent (too large), refused or never acked; `undefined` when all are
 * confirmed.
 */
function unconfirmedReport(
  link: ChatLink,
  lineNumbers: Map<JsonObject, number>,
  skipped: Skipped[],
  timeoutMs: number | undefined,
): string | undefined {
  const sent = lineNumbers.size;
  const quoteLine = (number: number | undefined, text: string) => {
    const short = text.length > LINE_CHARS ? `${text.slice(0, LINE_CHARS)}...` : text;
    return `  line ${number ?? "?"}: ${JSON.stringify(sanitize(short))}`;
  };
  const quote = (frame: JsonObject) => quoteLine(lineNumbers.get(frame), String(frame.content));
  const parts: string[] = [];
  if (skipped.length > 0) {
    parts.push(`${plural(skipped.length, "line")} of ${sent + skipped.length} not sent:`);
    for (const { number, text, reason } of skipped.slice(0, LINES_SHOWN)) {
      parts.push(`${quoteLine(number, text)} (${sanitize(reason)})`);
    }
  }
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
  const hidden = Math.max(0, skipped.length - LINES_SHOWN) +
    Math.max(0, refused.length - LINES_SHOWN) +
    Math.max(0, missing.length - LINES_SHOWN);
  if (hidden > 0) parts.push(`  ... and ${hidden} more`);
  return parts.length > 0 ? parts.join("\n") : undefined;
}
