/**
 * What the chat client shows of what it receives (all modes but `--json`): chat lines, and with
 * a version 2 server the replay at login with a short banner after it, the messages missed
 * while reconnecting (paging forward when the server sent only part of them), presence changes,
 * `/who` answers and `/history` pages. A member list sent in parts is shown once complete.
 *
 * Message ids keep anything from being shown twice: a message whose id is not above the newest
 * one shown is skipped (a page of older messages is checked against the oldest one shown
 * instead, a page of missed ones against the gap it fills), and so is a replayed copy of a
 * message this client sent itself in this run.
 *
 * @module
 */

import type { JsonObject } from "../protocol/mod.ts";
import { formatError, formatIncoming, formatMember, formatPresence, plural } from "./format.ts";
import {
  MAX_PAGE,
  type MemberListDone,
  MemberParts,
  messageId,
  parseMember,
  parseWelcome,
  type Welcome,
} from "./v2.ts";

/** Where a {@link ChatView} writes. */
export interface ViewOutput {
  /** A message line (stdout in scripted mode, so scripts can read messages alone). */
  chat(line: string): void;
  /** Anything else: banners, presence, errors (stderr in scripted mode). */
  note(line: string): void;
}

/** Sends a request now; returns whether it went out (see `ChatLink.request`). */
export type Requester = (frame: JsonObject) => boolean;

/** Options of {@link ChatView}. */
export interface ViewOptions {
  /** Messages asked for at login (`--history`): with 0 there is no banner at login. */
  history: number;
  /** Whether `/history` exists here (interactive mode), for the banner's hint. */
  commands: boolean;
  /** Sends requests: `/who`, `/history`, and pages of messages missed while disconnected. */
  send: Requester;
  /** The clock, for arrival times and the day shown; injectable for tests. */
  now?: () => Date;
  /**
   * Addresses shown only where they tell people apart (a name used from two addresses, or this
   * client's own name used by another), and in `/who`; otherwise (default) always.
   */
  calm?: boolean;
  /** This client's name (with `calm`: another sender with it shows the address). */
  name?: string;
}

/** How long one `unavailable` notice silences the next ones, milliseconds. */
const UNAVAILABLE_QUIET_MS = 10_000;

/** What a `history_end` closes: the login replay, or a page back or forward. */
type Answer = "login" | "back" | "forward";

/** Messages missed while disconnected, being fetched page by page after a reconnect. */
interface Gap {
  /** Largest id received of the gap so far: the next page starts after it. */
  from: number;
  /** Smallest live id since this login: the gap ends before it. */
  live?: number;
  /** Whether a page reached the live messages. */
  closed: boolean;
}

/** Shows received frames; one per client, kept across reconnects. */
export class ChatView {
  #out: ViewOutput;
  #options: ViewOptions;
  #now: () => Date;
  /** The current connection's `welcome`; none from an older server. */
  #welcome?: Welcome;
  #logins = 0;
  #newest?: number;
  #oldest?: number;
  /** Ids the server gave this client's own messages (not shown again when replayed). */
  #own = new Set<number>();
  /** The `history_end` frames expected, oldest request first. */
  #expect: Answer[] = [];
  /** Whether this login's replay fills a gap (something was shown before) or starts afresh. */
  #resumed = false;
  /** Largest id of this login's replay, or the newest shown before it. */
  #replayMax?: number;
  #gap?: Gap;
  /** Messages shown by the login replay or pages since the last banner. */
  #printed = 0;
  #pageMin?: number;
  #pageMax?: number;
  #quietUntil = -Infinity;
  /** Addresses seen for each name (with `calm`). */
  #addresses = new Map<string, Set<string>>();
  /** The member list being received in parts. */
  #parts = new MemberParts();

  constructor(out: ViewOutput, options: ViewOptions) {
    this.#out = out;
    this.#options = options;
    this.#now = options.now ?? (() => new Date());
  }

  /** Shows one received frame (or nothing, for frames the user need not see). */
  onFrame(frame: JsonObject): void {
    switch (frame.type) {
      case "auth_result":
        if (frame.success === true) this.#newConnection();
        return;
      case "welcome":
        return this.#onWelcome(frame);
      case "message":
        return this.#onMessage(frame);
      case "history_end":
        return this.#onHistoryEnd(frame);
      case "ack":
        return this.#onAck(frame);
      case "joined":
      case "left": {
        const member = parseMember(frame.member);
        if (member && frame.type === "joined") this.#seen(member.name, member.ip);
        if (member) this.#out.note(formatPresence(member.name, frame.type, frame.reason));
        return;
      }
      case "who":
        return this.#onList(this.#parts.add(frame));
      case "error":
        return this.#onError(frame);
    }
  }

