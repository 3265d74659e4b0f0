/**
 * One client connection after its TLS handshake: authentication under a deadline, then the
 * message loop with its limits and flow control. The session is driven by its transport's events
 * (a TLS stream or a WebSocket, see `transport.ts`); every failure ends here, in this connection
 * only, and every path releases the connection.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Limits } from "./config.ts";
import type { FlowControl } from "./flow.ts";
import { TokenBucket } from "./limits.ts";
import { Outbox, type OutboxOwner } from "./outbox.ts";
import type { Gatekeeper } from "./auth.ts";
import {
  AUTH_FAILED_FRAME,
  AUTH_OK_FRAME,
  decodeBody,
  DEFAULT_SENDER,
  encodeError,
  type ErrorCode,
  type JsonObject,
  type LeaveReason,
  parseAuth,
  parseRequest,
  ProtocolError,
  WANTS_IDS,
} from "../protocol/mod.ts";
import type { Room, RoomMember } from "../room/room.ts";
import { CLOSE_GRACE_MS } from "./socket.ts";
import type { ServerStats } from "./stats.ts";
import type { Transport, TransportHandler } from "./transport.ts";

/** The one `rate_limited` notice, encoded once. */
const RATE_LIMITED_FRAME = encodeError("rate_limited", "Message dropped: sending too fast");

/** What a session needs from its server. */
export interface SessionContext {
  limits: Limits;
  /** Checks passwords under the lockout. */
  gate: Gatekeeper;
  room: Room;
  /** The server's part of the `welcome` frame (`server`, `limits`). */
  welcome: JsonObject;
  flow: FlowControl;
  logger: Logger;
  stats: ServerStats;
  /** Monotonic clock in milliseconds; injectable for tests. */
  now: () => number;
  /**
   * The same clock, read at the server's last watchdog tick (every `tickMs`): what the outboxes
   * use to time stalls, so the hot path never reads the clock.
   */
  coarseNow: () => number;
  /** How far `coarseNow` may lag behind `now`. */
  tickMs: number;
  /** Called once when a session's connection has closed and the session is cleaned up. */
  closed: (session: Session) => void;
}

const enum State {
  /** Waiting for the auth frame. */
  Auth,
  /** Checking the password. */
  Verifying,
  /** Logged in. */
  Chat,
  /** Flushing its last frames, or closed. */
  Closing,
}

/**
 * One client connection, from its completed handshake to its close. Once logged in, the session
 * is a {@link RoomMember}. It reads and writes frames through a {@link Transport}, so a TLS
 * client and a browser's WebSocket get exactly the same limits, errors and room. An idle
 * connection's memory matters at ten thousand of them: nothing is allocated per session beyond
 * its transport, outbox and rate bucket.
 */
