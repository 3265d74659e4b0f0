/**
 * Scripted mode of the chat client (stdin is not a terminal): every non-blank stdin line is sent
 * as one message; the client ends once stdin has ended and its messages are written, or after
 * lingering a while longer to receive.
 *
 * @module
 */

import readline from "node:readline";
import process from "node:process";
import { type ChatLink, messageFrame } from "./link.ts";
import type { ClientError } from "./exit.ts";

/** Options of {@link runScripted}. */
export interface ScriptOptions {
  /** `sender` of every message. */
  name: string;
  /** How long to keep receiving after stdin ended, milliseconds. */
  lingerMs: number;
  /** Where the lines come from (default `process.stdin`). */
  input?: NodeJS.ReadableStream;
  /** Reports a skipped line. */
  warn(text: string): void;
}

/**
 * Sends stdin lines over `link` until stdin ends, waits until they are written, lingers, and
 * closes the link.
 *
 * @throws {ClientError} if the link gives up reconnecting (pin mismatch or password refused).
 */
export async function runScripted(link: ChatLink, options: ScriptOptions): Promise<void> {
  const lines = readline.createInterface({
    input: options.input ?? process.stdin,
    crlfDelay: Infinity,
    terminal: false,
  });
  let failure: ClientError | undefined;
  const failed = link.failed.then((error) => failure = error);
  const reading = (async () => {
    for await (const line of lines) {
      if (line.trim() === "") continue;
      let frame;
      try {
        frame = messageFrame(line, options.name);
      } catch (error) {
        options.warn(`Skipped a line: ${(error as Error).message}`);
        continue;
      }
      // Waiting for each write keeps memory flat when stdin is large or the server away.
      if (!await link.send(frame).then(() => true, () => false)) return;
    }
  })();
  try {
    await Promise.race([reading, failed]);
    if (!failure) await Promise.race([link.flushed(), failed]);
    if (!failure && options.lingerMs > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise((resolve) => timer = setTimeout(resolve, options.lingerMs)),
        failed,
      ]);
      clearTimeout(timer);
    }
  } finally {
    lines.close();
    await link.close();
  }
  if (failure) throw failure;
}
