/**
 * `ChatServer`: the TLS listener, the accept loop, connection caps and the server's lifecycle.
 * The accept loop never awaits a connection: each one runs in its own {@link Session} task.
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { DEFAULT_LIMITS, type Limits } from "./config.ts";
import { AuthLockout } from "./limits.ts";
import { PasswordVerifier } from "./password.ts";
import { ProtocolError } from "./protocol.ts";
import { setListenerNoDelay } from "./nodelay.ts";
import { Registry } from "./registry.ts";
import { normalizeIp, type ServerStats, Session, type SessionContext } from "./session.ts";

/** Connections being refused (handshake + error frame) at once; past this they are just closed. */
const MAX_REJECTING = 256;
/** Pause after an accept error such as EMFILE, so the loop does not spin. */
const ACCEPT_BACKOFF_MS = 50;
/** How often expired lockout records are forgotten. */
const SWEEP_INTERVAL_MS = 60_000;

/** Options for {@link ChatServer}. */
export interface ChatServerOptions {
  /** Address to listen on (default `127.0.0.1`). */
  hostname?: string;
  /** Port; 0 picks a free one (default 4000). */
  port?: number;
  /** Certificate chain, PEM. */
  cert: string;
  /** Private key, PEM. */
  key: string;
  /** The shared password; only its SHA-256 digest is kept. Give this or `verifier`. */
  password?: string;
  /** A ready verifier, instead of `password`. */
  verifier?: PasswordVerifier;
  /** Limits; unset ones take the defaults of PROTOCOL.md. */
  limits?: Partial<Limits>;
  /** Aborting it closes the server. */
  signal?: AbortSignal;
  /** Clock in milliseconds, for tests. */
  now?: () => number;
}

/** A snapshot of the server's counters. */
export interface ServerSnapshot extends ServerStats {
  /** Open connections, logged in or not (refused ones excluded). */
  connections: number;
  /** Logged-in clients. */
  clients: number;
}

