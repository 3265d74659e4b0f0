/**
 * A chat link that stays logged in: the first connection must succeed, later losses are repaired
 * by reconnecting with exponential backoff (1 s doubling to 30 s) and logging in again. Messages
 * sent while disconnected wait in order and go out after the next login.
 *
 * Without a configured pin, the fingerprint seen on the first connection is pinned for the
 * reconnects (trust on first use), so a reconnect cannot be silently intercepted.
 *
 * @module
 */

import { DEFAULT_MAX_FRAME, encodeFrame, HEADER_SIZE, type JsonObject } from "../protocol/mod.ts";
import { ClientError, EXIT_CONNECT } from "./exit.ts";
import { connect, type Connection, type ConnectOptions } from "./conn.ts";

/** First reconnect delay, milliseconds. */
export const BACKOFF_INITIAL_MS = 1_000;
/** Longest reconnect delay, milliseconds. */
export const BACKOFF_MAX_MS = 30_000;

/**
 * Builds the `message` frame for `content` from `sender`.
 *
 * @throws {RangeError} if the frame would exceed the server's default frame limit (the server
 * would drop the connection).
 */
export function messageFrame(content: string, sender: string): JsonObject {
  const frame = { type: "message", content, sender };
  const size = encodeFrame(frame).length - HEADER_SIZE;
  if (size > DEFAULT_MAX_FRAME) {
    throw new RangeError(
      `Cannot send message: ${size} bytes exceeds the server's limit of ${DEFAULT_MAX_FRAME}`,
    );
  }
  return frame;
}

/** Options of {@link ChatLink}. */
export interface LinkOptions extends Omit<ConnectOptions, "onFingerprint" | "signal"> {
  backoffInitialMs?: number;
  backoffMaxMs?: number;
}

/** What a {@link ChatLink} reports. */
export interface LinkEvents {
  /** Every frame received, in order, including each `auth_result`. */
  onFrame(frame: JsonObject): void;
  /** Connection state changes, in plain words. */
  onStatus(text: string): void;
  /** The fingerprint seen on the first connection, before the password is sent. */
  onFingerprint?(fingerprint: string): void;
}

interface Outgoing {
  frame: JsonObject;
  resolve(): void;
  reject(error: Error): void;
}

/** A connection to the chat server that reconnects after losses. */
export class ChatLink {
  #options: LinkOptions;
  #events: LinkEvents;
  #pin?: string;
  #conn?: Connection;
  #queue: Outgoing[] = [];
  #inflight = new Set<Outgoing>();
  #flushWaiters: (() => void)[] = [];
  #stopped = false;
  #abort = new AbortController();
  #sleepTimer?: ReturnType<typeof setTimeout>;
  #wakeSleep?: () => void;
  #reconnecting?: Promise<void>;
  #failed = Promise.withResolvers<ClientError>();

  constructor(options: LinkOptions, events: LinkEvents) {
    this.#options = options;
    this.#events = events;
    this.#pin = options.pin;
  }

  /** Resolves with the error that ended the link for good while reconnecting (pin or password). */
  get failed(): Promise<ClientError> {
    return this.#failed.promise;
  }

  /** Whether the link is logged in right now. */
  get connected(): boolean {
    return this.#conn !== undefined && !this.#conn.closed;
  }

  /**
   * Connects and logs in the first time.
   *
   * @throws {ClientError} if that fails; there is no retry for the first connection.
   */
  async start(): Promise<void> {
    const conn = await connect({
      ...this.#options,
      onFingerprint: (fingerprint) => this.#events.onFingerprint?.(fingerprint),
      signal: this.#abort.signal,
    });
    this.#pin ??= conn.fingerprint;
    this.#attach(conn);
  }

  /** Queues a frame; resolves once it is written to a logged-in connection. */
  send(frame: JsonObject): Promise<void> {
    if (this.#stopped) return Promise.reject(new Error("Cannot send: the client is closing"));
    return new Promise((resolve, reject) => {
      this.#queue.push({ frame, resolve, reject });
      this.#pump();
    });
  }

  /** Resolves once everything sent so far has been written. */
  flushed(): Promise<void> {
    if (this.#queue.length === 0 && this.#inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#flushWaiters.push(resolve));
  }

  /** Stops reconnecting, ends the connection after pending writes, and rejects unsent frames. */
  async close(): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      this.#abort.abort();
      clearTimeout(this.#sleepTimer);
      this.#wakeSleep?.();
    }
    await this.#reconnecting;
    await this.#conn?.end();
    this.#rejectPending("Cannot send: the client closed before the message could be sent");
  }

  #attach(conn: Connection): void {
    this.#conn = conn;
    // Frames whose write did not complete on the lost connection go first, in order.
    this.#queue.unshift(...this.#inflight);
    this.#inflight.clear();
    conn.listen({
      onFrame: (frame) => this.#events.onFrame(frame),
      onClose: (reason) => this.#onClose(conn, reason),
    });
    this.#pump();
  }

  #pump(): void {
    const conn = this.#conn;
    if (!conn || conn.closed) return;
    for (const item of this.#queue.splice(0)) {
      this.#inflight.add(item);
      conn.send(item.frame).then(() => {
        this.#inflight.delete(item);
        item.resolve();
        this.#checkFlushed();
      }, () => {
        // Stays in flight; re-sent after the next login, or rejected by close().
      });
    }
  }

  #checkFlushed(): void {
    if (this.#queue.length > 0 || this.#inflight.size > 0) return;
    for (const wake of this.#flushWaiters.splice(0)) wake();
  }

  #rejectPending(message: string): void {
    const error = new Error(message);
    for (const item of [...this.#inflight, ...this.#queue]) item.reject(error);
    this.#inflight.clear();
    this.#queue.length = 0;
    this.#checkFlushed();
  }

  #onClose(conn: Connection, reason: string): void {
    if (this.#conn !== conn) return;
    this.#conn = undefined;
    if (!this.#stopped) this.#reconnecting = this.#reconnect(reason);
  }

  async #reconnect(reason: string): Promise<void> {
    const max = this.#options.backoffMaxMs ?? BACKOFF_MAX_MS;
    let delay = this.#options.backoffInitialMs ?? BACKOFF_INITIAL_MS;
    this.#events.onStatus(`Connection lost: ${reason}. Reconnecting in ${seconds(delay)}`);
    while (!this.#stopped) {
      await this.#sleep(delay);
      if (this.#stopped) break;
      try {
        const conn = await connect({
          ...this.#options,
          pin: this.#pin,
          signal: this.#abort.signal,
        });
        if (this.#stopped) {
          await conn.end();
          break;
        }
        this.#events.onStatus("Reconnected and logged in again");
        this.#attach(conn);
        return;
      } catch (error) {
        if (this.#stopped) break;
        const failure = error instanceof ClientError
          ? error
          : new ClientError(EXIT_CONNECT, (error as Error).message, { retryable: true });
        if (!failure.retryable) {
          this.#stopped = true;
          this.#rejectPending("Cannot send: the client gave up reconnecting");
          this.#failed.resolve(failure);
          return;
        }
        delay = Math.min(delay * 2, max);
        this.#events.onStatus(`${failure.message}. Retrying in ${seconds(delay)}`);
      }
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.#wakeSleep = resolve;
      this.#sleepTimer = setTimeout(resolve, ms);
    });
  }
}

function seconds(ms: number): string {
  return `${ms / 1000} s`;
}
