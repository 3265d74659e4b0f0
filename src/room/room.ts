/**
 * The room: who is in it, the order of what is said, and what each member receives. Sessions
 * talk to the room only through {@link Room}, so the same sessions run on a room of one server
 * or on one shared by several (`cluster.ts`, on Redis); this file is the single-node room
 * (in-process fan-out, history in a {@link HistoryStore}). Both deliver through {@link Fanout}.
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
 * **Fan-out** ({@link Fanout}): a frame is encoded once per kind of recipient and shared through
 * an arena; a recipient whose queue fills is reported through `hold`: flow control pauses the
 * senders; nobody is skipped.
 *
 * @module
 */
import { setImmediate } from "node:timers";
import type { Logger } from "@logtape/logtape";
import {
  encodeAck,
  encodeHistoryEnd,
  encodeJoined,
  encodeLeft,
  encodeMessage,
  type ErrorCode,
  type JsonObject,
  type LeaveReason,
  MAX_REPLAY,
  type MemberInfo,
  WANTS_HISTORY,
  WANTS_IDS,
} from "../protocol/mod.ts";
import { Fanout, type HistoryPage } from "./fanout.ts";
import { type HistoryStore, type StoredMessage, StoreError } from "./store.ts";

/** Where the room queues a member's frames (the session's outbox). */
export interface Mailbox {
  /** Queues a frame; `false` if the mailbox is closed. */
  push(frame: Uint8Array): boolean;
  /**
   * Queues the frames of one member list back to back (each a buffer of its own, possibly
   * shared with other mailboxes); a reply that is not counted in {@link Mailbox.full}.
   */
  pushList(frames: readonly Uint8Array[]): boolean;
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
  /** The room cannot serve the member any more (it missed messages): disconnect it now. */
  drop(reason: string): void;
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
  /** The cluster's state, or `null` for a single-node room. */
  readonly cluster: ClusterStatus | null;
  /** A member id for a new connection, unique in the room (across the cluster's nodes). */
  newMemberId(): number;
  /** Adds a member that has just logged in: welcome, presence, replay, then live messages. */
  join(member: RoomMember, request: JoinRequest): void;
  /** Removes a member (idempotent); others with presence are told why. */
  leave(member: RoomMember, reason: LeaveReason): void;
  /** Accepts a message; it is numbered, stored, broadcast and acked at the end of this turn. */
  post(member: RoomMember, post: Post): void;
  /**
   * Answers `who`: the member list in one frame, or in parts queued together. Returns the
   * frames queued (the session charges the rate limit for them).
   */
  who(member: RoomMember): number;
  /** Answers a `history` page request. */
  history(member: RoomMember, query: HistoryQuery): void;
  /** Numbers, stores, broadcasts and acks the messages posted so far, now. */
  flush(): void;
  /** The server is stopping: members leave without presence traffic. */
  close(): void;
  /**
   * After {@link Room.flush}: a promise that resolves once the messages accepted so far are
   * stored and acked (at most about a second later), for the server to await before telling
   * clients it is stopping; `undefined` when they already are.
   */
  settle(): Promise<void> | undefined;
  /**
   * After {@link Room.close}, once the sessions have closed: releases what the room holds (a
   * cluster node says goodbye to the others and disconnects from Redis). Never rejects.
   */
  stop(): Promise<void>;
}

/** A cluster node's view of the cluster, for stats and metrics. */
export interface ClusterStatus {
  /** This node's number (the high part of its members' ids). */
  node: number;
  /** Whether Redis answers right now. */
  redisUp: boolean;
  /**
   * Whether this node's senders are paused for Redis (too much waits for its answer, or a node
   * is catching up with the stream); a holder of flow control besides the full recipients.
   */
  backlogHeld: boolean;
  /** Live nodes seen at the last check (this one included), 0 before the first. */
  nodes: number;
  /** Members on the other nodes, as this node knows them. */
  remoteMembers: number;
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
  /** Called after a batch is delivered (to write the queued frames out now). */
  delivered?: () => void;
}