export class Session implements RoomMember, OutboxOwner, TransportHandler {
  /** Connection id, unique per server. */
  readonly id: number;
  /** Peer IP as shown to other clients. */
  readonly ip: string;
  /** Display name from the auth frame (`anon` without one): presence, default `sender`. */
  name: string = DEFAULT_SENDER;
  /** `Date.now()` at login (0 before). */
  since = 0;
  /** Version-2 features granted at login (`WANTS_*` bits); 0 for a seed client. */
  features = 0;
  #transport: Transport;
  #ctx: SessionContext;
  #outbox: Outbox;
  #state = State.Auth;
  #paused = false;
  /** The peer finished sending (its frames are still handled). */
  #ended = false;
  /** A `who` waits for the member list queued before it to be written (reading is paused). */
  #whoWaiting = false;
  #bucket: TokenBucket | null = null;
  #noticeAt = -Infinity;
  #reason = "closed by peer";
  #authTimer: ReturnType<typeof setTimeout> | undefined;
  #graceTimer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param transport the connection, ready to carry frames (TLS handshake, or WebSocket upgrade,
   * completed)
   * @param options `acceptedAt`: when the TCP connection was accepted (on `context.now`), from
   * which the auth deadline runs
   */
  constructor(
    transport: Transport,
    context: SessionContext,
    options: { id: number; ip: string; acceptedAt: number },
  ) {
    this.#transport = transport;
    this.#ctx = context;
    this.id = options.id;
    this.ip = options.ip;
    this.#outbox = new Outbox(transport, {
      limit: context.limits.maxSendQueue,
      now: context.coarseNow,
      owner: this,
    });
    const wait = options.acceptedAt + context.limits.authTimeoutMs - context.now();
    this.#authTimer = setTimeout(Session.#authTimedOut, Math.max(0, wait), this);
    transport.attach(this);
    context.logger.info("Connection {id} from {ip}", { id: this.id, ip: this.ip });
  }

  static #authTimedOut(session: Session): void {
    session.#authTimer = undefined;
    session.#fail(new ProtocolError("auth_timeout", "Cannot wait longer for auth"));
  }

  /** The client's send queue. */
  get outbox(): Outbox {
    return this.#outbox;
  }

  /** Whether the client has logged in. */
  get authenticated(): boolean {
    return this.since !== 0;
  }

  /** Tells the client the server is stopping, flushes briefly and closes. */
  shutdown(): void {
    this.#fail(new ProtocolError("shutting_down", "Server is shutting down"));
  }

  /**
   * Drops the client if it has had bytes to write and accepted none for too long: for
   * `--write-timeout`, or for `--stall-timeout` while its full queue holds the room back.
   * Called periodically by the server.
   *
   * "Accepted" means a write completed: the bytes reached the kernel. The kernel wakes a writer
   * whose send buffer is full only once a third of it has drained (up to ~1.4 MB with Linux's
   * default 4 MiB), so a reader slower than that per `--stall-timeout` looks stalled while it
   * holds the room back; see docs/SECURITY.md.
   */
  checkStall(now: number): void {
    if (this.#state === State.Closing) return;
    // The outbox timed its last progress on the coarse clock, which may lag by a tick: count
    // the idle time from the earliest moment it can have started.
    let idle = this.#outbox.stalledFor(now);
    if (idle === 0) return;
    const { limits, stats, flow, logger, tickMs } = this.#ctx;
    idle -= tickMs;
    if (idle >= limits.writeTimeoutMs) {
      stats.writeTimeouts++;
      logger.warn("Dropping client {id} from {ip}: accepted nothing for {seconds} s", {
        id: this.id,
        ip: this.ip,
        seconds: Math.round(idle / 1000),
      });
      this.#drop("write timeout");
    } else if (
      flow.isHolder(this.#outbox) &&
      this.#outbox.roomStalledFor(now) - tickMs >= limits.stallTimeoutMs
    ) {
      stats.stalledReaders++;
      logger.warn(
        "Dropping client {id} from {ip}: stalled reader, {queued} bytes queued and none accepted for {ms} ms",
        { id: this.id, ip: this.ip, queued: this.#outbox.queuedBytes, ms: Math.round(idle) },
      );
      this.#drop("stalled reader");
    }
  }

  /** The room cannot serve this client any more: disconnect it at once, with a log line. */
  drop(reason: string): void {
    if (this.#state === State.Closing) return;
    this.#ctx.logger.warn("Dropping client {id} from {ip}: {reason}", {
      id: this.id,
      ip: this.ip,
      reason,
    });
    this.#drop(reason);
  }

  /** Called by flow control when the room is free again. */
  resume(): void {
    if (!this.#paused || this.#state === State.Closing) return;
    const { flow } = this.#ctx;
    if (flow.blocked || this.#outbox.full || this.#whoWaiting) {
      this.#pause(); // still held: wait (again) without touching the transport
      return;
    }
    this.#paused = false;
    this.#transport.resume();
    this.#handleFrames();
  }

  /** Called by the transport: frames may have arrived. */
  onReceived(): void {
    if (this.#state === State.Closing || this.#paused) return;
    this.#handleFrames();
  }

  /** Handles the frames received so far, until one must wait (auth check, flow control). */
  #handleFrames(): void {
    const { flow } = this.#ctx;
    while (!this.#paused) {
      const state = this.#state;
      if (state !== State.Auth && state !== State.Chat) return;
      if (state === State.Chat && (flow.blocked || this.#outbox.full)) {
        this.#pause();
        return;
      }
      let body: Uint8Array | null;
      try {
        body = this.#transport.next();
      } catch (error) {
        this.#fail(error);
        return;
      }
      if (body === null) break;
      if (state === State.Auth) this.#authenticate(body);
      else this.#handleMessage(body);
    }
    if (this.#ended && !this.#paused) {
      const state = this.#state;
      if (state === State.Auth || state === State.Chat) {
        this.#finish(this.#transport.partial ? "closed inside a frame" : "closed by peer");
      }
    }
  }

  /**
   * Stops reading until the room is free: a full recipient holds it (flow control), or this
   * client's own queue is full (it does not read its replies).
   */
  #pause(): void {
    if (!this.#paused) {
      this.#paused = true;
      this.#transport.pause();
    }
    // A full queue of its own resumes it through outboxRelieved, a waiting `who` through
    // outboxListSent, a full room through the flow control. Either way resume() looks again,
    // and pauses again if another still holds.
    if (this.#outbox.full || this.#whoWaiting) return;
    if (this.#ctx.flow.wait(this)) this.#ctx.stats.senderPauses++;
  }

  /** Called by the outbox: this client's queue drained to half its limit. */
  outboxRelieved(): void {
    this.#ctx.flow.release(this.#outbox);
    this.#answerWaitingWho();
    this.resume();
  }

  /** Called by the outbox: the member lists queued for this client are written. */
  outboxListSent(): void {
    this.#answerWaitingWho();
  }

  /** Answers a waiting `who` once no list is queued and the room's frames are not piled up. */
  #answerWaitingWho(): void {
    if (!this.#whoWaiting || this.#state !== State.Chat) return;
    if (this.#outbox.listQueued || this.#outbox.full) return;
    this.#whoWaiting = false;
    this.#who();
    this.resume();
  }

  /** Called by the outbox: a write failed. */
  outboxFailed(): void {
    this.#drop("write failed");
  }

  async #authenticate(body: Uint8Array): Promise<void> {
    const { gate, logger, room, limits, now } = this.#ctx;
    this.#state = State.Verifying;
    try {
      const request = parseAuth(decodeBody(body));
      const verdict = await gate.check(
        this.ip,
        request.password,
        () => this.#state === State.Verifying,
      );
      if (verdict === null) return;
      clearTimeout(this.#authTimer);
      this.#authTimer = undefined;
      if (verdict === "wrong") {
        this.#send(AUTH_FAILED_FRAME);
        this.#finish("wrong password");
        return;
      }
      this.since = Date.now();
      this.name = request.name;
      this.features = request.features ?? 0;
      this.#bucket = new TokenBucket({ rate: limits.rate, burst: limits.burst, now: now() });
      this.#send(AUTH_OK_FRAME);
      this.#state = State.Chat;
      const notices = request.problems.map((problem) => {
        this.#count("invalid_message");
        return encodeError("invalid_message", problem);
      });
      room.join(this, {
        welcome: request.features === null ? null : this.#ctx.welcome,
        notices,
        history: request.history,
        after: request.after,
      });
      logger.info("Client {id} from {ip} logged in as {name}", {
        id: this.id,
        ip: this.ip,
        name: this.name,
      });
    } catch (error) {
      this.#fail(error);
      return;
    }
    this.#handleFrames();
  }

  #handleMessage(body: Uint8Array): void {
    const { limits, room, now } = this.#ctx;
    // The token is taken before the frame is even parsed: a flood costs one comparison a frame.
    const time = limits.rate > 0 ? now() : 0;
    if (!this.#bucket!.take(time)) {
      this.#count("rate_limited");
      // At most one notice per token period, so a flood cannot make the server write much.
      if (time - this.#noticeAt >= 1000 / limits.rate) {
        this.#noticeAt = time;
        this.#send(RATE_LIMITED_FRAME);
      }
      return;
    }
    try {
      const request = parseRequest(decodeBody(body), this.features, this.name);
      if (request.type === "message") room.post(this, request);
      else if (request.type === "who") this.#who();
      else room.history(this, request);
    } catch (error) {
      if (!(error instanceof ProtocolError) || error.closes) {
        this.#fail(error);
        return;
      }
      this.refused(error.code, error.message, error.ref);
    }
  }

  /**
   * Answers `who`. A member list can be several MiB, and is not counted against the client's
   * queue limit: so a `who` sent while a list is still queued for this client (its welcome's,
   * or the previous `who`'s), or while its queue is full, waits until that one is written and
   * the queue is relieved, and nothing more is read from the client meanwhile. The answer costs a rate token per frame (one was taken already): the
   * bucket may go into debt, and the client's next frames are then dropped (`rate_limited`)
   * until it has refilled, as any frame without a token.
   */
  #who(): void {
    // A list queued ahead of room frames that fill the queue would keep them from the client
    // for as long as the list takes: wait until they drain too.
    if (this.#outbox.listQueued || this.#outbox.full) {
      this.#whoWaiting = true;
      this.#pause();
      return;
    }
    const { room, limits, now } = this.#ctx;
    const frames = room.who(this);
    if (frames > 1) this.#bucket!.charge(frames - 1, limits.rate > 0 ? now() : 0);
  }

  /**
   * Tells the client one of its requests was refused (non-fatal); the `ref` of the message it
   * is about goes to clients that asked for ids.
   */
  refused(code: ErrorCode, message: string, ref: string | undefined): void {
    if (this.#state === State.Closing) return;
    this.#count(code);
    this.#send(encodeError(code, message, this.features & WANTS_IDS ? ref : undefined));
  }

  /** Queues a frame of this session's own (a reply, not a broadcast). */
  #send(frame: Uint8Array): void {
    this.#outbox.push(frame);
  }

  /** Reports an error to the client; a closing one (or any other failure) ends the session. */
  #fail(error: unknown): void {
    if (this.#state === State.Closing) return;
    if (!(error instanceof ProtocolError)) {
      this.#ctx.logger.error("Closing connection {id} after an unexpected error: {error}", {
        id: this.id,
        error: String(error),
      });
      this.#finish("internal error");
      return;
    }
    this.#count(error.code);
    this.#send(encodeError(error.code, error.message));
    if (error.closes) this.#finish(error.code);
  }

  #count(code: ErrorCode): void {
    const errors = this.#ctx.stats.errors;
    errors[code] = (errors[code] ?? 0) + 1;
  }

  /** Called by the transport: the peer finished sending. */
  onEnded(): void {
    this.#ended = true;
    if (!this.#paused) this.#handleFrames();
  }

  /** Called by the transport: the connection failed (it closes next). */
  onError(error: Error): void {
    if (this.#state === State.Closing) return;
    const code = (error as { code?: string }).code;
    this.#reason = `connection error: ${code ?? error.name}`;
  }

  /** Leaves the room, flushes what is queued (for at most {@link CLOSE_GRACE_MS}) and closes. */
  #finish(reason: string): void {
    if (this.#state === State.Closing) return;
    this.#leave(reason);
    const transport = this.#transport;
    this.#graceTimer = setTimeout(() => transport.destroy(), CLOSE_GRACE_MS);
    this.#outbox.drain().then(() => transport.end());
  }

  /** Closes at once, dropping whatever is queued. */
  #drop(reason: string): void {
    if (this.#state !== State.Closing) this.#leave(reason);
    this.#outbox.close();
    this.#transport.destroy();
  }

  /** Stops reading and handling frames and leaves the room; the transport is closed by the caller. */
  #leave(reason: string): void {
    this.#state = State.Closing;
    this.#reason = reason;
    if (!this.#paused) this.#transport.pause();
    clearTimeout(this.#authTimer);
    this.#authTimer = undefined;
    const { room, flow } = this.#ctx;
    if (this.authenticated) room.leave(this, leaveReason(reason));
    flow.forget(this);
    flow.release(this.#outbox);
  }

  /** Called by the transport once the connection is closed: cleans up, once. */
  onClosed(): void {
    if (this.#state !== State.Closing) this.#leave(this.#reason);
    clearTimeout(this.#graceTimer);
    this.#outbox.close();
    const { logger } = this.#ctx;
    if (this.authenticated) {
      logger.info("Client {id} from {ip} disconnected: {reason}", {
        id: this.id,
        ip: this.ip,
        reason: this.#reason,
      });
    } else {
      logger.debug("Connection {id} from {ip} closed before login: {reason}", {
        id: this.id,
        ip: this.ip,
        reason: this.#reason,
      });
    }
    this.#ctx.closed(this);
  }
}

/** How presence tells others why a member left, from the session's reason for closing. */
function leaveReason(reason: string): LeaveReason {
  if (reason === "shutting_down") return "shutdown";
  // A failed write means the peer is gone (EPIPE, ECONNRESET): it left, nobody dropped it.
  if (
    reason.startsWith("closed") || reason.startsWith("connection error") ||
    reason === "write failed"
  ) return "quit";
  return "dropped";
}
