/**
 * The room: who is in it, the order of what is said, and what each member receives. Sessions
 * talk to the room only through {@link Room}, so the same sessions can later run on a room shared
 * by several servers; this file is the single-node room (in-process fan-out, history in a
 * {@link HistoryStore}).
 *
 * **Ordering and durability.** Messages posted during one event-loop turn are numbered, stored
 * in one transaction, and only then broadcast and acked, in id order. So an acked message is in
 * history, ids strictly increase (across restarts: the store keeps the counter), every recipient
 * sees the room's one order, and a store failure refuses the whole batch (`unavailable`) without
 * a gap in the ids anyone saw.
 *
 * **Replay without a gap.** A member that joins gets its replay from the store synchronously and
 * is a member from that instant: a message stored before it joined is in the replay, one stored
 * after is delivered live, none twice.
 *
 * **Fan-out.** A frame is encoded once per kind of recipient (seed bytes, or with `id` and `ts`)
 * and small frames are copied once into a shared arena, so an outbox that queues several of them
 * holds one contiguous run and writes it as one view. A recipient whose queue fills is reported
 * through `hold`: flow control pauses the senders; nobody is skipped.
 *
 * @module
 */
import { setImmediate } from "node:timers";
import type { Logger } from "@logtape/logtape";
import {
  encodeAck,
  encodeBroadcast,
  encodeFrame,
  encodeHistoryEnd,
  encodeJoined,
  encodeLeft,
  encodeMessage,
  encodeWho,
  type ErrorCode,
  featureNames,
  type JsonObject,
  type LeaveReason,
  MAX_REPLAY,
  type MemberInfo,
  memberJson,
  type RoomMessage,
  WANTS_HISTORY,
  WANTS_IDS,
  WANTS_PRESENCE,
} from "../protocol/mod.ts";
import { type HistoryStore, type StoredMessage, StoreError } from "./store.ts";

/** Size of one arena chunk. A chunk lives until no outbox holds a view of it. */
const ARENA_SIZE = 64 * 1024;
/** Larger frames are shared as they are: one such frame is a write of its own anyway. */
const ARENA_MAX_FRAME = 4 * 1024;

/** Where the room queues a member's frames (the session's outbox). */
export interface Mailbox {
  /** Queues a frame; `false` if the mailbox is closed. */
  push(frame: Uint8Array): boolean;
  /** Whether the queue is over its limit (the room then reports it through `hold`). */
  readonly full: boolean;
}

/** A logged-in client, as the room sees it. */
export interface RoomMember extends MemberInfo {
  /** Feature bits granted at login (`WANTS_*`), 0 for a seed client. */
  readonly features: number;
  /** The member's queue. */
  readonly outbox: Mailbox;
  /** One of the member's messages was refused after it was posted (e.g. the store failed). */
  refused(code: ErrorCode, message: string, ref: string | undefined): void;
}

/** What a member asks for when it joins. */
export interface JoinRequest {
  /** Sent as `welcome` right after login when the client asked for features (else `null`). */
  welcome: JsonObject | null;
  /** Frames for the member right after `welcome` (e.g. errors about its auth fields). */
  notices?: Uint8Array[];
  /** Messages to replay (history feature). */
  history: number;
  /** Replay the messages after this id instead. */
  after?: number;
}

/** A `history` page request. */
export interface HistoryQuery {
  before?: number;
  after?: number;
  limit: number;
}

/** A message a member posts. */
export interface Post {
  content: string;
  sender: string;
  ref?: string;
}

/** The room's counters. */
export interface RoomStats {
  /** Messages accepted, stored and broadcast. */
  messages: number;
  /** Frames queued to recipients for those messages. */
  deliveries: number;
  /** Messages refused because the store failed. */
  refused: number;
  /** Store failures (one per failed batch or read). */
  storeErrors: number;
  /** Messages whose `ref` had been accepted already: acked again, not broadcast. */
  duplicates: number;
}

