/**
 * The members of a room on this server and what they are sent: the part of a room that the
 * single-node room ({@link LocalRoom}) and the cluster room ({@link RedisRoom}) share. Both decide
 * *when* a message is delivered (at once here, or once Redis has ordered it); this class does the
 * delivering.
 *
 * A frame is encoded once per kind of recipient (seed bytes, or with `id` and `ts`) and small
 * frames are copied once into a shared arena, so an outbox that queues several of them holds one
 * contiguous run and writes it as one view. A recipient whose queue fills is reported through
 * `hold`: flow control pauses the senders; nobody is skipped.
 *
 * @module
 */
import {
  broadcastJson,
  encodeFrame,
  encodeHistoryEnd,
  encodeJsonFrame,
  encodeMessage,
  featureNames,
  HEADER_SIZE,
  type JsonObject,
  memberJson,
  messageJson,
  WANTS_IDS,
  WANTS_PRESENCE,
} from "../protocol/mod.ts";
import { encodeWelcomeList, encodeWhoList, MemberList } from "./members.ts";
import type { JoinRequest, Mailbox, RoomMember } from "./room.ts";
import type { StoredMessage } from "./store.ts";

/** Size of one arena chunk. A chunk lives until no outbox holds a view of it. */
const ARENA_SIZE = 64 * 1024;
/** Larger frames are shared as they are: one such frame is a write of its own anyway. */
const ARENA_MAX_FRAME = 4 * 1024;

/** A replay or page, encoded. */
export interface HistoryPage {
  frames: Uint8Array[];
  /** Messages lie beyond the page in its direction. */
  more: boolean;
}

/** This server's members of a room, and the fan-out to them. */
export class Fanout {
  #members = new Map<number, RoomMember>();
  /**
   * The members that asked for presence, in order of joining: a join or a leave visits only
   * them, not every member (10,000 seed clients logging in would otherwise cost 50 M visits).
   */
  #watchers = new Set<RoomMember>();
  /** The same members, encoded for member lists. */
  #list = new MemberList();
  #idsMembers = 0;
  #seedMembers = 0;
  /** Members whose room frames wait (their replay is being read), with what waits. */
  #deferred: Map<RoomMember, Uint8Array[]> | null = null;
  #hold: (mailbox: Mailbox) => void;
  #arena = new Uint8Array(0);
  #used = 0;

  /** `hold`: a recipient's queue is full (flow control pauses the senders). */
  constructor(hold: (mailbox: Mailbox) => void) {
    this.#hold = hold;
  }

  /** Members here. */
  get size(): number {
    return this.#members.size;
  }

  /** Members here, in order of joining. */
  members(): IterableIterator<RoomMember> {
    return this.#members.values();
  }

  /** The members here, as member lists carry them. */
  get list(): MemberList {
    return this.#list;
  }

  /** Whether `member` (this very session) is a member. */
  has(member: RoomMember): boolean {
    return this.#members.get(member.id) === member;
  }

  /** The member with this id, if it is here. */
  get(id: number): RoomMember | undefined {
    return this.#members.get(id);
  }

