/**
 * The shared server password: where it comes from, its SHA-256 digest and a constant-time check.
 * The password itself is never logged, echoed or stored beyond its digest.
 *
 * @module
 */
import { timingSafeEqual } from "node:crypto";

/** A missing or unusable password; the message says what to do. */
export class PasswordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PasswordError";
  }
}

const ENCODER = new TextEncoder();

/** SHA-256 of the UTF-8 bytes of `password` (Web Crypto). */
export async function digestPassword(password: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", ENCODER.encode(password)));
}

/** Holds only the digest of the server password and checks candidates in constant time. */
export class PasswordVerifier {
  #digest: Uint8Array;

  private constructor(digest: Uint8Array) {
    this.#digest = digest;
  }

  /** Builds a verifier from the plain password, which is not kept. */
  static async create(password: string): Promise<PasswordVerifier> {
    if (password.length === 0) throw new PasswordError("Cannot use an empty password");
    return new PasswordVerifier(await digestPassword(password));
  }

  /** Whether `candidate` is the password; compares SHA-256 digests with `timingSafeEqual`. */
  async verify(candidate: string): Promise<boolean> {
    return timingSafeEqual(await digestPassword(candidate), this.#digest);
  }
}

/** A terminal-like input for {@link promptHidden}; `Deno.stdin` fits. */
export interface PromptInput {
  isTerminal(): boolean;
  setRaw(mode: boolean): void;
  read(buffer: Uint8Array): Promise<number | null>;
}

/** Where the prompt text goes; `Deno.stderr` fits. */
export interface PromptOutput {
  writeSync(data: Uint8Array): number;
}

/**
 * Asks for a secret on a terminal without echoing it. Backspace edits; Enter ends; Ctrl-C and
 * Ctrl-D on an empty line abort with a {@link PasswordError}. The terminal mode is always restored.
 */
export async function promptHidden(
  message: string,
  io: { input?: PromptInput; output?: PromptOutput } = {},
): Promise<string> {
  const input = io.input ?? Deno.stdin;
  const output = io.output ?? Deno.stderr;
  if (!input.isTerminal()) {
    throw new PasswordError("Cannot prompt for a password: standard input is not a terminal");
  }
  output.writeSync(ENCODER.encode(message));
  const bytes: number[] = [];
  const chunk = new Uint8Array(64);
  input.setRaw(true);
  try {
    read: while (true) {
      const n = await input.read(chunk);
      if (n === null) break;
      for (const byte of chunk.subarray(0, n)) {
        if (byte === 0x0d || byte === 0x0a) break read;
        if (byte === 0x03) throw new PasswordError("Password entry cancelled");
        if (byte === 0x04) {
          if (bytes.length === 0) throw new PasswordError("Password entry cancelled");
          break read;
        }
        if (byte === 0x7f || byte === 0x08) {
          // Drop the last whole UTF-8 character.
          while (bytes.length > 0 && ((bytes.pop() as number) & 0xc0) === 0x80);
          continue;
        }
        if (byte === 0x15) { // Ctrl-U clears the line
          bytes.length = 0;
          continue;
        }
        if (byte < 0x20) continue;
        bytes.push(byte);
      }
    }
  } finally {
    input.setRaw(false);
    output.writeSync(ENCODER.encode("\n"));
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

/** Where {@link readPassword} may look. */
export interface PasswordSources {
  /** Value of `CHAT_SERVER_PASSWORD`, if set and readable. */
  env?: string;
  /** `--password-file` path. */
  file?: string;
  /** Asks interactively; defaults to a hidden prompt on the terminal. */
  prompt?: () => Promise<string>;
}

/**
 * Gets the server password: `CHAT_SERVER_PASSWORD`, else `--password-file`, else a hidden prompt.
 *
 * @throws {PasswordError} when none is available or the password is empty
 */
export async function readPassword(sources: PasswordSources): Promise<string> {
  let password: string;
  if (sources.env !== undefined) {
    password = sources.env;
  } else if (sources.file !== undefined) {
    try {
      password = (await Deno.readTextFile(sources.file)).replace(/\r?\n$/, "");
    } catch (error) {
      if (
        error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ) {
        throw new PasswordError(
          `Cannot read password file ${sources.file}: run with --allow-read=${sources.file}`,
        );
      }
      throw new PasswordError(
        `Cannot read password file ${sources.file}: ${(error as Error).message}`,
      );
    }
  } else {
    const prompt = sources.prompt ?? (() => promptHidden("Enter server password: "));
    try {
      password = await prompt();
    } catch (error) {
      if (error instanceof PasswordError && /not a terminal/.test(error.message)) {
        throw new PasswordError(
          "No password: set CHAT_SERVER_PASSWORD, pass --password-file FILE, or run in a terminal to be prompted",
        );
      }
      throw error;
    }
  }
  if (password.length === 0) throw new PasswordError("Cannot use an empty password");
  return password;
}