/** The room as sessions use it; one implementation per deployment (single node, cluster). */
export interface Room {
  /** Members logged in. */
  readonly size: number;
  /** The room's counters. */
  readonly stats: Readonly<RoomStats>;
  /** Messages kept in history. */
  readonly historySize: number;
  /** Adds a member that has just logged in: welcome, presence, replay, then live messages. */
  join(member: RoomMember, request: JoinRequest): void;
  /** Removes a member (idempotent); others with presence are told why. */
  leave(member: RoomMember, reason: LeaveReason): void;
  /** Accepts a message; it is numbered, stored, broadcast and acked at the end of this turn. */
  post(member: RoomMember, post: Post): void;
  /** Answers `who`. */
  who(member: RoomMember): void;
  /** Answers a `history` page request. */
  history(member: RoomMember, query: HistoryQuery): void;
  /** Numbers, stores, broadcasts and acks the messages posted so far, now. */
  flush(): void;
  /** The server is stopping: members leave without presence traffic. */
  close(): void;
}

/** Options of {@link LocalRoom}. */
export interface LocalRoomOptions {
  store: HistoryStore;
  /** Most bytes of history sent in one replay or page (at least one message always goes). */
  replayBytes: number;
  /** A recipient's queue is full: pause the senders. */
  hold(mailbox: Mailbox): void;
  logger: Logger;
  /** Wall clock for message times (ms since the epoch). */
  clock?: () => number;
}

interface Pending {
  member: RoomMember;
  post: Post;
  /** Other posts of the same `ref` in this batch: they get this message's ack. */
  twins?: RoomMember[];
}

/** The single-node room: in-process fan-out and a local history store. */
export class LocalRoom implements Room {
  #members = new Map<number, RoomMember>();
  #idsMembers = 0;
  #seedMembers = 0;
  #store: HistoryStore;
  #replayBytes: number;
  #hold: (mailbox: Mailbox) => void;
  #logger: Logger;
  #clock: () => number;
  #pending: Pending[] = [];
  #pendingRefs = new Map<string, Pending>();
  #scheduled = false;
  #failing = false;
  #closing = false;
  #arena = new Uint8Array(0);
  #used = 0;
  #stats: RoomStats = { messages: 0, deliveries: 0, refused: 0, storeErrors: 0, duplicates: 0 };

  constructor(options: LocalRoomOptions) {
    this.#store = options.store;
    this.#replayBytes = options.replayBytes;
    this.#hold = options.hold;
    this.#logger = options.logger;
    this.#clock = options.clock ?? Date.now;
  }

  get size(): number {
    return this.#members.size;
  }

  get stats(): Readonly<RoomStats> {
    return this.#stats;
  }

  get historySize(): number {
    return this.#store.count();
  }