  /** Asks who is here (`/who`), or says why it cannot. */
  requestWho(): void {
    if (!this.#welcome?.features.has("presence")) {
      this.#out.note("! /who needs a server that tracks presence (protocol version 2)");
    } else if (!this.#options.send({ type: "who" })) {
      this.#out.note(NOT_SENT);
    }
  }

  /** Asks for `limit` messages older than the oldest one shown (`/history`). */
  requestPage(limit: number): void {
    if (!this.#welcome?.features.has("history")) {
      this.#out.note("! /history needs a server that keeps history (protocol version 2)");
      return;
    }
    // Nothing shown yet: "before" a larger id than any asks for the newest messages.
    const before = this.#oldest ?? Number.MAX_SAFE_INTEGER;
    if (!this.#options.send({ type: "history", before, limit })) this.#out.note(NOT_SENT);
    else this.#expect.push("back");
  }

  #newConnection(): void {
    // Answers to requests made on a lost connection will not come.
    this.#welcome = undefined;
    this.#parts.reset();
    this.#expect = [];
    this.#gap = undefined;
    this.#printed = 0;
    this.#pageMin = this.#pageMax = undefined;
  }

  #onWelcome(frame: JsonObject): void {
    const welcome = parseWelcome(frame);
    if (!welcome) return;
    this.#welcome = welcome;
    this.#logins++;
    if (welcome.features.has("history")) {
      this.#expect.push("login");
      // The link asks for the messages after the newest one received (`after`).
      this.#resumed = this.#newest !== undefined;
      this.#replayMax = this.#newest;
    }
    this.#onList(this.#parts.add(frame));
  }

  /** Shows a member list once complete: the first login's, and every `/who` answer. */
  #onList(list: MemberListDone | undefined): void {
    if (list === undefined) return;
    // A `/who` answer shows addresses; the list at login only where they tell people apart.
    if (list.answers === "who") this.#showMembers(list.members, true);
    else if (this.#logins === 1) this.#showMembers(list.members);
  }

  #onMessage(frame: JsonObject): void {
    const id = messageId(frame);
    const answer = frame.replay === true ? this.#expect[0] : undefined;
    if (id !== undefined && !this.#isNew(id, answer)) return;
    if (answer) this.#printed++;
    const sender = typeof frame.sender === "string" ? frame.sender : "anon";
    if (typeof frame.sender_ip === "string") this.#seen(sender, frame.sender_ip);
    this.#out.chat(formatIncoming(frame, this.#now(), { ip: this.#showsAddress(sender) }));
  }

  /** Whether the message with `id` is to be shown, noting what it tells about the ids shown. */
  #isNew(id: number, answer: Answer | undefined): boolean {
    if (answer === "back") {
      if (this.#oldest !== undefined && id >= this.#oldest) return false;
      this.#pageMin = Math.min(this.#pageMin ?? id, id);
      this.#pageMax = Math.max(this.#pageMax ?? id, id);
      return true;
    }
    if (answer === "forward") {
      const gap = this.#gap;
      if (!gap || id <= gap.from) return false;
      if (gap.live !== undefined && id >= gap.live) {
        gap.closed = true;
        return false;
      }
      gap.from = id;
    } else {
      if (answer === "login") this.#replayMax = Math.max(this.#replayMax ?? id, id);
      if (this.#newest !== undefined && id <= this.#newest) return false;
      if (answer === undefined && this.#gap) this.#gap.live ??= id;
      this.#newest = id;
      this.#oldest ??= id;
    }
    const own = this.#own.has(id);
    for (const ownId of this.#own) if (ownId <= id) this.#own.delete(ownId);
    return !own;
  }

  #onHistoryEnd(frame: JsonObject): void {
    const answer = this.#expect.shift();
    const more = frame.more === true;
    if (answer === "back") {
      return this.#endPage(typeof frame.count === "number" ? frame.count : 0, more);
    }
    if (answer === "login" && !this.#resumed) return this.#endReplay(more);
    if (answer === "login" && more && this.#replayMax !== undefined) {
      this.#gap = { from: this.#replayMax, closed: false };
    }
    if (answer === "login" || answer === "forward") this.#fillGap(more);
  }

  #endReplay(more: boolean): void {
    const printed = this.#printed;
    this.#printed = 0;
    const hint = this.#options.commands ? " (more with /history)" : " (more on the server)";
    if (printed > 0) {
      this.#out.note(`-- ${plural(printed, "earlier message")}${more ? hint : ""} --`);
    } else if (this.#logins === 1 && this.#options.history > 0) {
      // None sent but more exist: the server could not read its history (it said so).
      this.#out.note(
        more ? "-- earlier messages could not be loaded --" : "-- no earlier messages --",
      );
    }
  }

  #endPage(count: number, more: boolean): void {
    if (this.#pageMin !== undefined) {
      this.#oldest = Math.min(this.#oldest ?? Infinity, this.#pageMin);
    }
    this.#newest ??= this.#pageMax;
    this.#pageMin = this.#pageMax = undefined;
    this.#printed = 0;
    if (count === 0) return this.#out.note("-- no earlier messages --");
    const end = !more
      ? " (the start of the history)"
      : this.#options.commands
      ? " (more with /history)"
      : "";
    this.#out.note(`-- ${plural(count, "earlier message")}${end} --`);
  }

  /**
   * Asks for the next page of missed messages, or says how many were missed once done (`failed`:
   * the server could not send the page asked for).
   */
  #fillGap(more: boolean, failed = false): void {
    const gap = this.#gap;
    let incomplete = failed;
    if (gap && more && !gap.closed && !failed) {
      const page = { type: "history", after: gap.from, limit: MAX_PAGE };
      if (this.#options.send(page)) {
        this.#expect.push("forward");
        return;
      }
      incomplete = true;
    }
    this.#gap = undefined;
    const printed = this.#printed;
    this.#printed = 0;
    if (printed === 0) {
      if (incomplete) {
        this.#out.note("-- the messages missed while disconnected could not be fetched --");
      }
      return;
    }
    const rest = incomplete ? "; some could not be fetched" : "";
    this.#out.note(`-- ${plural(printed, "message")} missed while disconnected${rest} --`);
  }

  #onAck(frame: JsonObject): void {
    const id = typeof frame.id === "number" ? frame.id : undefined;
    if (id !== undefined && (this.#newest === undefined || id > this.#newest)) this.#own.add(id);
  }

  /** Notes that `name` was used from `ip`. */
  #seen(name: string, ip: string): void {
    if (!this.#options.calm) return;
    const addresses = this.#addresses.get(name) ?? new Set();
    addresses.add(ip);
    this.#addresses.set(name, addresses);
  }

  /** Whether a message from `name` shows the sender's address. */
  #showsAddress(name: string, self = false): boolean {
    if (!this.#options.calm) return true;
    if (!self && name === this.#options.name) return true;
    return (this.#addresses.get(name)?.size ?? 0) > 1;
  }

  #showMembers(members: { id: number; name: string; ip: string }[], asked = false): void {
    const self = this.#welcome?.member?.id;
    for (const member of members) this.#seen(member.name, member.ip);
    const list = members.map((member) => {
      const you = member.id === self;
      return formatMember(member, you, asked || this.#showsAddress(member.name, you));
    }).join(", ");
    this.#out.note(`* ${members.length} here${list ? `: ${list}` : ""}`);
  }

  #onError(frame: JsonObject): void {
    if (frame.code === "unavailable" && frame.ref === undefined) {
      // The store could not be read: the page asked for will not come.
      const answer = this.#expect[0];
      if (answer === "back" || answer === "forward") this.#expect.shift();
      if (answer === "forward") this.#fillGap(false, true);
    }
    if (frame.code === "unavailable") {
      // One per message while the store is down; one notice says it all for a while.
      const now = this.#now().getTime();
      if (now < this.#quietUntil) return;
      this.#quietUntil = now + UNAVAILABLE_QUIET_MS;
    }
    const resent = frame.code === "rate_limited" && this.#welcome?.ids;
    this.#out.note(`! ${formatError(frame)}${resent ? "; it will be resent" : ""}`);
  }
}

const NOT_SENT = "! Not sent: not connected, or sending too fast; try again in a moment";
