/**
 * A hidden prompt for secrets on the terminal (raw mode, no echo, the terminal's mode always
 * restored), shared by the server's password prompt and the client's.
 *
 * @module
 */

/** The person left the password prompt (Ctrl-C, or Ctrl-D / end of input on an empty line). */
export class PromptCancelled extends Error {
  /** `true` for Ctrl-C. */
  readonly interrupted: boolean;
  constructor(message: string, interrupted: boolean) {
    super(message);
    this.name = "PromptCancelled";
    this.interrupted = interrupted;
  }
}

/** The terminal operations {@link promptHidden} needs; injectable for tests. */
export interface PromptIo {
  /** Reads raw bytes into `buffer`; resolves with the count, or `null` at end of input. */
  read(buffer: Uint8Array): Promise<number | null>;
  /** Writes prompt text. */
  write(text: string): void;
  /** Switches raw mode (no echo, no line editing, no signals) on or off. */
  setRaw(raw: boolean): void;
  /**
   * Milliseconds between redraws of the prompt, if it is to be redrawn (see
   * {@link PROMPT_REDRAW_MS}).
   */
  redrawMs?: number;
  /** Width of the terminal the prompt is on, in columns (a prompt as wide is not redrawn). */
  columns?(): number;
  /**
   * Calls `onSignal` on SIGINT, SIGTERM or SIGHUP while the prompt is up; returns a function
   * that stops watching. The prompt then restores the terminal and exits (`128 + the signal's
   * number`, as the shell expects), which the signal's default action would do without the
   * restoring.
   */
  watchSignals?(onSignal: (signal: Deno.Signal) => void): () => void;
  /** Ends the process with `code` (default `Deno.exit`). */
  exit?(code: number): void;
}

/** The signals that stop a prompt or the client's chat UI (which restore the terminal first). */
export const STOP_SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM", "SIGHUP"];

const SIGNAL_NUMBERS: Partial<Record<Deno.Signal, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

/** The exit code of a process stopped by `signal`, as a shell reports it: 128 + its number. */
export function signalExitCode(signal: Deno.Signal): number {
  return 128 + (SIGNAL_NUMBERS[signal] ?? 0);
}

/**
 * On a terminal the prompt is drawn again this often, for {@link PROMPT_REDRAW_FOR_MS}: on a
 * first run Deno may still be drawing (and then erasing) its npm download progress while the
 * program starts, which would erase the prompt and leave a terminal that looks hung. Nothing
 * typed is echoed, so drawing the prompt again never disturbs the input.
 */
export const PROMPT_REDRAW_MS = 200;
/** How long the prompt keeps being redrawn, milliseconds. */
export const PROMPT_REDRAW_FOR_MS = 10_000;

/**
 * The real terminal: reads `Deno.stdin`, writes the prompt to stderr (redrawn only while stderr
 * is a terminal: a file or pipe would just collect copies).
 */
export function terminalIo(): PromptIo {
  const encoder = new TextEncoder();
  return {
    read: (buffer) => Deno.stdin.read(buffer),
    write: (text) => void Deno.stderr.writeSync(encoder.encode(text)),
    setRaw: (raw) => Deno.stdin.setRaw(raw),
    redrawMs: Deno.stderr.isTerminal() ? PROMPT_REDRAW_MS : undefined,
    columns: () => {
      try {
        return Deno.consoleSize().columns;
      } catch {
        return Infinity;
      }
    },
    watchSignals(onSignal) {
      const listeners = STOP_SIGNALS.map((signal) => {
        const listener = () => onSignal(signal);
        Deno.addSignalListener(signal, listener);
        return { signal, listener };
      });
      return () => {
        for (const { signal, listener } of listeners) Deno.removeSignalListener(signal, listener);
      };
    },
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
 * @throws {PromptCancelled} on Ctrl-C, or on Ctrl-D or end of input before anything was typed
 */
export async function promptHidden(
  prompt: string,
  io: PromptIo = terminalIo(),
): Promise<string> {
  const bytes: number[] = [];
  const buffer = new Uint8Array(256);
  // 0: plain input, 1: after ESC, 2: inside a CSI/SS3 sequence.
  let escape = 0;
  let redraw: ReturnType<typeof setInterval> | undefined;
  const unwatch = io.watchSignals?.((signal) => {
    clearInterval(redraw);
    io.setRaw(false);
    io.write("\n");
    (io.exit ?? Deno.exit)(signalExitCode(signal));
  });
  io.setRaw(true);
  try {
    // From the start of the line, clearing what is there (e.g. a progress line).
    io.write(`\r\x1b[K${prompt}`);
    if (io.redrawMs !== undefined) {
      const until = Date.now() + PROMPT_REDRAW_FOR_MS;
      redraw = setInterval(() => {
        // A prompt as wide as the terminal wraps: redrawn, it would add a row each time.
        if (Date.now() > until) clearInterval(redraw);
        else if (prompt.length < (io.columns?.() ?? Infinity)) io.write(`\r\x1b[K${prompt}`);
      }, io.redrawMs);
    }
    while (true) {
      const count = await io.read(buffer);
      if (count === null) {
        if (bytes.length === 0) throw new PromptCancelled("No password entered", false);
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
          throw new PromptCancelled("Cancelled at the password prompt", true);
        } else if (byte === CTRL_D) {
          if (bytes.length === 0) throw new PromptCancelled("No password entered", false);
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
    clearInterval(redraw);
    unwatch?.();
    io.setRaw(false);
    io.write("\n");
  }
}
