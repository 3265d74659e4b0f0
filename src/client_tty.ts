/**
 * Terminal side of the chat client: the hidden password prompt (raw mode, no echo, terminal mode
 * always restored) and the interactive line UI (a prompt line, incoming messages printed above it
 * without disturbing what is being typed).
 *
 * @module
 */

import readline from "node:readline";
import process from "node:process";
import { ClientError, EXIT_INTERRUPTED, EXIT_USAGE } from "./client_exit.ts";

/** The terminal operations {@link promptHidden} needs; injectable for tests. */
export interface HiddenPromptIo {
  /** Reads raw bytes into `buffer`; resolves with the count, or `null` at end of input. */
  read(buffer: Uint8Array): Promise<number | null>;
  /** Writes prompt text. */
  write(text: string): void;
  /** Switches raw mode (no echo, no line editing, no signals) on or off. */
  setRaw(raw: boolean): void;
}

/** The real terminal: reads `Deno.stdin`, writes the prompt to stderr. */
export function denoTerminal(): HiddenPromptIo {
  const encoder = new TextEncoder();
  return {
    read: (buffer) => Deno.stdin.read(buffer),
    write: (text) => void Deno.stderr.writeSync(encoder.encode(text)),
    setRaw: (raw) => Deno.stdin.setRaw(raw),
  };
}

const CTRL_C = 0x03;
const CTRL_D = 0x04;
const BACKSPACE = 0x08;
const CTRL_U = 0x15;
const ESC = 0x1b;
const DEL = 0x7f;

/**
 * Asks for a secret without echoing it. Enter finishes; Backspace and Ctrl-U edit; escape
 * sequences (arrow keys, bracketed-paste markers) are ignored. Raw mode is switched off again
 * whatever happens.
 *
 * @throws {ClientError} `EXIT_INTERRUPTED` on Ctrl-C, `EXIT_USAGE` on Ctrl-D or end of input
 * before anything was typed.
 */
export async function promptHidden(
  prompt: string,
  io: HiddenPromptIo = denoTerminal(),
): Promise<string> {
  const bytes: number[] = [];
  const buffer = new Uint8Array(256);
  // 0: plain input, 1: after ESC, 2: inside a CSI/SS3 sequence.
  let escape = 0;
  io.setRaw(true);
  try {
    io.write(prompt);
    while (true) {
      const count = await io.read(buffer);
      if (count === null) {
        if (bytes.length === 0) throw new ClientError(EXIT_USAGE, "No password entered");
        break;
      }
      for (const byte of buffer.subarray(0, count)) {
        if (escape === 1) {
          escape = byte === 0x5b || byte === 0x4f ? 2 : 0; // "[" or "O"
        } else if (escape === 2) {
          if (byte >= 0x40 && byte <= 0x7e) escape = 0;
        } else if (byte === 0x0d || byte === 0x0a) {
          return new TextDecoder().decode(Uint8Array.from(bytes));
        } else if (byte === CTRL_C) {
          throw new ClientError(EXIT_INTERRUPTED, "Cancelled at the password prompt");
        } else if (byte === CTRL_D) {
          if (bytes.length === 0) throw new ClientError(EXIT_USAGE, "No password entered");
          return new TextDecoder().decode(Uint8Array.from(bytes));
        } else if (byte === DEL || byte === BACKSPACE) {
          // Drop one whole UTF-8 character: continuation bytes, then the lead byte.
          while (bytes.length > 0 && (bytes[bytes.length - 1] & 0xc0) === 0x80) bytes.pop();
          bytes.pop();
        } else if (byte === CTRL_U) {
          bytes.length = 0;
        } else if (byte === ESC) {
          escape = 1;
        } else if (byte >= 0x20) {
          bytes.push(byte);
        }
      }
    }
    return new TextDecoder().decode(Uint8Array.from(bytes));
  } finally {
    io.setRaw(false);
    io.write("\n");
  }
}

/** What a line typed in the interactive UI asks for. */
export type InputAction =
  | { kind: "send"; content: string }
  | { kind: "quit" }
  | { kind: "help" }
  | { kind: "none" }
  | { kind: "unknown"; command: string };

/** Help text for the interactive UI. */
export const INTERACTIVE_HELP = [
  "Type a message and press Enter to send it to everyone else.",
  "/quit (or Ctrl-D, Ctrl-C) leaves; /help shows this; start a message with // to send a leading /.",
].join("\n");

/** Interprets one typed line: a command (`/quit`, `/help`), a message, or nothing. */
export function parseInput(line: string): InputAction {
  if (line.trim() === "") return { kind: "none" };
  if (line.startsWith("//")) return { kind: "send", content: line.slice(1) };
  if (!line.startsWith("/")) return { kind: "send", content: line };
  const command = line.trim().split(/\s+/)[0];
  if (command === "/quit" || command === "/exit") return { kind: "quit" };
  if (command === "/help") return { kind: "help" };
  return { kind: "unknown", command };
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
