/**
 * What protocol version 2 asks of a client, read defensively (the server is a peer, not trusted
 * to be well formed): the login fields that opt in, the `welcome` that answers them, members
 * (and member lists sent in parts), message ids, and a pacer that keeps the client under the
 * server's rate limit.
 *
 * A server without version 2 sends no `welcome`; everything here then stays unused and the
 * client behaves as a seed client.
 *
 * @module
 */

import {
  DEFAULT_PAGE,
  DEFAULT_REPLAY as DEFAULT_HISTORY,
  FEATURES,
  type JsonObject,
  MAX_PAGE,
  MAX_REPLAY as MAX_HISTORY,
} from "../protocol/mod.ts";

// The protocol's own constants, under the names the client's flags and commands use.
export { DEFAULT_HISTORY, DEFAULT_PAGE, FEATURES, MAX_HISTORY, MAX_PAGE };

/** The version 2 fields of the auth frame. */
export interface Hello {
  /** Display name; also the default sender of this client's messages. */
  name?: string;
  /** Features asked for; sending the field at all makes a v2 server answer with `welcome`. */
  features?: readonly string[];
  /** Messages to replay at login (feature `history`). */
  history?: number;
  /** On a reconnect: replay every message with a larger id instead, so no gap is left. */
  after?: number;
}

/** A logged-in member as presence frames describe it. */
export interface Member {
  id: number;
  name: string;
  ip: string;
}

/** The server's limits from `welcome`, where it gave them. */
export interface ServerLimits {
  maxFrame?: number;
  /** Messages per second; 0 means unlimited. */
  rate?: number;
  burst?: number;
}

/** A parsed `welcome`: proof that the server speaks version 2, and what it accepted. */
export interface Welcome {
  features: ReadonlySet<string>;
  /** Whether messages get ids and acks (`history` implies `ids`). */
  ids: boolean;
  /** This client as the room sees it. */
  member?: Member;
  limits: ServerLimits;
  /**
   * Everyone logged in (with presence); only the first part of them when `membersMore` (the
   * rest follows in `who` parts: see {@link MemberParts}).
   */
  members?: Member[];
  /** Whether `members` is the first part of a list that `who` parts complete. */
  membersMore: boolean;
}

function count(value: unknown): number | undefined {
  return Number.isSafeInteger(value) && (value as number) >= 0 ? value as number : undefined;
}

/** Reads a member object; `undefined` unless it has a name (id and ip default to -1 and `?`). */
export function parseMember(value: unknown): Member | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const { id, name, ip } = value as JsonObject;
  // Length in UTF-16 units bounds memory; the server's limit is 64 characters.
  if (typeof name !== "string" || name.length > 2 * MAX_NAME) return undefined;
  return {
    id: count(id) ?? -1,
    name,
    ip: typeof ip === "string" && ip.length <= MAX_IP ? ip : "?",
  };
}

/** Reads a list of members, skipping malformed entries. */
export function parseMembers(value: unknown): Member[] | undefined {
  if (!Array.isArray(value)) return undefined;
  return value.map(parseMember).filter((member) => member !== undefined);
}

/**
 * Reads a `welcome` frame; `undefined` if `frame` is not one (a seed-era server may send frames
 * of any type, so a `welcome` counts only with its `features` list).
 */
export function parseWelcome(frame: JsonObject): Welcome | undefined {
  if (frame.type !== "welcome" || !Array.isArray(frame.features)) return undefined;
  const features = new Set(frame.features.filter((name) => typeof name === "string"));
  const raw = typeof frame.limits === "object" && frame.limits !== null
    ? frame.limits as JsonObject
    : {};
  return {
    features,
    ids: features.has("ids") || features.has("history"),
    member: parseMember(frame.member),
    limits: { maxFrame: count(raw.max_frame), rate: count(raw.rate), burst: count(raw.burst) },
    members: parseMembers(frame.members),
    membersMore: frame.members_more === true,
  };
}

/** Most members a list assembled from parts keeps: a server that never ends one cannot exhaust memory. */
export const MAX_LIST_MEMBERS = 200_000;
/** Most seconds of sending a server's charges can put the pacer into debt for. */
const MAX_DEBT_S = 60;
/** Longest member name the protocol allows (a longer one is a malformed entry). */
const MAX_NAME = 64;
/** Longest address a member can have (IPv6 text, with a zone). */
const MAX_IP = 64;

