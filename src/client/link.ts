/**
 * A chat link that stays logged in: the first connection must succeed, later losses are repaired
 * by reconnecting with exponential backoff (1 s doubling to 30 s) and logging in again. Messages
 * sent while disconnected wait in order and go out after the next login.
 *
 * Against a version 2 server (one that answered the login with `welcome` and message ids), every
 * message carries a `ref` and stays pending until the server acks it: after a reconnect every
 * pending message is sent again, in order and with the same `ref` (the server drops the copies
 * it already has), and the login asks for the messages missed meanwhile (`after`). Against an
 * older server a message is done once written, as it always was.
 *
 * Without a configured pin, the fingerprint seen on the first connection is pinned for the
 * reconnects (trust on first use), so a reconnect cannot be silently intercepted.
 *
 * @module
 */

import { DEFAULT_MAX_FRAME, encodeFrame, HEADER_SIZE, type JsonObject } from "../protocol/mod.ts";
import { ClientError, EXIT_CONNECT } from "./exit.ts";
import { connect, type Connection, type ConnectOptions } from "./conn.ts";
import { type Hello, messageId, Pacer, parseWelcome, type Welcome } from "./v2.ts";

/** First reconnect delay, milliseconds. */
export const BACKOFF_INITIAL_MS = 1_000;
/** Longest reconnect delay, milliseconds. */
export const BACKOFF_MAX_MS = 30_000;
/** First delay before resending a message the server could not take now, milliseconds. */
export const RESEND_INITIAL_MS = 1_000;
/** Longest delay between resends of one message, milliseconds. */
export const RESEND_MAX_MS = 30_000;
/** Room kept in every message frame for the `ref` added on version 2 connections. */
const REF_PLACEHOLDER = crypto.randomUUID();

/**
 * Builds the `message` frame for `content` from `sender`.
 *
 * @throws {RangeError} if the frame (with room for a `ref`) would exceed the server's default
 * frame limit: the server would drop the connection, and a resend after reconnecting would
 * only repeat that.
 */
export function messageFrame(content: string, sender: string): JsonObject {
  const frame = { type: "message", content, sender };
  const size = encodeFrame({ ...frame, ref: REF_PLACEHOLDER }).length - HEADER_SIZE;
  if (size > DEFAULT_MAX_FRAME) {
    throw new RangeError(
      `Cannot send message: ${size} bytes exceeds the server's limit of ${DEFAULT_MAX_FRAME}`,
    );
  }
  return frame;
}

/** Options of {@link ChatLink}. */
export interface LinkOptions extends Omit<ConnectOptions, "onFingerprint" | "signal" | "hello"> {
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /**
   * Version 2 login fields; the link adds `after` on reconnects. Without them the link logs in
   * as a seed client and never expects acks.
   */
  hello?: Omit<Hello, "after">;
  /** See {@link RESEND_INITIAL_MS}. */
  resendInitialMs?: number;
  /** See {@link RESEND_MAX_MS}. */
  resendMaxMs?: number;
}

/** What a {@link ChatLink} reports. */
export interface LinkEvents {
  /** Every frame received, in order, including each `auth_result` and `welcome`. */
  onFrame(frame: JsonObject): void;
  /** Connection state changes, in plain words. */
  onStatus(text: string): void;
  /** The fingerprint seen on the first connection, before the password is sent. */
  onFingerprint?(fingerprint: string): void;
  /** The first login succeeded; called before any of its frames (welcome, replay) arrive. */
  onLoggedIn?(): void;
}

/** A message the server refused for good (`invalid_message`, or too large for it). */
export interface Refusal {
  frame: JsonObject;
  reason: string;
}

/**
 * Where a pending message is: waiting for a connection (`queued`), being written, written and
 * waiting for its ack, or waiting to be resent after the server could not take it.
 */
type State = "queued" | "writing" | "written" | "waiting";

interface Pending {
  frame: JsonObject;
  ref: string;
  state: State;
  /** The connection of the current write, so a late callback from a lost one is ignored. */
  conn?: Connection;
  /** Answers "try again later" received so far, for the backoff. */
  attempts: number;
  timer?: ReturnType<typeof setTimeout>;
  written: PromiseWithResolvers<void>;
}

/** A connection to the chat server that reconnects after losses. */
export class ChatLink {
  #options: LinkOptions;
  #events: LinkEvents;
  #pin?: string;
  #conn?: Connection;
  /** What the current (or last) connection's `welcome` said; none from an older server. */
  #welcome?: Welcome;
  /** Whether the `who` parts coming complete the current connection's welcome list (no charge). */
  #welcomeList = false;
  #pacer?: Pacer;
  #pumpTimer?: ReturnType<typeof setTimeout>;
  #rateTimer?: ReturnType<typeof setTimeout>;
  /** Messages not yet done, in the order they were sent, by `ref`. */
  #pending = new Map<string, Pending>();
  #refused: Refusal[] = [];
  #waiters: { done: () => boolean; wake: () => void }[] = [];
  /** Largest id of a received message: where a reconnect's replay starts. */
  #lastId?: number;
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

