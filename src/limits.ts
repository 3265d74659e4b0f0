/**
 * Abuse limits that outlive a single frame: a per-client token bucket and a per-IP lockout after
 * repeated authentication failures. Both take the time as an argument so tests need no sleeps.
 *
 * @module
 */

/** A token bucket: `rate` tokens per second, at most `burst` saved up. */
export class TokenBucket {
  #rate: number;
  #burst: number;
  #tokens: number;
  #last: number;

  /** A `rate` of 0 disables the bucket (every take succeeds). */
  constructor(options: { rate: number; burst: number; now: number }) {
    this.#rate = options.rate;
    this.#burst = options.burst;
    this.#tokens = options.burst;
    this.#last = options.now;
  }

  /** Takes one token if there is one. */
  take(now: number): boolean {
    if (this.#rate === 0) return true;
    const elapsed = Math.max(0, now - this.#last) / 1000;
    this.#last = now;
    this.#tokens = Math.min(this.#burst, this.#tokens + elapsed * this.#rate);
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

interface FailureRecord {
  /** Times of recent failures, oldest first, within the window. */
  failures: number[];
  /** Locked until this time (0 = not locked). */
  lockedUntil: number;
}

/** Upper bound on tracked IPs, so a spray of addresses cannot grow memory without limit. */
const MAX_TRACKED_IPS = 100_000;

/**
 * Counts authentication failures per IP in a sliding window of `windowMs`; after
 * `maxFailures` of them the IP is locked out for `windowMs`.
 */
export class AuthLockout {
  #maxFailures: number;
  #windowMs: number;
  #records = new Map<string, FailureRecord>();

  constructor(options: { maxFailures: number; windowMs: number }) {
    this.#maxFailures = options.maxFailures;
    this.#windowMs = options.windowMs;
  }

  /** Number of IPs with recent failures or a lockout. */
  get tracked(): number {
    return this.#records.size;
  }

  /** Whether `ip` is locked out at `now`. */
  isLocked(ip: string, now: number): boolean {
    const record = this.#records.get(ip);
    return record !== undefined && record.lockedUntil > now;
  }

  /** Records a failure; returns whether the IP is now locked out. */
  fail(ip: string, now: number): boolean {
    if (this.#windowMs === 0) return false;
    let record = this.#records.get(ip);
    if (record === undefined) {
      if (this.#records.size >= MAX_TRACKED_IPS) this.sweep(now);
      if (this.#records.size >= MAX_TRACKED_IPS) {
        // Still full of live records: forget the oldest one.
        this.#records.delete(this.#records.keys().next().value!);
      }
      record = { failures: [], lockedUntil: 0 };
      this.#records.set(ip, record);
    }
    const since = now - this.#windowMs;
    while (record.failures.length > 0 && record.failures[0] <= since) record.failures.shift();
    record.failures.push(now);
    if (record.failures.length >= this.#maxFailures) {
      record.lockedUntil = now + this.#windowMs;
      record.failures = [];
      return true;
    }
    return false;
  }

  /** Forgets records with no recent failure and no running lockout. */
  sweep(now: number): void {
    const since = now - this.#windowMs;
    for (const [ip, record] of this.#records) {
      const last = record.failures.at(-1) ?? 0;
      if (record.lockedUntil <= now && last <= since) this.#records.delete(ip);
    }
  }
}
