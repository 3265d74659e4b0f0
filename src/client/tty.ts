/**
 * Terminal side of the chat client: the hidden password prompt (raw mode, no echo, terminal mode
 * always restored) and the interactive line UI (a prompt line, incoming messages printed above it
 * without disturbing what is being typed).
 *
 * @module
 */

import readline from "node:readline";
import process from "node:process";
import { ClientError, EXIT_INTERRUPTED, EXIT_USAGE } from "./exit.ts";
import { PromptCancelled, promptHidden as promptSecret, type PromptIo } from "../common/prompt.ts";
import { DEFAULT_PAGE, MAX_PAGE } from "./v2.ts";

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
  "/quit (or Ctrl-D, Ctrl-C) leaves; /help shows this; start a message with // to send a leading /.",
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
  #rl?: readline.Interface;
  #output: NodeJS.WriteStream = process.stdout;

  /** Prints a line (or several) above the prompt, keeping what is being typed intact. */
  print(text: string): void {
    const rl = this.#rl;
    if (!rl) {
      this.#output.write(`${text}\n`);
      return;
    }
    readline.clearLine(this.#output, 0);
    readline.cursorTo(this.#output, 0);
    this.#output.write(`${text}\n`);
    rl.prompt(true);
  }

  /**
   * Shows `prompt` and hands every typed line to `onLine` until the user leaves (`/quit`, Ctrl-D,
   * Ctrl-C, SIGTERM/SIGHUP) or `stop` resolves. The terminal mode is restored on return.
   */
  run(prompt: string, onLine: (line: string) => void, stop: Promise<unknown>): Promise<void> {
    const rl = readline.createInterface({
      input: process.stdin,
      output: this.#output,
      terminal: true,
      prompt,
      historySize: 100,
    });
    this.#rl = rl;
    const leave = () => rl.close();
    const signals: Deno.Signal[] = ["SIGTERM", "SIGHUP"];
    for (const signal of signals) Deno.addSignalListener(signal, leave);
    return new Promise<void>((resolve) => {
      rl.on("line", (line: string) => {
        onLine(line);
        if (this.#rl) rl.prompt();
      });
      rl.on("SIGINT", leave);
      rl.on("close", () => {
        this.#rl = undefined;
        for (const signal of signals) Deno.removeSignalListener(signal, leave);
        this.#output.write("\n");
        resolve();
      });
      stop.then(leave, leave);
      rl.prompt();
    });
  }

  /** Ends {@link run} (as `/quit` does). */
  close(): void {
    this.#rl?.close();
  }
}
