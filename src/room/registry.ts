/**
 * The authenticated clients and the broadcast that fans one encoded frame out to them.
 *
 * A small broadcast frame is first copied (once) into a shared arena, right after the previous
 * one: an outbox that queues several broadcasts then holds one contiguous run of the arena and
 * writes it as one view, with no copy per recipient. A recipient whose queue fills is reported to
 * flow control, which pauses the senders; nobody is skipped.
 *
 * @module
 */
import type { FlowControl } from "../server/flow.ts";
import type { Outbox } from "../server/outbox.ts";

/** Size of one arena chunk. A chunk lives until no outbox holds a view of it. */
const ARENA_SIZE = 64 * 1024;
/** Larger frames are shared as they are: one such frame is a write of its own anyway. */
const ARENA_MAX_FRAME = 4 * 1024;

/** What the registry knows about one logged-in client. */
export interface Client {
  /** Connection id, unique per server. */
  readonly id: number;
  /** Peer address as shown in `sender_ip`. */
  readonly ip: string;
  /** Last `sender` name the client used (`anon` until it sends). */
  name: string;
  /** `Date.now()` at login. */
  readonly since: number;
  /** The client's send queue. */
  readonly outbox: Outbox;
}

/** A `Map` of logged-in clients by id. */
export class Registry {
  #clients = new Map<number, Client>();
  #flow: FlowControl;
  #arena = new Uint8Array(0);
  #used = 0;

  constructor(flow: FlowControl) {
    this.#flow = flow;
  }

  /** Number of logged-in clients. */
  get size(): number {
    return this.#clients.size;
  }

  /** Adds a client that has just logged in. */
  add(client: Client): void {
    this.#clients.set(client.id, client);
  }

  /** Removes a client; returns whether it was there. */
  delete(client: Client): boolean {
    return this.#clients.delete(client.id);
  }

  /**
   * Queues `frame` (encoded once by the caller) to every client except `from`. A recipient whose
   * queue is now full holds the room: senders wait (see {@link FlowControl}) until it drains or
   * is dropped as a stalled reader.
   *
   * @returns the number of clients the frame was queued to
   */
  broadcast(from: Client | null, frame: Uint8Array): number {
    if (this.#clients.size > 2) frame = this.#share(frame);
    let delivered = 0;
    for (const client of this.#clients.values()) {
      if (client === from) continue;
      const outbox = client.outbox;
      if (outbox.push(frame)) {
        delivered++;
        if (outbox.full) this.#flow.hold(outbox);
      }
    }
    return delivered;
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
