/**
 * Flow control for the room: when a recipient's send queue is full, the server stops reading
 * from the senders (TCP backpressure reaches them) instead of dropping the recipient. A reader
 * that keeps up therefore never misses a message, whatever the senders do; a reader that holds
 * the room back and accepts nothing for `--stall-timeout` (1 s) is dropped by the server's
 * watchdog.
 *
 * Every message goes to every member, so one full recipient ("holder") pauses every sender.
 * Senders resume, oldest waiter first, as soon as no holder is left; one that fills a queue
 * again goes back to the end of the line, so no sender can starve the others.
 *
 * @module
 */
import type { Outbox } from "./outbox.ts";

/** A sender that flow control pauses and resumes. */
export interface Sender {
  /** Starts reading and handling frames again; the sender calls {@link FlowControl.wait} itself if it must stop again. */
  resume(): void;
}

/** The holders (full recipients) and the senders waiting for them. */
export class FlowControl {
  #holders = new Set<Outbox>();
  #waiting = new Set<Sender>();

  /** Whether some recipient's queue is full, so senders must wait. */
  get blocked(): boolean {
    return this.#holders.size > 0;
  }

  /** Recipients holding the room back. */
  get holders(): number {
    return this.#holders.size;
  }

  /** Senders waiting for the room. */
  get waiting(): number {
    return this.#waiting.size;
  }

  /** Whether `outbox` is holding the room back. */
  isHolder(outbox: Outbox): boolean {
    return this.#holders.has(outbox);
  }

  /** Records that a recipient's queue is full. Idempotent. */
  hold(outbox: Outbox): void {
    this.#holders.add(outbox);
  }

  /** A holder drained (or left): when it was the last one, the waiting senders resume. */
  release(outbox: Outbox): void {
    if (!this.#holders.delete(outbox) || this.#holders.size > 0) return;
    for (const sender of [...this.#waiting]) {
      if (this.#holders.size > 0) break; // the rest keep their place in line
      this.#waiting.delete(sender);
      sender.resume();
    }
  }

  /**
   * Parks a sender until the room is free; call it only while {@link FlowControl.blocked}. A
   * sender that is already waiting keeps its place in line.
   *
   * @returns whether the sender was not waiting yet
   */
  wait(sender: Sender): boolean {
    if (this.#waiting.has(sender)) return false;
    this.#waiting.add(sender);
    return true;
  }

  /** Forgets a sender that closed while waiting. */
  forget(sender: Sender): void {
    this.#waiting.delete(sender);
  }
}