  join(member: RoomMember, request: JoinRequest): void {
    if (this.#members.has(member.id)) return;
    this.#members.set(member.id, member);
    if (member.features & WANTS_IDS) this.#idsMembers++;
    else this.#seedMembers++;
    if (request.welcome) {
      const welcome: JsonObject = { ...request.welcome, features: featureNames(member.features) };
      welcome.member = memberJson(member);
      if (member.features & WANTS_PRESENCE) {
        welcome.members = Array.from(this.#members.values(), memberJson);
      }
      this.#queue(member, encodeFrame(welcome));
    }
    for (const notice of request.notices ?? []) this.#queue(member, notice);
    this.#presence(member, () => encodeJoined(member));
    if (member.features & WANTS_HISTORY) this.#replay(member, request);
  }

  leave(member: RoomMember, reason: LeaveReason): void {
    if (this.#members.get(member.id) !== member) return;
    this.#members.delete(member.id);
    if (member.features & WANTS_IDS) this.#idsMembers--;
    else this.#seedMembers--;
    if (!this.#closing) this.#presence(member, () => encodeLeft(member, reason));
  }

  post(member: RoomMember, post: Post): void {
    const ref = post.ref;
    if (ref !== undefined) {
      const twin = this.#pendingRefs.get(ref);
      if (twin) {
        this.#stats.duplicates++;
        (twin.twins ??= []).push(member);
        return;
      }
      let known;
      try {
        known = this.#store.findRef(ref);
      } catch (error) {
        this.#storeFailed(error);
        this.#stats.refused++;
        member.refused("unavailable", UNAVAILABLE, ref);
        return;
      }
      if (known) {
        this.#stats.duplicates++;
        if (member.features & WANTS_IDS) this.#queue(member, encodeAck(ref, known.id, known.ts));
        return;
      }
    }
    const pending: Pending = { member, post };
    this.#pending.push(pending);
    if (ref !== undefined) this.#pendingRefs.set(ref, pending);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(LocalRoom.#flushRoom, this);
    }
  }

  who(member: RoomMember): void {
    this.#queue(member, encodeWho(this.#members.values()));
  }

  history(member: RoomMember, query: HistoryQuery): void {
    let page: StoredMessage[];
    let more: boolean;
    try {
      if (query.after !== undefined) {
        page = this.#store.after(query.after, query.limit + 1);
        more = page.length > query.limit;
        if (more) page.pop();
      } else {
        page = this.#store.before(query.before, query.limit + 1);
        more = page.length > query.limit;
        if (more) page.shift();
      }
    } catch (error) {
      this.#storeFailed(error);
      member.refused("unavailable", "Cannot read history now; try again later", undefined);
      return;
    }
    this.#sendHistory(member, page, more, query.after !== undefined);
  }

  close(): void {
    this.#closing = true;
  }

  flush(): void {
    this.#flush();
  }

  static #flushRoom(room: LocalRoom): void {
    room.#flush();
  }

  #flush(): void {
    this.#scheduled = false;
    const batch = this.#pending;
    if (batch.length === 0) return;
    this.#pending = [];
    this.#pendingRefs.clear();
    const ts = this.#clock();
    let id = this.#store.lastId();
    const records: StoredMessage[] = batch.map(({ member, post }) => {
      const record: StoredMessage = {
        id: ++id,
        ts,
        sender: post.sender,
        senderIp: member.ip,
        content: post.content,
      };
      if (post.ref !== undefined) record.ref = post.ref;
      return record;
    });
    try {
      this.#store.append(records);
    } catch (error) {
      this.#storeFailed(error);
      for (const { member, post, twins } of batch) {
        this.#stats.refused++;
        member.refused("unavailable", UNAVAILABLE, post.ref);
        for (const twin of twins ?? []) twin.refused("unavailable", UNAVAILABLE, post.ref);
      }
      return;
    }
    if (this.#failing) {
      this.#failing = false;
      this.#logger.warn("History store works again; accepting messages");
    }
    for (let i = 0; i < batch.length; i++) this.#broadcast(batch[i], records[i]);
  }

  #broadcast(pending: Pending, record: StoredMessage): void {
    const from = pending.member;
    const message: RoomMessage = record;
    const share = this.#members.size > 2;
    // The sender gets no copy (seed behaviour), if it is still here.
    const present = this.#members.get(from.id) === from ? 1 : 0;
    const senderIds = from.features & WANTS_IDS ? present : 0;
    let seedFrame: Uint8Array | undefined;
    let idsFrame: Uint8Array | undefined;
    if (this.#seedMembers > present - senderIds) {
      seedFrame = encodeBroadcast(pending.post, record.senderIp);
      if (share) seedFrame = this.#share(seedFrame);
    }
    if (this.#idsMembers > senderIds) {
      idsFrame = encodeMessage(message);
      if (share) idsFrame = this.#share(idsFrame);
    }
    let delivered = 0;
    for (const member of this.#members.values()) {
      if (member === from) continue;
      const outbox = member.outbox;
      if (outbox.push(member.features & WANTS_IDS ? idsFrame! : seedFrame!)) {
        delivered++;
        if (outbox.full) this.#hold(outbox);
      }
    }
    this.#stats.messages++;
    this.#stats.deliveries += delivered;
    const ref = record.ref;
    if (ref === undefined) return;
    if (from.features & WANTS_IDS) this.#queue(from, encodeAck(ref, record.id, record.ts));
    for (const twin of pending.twins ?? []) {
      if (twin.features & WANTS_IDS) this.#queue(twin, encodeAck(ref, record.id, record.ts));
    }
  }

