/**
 * A per-client send queue with honest memory accounting. Frames queued while a write is in flight
 * are coalesced into one write; the write's completion (the bytes reached the kernel) is the
 * client's progress, which flow control and the stall checks watch.
 *
 * The first write of an idle outbox waits for the end of the current event-loop turn (one
 * `setImmediate` shared by every outbox): a burst of messages read in one turn then leaves as one
 * write (one TLS record, one syscall) per client instead of one per message. Frames that lie
 * back to back in one buffer (as the room lays out broadcasts) are queued as one run and
 * written as one view of that buffer, without a copy per client.
 *
 * Memory: a queued frame is charged for the whole buffer it keeps alive (a view of a 64 KiB arena
 * chunk is charged 64 KiB, once per chunk run), plus the write in flight. Passing the limit does
 * not drop anything: the outbox reports that it is full, and its owner slows the senders down.
 *
 * A member list ({@link Outbox.pushList}) is charged too, but not counted against the limit: it
 * is bounded by the size of the room instead (and its owner queues one at a time), and the room
 * traffic behind it still gets the whole limit before the client holds anyone back. Otherwise a
 * list of several MiB would hold the room until it had drained.
 *
 * @module
 */
import { setImmediate } from "node:timers";

/** The part of a connection the outbox writes to: a `node:net`/`node:tls` socket. */
export interface FrameWriter {
  /** Writes `data` and calls `done` once it has been handed to the kernel, or has failed. */
  write(data: Uint8Array, done: (error?: Error | null) => void): unknown;
}

/** What an outbox tells its owner. Methods rather than closures: one object per connection less. */
export interface OutboxOwner {
  /** A full outbox drained to half its limit. */
  outboxRelieved?(): void;
  /** A write failed; the outbox is closed first. Called once. */
  outboxFailed?(error: unknown): void;
  /** The last frame of the member lists queued ({@link Outbox.pushList}) has been written. */
  outboxListSent?(): void;
}

/** Options for {@link Outbox}. */
export interface OutboxOptions {
  /** Charged bytes (queued plus in flight) above which the outbox is full. */
  limit: number;
  /** Monotonic clock in milliseconds. */
  now: () => number;
  /** Told when a full outbox drains, or a write fails. */
  owner?: OutboxOwner;
}

/** Largest coalesced write. Small enough that a reader's progress shows well within a second. */
const MAX_BATCH = 64 * 1024;
/** Frames this large are written on their own: one more write costs less than copying them. */
const COPY_LIMIT = 16 * 1024;

/** Outboxes with frames to write at the end of this event-loop turn. */
let due: Outbox[] = [];

function flushDue(): void {
  const outboxes = due;
  due = [];
  for (const outbox of outboxes) outbox.flush();
}

/**
 * Writes every outbox with frames queued now, instead of at the `setImmediate` they scheduled.
 * The room calls it after delivering a batch it flushed from a `setImmediate` of its own: the
 * frames then leave in the same turn, not one loop iteration later.
 */
export function flushOutboxes(): void {
  if (due.length > 0) flushDue();
}

/** Coalescing send queue for one connection. */
export class Outbox {
  #writer: FrameWriter;
  #limit: number;
  #now: () => number;
  #owner: OutboxOwner | undefined;
  #queue: Uint8Array[] = [];
  /** What each queued frame is charged: its buffer's size, on the last frame of a buffer's run. */
  #charges: number[] = [];
  /** Bytes that directly follow the last queued frame in its buffer and belong to its run. */
  #tail = 0;
  /** Charged bytes, queued and in flight. */
  #bytes = 0;
  #inFlight = 0;
  /** Queue indices of the member-list frames still queued, a range `[from, to)` per list. */
  #lists: { from: number; to: number }[] = [];
  /** Charged bytes of member-list frames, queued and in flight (not counted against the limit). */
  #listBytes = 0;
  /** Of those, in the write in flight. */
  #listInFlight = 0;
  #writing = false;
  #scheduled = false;
  #closed = false;
  #full = false;
  /** When the outbox last made progress, or started waiting with bytes to write. */
  #since = 0;
  /**
   * When bytes other than a member list's last reached the kernel, or started waiting: a client
   * that holds the room back makes progress only when the room's frames drain, not while it
   * downloads a list queued ahead of them.
   */
  #roomSince = 0;
  #idle: (() => void)[] = [];

