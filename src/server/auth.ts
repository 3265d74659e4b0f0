/**
 * The login step, apart from the session loop: one {@link Gatekeeper} per server checks a
 * password for an address under the lockout rules and keeps the login counters, so a session
 * only asks "may this connection in?" and handles messages afterwards.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { ProtocolError } from "../protocol/mod.ts";
import { type AuthLockout, lockoutKey } from "./limits.ts";
import type { PasswordVerifier } from "./password.ts";
import type { SharedLockout } from "../room/cluster.ts";
import type { ServerStats } from "./stats.ts";

/** The outcome of a login attempt that was checked. */
export type Verdict = "ok" | "wrong";

/** Password checks under the per-address lockout. */
export class Gatekeeper {
  #verifier: PasswordVerifier;
  #lockout: AuthLockout;
  #shared: SharedLockout | undefined;
  #stats: ServerStats;
  #logger: Logger;
  #now: () => number;

  /** A gatekeeper for one server's password, lockout table and counters. */
  constructor(options: {
    verifier: PasswordVerifier;
    lockout: AuthLockout;
    /** The cluster's lockout table, consulted and fed besides this server's own. */
    shared?: SharedLockout;
    stats: ServerStats;
    logger: Logger;
    now: () => number;
  }) {
    this.#verifier = options.verifier;
    this.#lockout = options.lockout;
    this.#shared = options.shared;
    this.#stats = options.stats;
    this.#logger = options.logger;
    this.#now = options.now;
  }

  /**
   * Checks `password` for a connection from `ip`. A locked-out address gets no verdict: not
   * before the check, and not after it either (guesses sent together all pass the first look;
   * those whose verdict comes once the lockout began are refused too). A wrong password counts
   * towards the lockout.
   *
   * @param current whether the connection still waits for the verdict when it is ready
   * @returns the verdict, or `null` if the connection stopped waiting
   * @throws {ProtocolError} `locked_out`
   */
  async check(ip: string, password: string, current: () => boolean): Promise<Verdict | null> {
    this.#refuseLocked(ip);
    const shared = this.#shared;
    const [ok, lockedElsewhere] = await Promise.all([
      this.#verifier.verify(password),
      shared ? shared.isLocked(lockoutKey(ip)) : false,
    ]);
    if (!current()) return null;
    this.#refuseLocked(ip);
    if (lockedElsewhere) throw lockedOut();
    if (ok) {
      this.#stats.authenticated++;
      return "ok";
    }
    this.#stats.authFailures++;
    // Not locked just above, at the same time: a lockout here is a new one.
    let locked = this.#lockout.fail(ip, this.#now());
    if (shared) locked = (await shared.fail(lockoutKey(ip))) || locked;
    if (locked) this.#stats.lockouts++;
    this.#logger.warn("Failed login from {ip}{lock}", { ip, lock: locked ? "; locked out" : "" });
    return "wrong";
  }

  /** The password check in use; replacing it applies to the checks that start from then on. */
  get verifier(): PasswordVerifier {
    return this.#verifier;
  }

  set verifier(verifier: PasswordVerifier) {
    this.#verifier = verifier;
  }

  #refuseLocked(ip: string): void {
    if (this.#lockout.isLocked(ip, this.#now())) throw lockedOut();
  }
}

function lockedOut(): ProtocolError {
  return new ProtocolError("locked_out", "Cannot log in: too many failed attempts, try later");
}
