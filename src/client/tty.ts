/**
 * Terminal side of the chat client: the hidden password prompt (raw mode, no echo, terminal mode
 * always restored) and the interactive line UI (a prompt line, incoming messages printed above it
 * without disturbing what is being typed).
 *
 * @module
 */

import { ClientError, EXIT_INTERRUPTED, EXIT_USAGE } from "./exit.ts";
import {
  PromptCancelled,
  promptHidden as promptSecret,
  type PromptIo,
  STOP_SIGNALS,
} from "../common/prompt.ts";
import { DEFAULT_PAGE, MAX_PAGE } from "./v2.ts";
import { LineEditor } from "./editor.ts";
import { ACTION_PREFIX } from "./format.ts";

/** The terminal operations {@link promptHidden} needs; injectable for tests. */
export type HiddenPromptIo = PromptIo;

/**
 * The shared hidden prompt of `src/common/prompt.ts`, with its cancellations turned into exits.
 *
 * @throws {ClientError} `EXIT_INTERRUPTED` on Ctrl-C, `EXIT_USAGE` on Ctrl-D or end of input
 * before anything was typed.
 */
export async function promptHidden(prompt: string, io?: HiddenPromptIo): Promise<string> {
  try {
    return await promptSecret(prompt, io);
  } catch (error) {
    if (!(error instanceof PromptCancelled)) throw error;
    throw new ClientError(error.interrupted ? EXIT_INTERRUPTED : EXIT_USAGE, error.message);
  }
}

/** What a line typed in the interactive UI asks for. */
export type InputAction =
  | { kind: "send"; content: string }
  | { kind: "quit" }
  | { kind: "help" }
  | { kind: "who" }
  | { kind: "history"; limit: number }
  | { kind: "none" }
  | { kind: "invalid"; message: string }
  | { kind: "unknown"; command: string };

/** Help text for the interactive UI. */
export const INTERACTIVE_HELP = [
  "Type a message and press Enter to send it to everyone else.",
  "/who lists who is here (name and address).",
  `/history [N] shows N (default ${DEFAULT_PAGE}, at most ${MAX_PAGE}) messages before the ` +
  "oldest one shown.",
  "/me ACTION sends an action: /me waves shows as * NAME waves.",
  "Ctrl-C clears the line; Ctrl-C or Ctrl-D on an empty line, or /quit, leaves.",
  "/help shows this; start a message with // to send a leading /.",
].join("\n");

/** Interprets one typed line: a command (`/quit`, `/who`, ...), a message, or nothing. */
export function parseInput(line: string): InputAction {
  if (line.trim() === "") return { kind: "none" };
  if (line.startsWith("//")) return { kind: "send", content: line.slice(1) };
  if (!line.startsWith("/")) return { kind: "send", content: line };
  const [command, ...args] = line.trim().split(/\s+/);
  if (command === "/quit" || command === "/exit") return { kind: "quit" };
  if (command === "/help") return { kind: "help" };
  if (command === "/who") return { kind: "who" };
  if (command === "/history") return parseHistory(args);
  if (command === "/me") {
    const action = line.trim().slice(3).trim();
    if (action === "") return { kind: "invalid", message: "Usage: /me ACTION (e.g. /me waves)" };
    return { kind: "send", content: `${ACTION_PREFIX}${action}` };
  }
  return { kind: "unknown", command };
}

function parseHistory(args: string[]): InputAction {
  if (args.length === 0) return { kind: "history", limit: DEFAULT_PAGE };
  const limit = Number(args[0]);
  if (args.length > 1 || !/^\d+$/.test(args[0]) || limit < 1 || limit > MAX_PAGE) {
    return { kind: "invalid", message: `Usage: /history [N], N from 1 to ${MAX_PAGE}` };
  }
  return { kind: "history", limit };
}

