/**
 * One connection from accept to close: TLS handshake under a timeout, authentication under a
 * timeout, then the message loop with its limits. Every failure ends here, in this connection's
 * own task, and every path releases the socket.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import type { Limits } from "./config.ts";
import type { AuthLockout } from "./limits.ts";
import { TokenBucket } from "./limits.ts";
import { Outbox } from "./outbox.ts";
import type { PasswordVerifier } from "./password.ts";
import {
  AUTH_FAILED_FRAME,
  AUTH_OK_FRAME,
  decodeBody,
  DEFAULT_SENDER,
  encodeBroadcast,
  encodeError,
  type ErrorCode,
  FrameReader,
  parseAuth,
  parseChat,
  ProtocolError,
} from "./protocol.ts";
import type { Client, Registry } from "./registry.ts";

/** How long a closing connection may take to flush its last frames. */
export const CLOSE_GRACE_MS = 2000;

/** Counters shared by all sessions of a server. */
export interface ServerStats {
  accepted: number;
  rejected: number;
  handshakeFailures: number;
  handshakeTimeouts: number;
  authenticated: number;
  authFailures: number;
  messages: number;
  deliveries: number;
  slowConsumers: number;
  errors: Partial<Record<ErrorCode, number>>;
}

/** What a session needs from its server. */
export interface SessionContext {
  limits: Limits;
  verifier: PasswordVerifier;
  registry: Registry;
  lockout: AuthLockout;
  logger: Logger;
  stats: ServerStats;
  /** Clock in milliseconds; injectable for tests. */
  now: () => number;
}

/** Shows an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as plain IPv4. */
export function normalizeIp(hostname: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(hostname);
  return mapped ? mapped[1] : hostname;
}