/** A member list, complete, and what it answers. */
export interface MemberListDone {
  members: Member[];
  /** `welcome`: the list at login; `who`: the answer to a `who`. */
  answers: "welcome" | "who";
}

/**
 * Assembles member lists, which a server sends in parts when they do not fit in one frame: a
 * `welcome` with `"members_more":true` (or a `who` with `"more":true`) starts a list, `who`
 * frames with `"more":true` continue it, and the one with `"more":false` ends it. A `welcome` or
 * `who` without those fields is a whole list by itself (a list cut short by another one is
 * dropped). Give it every `welcome` and `who` frame, and {@link MemberParts.reset} on a new
 * connection.
 */
export class MemberParts {
  #members: Member[] | null = null;
  #answers: "welcome" | "who" = "who";

  /** What the list being assembled answers, if one is. */
  get pending(): "welcome" | "who" | undefined {
    return this.#members === null ? undefined : this.#answers;
  }

  /** Forgets a list being assembled (its connection is gone). */
  reset(): void {
    this.#members = null;
  }

  /** Takes a `welcome` or `who` frame; returns the list it completes, if it completes one. */
  add(frame: JsonObject): MemberListDone | undefined {
    const members = parseMembers(frame.members);
    if (frame.type === "welcome") {
      this.#members = null;
      if (members === undefined) return undefined;
      if (frame.members_more !== true) return { members, answers: "welcome" };
      this.#answers = "welcome";
      this.#members = members.slice(0, MAX_LIST_MEMBERS);
      return undefined;
    }
    if (frame.type !== "who") return undefined;
    const part = members ?? [];
    const more = frame.more;
    if (more !== true && more !== false) {
      this.#members = null; // a whole list
      return { members: part, answers: "who" };
    }
    let list = this.#members;
    if (list === null) {
      list = this.#members = [];
      this.#answers = "who";
    }
    for (const member of part) {
      if (list.length >= MAX_LIST_MEMBERS) break;
      list.push(member);
    }
    if (more) return undefined;
    this.#members = null;
    return { members: list, answers: this.#answers };
  }
}

/** The id of a message frame, if it carries a valid one (feature `ids`). */
export function messageId(frame: JsonObject): number | undefined {
  return frame.type === "message" ? count(frame.id) : undefined;
}

/** Share of the server's rate the pacer uses. */
export const PACE_SHARE = 0.9;

/**
 * Keeps the sending rate within the server's token bucket (from `welcome.limits`), so a script
 * that pipes many lines is paced instead of having messages dropped as `rate_limited`. It uses
 * half the server's burst, leaving the other half for network jitter that bunches messages up,
 * and {@link PACE_SHARE} of its rate.
 */
export class Pacer {
  #rate: number;
  #capacity: number;
  #tokens: number;
  #at: number;
  #now: () => number;

  constructor(limits: ServerLimits, now: () => number = Date.now) {
    // A little under the server's rate: with a burst of 1 there is no room for the jitter that
    // bunches messages up, and a dropped message resent later would arrive out of order.
    this.#rate = (limits.rate ?? 0) * PACE_SHARE;
    this.#capacity = Math.max(1, Math.floor((limits.burst ?? 1) / 2));
    this.#tokens = this.#capacity;
    this.#now = now;
    this.#at = now();
  }

  /**
   * Takes a token and returns 0 if one is available; otherwise returns how many milliseconds to
   * wait before asking again.
   */
  take(): number {
    if (this.#rate === 0) return 0;
    const now = this.#now();
    this.#tokens = Math.min(this.#capacity, this.#tokens + (now - this.#at) * this.#rate / 1000);
    this.#at = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return 0;
    }
    return Math.ceil((1 - this.#tokens) * 1000 / this.#rate);
  }

  /**
   * Takes `count` more tokens for what the server charged (a `who` answered in parts costs one
   * token per part), going into debt if needed: later frames wait until it is paid back.
   */
  charge(count: number): void {
    if (this.#rate === 0) return;
    const now = this.#now();
    const tokens = Math.min(this.#capacity, this.#tokens + (now - this.#at) * this.#rate / 1000);
    // At most a minute of debt: a server sending parts nobody asked for cannot freeze sending.
    this.#tokens = Math.max(-this.#rate * MAX_DEBT_S, tokens - count);
    this.#at = now;
  }
}