/** Most messages stored in one transaction; more posted in one turn are flushed in several. */
const MAX_BATCH = 256;
/** First chunk of rows read for a replay or page; later chunks double. */
const READ_CHUNK = 16;

interface Pending {
  member: RoomMember;
  post: Post;
  /** Other posts of the same `ref` in this batch: they get this message's ack. */
  twins?: RoomMember[];
}

/** The single-node room: in-process fan-out and a local history store. */
export class LocalRoom implements Room {
  #fanout: Fanout;
  #store: HistoryStore;
  #replayBytes: number;
  #logger: Logger;
  #clock: () => number;
  #delivered: () => void;
  #pending: Pending[] = [];
  #pendingRefs = new Map<string, Pending>();
  #scheduled = false;
  #failing = false;
  #closing = false;
  #nextMemberId = 0;
  #stats: RoomStats = { messages: 0, deliveries: 0, refused: 0, storeErrors: 0, duplicates: 0 };

  constructor(options: LocalRoomOptions) {
    this.#store = options.store;
    this.#replayBytes = options.replayBytes;
    this.#fanout = new Fanout(options.hold);
    this.#logger = options.logger;
    this.#clock = options.clock ?? Date.now;
    this.#delivered = options.delivered ?? (() => {});
  }

  get size(): number {
    return this.#fanout.size;
  }

  get stats(): Readonly<RoomStats> {
    return this.#stats;
  }

  get historySize(): number {
    return this.#store.count();
  }

  get cluster(): null {
    return null;
  }

  newMemberId(): number {
    return ++this.#nextMemberId;
  }

  join(member: RoomMember, request: JoinRequest): void {
    const fanout = this.#fanout;
    if (!fanout.add(member)) return;
    fanout.welcome(member, request, [fanout.list]);
    for (const notice of request.notices ?? []) fanout.reply(member, notice);
    fanout.presence(member.id, () => encodeJoined(member));
    if (member.features & WANTS_HISTORY) this.#replay(member, request);
  }

  leave(member: RoomMember, reason: LeaveReason): void {
    if (!this.#fanout.remove(member)) return;
    if (!this.#closing) this.#fanout.presence(member.id, () => encodeLeft(member, reason));
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
        if (member.features & WANTS_IDS) {
          this.#fanout.reply(member, encodeAck(ref, known.id, known.ts));
        }
        return;
      }
    }
    const pending: Pending = { member, post };
    this.#pending.push(pending);
    if (ref !== undefined) this.#pendingRefs.set(ref, pending);
    // A bounded batch: one transaction, and one turn of the event loop, stays short.
    if (this.#pending.length >= MAX_BATCH) {
      this.#flush();
      return;
    }
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(LocalRoom.#flushRoom, this);
    }
  }

  who(member: RoomMember): number {
    return this.#fanout.who(member, [this.#fanout.list]);
  }

  history(member: RoomMember, query: HistoryQuery): void {
    let page: HistoryPage;
    try {
      page = query.after !== undefined
        ? this.#readForward(query.after, query.limit)
        : this.#readBack(query.before, query.limit);
    } catch (error) {
      this.#storeFailed(error);
      member.refused("unavailable", "Cannot read history now; try again later", undefined);
      return;
    }
    this.#fanout.sendHistory(member, page);
  }

  close(): void {
    this.#closing = true;
  }

  settle(): undefined {
    return undefined; // flush() stores and acks synchronously
  }