  /** Replays history to a member that has just joined, then `history_end`. */
  #replay(member: RoomMember, request: JoinRequest): void {
    let page: StoredMessage[];
    let more: boolean;
    try {
      if (request.after !== undefined) {
        page = this.#store.after(request.after, MAX_REPLAY + 1);
        more = page.length > MAX_REPLAY;
        if (more) page.pop();
      } else if (request.history > 0) {
        page = this.#store.before(undefined, request.history + 1);
        more = page.length > request.history;
        if (more) page.shift();
      } else {
        page = [];
        more = this.#store.count() > 0;
      }
    } catch (error) {
      this.#storeFailed(error);
      member.refused("unavailable", "Cannot read history now; page it later", undefined);
      this.#queue(member, encodeHistoryEnd(0, true));
      return;
    }
    this.#sendHistory(member, page, more, request.after !== undefined);
  }

  /**
   * Sends history frames, at most `replayBytes` of them (so one member's queue stays bounded):
   * reading forward keeps the oldest, reading back the newest; `more` then says the rest remain.
   */
  #sendHistory(
    member: RoomMember,
    page: StoredMessage[],
    more: boolean,
    forward: boolean,
  ): void {
    const frames = page.map((message) => encodeMessage(message, true));
    let budget = this.#replayBytes;
    let count = 0;
    if (forward) {
      while (count < frames.length && (count === 0 || budget >= frames[count].length)) {
        budget -= frames[count++].length;
      }
      frames.length = count;
    } else {
      let start = frames.length;
      while (start > 0 && (count === 0 || budget >= frames[start - 1].length)) {
        budget -= frames[--start].length;
        count++;
      }
      frames.splice(0, start);
    }
    if (count < page.length) more = true;
    for (const frame of frames) member.outbox.push(frame);
    this.#queue(member, encodeHistoryEnd(count, more));
  }

  /** Sends a presence frame to every other member that asked for presence. */
  #presence(about: RoomMember, encode: () => Uint8Array): void {
    let frame: Uint8Array | undefined;
    for (const member of this.#members.values()) {
      if (member === about || !(member.features & WANTS_PRESENCE)) continue;
      frame ??= encode();
      this.#queue(member, frame);
    }
  }

  #queue(member: RoomMember, frame: Uint8Array): void {
    const outbox = member.outbox;
    if (outbox.push(frame) && outbox.full) this.#hold(outbox);
  }

  #storeFailed(error: unknown): void {
    this.#stats.storeErrors++;
    if (!(error instanceof StoreError)) throw error;
    if (this.#failing) return;
    this.#failing = true;
    this.#logger.error("History store failed ({reason}); refusing messages until it works", {
      reason: error.message,
    });
  }

  /** A copy of a small frame placed right after the previous one in the arena. */
  #share(frame: Uint8Array): Uint8Array {
    const length = frame.byteLength;
    if (length > ARENA_MAX_FRAME) return frame;
    if (this.#used + length > this.#arena.byteLength) {
      this.#arena = new Uint8Array(ARENA_SIZE);
      this.#used = 0;
    }
    const start = this.#used;
    this.#arena.set(frame, start);
    this.#used += length;
    return this.#arena.subarray(start, this.#used);
  }
}

const UNAVAILABLE = "Cannot store the message now; resend it later";