  /** Whether the server acks messages (it said so in its last `welcome`). */
  get acking(): boolean {
    return this.#welcome?.ids ?? false;
  }

  /** Messages sent and not yet acked (or, with an older server, not yet written), in order. */
  unconfirmed(): JsonObject[] {
    return [...this.#pending.values()].map((item) => item.frame);
  }

  /** Messages the server refused for good; they are not resent. */
  refused(): Refusal[] {
    return [...this.#refused];
  }

  /**
   * Connects and logs in the first time.
   *
   * @throws {ClientError} if that fails; there is no retry for the first connection.
   */
  async start(): Promise<void> {
    const conn = await connect({
      ...this.#options,
      hello: this.#hello(),
      onFingerprint: (fingerprint) => this.#events.onFingerprint?.(fingerprint),
      signal: this.#abort.signal,
    });
    this.#pin ??= conn.fingerprint;
    this.#events.onLoggedIn?.();
    this.#attach(conn);
  }

  /**
   * Queues a message frame (from {@link messageFrame}); resolves once it is written to a
   * logged-in connection. Whether the server took it shows in {@link settled}.
   */
  send(frame: JsonObject): Promise<void> {
    if (this.#stopped) return Promise.reject(new Error("Cannot send: the client is closing"));
    const item: Pending = {
      frame,
      ref: crypto.randomUUID(),
      state: "queued",
      attempts: 0,
      written: Promise.withResolvers(),
    };
    this.#pending.set(item.ref, item);
    this.#pump();
    return item.written.promise;
  }

  /**
   * Sends a request that only makes sense now (`who`, `history`): never queued for a later
   * connection, and not sent when it would exceed the server's rate (the server would drop it
   * without saying which frame it dropped). Returns whether it went out.
   */
  request(frame: JsonObject): boolean {
    if (!this.connected || (this.#pacer?.take() ?? 0) > 0) return false;
    this.#conn!.send(frame).catch(() => {});
    return true;
  }

  /** Resolves once every message sent so far has been written. */
  flushed(): Promise<void> {
    return this.#until(() => {
      for (const item of this.#pending.values()) {
        if (item.state === "queued" || item.state === "writing") return false;
      }
      return true;
    });
  }

  /**
   * Resolves once no message is pending: each was acked or refused (or, with an older server,
   * written), or the link closed.
   */
  settled(): Promise<void> {
    return this.#until(() => this.#pending.size === 0);
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
    this.#stopTimers();
    this.#rejectUnwritten("Cannot send: the client closed before the message could be sent");
    this.#check();
  }

  #hello(): Hello | undefined {
    const hello = this.#options.hello;
    if (!hello || this.#lastId === undefined) return hello;
    return { ...hello, after: this.#lastId };
  }

  #until(done: () => boolean): Promise<void> {
    if (this.#stopped || done()) return Promise.resolve();
    return new Promise((wake) => this.#waiters.push({ done, wake }));
  }

  #check(): void {
    this.#waiters = this.#waiters.filter((waiter) => {
      if (!this.#stopped && !waiter.done()) return true;
      waiter.wake();
      return false;
    });
  }

  #attach(conn: Connection): void {
    this.#conn = conn;
    this.#stopTimers();
    this.#welcomeList = false;
    this.#useWelcome(conn.welcome);
    // Everything not done goes (again) in the order it was sent: with acks, the server drops
    // the copies it already has; without, only writes that did not complete are left.
    for (const item of this.#pending.values()) {
      clearTimeout(item.timer);
      item.conn = undefined;
      item.state = "queued";
    }
    conn.listen({
      onFrame: (frame) => this.#onFrame(conn, frame),
      onClose: (reason) => this.#onClose(conn, reason),
    });
    this.#pump();
  }

  #useWelcome(welcome: Welcome | undefined): void {
    this.#welcome = welcome;
    this.#pacer = welcome?.ids ? new Pacer(welcome.limits) : undefined;
  }

  #onFrame(conn: Connection, frame: JsonObject): void {
    const id = messageId(frame);
    if (id !== undefined) this.#lastId = Math.max(this.#lastId ?? id, id);
    if (frame.type === "ack" && typeof frame.ref === "string") this.#onAck(frame);
    else if (frame.type === "error" && typeof frame.ref === "string") {
      this.#onRefError(frame.ref, frame);
    } else if (frame.type === "error" && frame.code === "rate_limited" && this.acking) {
      this.#resendUnackedSoon();
    } else if (frame.type === "welcome" && conn === this.#conn && !conn.welcome) {
      // Later than the login waited for it: from now on this is a version 2 connection.
      conn.welcome = parseWelcome(frame);
      if (conn.welcome) this.#useWelcome(conn.welcome);
    }
    if (frame.type === "welcome") this.#welcomeList = frame.members_more === true;
    else if (frame.type === "who") {
      // The server charges a `who` answered in parts a rate token per part after the first.
      if (frame.more === true && !this.#welcomeList) this.#pacer?.charge(1);
      if (frame.more !== true) this.#welcomeList = false;
    }
    this.#events.onFrame(frame);
  }

  #onAck(frame: JsonObject): void {
    const item = this.#pending.get(frame.ref as string);
    if (!item) return;
    this.#done(item);
    item.written.resolve();
  }