  /**
   * Adds a member; false if its id is here already. A `deferred` member's room frames
   * (broadcasts, presence) wait until {@link Fanout.undefer}; replies go out at once.
   */
  add(member: RoomMember, deferred = false): boolean {
    if (this.#members.has(member.id)) return false;
    this.#members.set(member.id, member);
    if (member.features & WANTS_PRESENCE) this.#watchers.add(member);
    this.#list.add(member);
    if (member.features & WANTS_IDS) this.#idsMembers++;
    else this.#seedMembers++;
    if (deferred) (this.#deferred ??= new Map()).set(member, []);
    return true;
  }

  /** Removes a member; false if it was not here. */
  remove(member: RoomMember): boolean {
    if (this.#members.get(member.id) !== member) return false;
    this.#members.delete(member.id);
    this.#watchers.delete(member);
    this.#list.delete(member.id);
    if (member.features & WANTS_IDS) this.#idsMembers--;
    else this.#seedMembers--;
    this.#undeferred(member);
    return true;
  }

  /** Queues what waited for a deferred member (after its replay), and stops deferring. */
  undefer(member: RoomMember): void {
    const waiting = this.#undeferred(member);
    if (!waiting) return;
    const outbox = member.outbox;
    for (const frame of waiting) outbox.push(frame);
    if (outbox.full) this.#hold(outbox);
  }

  #undeferred(member: RoomMember): Uint8Array[] | undefined {
    const deferred = this.#deferred;
    const waiting = deferred?.get(member);
    if (!waiting) return undefined;
    deferred!.delete(member);
    if (deferred!.size === 0) this.#deferred = null;
    return waiting;
  }

  /**
   * Sends `welcome` to a member that has just joined, with the members of `lists` (everyone
   * logged in, in order) for presence: in one frame, or in parts queued together (see
   * `members.ts`).
   */
  welcome(member: RoomMember, request: JoinRequest, lists: readonly MemberList[]): void {
    if (!request.welcome) return;
    const welcome: JsonObject = { ...request.welcome, features: featureNames(member.features) };
    welcome.member = memberJson(member);
    if (member.features & WANTS_PRESENCE) {
      member.outbox.pushList(encodeWelcomeList(welcome, lists));
    } else this.reply(member, encodeFrame(welcome));
  }

  /**
   * Answers `who` with the members of `lists`: one frame, or parts queued together (one
   * snapshot: nothing comes between them). A reply: it holds nobody. Returns the frames.
   */
  who(member: RoomMember, lists: readonly MemberList[]): number {
    const frames = encodeWhoList(lists);
    member.outbox.pushList(frames);
    return frames.length;
  }

  /**
   * Queues a message to every member but its sender (`fromId`, if it is here): the seed's bytes
   * or, for members with `ids`, the frame with `id` and `ts`. Returns the deliveries.
   */
  broadcast(record: StoredMessage, fromId: number): number {
    const members = this.#members;
    const from = members.get(fromId);
    const share = members.size > 2;
    const present = from ? 1 : 0;
    const senderIds = from && from.features & WANTS_IDS ? 1 : 0;
    let seedFrame: Uint8Array | undefined;
    let idsFrame: Uint8Array | undefined;
    if (this.#seedMembers > present - senderIds) {
      const json = broadcastJson(record, record.senderIp);
      seedFrame = share ? this.#shared(json) : encodeJsonFrame(json);
    }
    if (this.#idsMembers > senderIds) {
      const json = messageJson(record);
      idsFrame = share ? this.#shared(json) : encodeJsonFrame(json);
    }
    const deferred = this.#deferred;
    let delivered = 0;
    for (const member of members.values()) {
      if (member === from) continue;
      const frame = member.features & WANTS_IDS ? idsFrame! : seedFrame!;
      const waiting = deferred?.get(member);
      if (waiting) {
        waiting.push(frame);
        delivered++;
        continue;
      }
      const outbox = member.outbox;
      if (outbox.push(frame)) {
        delivered++;
        if (outbox.full) this.#hold(outbox);
      }
    }
    return delivered;
  }

  /**
   * Sends a presence frame to every member but `aboutId` that asked for presence. Like a
   * broadcast, a recipient it fills holds the senders back.
   */
  presence(aboutId: number, encode: () => Uint8Array): void {
    let frame: Uint8Array | undefined;
    const deferred = this.#deferred;
    for (const member of this.#watchers) {
      if (member.id === aboutId) continue;
      frame ??= encode();
      const waiting = deferred?.get(member);
      if (waiting) {
        waiting.push(frame);
        continue;
      }
      const outbox = member.outbox;
      if (outbox.push(frame) && outbox.full) this.#hold(outbox);
    }
  }

  /**
   * Queues a frame that answers the member itself (welcome, replay, ack, who). It never holds
   * the room: a member that does not read its answers fills only its own queue, and its session
   * then stops reading its requests until it drains (or is dropped by `--write-timeout`).
   */
  reply(member: RoomMember, frame: Uint8Array): void {
    member.outbox.push(frame);
  }

  /** Queues a page of history and its `history_end`: replies, so they hold nobody but this member. */
  sendHistory(member: RoomMember, page: HistoryPage): void {
    for (const frame of page.frames) member.outbox.push(frame);
    this.reply(member, encodeHistoryEnd(page.frames.length, page.more));
  }

  /**
   * Encodes `json` as a frame straight into the arena, right after the previous one (no frame
   * of its own to allocate and copy). A frame that does not fit in what is left of the chunk
   * goes into a new chunk; a large one gets a buffer of its own.
   */
  #shared(json: string): Uint8Array {
    if (json.length > ARENA_MAX_FRAME) return encodeJsonFrame(json);
    for (let fresh = false;; fresh = true) {
      const start = this.#used;
      const room = this.#arena.subarray(start + HEADER_SIZE);
      const { read, written } = ENCODER.encodeInto(json, room);
      if (read === json.length && written <= ARENA_MAX_FRAME) {
        new DataView(this.#arena.buffer, start).setUint32(0, written);
        this.#used = start + HEADER_SIZE + written;
        return this.#arena.subarray(start, this.#used);
      }
      if (fresh) return encodeJsonFrame(json); // more than ARENA_MAX_FRAME once encoded
      this.#arena = new Uint8Array(ARENA_SIZE);
      this.#used = 0;
    }
  }
}

/**
 * Encodes messages (oldest first) as replay frames within `budget` bytes, at least one. When the
 * budget cuts the page, `fromNewest` keeps the newest messages (paging back), else the oldest.
 * `more`: messages lay beyond the given ones already.
 */
export function encodePage(
  rows: readonly StoredMessage[],
  budget: number,
  fromNewest: boolean,
  more: boolean,
): HistoryPage {
  const frames: Uint8Array[] = [];
  const n = rows.length;
  for (let k = 0; k < n; k++) {
    const frame = encodeMessage(rows[fromNewest ? n - 1 - k : k], true);
    if (frames.length > 0 && frame.length > budget) {
      more = true;
      break;
    }
    frames.push(frame);
    budget -= frame.length;
  }
  if (fromNewest) frames.reverse();
  return { frames, more };
}

const ENCODER = new TextEncoder();
