/**
 * A per-client bounded send queue. Frames queued while a write is in flight are coalesced into
 * one write, and a client whose queue passes the limit is reported as a slow consumer instead of
 * growing memory without bound. `conn.writable` has no useful backpressure, so this is the only
 * path bytes take to a socket.
 *
 * The first write of an idle outbox waits for the end of the current event-loop turn (one
 * `setImmediate` shared by every outbox): a burst of messages read in one turn then leaves as one
 * write (one TLS record, one syscall) per client instead of one per message. Frames that lie
 * back to back in one buffer (as the registry lays out broadcasts) are queued as one run and
 * written as one view of that buffer, without a copy per client.
 *
 * @module
 */
import { setImmediate } from "node:timers";

/** The part of a connection the outbox writes to. */
export interface FrameWriter {
  write(data: Uint8Array): Promise<number>;
}

/** Options for {@link Outbox}. */
export interface OutboxOptions {
  /** Bytes (queued plus in flight) past which the outbox overflows. */
  limit: number;
  /** Called once when a push would pass the limit; the outbox is closed first. */
  onOverflow?: (queuedBytes: number) => void;
  /** Called once when a write fails; the outbox is closed first. */
  onError?: (error: unknown) => void;
}

/** Largest coalesced write; bigger batches are split so one write never copies too much. */
const MAX_BATCH = 256 * 1024;
/** Frames this large are written on their own: one more write costs less than copying them. */
const COPY_LIMIT = 16 * 1024;

/** Outboxes with frames to write at the end of this event-loop turn. */
let due: Outbox[] = [];

function flushDue(): void {
  const outboxes = due;
  due = [];
  for (const outbox of outboxes) outbox.flush();
}

/** Bounded, coalescing send queue for one connection. */
export class Outbox {
  #writer: FrameWriter;
  #limit: number;
  #onOverflow?: (queuedBytes: number) => void;
  #onError?: (error: unknown) => void;
  #queue: Uint8Array[] = [];
  /** Bytes that directly follow the last queued frame in its buffer and belong to its run. */
  #tail = 0;
  #bytes = 0;
  #writing = false;
  #scheduled = false;
  #closed = false;
  #idle: (() => void)[] = [];
  #bytesWritten = 0;

  constructor(writer: FrameWriter, options: OutboxOptions) {
    this.#writer = writer;
    this.#limit = options.limit;
    this.#onOverflow = options.onOverflow;
    this.#onError = options.onError;
  }

  /** Bytes queued or in flight. */
  get queuedBytes(): number {
    return this.#bytes;
  }

  /** Bytes handed to the connection so far. */
  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /** Whether the outbox no longer accepts frames. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Queues one frame. The frame is not copied, so it may be shared between outboxes and must
   * not be changed afterwards. Returns `false` if the outbox is closed or just overflowed.
   */
  push(frame: Uint8Array): boolean {
    if (this.#closed) return false;
    if (this.#bytes + frame.byteLength > this.#limit) {
      const queued = this.#bytes;
      this.close();
      this.#onOverflow?.(queued);
      return false;
    }
    const queue = this.#queue;
    const last = queue.length > 0 ? queue[queue.length - 1] : undefined;
    if (
      last !== undefined && frame.buffer === last.buffer &&
      frame.byteOffset === last.byteOffset + last.byteLength + this.#tail
    ) {
      this.#tail += frame.byteLength;
    } else {
      if (this.#tail > 0) this.#sealTail();
      queue.push(frame);
    }
    this.#bytes += frame.byteLength;
    if (!this.#writing && !this.#scheduled) {
      this.#scheduled = true;
      if (due.push(this) === 1) setImmediate(flushDue);
    }
    return true;
  }

  /**
   * Starts writing what is queued now instead of at the end of the event-loop turn. Called by
   * the shared scheduler; harmless at any time.
   */
  flush(): void {
    this.#scheduled = false;
    if (!this.#writing && !this.#closed && this.#queue.length > 0) this.#pump();
  }

  /** Resolves once everything queued so far is written, or the outbox is closed. */
  drain(): Promise<void> {
    if (!this.#writing && this.#queue.length === 0) return Promise.resolve();
    if (this.#closed) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stops writing and drops whatever is queued. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#tail = 0;
    this.#bytes = 0;
    this.#settle();
  }

  async #pump(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const batch = this.#takeBatch();
        let offset = 0;
        while (offset < batch.byteLength) {
          offset += await this.#writer.write(offset === 0 ? batch : batch.subarray(offset));
          if (this.#closed) return;
        }
        this.#bytes -= batch.byteLength;
        this.#bytesWritten += batch.byteLength;
      }
    } catch (error) {
      if (!this.#closed) {
        this.close();
        this.#onError?.(error);
      }
    } finally {
      this.#writing = false;
      this.#settle();
    }
  }

  /**
   * Takes the next write: small frames copied together into one buffer (up to
   * {@link MAX_BATCH}), a large frame alone and uncopied.
   */
  #takeBatch(): Uint8Array {
    if (this.#tail > 0) this.#sealTail();
    const queue = this.#queue;
    if (queue.length === 1 || queue[0].byteLength >= COPY_LIMIT) return queue.shift()!;
    let count = 0;
    let size = 0;
    while (count < queue.length) {
      const length = queue[count].byteLength;
      if (length >= COPY_LIMIT || size + length > MAX_BATCH) break;
      size += length;
      count++;
    }
    if (count === 1) return queue.shift()!;
    const batch = new Uint8Array(size);
    let offset = 0;
    for (let i = 0; i < count; i++) {
      batch.set(queue[i], offset);
      offset += queue[i].byteLength;
    }
    this.#queue = count === queue.length ? [] : queue.slice(count);
    return batch;
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
    if (this.#writing && !this.#closed) return;
    if (this.#queue.length > 0 && !this.#closed) return;
    const waiters = this.#idle;
    this.#idle = [];
    for (const resolve of waiters) resolve();
  }
}