/** The interactive terminal UI: a prompt line with output scrolling above it. */
export class TerminalUi {
  #editor?: LineEditor;
  #encoder = new TextEncoder();
  #leave?: () => void;
  #signal?: Deno.Signal;

  /** The signal that ended {@link run}, if one did. */
  get endedBy(): Deno.Signal | undefined {
    return this.#signal;
  }

  /** Prints a line (or several) above the prompt, keeping what is being typed intact. */
  print(text: string): void {
    if (this.#editor) this.#editor.print(text);
    else this.#write(`${text}\n`);
  }

  /**
   * Shows `prompt` and hands every typed line to `onLine` until the user leaves (`/quit`,
   * Ctrl-D or Ctrl-C on an empty line, SIGINT/SIGTERM/SIGHUP: see {@link endedBy}) or `stop`
   * resolves. The terminal is in raw mode meanwhile (with bracketed paste on) and restored on
   * return.
   */
  async run(prompt: string, onLine: (line: string) => void, stop: Promise<unknown>): Promise<void> {
    const size = () => {
      try {
        return Deno.consoleSize();
      } catch {
        return { columns: 80, rows: 24 };
      }
    };
    const editor = new LineEditor(prompt, {
      columns: () => size().columns,
      rows: () => size().rows,
    }, (text) => this.#write(text));
    const left = Promise.withResolvers<void>();
    let leaving = false;
    const leave = () => {
      if (leaving) return;
      leaving = true;
      left.resolve();
    };
    this.#leave = leave;
    this.#signal = undefined;
    const redraw = () => this.#write(editor.resize());
    const onSignal = STOP_SIGNALS.map((signal) => {
      const listener = () => {
        this.#signal ??= signal;
        leave();
      };
      Deno.addSignalListener(signal, listener);
      return { signal, listener };
    });
    Deno.addSignalListener("SIGWINCH", redraw);
    // A lone Esc is the Esc key once no more of a sequence came in this time.
    let escTimer: ReturnType<typeof setTimeout> | undefined;
    stop.then(leave, leave);
    Deno.stdin.setRaw(true);
    this.#write(BRACKETED_PASTE_ON);
    this.#editor = editor;
    this.#write(editor.draw());
    const reading = (async () => {
      const buffer = new Uint8Array(65536);
      const decoder = new TextDecoder();
      while (!leaving) {
        const count = await Deno.stdin.read(buffer).catch(() => null);
        if (count === null || leaving) break;
        clearTimeout(escTimer);
        editor.feed(decoder.decode(buffer.subarray(0, count), { stream: true }), (event) => {
          if (event.kind === "quit") leave();
          else if (!leaving) onLine(event.text);
        });
        if (editor.escapePending) {
          escTimer = setTimeout(() => editor.expireEscape(), ESC_TIMEOUT_MS);
        }
      }
      leave();
    })();
    await left.promise;
    clearTimeout(escTimer);
    this.#editor = undefined;
    this.#leave = undefined;
    editor.close();
    this.#write(BRACKETED_PASTE_OFF);
    try {
      Deno.stdin.setRaw(false);
    } catch {
      // The terminal is gone.
    }
    for (const { signal, listener } of onSignal) Deno.removeSignalListener(signal, listener);
    Deno.removeSignalListener("SIGWINCH", redraw);
    // A read may still be waiting for a key; the process ends without it.
    void reading;
  }

  /** Ends {@link run} (as `/quit` does). */
  close(): void {
    this.#leave?.();
  }

  #write(text: string): void {
    const bytes = this.#encoder.encode(text);
    let offset = 0;
    while (offset < bytes.length) offset += Deno.stdout.writeSync(bytes.subarray(offset));
  }
}

/** How long a lone Esc waits for the rest of a sequence (as vim's `ttimeoutlen`), milliseconds. */
const ESC_TIMEOUT_MS = 100;
const BRACKETED_PASTE_ON = "\x1b[?2004h";
const BRACKETED_PASTE_OFF = "\x1b[?2004l";