  #onRefError(ref: string, frame: JsonObject): void {
    const item = this.#pending.get(ref);
    if (!item) return;
    if (frame.code === "invalid_message") {
      const reason = typeof frame.error === "string" ? frame.error : "invalid message";
      this.#refuse(item, reason);
      return;
    }
    // `unavailable` (or any other "not now" about this message): send it again later.
    const initial = this.#options.resendInitialMs ?? RESEND_INITIAL_MS;
    const delay = Math.min(
      initial * 2 ** item.attempts,
      this.#options.resendMaxMs ?? RESEND_MAX_MS,
    );
    item.attempts++;
    item.state = "waiting";
    item.conn = undefined;
    clearTimeout(item.timer);
    item.timer = setTimeout(() => {
      item.timer = undefined;
      if (item.state !== "waiting") return;
      item.state = "queued";
      this.#pump();
    }, delay);
  }

  /**
   * After `rate_limited` (which does not say which message was dropped), sends every written
   * but unacked message again shortly; the server drops the copies it already took.
   */
  #resendUnackedSoon(): void {
    if (this.#rateTimer !== undefined) return;
    this.#rateTimer = setTimeout(() => {
      this.#rateTimer = undefined;
      for (const item of this.#pending.values()) {
        if (item.state !== "written") continue;
        item.state = "queued";
        item.conn = undefined;
      }
      this.#pump();
    }, this.#options.resendInitialMs ?? RESEND_INITIAL_MS);
  }

  #pump(): void {
    const conn = this.#conn;
    if (!conn || conn.closed || this.#pumpTimer !== undefined) return;
    for (const item of this.#pending.values()) {
      if (item.state !== "queued") continue;
      const wait = this.#pacer?.take() ?? 0;
      if (wait > 0) {
        this.#pumpTimer = setTimeout(() => {
          this.#pumpTimer = undefined;
          this.#pump();
        }, wait);
        return;
      }
      this.#write(conn, item);
    }
  }

  #write(conn: Connection, item: Pending): void {
    const acking = this.acking;
    const frame = acking ? { ...item.frame, ref: item.ref } : item.frame;
    const limit = this.#welcome?.limits.maxFrame;
    const size = limit === undefined ? 0 : encodeFrame(frame).length - HEADER_SIZE;
    if (limit !== undefined && size > limit) {
      // Sent anyway, it would cost the connection, and every reconnect would resend it.
      this.#refuse(item, `${size} bytes exceeds this server's limit of ${limit}`);
      return;
    }
    item.state = "writing";
    item.conn = conn;
    conn.send(frame).then(() => {
      if (item.conn !== conn || item.state !== "writing") return;
      item.state = "written";
      item.written.resolve();
      // An older server sends no acks: a written message is as done as it will get.
      if (!acking) this.#done(item);
      this.#check();
    }, () => {
      if (item.conn !== conn || item.state !== "writing") return;
      // Sent again after the next login, or rejected by close().
      item.state = "queued";
      item.conn = undefined;
    });
  }

  #done(item: Pending): void {
    clearTimeout(item.timer);
    item.state = "written";
    this.#pending.delete(item.ref);
    this.#check();
  }

  #refuse(item: Pending, reason: string): void {
    this.#refused.push({ frame: item.frame, reason });
    item.written.reject(new Error(`Message refused by the server: ${reason}`));
    item.written.promise.catch(() => {});
    this.#done(item);
  }

  #rejectUnwritten(message: string): void {
    for (const item of this.#pending.values()) {
      if (item.state === "written" || item.state === "waiting") continue;
      item.written.reject(new Error(message));
      // Written or not, an unconfirmed message stays listed for unconfirmed().
      item.state = "waiting";
    }
  }

  #stopTimers(): void {
    clearTimeout(this.#pumpTimer);
    clearTimeout(this.#rateTimer);
    this.#pumpTimer = this.#rateTimer = undefined;
    for (const item of this.#pending.values()) {
      clearTimeout(item.timer);
      item.timer = undefined;
    }
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
          hello: this.#hello(),
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
          this.#stopTimers();
          this.#rejectUnwritten("Cannot send: the client gave up reconnecting");
          this.#check();
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