/** One client connection. Create it, then await {@link Session.run}; it never rejects. */
export class Session {
  /** Connection id, unique per server. */
  readonly id: number;
  /** Peer IP as shown to other clients. */
  readonly ip: string;
  #conn: Deno.TlsConn;
  #ctx: SessionContext;
  #outbox: Outbox;
  #client: Client | null = null;
  #secure = false;
  #closing: Promise<void> | null = null;
  #reason = "closed by peer";
  #stalled = false;
  /** A closing error to send as soon as the handshake completes. */
  #pending: ProtocolError | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #authTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: Deno.TlsConn, context: SessionContext, options: { id: number }) {
    this.#conn = conn;
    this.#ctx = context;
    this.id = options.id;
    this.ip = normalizeIp((conn.remoteAddr as Deno.NetAddr).hostname);
    this.#outbox = new Outbox(conn, {
      limit: context.limits.maxSendQueue,
      onOverflow: (queued) => {
        context.stats.slowConsumers++;
        context.logger.warn(
          "Dropping client {id} from {ip}: slow consumer, {queued} bytes queued",
          {
            id: this.id,
            ip: this.ip,
            queued,
          },
        );
        this.#finish(`slow consumer: ${queued} bytes queued`);
      },
      onError: () => this.#finish("write failed"),
    });
  }

  /** Whether the client has logged in. */
  get authenticated(): boolean {
    return this.#client !== null;
  }

  /**
   * Runs the connection to its end. With `reject`, the session only completes the handshake,
   * sends that error and closes (used for connection caps).
   */
  async run(reject?: ProtocolError): Promise<void> {
    const { limits, logger } = this.#ctx;
    const authDeadline = performance.now() + limits.authTimeoutMs;
    try {
      this.#timer = setTimeout(() => this.#handshakeTimedOut(), limits.handshakeTimeoutMs);
      await this.#conn.handshake();
      clearTimeout(this.#timer);
      if (this.#stalled) return;
      if (this.#closing) return;
      this.#secure = true;
      reject ??= this.#pending;
      if (reject) return await this.#fail(reject);
      this.#authTimer = setTimeout(() => {
        this.#fail(new ProtocolError("auth_timeout", "Cannot wait longer for auth"));
      }, Math.max(0, authDeadline - performance.now()));
      logger.info("Connection {id} from {ip}", { id: this.id, ip: this.ip });
      await this.#serve();
    } catch (error) {
      this.#onError(error);
    } finally {
      clearTimeout(this.#timer);
      clearTimeout(this.#authTimer);
      await this.#finish(this.#reason);
      if (this.#client) {
        this.#ctx.registry.delete(this.#client);
        logger.info("Client {id} from {ip} disconnected: {reason}", {
          id: this.id,
          ip: this.ip,
          reason: this.#reason,
        });
      } else if (this.#secure) {
        logger.debug("Connection {id} from {ip} closed before login: {reason}", {
          id: this.id,
          ip: this.ip,
          reason: this.#reason,
        });
      }
    }
  }

  /**
   * Deno cannot release a socket while its TLS handshake is in progress: `close()` rejects the
   * pending handshake but the socket stays open until the peer acts (checked on Deno 2.9.6). So a
   * timed-out handshake is not closed, which would only hide it; the session stays counted
   * against the connection caps until the peer completes the handshake (then it is closed at
   * once) or goes away.
   */
  #handshakeTimedOut(): void {
    this.#stalled = true;
    this.#reason = "handshake timeout";
    this.#ctx.stats.handshakeTimeouts++;
    this.#ctx.logger.debug("Handshake with {ip} timed out", { ip: this.ip });
  }

  /**
   * Tells the client the server is stopping, flushes briefly and closes. A connection still in
   * its handshake gets the notice as soon as the handshake completes (within the grace period).
   */
  shutdown(): Promise<void> {
    const notice = new ProtocolError("shutting_down", "Server is shutting down");
    if (this.#secure || this.#closing) return this.#fail(notice);
    this.#pending = notice;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#finish("server shutting down"), CLOSE_GRACE_MS);
    return Promise.resolve();
  }

  async #serve(): Promise<void> {
    const { limits, stats, registry, logger, now } = this.#ctx;
    // Plain conn.read() calls: a BYOB stream costs ~6 KiB of heap per idle connection. Closing the
    // connection ends the reads.
    const reader = new FrameReader(this.#conn, { maxFrame: limits.maxFrame });
    const first = await reader.read();
    if (first === null || this.#closing) return;
    const password = parseAuth(decodeBody(first));
    this.#checkLockout();
    const ok = await this.#ctx.verifier.verify(password);
    if (this.#closing) return;
    // Guesses sent together all passed the first check; those whose verdict comes after the
    // lockout began get no verdict either.
    this.#checkLockout();
    clearTimeout(this.#authTimer);
    if (!ok) {
      stats.authFailures++;
      const locked = this.#ctx.lockout.fail(this.ip, now());
      logger.warn("Failed login from {ip}{lock}", {
        ip: this.ip,
        lock: locked ? "; locked out" : "",
      });
      this.#outbox.push(AUTH_FAILED_FRAME);
      this.#reason = "wrong password";
      return;
    }
    stats.authenticated++;
    const client: Client = {
      id: this.id,
      ip: this.ip,
      name: DEFAULT_SENDER,
      since: Date.now(),
      sent: 0,
      received: 0,
      outbox: this.#outbox,
    };
    this.#outbox.push(AUTH_OK_FRAME);
    this.#client = client;
    registry.add(client);
    logger.info("Client {id} from {ip} logged in", { id: this.id, ip: this.ip });

    const bucket = new TokenBucket({ rate: limits.rate, burst: limits.burst, now: now() });
    while (!this.#closing) {
      const body = await reader.read();
      if (body === null || this.#closing) return;
      try {
        const frame = decodeBody(body);
        // Every frame costs a token, valid or not, so a flood of bad frames is limited too.
        if (!bucket.take(now())) {
          throw new ProtocolError("rate_limited", "Message dropped: sending too fast");
        }
        const message = parseChat(frame);
        client.name = message.sender;
        client.sent++;
        stats.messages++;
        stats.deliveries += registry.broadcast(client, encodeBroadcast(message, this.ip));
      } catch (error) {
        if (!(error instanceof ProtocolError) || error.closes) throw error;
        this.#count(error.code);
        this.#outbox.push(encodeError(error.code, error.message));
      }
    }
  }

  /** Throws `locked_out` if this IP is locked out: its password is then not checked. */
  #checkLockout(): void {
    if (this.#ctx.lockout.isLocked(this.ip, this.#ctx.now())) {
      throw new ProtocolError("locked_out", "Cannot log in: too many failed attempts, try later");
    }
  }

  /** Reports a closing protocol error to the client, then closes. */
  #fail(error: ProtocolError): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#count(error.code);
    if (this.#secure) this.#outbox.push(encodeError(error.code, error.message));
    return this.#finish(error.code);
  }

  #onError(error: unknown): void {
    if (error instanceof ProtocolError) {
      this.#fail(error);
      return;
    }
    if (this.#closing) return; // the close we started surfaced as a read/handshake error
    if (this.#stalled) return;
    if (!this.#secure) {
      this.#ctx.stats.handshakeFailures++;
      this.#reason = "handshake failed";
      this.#ctx.logger.debug("Handshake with {ip} failed: {error}", {
        ip: this.ip,
        error: String(error),
      });
    } else {
      this.#reason = error instanceof Deno.errors.UnexpectedEof
        ? "closed inside a frame"
        : `connection error: ${(error as Error)?.name ?? "unknown"}`;
    }
  }

  #count(code: ErrorCode): void {
    const errors = this.#ctx.stats.errors;
    errors[code] = (errors[code] ?? 0) + 1;
  }

  /** Flushes what is queued (for at most {@link CLOSE_GRACE_MS}) and closes. Idempotent. */
  #finish(reason: string): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#reason = reason;
    this.#closing = this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    clearTimeout(this.#timer);
    clearTimeout(this.#authTimer);
    if (this.#client) this.#ctx.registry.delete(this.#client);
    if (this.#secure && !this.#outbox.closed && this.#outbox.queuedBytes > 0) {
      let grace: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#outbox.drain(),
        new Promise<void>((resolve) => grace = setTimeout(resolve, CLOSE_GRACE_MS)),
      ]);
      clearTimeout(grace);
    }
    this.#outbox.close();
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }
}
