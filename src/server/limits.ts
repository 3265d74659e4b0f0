/**
 * Abuse limits that outlive a single frame: a per-client token bucket and a per-address lockout
 * after repeated authentication failures. Both take the time as an argument so tests need no sleeps.
 *
 * @module
 */
import { isIP } from "node:net";

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

  /**
   * Takes `count` more tokens for something already done (a large answer), going into debt if
   * there are not that many: the next {@link TokenBucket.take}s fail until it is paid back.
   */
  charge(count: number, now: number): void {
    if (this.#rate === 0 || count <= 0) return;
    const elapsed = Math.max(0, now - this.#last) / 1000;
    this.#last = now;
    this.#tokens = Math.min(this.#burst, this.#tokens + elapsed * this.#rate) - count;
  }
}

/** Default upper bound on tracked keys, so a spray of addresses cannot grow memory without limit. */
const MAX_TRACKED_IPS = 100_000;

/** An IPv6 address with these first six groups (`::ffff:0:0/96`) is an IPv4-mapped address. */
const MAPPED_PREFIX = [0, 0, 0, 0, 0, 0xffff];

/**
 * The key under which {@link AuthLockout} counts failures from `ip`.
 *
 * - IPv4: the address itself (`203.0.113.7`).
 * - IPv4-mapped IPv6 (`::ffff:203.0.113.7`, `::ffff:cb00:7107`): the plain IPv4 address, so both
 *   forms of one peer share a count.
 * - Other IPv6: the /64 prefix as four uncompressed lowercase groups (`2001:db8:1:2::/64`,
 *   `fe80:0:0:0::/64`), because one host or LAN usually owns a whole /64 and could otherwise
 *   rotate through its addresses for unlimited guesses. A zone id is kept
 *   (`fe80:0:0:0::/64%eth0`): the same link-local prefix on two interfaces is two networks.
 * - Anything else (not an IP address): returned unchanged.
 *
 * @param ip a peer address as reported by the socket, e.g. `Deno.NetAddr.hostname`
 * @returns the lockout key for `ip`
 */
export function lockoutKey(ip: string): string {
  const percent = ip.indexOf("%");
  const address = percent === -1 ? ip : ip.slice(0, percent);
  const family = isIP(address);
  if (family !== 6) return ip; // IPv4, or not an address (IPv4 with a zone id is not one)
  const groups = ipv6Groups(address);
  if (MAPPED_PREFIX.every((group, i) => groups[i] === group)) {
    return [groups[6] >> 8, groups[6] & 0xff, groups[7] >> 8, groups[7] & 0xff].join(".");
  }
  const prefix = groups.slice(0, 4).map((group) => group.toString(16)).join(":");
  return `${prefix}::/64${percent === -1 ? "" : ip.slice(percent)}`;
}

/** The eight 16-bit groups of a valid IPv6 address without zone id (`::` and IPv4 tail allowed). */
function ipv6Groups(address: string): number[] {
  const [head, tail] = address.split("::");
  const left = head === "" ? [] : head.split(":");
  const right = tail === undefined || tail === "" ? [] : tail.split(":");
  const parse = (parts: string[]) =>
    parts.flatMap((part) => {
      if (!part.includes(".")) return [parseInt(part, 16)];
      const [a, b, c, d] = part.split(".").map(Number);
      return [(a << 8) | b, (c << 8) | d];
    });
  const leftGroups = parse(left);
  const rightGroups = parse(right);
  const zeros = new Array(8 - leftGroups.length - rightGroups.length).fill(0);
  return [...leftGroups, ...zeros, ...rightGroups];
}

/** One entry of a {@link TimeOrderedMap}. */
interface Link<V> {
  key: string;
  value: V;
  prev: Link<V> | null;
  next: Link<V> | null;
}

/**
 * A map that keeps its keys in the order they were last put, with O(1) access to the first. A
 * plain `Map` keeps insertion order too, but V8 leaves deleted entries in place until it rehashes,
 * and `keys().next()` steps over each of them: evicting 100 000 times from the front of a
 * 100 000-key `Map` took about 2 s here (Deno 2.9.6), with this list under 0.1 s.
 */
class TimeOrderedMap<V> {
  #links = new Map<string, Link<V>>();
  #first: Link<V> | null = null;
  #last: Link<V> | null = null;

  get size(): number {
    return this.#links.size;
  }

  /** The first (least recently put) entry. */
  get first(): Link<V> | null {
    return this.#first;
  }

  get(key: string): V | undefined {
    return this.#links.get(key)?.value;
  }

  /** Sets `key` to `value` and moves it to the end. */
  put(key: string, value: V): void {
    let link = this.#links.get(key);
    if (link === undefined) {
      link = { key, value, prev: null, next: null };
      this.#links.set(key, link);
    } else {
      link.value = value;
      if (link === this.#last) return;
      this.#unlink(link);
    }
    link.prev = this.#last;
    if (this.#last === null) this.#first = link;
    else this.#last.next = link;
    this.#last = link;
  }

  /** Removes the first entry, if any. */
  shift(): void {
    if (this.#first !== null) this.delete(this.#first.key);
  }

  delete(key: string): void {
    const link = this.#links.get(key);
    if (link === undefined) return;
    this.#links.delete(key);
    this.#unlink(link);
  }

  #unlink(link: Link<V>): void {
    if (link.prev === null) this.#first = link.next;
    else link.prev.next = link.next;
    if (link.next === null) this.#last = link.prev;
    else link.next.prev = link.prev;
    link.prev = link.next = null;
  }
}

/** Recent failures of one key that is not locked out. */
interface FailureRecord {
  /** Failure times, oldest first; those before `head` are spent. */
  times: number[];
  /** Index of the first failure still counted. */
  head: number;
}

/** Options for {@link AuthLockout}. */
export interface AuthLockoutOptions {
  /** Failures within `windowMs` that lock a key out (at least 1). */
  maxFailures: number;
  /** The counting window and the lockout length, in ms; 0 disables the lockout. */
  windowMs: number;
  /** Most keys held at once, failing and locked together (default 100 000). */
  maxTracked?: number;
}

/**
 * Counts authentication failures per {@link lockoutKey} (IPv4 address or IPv6 /64) in a sliding
 * window of `windowMs`; after `maxFailures` of them the key is locked out for `windowMs`.
 *
 * Times are monotonic milliseconds supplied by the caller (e.g. `performance.now()`); the class
 * reads no clock. The time order below assumes they never go backwards.
 *
 * At most `maxTracked` keys are held. Two maps keep them in time order: failing keys, moved to
 * the end on each failure (so the first is the least recently failed), and locked keys in the
 * order they were locked, which is expiry order since every lockout lasts `windowMs`. Expired
 * entries are dropped from the front of both; when the table is still full, a new key evicts the
 * least recently failed key, and an active lockout only when no failing key is left (then the
 * one that expires first). Every operation is amortised O(1).
 */
export class AuthLockout {
  #maxFailures: number;
  #windowMs: number;
  #maxTracked: number;
  /** Keys with failures and no lockout, least recently failed first. */
  #failing = new TimeOrderedMap<FailureRecord>();
  /** Locked keys and the time their lockout ends, soonest first. */
  #locked = new TimeOrderedMap<number>();

  constructor(options: AuthLockoutOptions) {
    const { maxFailures, windowMs, maxTracked = MAX_TRACKED_IPS } = options;
    if (!(maxFailures >= 1)) throw new RangeError(`Invalid maxFailures: ${maxFailures}`);
    if (!(windowMs >= 0)) throw new RangeError(`Invalid windowMs: ${windowMs}`);
    if (!(maxTracked >= 1)) throw new RangeError(`Invalid maxTracked: ${maxTracked}`);
    this.#maxFailures = maxFailures;
    this.#windowMs = windowMs;
    this.#maxTracked = maxTracked;
  }

  /** Number of keys held: failing or locked, including expired ones not yet swept. */
  get tracked(): number {
    return this.#failing.size + this.#locked.size;
  }

  /** Whether `ip` (that is, its {@link lockoutKey}) is locked out at `now`. */
  isLocked(ip: string, now: number): boolean {
    return this.#isKeyLocked(lockoutKey(ip), now);
  }

  /**
   * Records a failure from `ip` at `now`; returns whether its key is now locked out. A failure
   * while already locked changes nothing (the lockout is not extended) and returns `true`.
   */
  fail(ip: string, now: number): boolean {
    if (this.#windowMs === 0) return false;
    const key = lockoutKey(ip);
    this.sweep(now);
    if (this.#isKeyLocked(key, now)) return true;
    let record = this.#failing.get(key);
    if (record === undefined) {
      this.#locked.delete(key); // an expired lockout that sweep missed if the time went backwards
      if (this.tracked >= this.#maxTracked) this.#evict();
      record = { times: [], head: 0 };
    }
    const since = now - this.#windowMs;
    while (record.head < record.times.length && record.times[record.head] <= since) record.head++;
    if (record.head > 16 && record.head * 2 > record.times.length) {
      record.times = record.times.slice(record.head);
      record.head = 0;
    }
    record.times.push(now);
    if (record.times.length - record.head >= this.#maxFailures) {
      this.#failing.delete(key);
      this.#locked.put(key, now + this.#windowMs);
      return true;
    }
    this.#failing.put(key, record); // moved to the end: the map stays in order of last failure
    return false;
  }

  /**
   * Forgets expired lockouts and keys whose last failure left the window. Looks only at the
   * front of the time-ordered maps, so it costs O(entries removed); {@link AuthLockout.fail}
   * calls it too, so calling it on a timer only frees memory sooner.
   */
  sweep(now: number): void {
    const locked = this.#locked;
    while (locked.first !== null && locked.first.value <= now) locked.shift();
    const since = now - this.#windowMs;
    const failing = this.#failing;
    while (failing.first !== null && failing.first.value.times.at(-1)! <= since) failing.shift();
  }

  #isKeyLocked(key: string, now: number): boolean {
    const until = this.#locked.get(key);
    return until !== undefined && until > now;
  }

  /** Makes room for one key: the least recently failed one goes, else the first to expire. */
  #evict(): void {
    if (this.#failing.size > 0) this.#failing.shift();
    else this.#locked.shift();
  }
}
