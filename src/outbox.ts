/**
 * A per-client bounded send queue. Frames queued while a write is in flight are coalesced into
 * one write, and a client whose queue passes the limit is reported as a slow consumer instead of
 * growing memory without bound. `conn.writable` has no useful backpressure, so this is the only
 * path bytes take to a socket.
 *
 * @module
 */

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

/** Bounded, coalescing send queue for one connection. */
export class Outbox {
  #writer: FrameWriter;
  #limit: number;
  #onOverflow?: (queuedBytes: number) => void;
  #onError?: (error: unknown) => void;
  #queue: Uint8Array[] = [];
  #bytes = 0;
  #writing = false;
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
    this.#queue.push(frame);
    this.#bytes += frame.byteLength;
    if (!this.#writing) this.#pump();
    return true;
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

  /** Takes the queued frames as one buffer: the frame itself if alone, else a copy of several. */
  #takeBatch(): Uint8Array {
    const queue = this.#queue;
    if (queue.length === 1 || queue[0].byteLength >= MAX_BATCH) return queue.shift()!;
    let count = 0;
    let size = 0;
    while (count < queue.length && size + queue[count].byteLength <= MAX_BATCH) {
      size += queue[count++].byteLength;
    }
    const batch = new Uint8Array(size);
    let offset = 0;
    for (let i = 0; i < count; i++) {
      batch.set(queue[i], offset);
      offset += queue[i].byteLength;
    }
    this.#queue = count === queue.length ? [] : queue.slice(count);
    return batch;
  }

  #settle(): void {
    if (this.#writing && !this.#closed) return;
    if (this.#queue.length > 0 && !this.#closed) return;
    const waiters = this.#idle;
    this.#idle = [];
    for (const resolve of waiters) resolve();
  }
}