/** The chat server. `await listen()`, then `close()` (or `await using`). */
export class ChatServer implements AsyncDisposable {
  #options: ChatServerOptions;
  #limits: Limits;
  #logger: Logger = getLogger(["chat-server"]);
  #listener: Deno.TlsListener | null = null;
  #acceptLoop: Promise<void> | null = null;
  #registry = new Registry();
  #lockout: AuthLockout;
  #sessions = new Set<Session>();
  #perIp = new Map<string, number>();
  #tasks = new Set<Promise<void>>();
  #rejecting = 0;
  #nextId = 0;
  #sweep: ReturnType<typeof setInterval> | undefined;
  #closing: Promise<void> | null = null;
  #stats: ServerStats = {
    accepted: 0,
    rejected: 0,
    handshakeFailures: 0,
    handshakeTimeouts: 0,
    authenticated: 0,
    authFailures: 0,
    messages: 0,
    deliveries: 0,
    slowConsumers: 0,
    errors: {},
  };
  #context: SessionContext | null = null;

  constructor(options: ChatServerOptions) {
    if (options.password === undefined && options.verifier === undefined) {
      throw new TypeError("ChatServer needs a password or a verifier");
    }
    this.#options = options;
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#lockout = new AuthLockout({
      maxFailures: this.#limits.maxAuthFailures,
      windowMs: this.#limits.lockoutMs,
    });
  }

  /** The effective limits. */
  get limits(): Readonly<Limits> {
    return this.#limits;
  }

  /** The bound address; throws before {@link ChatServer.listen}. */
  get addr(): Deno.NetAddr {
    if (!this.#listener) throw new TypeError("ChatServer is not listening");
    return this.#listener.addr;
  }

  /** Current counters. */
  stats(): ServerSnapshot {
    return {
      ...this.#stats,
      errors: { ...this.#stats.errors },
      connections: this.#sessions.size,
      clients: this.#registry.size,
    };
  }

  /** Binds the TLS listener and starts accepting. Resolves with the bound address. */
  async listen(): Promise<Deno.NetAddr> {
    if (this.#listener || this.#closing) throw new TypeError("ChatServer can listen only once");
    const verifier = this.#options.verifier ??
      await PasswordVerifier.create(this.#options.password!);
    delete this.#options.password;
    this.#context = {
      limits: this.#limits,
      verifier,
      registry: this.#registry,
      lockout: this.#lockout,
      logger: this.#logger,
      stats: this.#stats,
      now: this.#options.now ?? Date.now,
    };
    this.#listener = Deno.listenTls({
      hostname: this.#options.hostname ?? "127.0.0.1",
      port: this.#options.port ?? 4000,
      cert: this.#options.cert,
      key: this.#options.key,
    });
    const addr = this.#listener.addr;
    if (!setListenerNoDelay(addr.port)) {
      this.#logger.info("Nagle's algorithm stays on: grant --allow-ffi to set TCP_NODELAY");
    }
    this.#sweep = setInterval(() => this.#lockout.sweep(Date.now()), SWEEP_INTERVAL_MS);
    Deno.unrefTimer(this.#sweep as unknown as number);
    this.#options.signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#acceptLoop = this.#accept(this.#listener);
    this.#logger.info("server started on port -> {port} and ip -> {hostname}", {
      port: addr.port,
      hostname: addr.hostname,
    });
    return addr;
  }

  /**
   * Stops accepting, tells every client `shutting_down`, flushes for at most a couple of
   * seconds and closes everything. Idempotent; resolves when every connection is closed.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #onAbort = () => {
    this.close();
  };

  async #shutdown(): Promise<void> {
    this.#options.signal?.removeEventListener("abort", this.#onAbort);
    clearInterval(this.#sweep);
    if (!this.#listener) return;
    this.#logger.info("Shutting down: {connections} connections", {
      connections: this.#sessions.size,
    });
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    await this.#acceptLoop;
    await Promise.all([...this.#sessions].map((session) => session.shutdown()));
    while (this.#tasks.size > 0) await Promise.all(this.#tasks);
    this.#logger.info("Server stopped");
  }

  async #accept(listener: Deno.TlsListener): Promise<void> {
    while (!this.#closing) {
      let conn: Deno.TlsConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (this.#closing || error instanceof Deno.errors.BadResource) return;
        this.#logger.warn("Accept failed: {error}", { error: String(error) });
        await new Promise((resolve) => setTimeout(resolve, ACCEPT_BACKOFF_MS));
        continue;
      }
      try {
        this.#admit(conn);
      } catch (error) {
        // Never expected; the loop must survive it all the same.
        this.#logger.error("Cannot admit connection: {error}", { error: String(error) });
        try {
          conn.close();
        } catch { /* already closed */ }
      }
    }
  }

  #admit(conn: Deno.TlsConn): void {
    const stats = this.#stats;
    stats.accepted++;
    const ip = normalizeIp((conn.remoteAddr as Deno.NetAddr).hostname);
    const perIp = this.#perIp.get(ip) ?? 0;
    let reject: ProtocolError | undefined;
    if (this.#sessions.size >= this.#limits.maxClients) {
      reject = new ProtocolError("server_full", "Server is full, try again later");
    } else if (this.#limits.maxPerIp > 0 && perIp >= this.#limits.maxPerIp) {
      reject = new ProtocolError("too_many_connections", "Too many connections from your address");
    }
    const session = new Session(conn, this.#context!, { id: ++this.#nextId });
    if (reject) {
      stats.rejected++;
      this.#logger.debug("Refusing connection from {ip}: {code}", { ip, code: reject.code });
      if (this.#rejecting >= MAX_REJECTING) {
        conn.close();
        return;
      }
      this.#rejecting++;
      this.#track(session.run(reject).finally(() => this.#rejecting--));
      return;
    }
    this.#sessions.add(session);
    this.#perIp.set(ip, perIp + 1);
    this.#track(
      session.run().finally(() => {
        this.#sessions.delete(session);
        const left = (this.#perIp.get(ip) ?? 1) - 1;
        if (left > 0) this.#perIp.set(ip, left);
        else this.#perIp.delete(ip);
      }),
    );
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
  }
}