  stop(): Promise<void> {
    this.#closing = true;
    return Promise.resolve();
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
    try {
      this.#commit(batch);
      this.#delivered();
    } catch (error) {
      // A bug, not the store (its failures are handled in #commit): the batch is refused, the
      // server goes on.
      this.#logger.error("Cannot deliver a batch of {count} messages: {error}", {
        count: batch.length,
        error: String(error),
      });
      for (const { member, post, twins } of batch) {
        for (const who of [member, ...(twins ?? [])]) {
          who.refused("unavailable", UNAVAILABLE, post.ref);
        }
      }
    }
  }

  /** Numbers and stores a batch, then broadcasts every message and acks them, in id order. */
  #commit(batch: Pending[]): void {
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
    // Acks after every broadcast of the batch: between two broadcasts they would split the
    // senders' contiguous runs of the arena, and each run is charged for its arena chunk.
    for (let i = 0; i < batch.length; i++) this.#ack(batch[i], records[i]);
  }

  #broadcast(pending: Pending, record: StoredMessage): void {
    this.#stats.deliveries += this.#fanout.broadcast(record, pending.member.id);
    this.#stats.messages++;
  }

  /** Acks a stored message to its sender and to any twin that posted the same `ref`. */
  #ack(pending: Pending, record: StoredMessage): void {
    const ref = record.ref;
    if (ref === undefined) return;
    let frame: Uint8Array | undefined;
    for (const member of [pending.member, ...(pending.twins ?? [])]) {
      if (!(member.features & WANTS_IDS)) continue;
      frame ??= encodeAck(ref, record.id, record.ts);
      this.#fanout.reply(member, frame);
    }
  }

  /** Replays history to a member that has just joined, then `history_end`. */
  #replay(member: RoomMember, request: JoinRequest): void {
    let page: HistoryPage;
    try {
      if (request.after !== undefined) page = this.#readForward(request.after, MAX_REPLAY);
      else if (request.history > 0) page = this.#readBack(undefined, request.history);
      else page = { frames: [], more: this.#store.count() > 0 };
    } catch (error) {
      this.#storeFailed(error);
      member.refused("unavailable", "Cannot read history now; page it later", undefined);
      this.#fanout.reply(member, encodeHistoryEnd(0, true));
      return;
    }
    this.#fanout.sendHistory(member, page);
  }

  /**
   * Up to `limit` messages after `after`, oldest first, as replay frames, within the byte budget
   * (at least one). Read in growing chunks and encoded as they come, so a page of large messages
   * reads about what it sends, not `limit` rows.
   */
  #readForward(after: number, limit: number): HistoryPage {
    const frames: Uint8Array[] = [];
    let budget = this.#replayBytes;
    let cursor = after;
    let chunk = READ_CHUNK;
    while (true) {
      const want = Math.min(chunk, limit - frames.length);
      const rows = this.#store.after(cursor, want + 1);
      for (let i = 0; i < Math.min(rows.length, want); i++) {
        const frame = encodeMessage(rows[i], true);
        if (frames.length > 0 && frame.length > budget) return { frames, more: true };
        frames.push(frame);
        budget -= frame.length;
      }
      if (rows.length <= want) return { frames, more: false };
      if (frames.length >= limit) return { frames, more: true };
      cursor = rows[want - 1].id;
      chunk *= 2;
    }
  }

  /**
   * The newest `limit` messages before `before` (all, if undefined), oldest first, within the
   * byte budget (at least one): read backwards in growing chunks, so the newest are kept when
   * the budget cuts the page.
   */
  #readBack(before: number | undefined, limit: number): HistoryPage {
    const frames: Uint8Array[] = [];
    let budget = this.#replayBytes;
    let cursor = before;
    let chunk = READ_CHUNK;
    let more = false;
    reading: while (true) {
      const want = Math.min(chunk, limit - frames.length);
      const rows = this.#store.before(cursor, want + 1); // oldest first
      const take = Math.min(rows.length, want);
      for (let i = rows.length - 1; i >= rows.length - take; i--) {
        const frame = encodeMessage(rows[i], true);
        if (frames.length > 0 && frame.length > budget) {
          more = true;
          break reading;
        }
        frames.push(frame);
        budget -= frame.length;
      }
      if (rows.length <= want) break;
      if (frames.length >= limit) {
        more = true;
        break;
      }
      cursor = rows[rows.length - take].id;
      chunk *= 2;
    }
    return { frames: frames.reverse(), more };
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
}

const UNAVAILABLE = "Cannot store the message now; resend it later";