  constructor(writer: FrameWriter, options: OutboxOptions) {
    this.#writer = writer;
    this.#limit = options.limit;
    this.#now = options.now;
    this.#owner = options.owner;
  }

  /** Bytes charged to this client: what its queued frames keep alive, plus the write in flight. */
  get queuedBytes(): number {
    return this.#bytes;
  }

  /**
   * Whether the charged bytes passed the limit (until they drain to half of it); member lists
   * are not counted.
   */
  get full(): boolean {
    return this.#full;
  }

  /** Whether frames of a member list are queued or being written. */
  get listQueued(): boolean {
    return this.#listBytes > 0;
  }

  /** Whether the outbox no longer accepts frames. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Milliseconds the outbox has had bytes to write without any write completing; 0 if empty. */
  stalledFor(now: number): number {
    return this.#bytes > 0 ? now - this.#since : 0;
  }

  /**
   * While {@link Outbox.full}: milliseconds since bytes other than a member list's last drained
   * (or started waiting); 0 when not full. Writes of a member list queued ahead of the room's
   * frames do not count: they do not relieve the room.
   */
  roomStalledFor(now: number): number {
    return this.#full ? now - this.#roomSince : 0;
  }

  /**
   * Queues one frame. The frame is not copied, so it may be shared between outboxes and must
   * not be changed afterwards. Never refuses a frame while open: the caller checks
   * {@link Outbox.full} and slows down. Returns `false` only if the outbox is closed.
   */
  push(frame: Uint8Array): boolean {
    if (this.#closed) return false;
    // The room's frames start waiting now, unless some were waiting already.
    if (this.#bytes === this.#listBytes) this.#roomSince = this.#now();
    this.#enqueue(frame);
    if (this.#bytes - this.#listBytes > this.#limit) this.#full = true;
    return true;
  }

  /** Queues a frame; returns what it adds to the charged bytes. */
  #enqueue(frame: Uint8Array): number {
    const queue = this.#queue;
    const n = queue.length;
    const last = n > 0 ? queue[n - 1] : undefined;
    let charge = 0;
    if (last !== undefined && frame.buffer === last.buffer) {
      // The buffer is charged already; the charge moves to the last frame that keeps it alive.
      if (frame.byteOffset === last.byteOffset + last.byteLength + this.#tail) {
        this.#tail += frame.byteLength;
      } else {
        if (this.#tail > 0) this.#sealTail();
        queue.push(frame);
        this.#charges.push(this.#charges[n - 1]);
        this.#charges[n - 1] = 0;
      }
    } else {
      if (this.#tail > 0) this.#sealTail();
      charge = frame.buffer.byteLength;
      queue.push(frame);
      this.#charges.push(charge);
    }
    if (this.#bytes === 0) this.#since = this.#now();
    this.#bytes += charge;
    if (!this.#writing && !this.#scheduled) {
      this.#scheduled = true;
      if (due.push(this) === 1) setImmediate(flushDue);
    }
    return charge;
  }

  /**
   * Queues the frames of one member list, back to back. Each must be a buffer of its own (a
   * frame is charged for its buffer); they may be shared with other outboxes. They are charged
   * ({@link Outbox.queuedBytes}) but not counted against the limit, so they never make the
   * outbox {@link Outbox.full}: the owner bounds them (one list at a time). Once the last of
   * them is written, the owner is told (`outboxListSent`). Returns `false` if closed.
   */
  pushList(frames: readonly Uint8Array[]): boolean {
    if (this.#closed) return false;
    if (frames.length === 0) return true;
    // A list's frames never join the run of the frame before them (their buffers are their
    // own), so they take the next indices.
    const from = this.#queue.length;
    for (const frame of frames) this.#listBytes += this.#enqueue(frame);
    this.#lists.push({ from, to: this.#queue.length });
    return true;
  }

  /**
   * Starts writing what is queued now instead of at the end of the event-loop turn. Called by
   * the shared scheduler; harmless at any time.
   */
  flush(): void {
    this.#scheduled = false;
    if (!this.#writing && !this.#closed && this.#queue.length > 0) this.#write();
  }

  /** Resolves once everything queued so far is written, or the outbox is closed. */
  drain(): Promise<void> {
    if (this.#closed || (!this.#writing && this.#queue.length === 0)) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stops writing and drops whatever is queued. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#charges = [];
    this.#tail = 0;
    this.#bytes = 0;
    this.#inFlight = 0;
    this.#lists = [];
    this.#listBytes = this.#listInFlight = 0;
    this.#settle();
  }

  #write(): void {
    const { data, charge } = this.#takeBatch();
    this.#writing = true;
    this.#inFlight = charge;
    try {
      this.#writer.write(data, this.#written);
    } catch (error) {
      this.#written(error as Error);
    }
  }

  #written = (error?: Error | null): void => {
    this.#writing = false;
    if (this.#closed) return;
    if (error) {
      this.close();
      this.#owner?.outboxFailed?.(error);
      return;
    }
    this.#bytes -= this.#inFlight;
    if (this.#inFlight > this.#listInFlight) this.#roomSince = this.#now();
    this.#inFlight = 0;
    const listSent = this.#listInFlight > 0 && this.#listBytes === this.#listInFlight;
    this.#listBytes -= this.#listInFlight;
    this.#listInFlight = 0;
    this.#since = this.#now();
    if (this.#queue.length > 0) this.#write();
    if (this.#full && this.#bytes - this.#listBytes <= this.#limit / 2) {
      this.#full = false;
      this.#owner?.outboxRelieved?.();
    }
    if (listSent && !this.#closed) this.#owner?.outboxListSent?.();
    this.#settle();
  };

  /**
   * Takes the next write and what it charges while in flight: small frames copied together into
   * one buffer (up to {@link MAX_BATCH}), or one frame (or run) alone and uncopied.
   */
  #takeBatch(): { data: Uint8Array; charge: number } {
    if (this.#tail > 0) this.#sealTail();
    const queue = this.#queue;
    const charges = this.#charges;
    let count = 0;
    let size = 0;
    while (count < queue.length) {
      const length = queue[count].byteLength;
      if (length >= COPY_LIMIT || size + length > MAX_BATCH) break;
      size += length;
      count++;
    }
    if (count <= 1) count = 1;
    if (this.#lists.length > 0) this.#takeLists(count);
    if (count === 1) {
      const data = queue.shift()!;
      // Its charge moves from the queue to the write in flight.
      return { data, charge: charges.shift()! };
    }
    const data = new Uint8Array(size);
    let offset = 0;
    let released = 0;
    for (let i = 0; i < count; i++) {
      data.set(queue[i], offset);
      offset += queue[i].byteLength;
      released += charges[i];
    }
    if (count === queue.length) {
      this.#queue = [];
      this.#charges = [];
    } else {
      queue.splice(0, count);
      charges.splice(0, count);
    }
    // The copy replaces what the frames kept alive.
    this.#bytes += size - released;
    return { data, charge: size };
  }

  /**
   * The first `count` queued frames are being taken for a write: the charges of the member-list
   * frames among them move to the write in flight, and the list's range moves up.
   */
  #takeLists(count: number): void {
    const charges = this.#charges;
    for (const list of this.#lists) {
      const end = Math.min(count, list.to);
      for (let i = list.from; i < end; i++) this.#listInFlight += charges[i];
      list.from = Math.max(0, list.from - count);
      list.to -= count;
    }
    while (this.#lists.length > 0 && this.#lists[0].to <= 0) this.#lists.shift();
  }

  /** Replaces the last queued frame with one view over its whole run. */
  #sealTail(): void {
    const queue = this.#queue;
    const last = queue[queue.length - 1];
    queue[queue.length - 1] = new Uint8Array(
      last.buffer,
      last.byteOffset,
      last.byteLength + this.#tail,
    );
    this.#tail = 0;
  }

  #settle(): void {
    if (!this.#closed && (this.#writing || this.#queue.length > 0)) return;
    const waiters = this.#idle;
    this.#idle = [];
    for (const resolve of waiters) resolve();
  }
}
