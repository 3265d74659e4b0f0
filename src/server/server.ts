/**
 * `ChatServer`: the TLS listener, connection caps, the handshake deadline and the server's
 * lifecycle. Each accepted connection is handled by its own {@link Session}, driven by its
 * socket's events; nothing one connection does can hold up the accept loop or the others.
 *
 * The listener is `node:tls` (`tls.createServer`), not `Deno.listenTls`: a `Deno.listenTls`
 * connection cannot be released while its handshake is pending (Deno 2.9's handshake task keeps
 * the TCP stream until the peer acts), so a silent peer would hold its socket forever. `node:tls`
 * closes a handshake that passes `handshakeTimeout` for real, and has `setNoDelay`. The
 * measurements behind the move are in BENCHMARKS.md.
 *
 * @module
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import type { AddressInfo, Socket } from "node:net";
import tls from "node:tls";
import { getLogger, type Logger } from "@logtape/logtape";
import { hasTcpBackpressure } from "./backpressure.ts";
import { hasDirectWrites } from "./direct_write.ts";
import { DEFAULT_LIMITS, type Limits } from "./config.ts";
import { FlowControl } from "./flow.ts";
import { flushOutboxes, type Outbox } from "./outbox.ts";
import { Gatekeeper } from "./auth.ts";
import { CertError, fingerprintOf } from "./certs.ts";
import { AuthLockout } from "./limits.ts";
import { PasswordVerifier } from "./password.ts";
import { encodeError, type ErrorCode } from "../protocol/mod.ts";
import { type ClusterStatus, LocalRoom, type Mailbox, type Room } from "../room/room.ts";
import { RedisRoom } from "../room/cluster.ts";
import { clockStartId, type HistoryStore, memoryStore } from "../room/store.ts";
import { SERVER_SOFTWARE } from "./version.ts";
import { CLOSE_GRACE_MS, normalizeIp } from "./socket.ts";
import type { ServerStats } from "./stats.ts";
import { Session, type SessionContext } from "./session.ts";
import { StreamTransport } from "./transport.ts";
import { type Asset, loadAssets, WebGateway } from "../web/gateway.ts";
import { toWebSocketFrames, WebSocketTransport } from "../web/websocket.ts";

/** Refusals (handshake, then an error frame) in progress at once; past this, closed at once. */
const MAX_REFUSING = 256;
/** Refusals in progress at once for one address; past this, closed at once. */
const MAX_REFUSING_PER_IP = 4;
/** How often stalled readers and expired lockout records are looked for. */
const WATCH_INTERVAL_MS = 250;
/** At shutdown, how long a connection in its handshake may take to finish it and get the notice. */
const HANDSHAKE_GRACE_MS = 200;
/**
 * Backlog of the listening sockets (Linux caps it at `net.core.somaxconn`, 4096 by default since
 * 5.4). Node's usual 511 overflowed under 500 logins and leaves a second beside 100 talking
 * clients (the bench's churn scenario): the kernel dropped 14,233 SYNs in 60 s, and each dropped
 * client waited for its SYN to be sent again (1 s, then 3 s, 7 s, ...), 51 of them for more than
 * 20 s. With 4096: 0 failed. A connection in the backlog costs the kernel, not this process.
 */
const BACKLOG = 4096;

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
  /**
   * Where the room keeps its history (default: in memory, `limits.historyKeep` messages). The
   * caller that opens a store closes it after {@link ChatServer.close}.
   */
  history?: HistoryStore;
  /** Monotonic clock in milliseconds, for tests (default `performance.now`). */
  now?: () => number;
  /**
   * The web client's port (HTTPS and the `/ws` WebSocket) on `hostname`, with the same
   * certificate, limits and room; off when unset. `assets`: the page's files (default: read
   * from the project's `web/` directory at {@link ChatServer.listen}).
   */
  web?: { port: number; assets?: Map<string, Asset> };
  /**
   * Serve one room with every server that has the same Redis: `url` is
   * `redis://[[user]:password@]host[:port][/db]` (or `rediss://` for TLS); keys start with
   * `prefix` (default `chat:`). History, ids, refs, presence and the lockout are then kept in
   * Redis and `history` is not used. Off when unset.
   */
  redis?: { url: string; prefix?: string };
}

/** What {@link ChatServer.reload} replaces; what is not given stays as it is. */
export interface ReloadOptions {
  /** A new certificate chain, PEM; give it together with `key`. */
  cert?: string;
  /** The private key of `cert`, PEM. */
  key?: string;
  /** A new shared password (not empty); only its SHA-256 digest is kept. */
  password?: string;
  /** A ready verifier, instead of `password`. */
  verifier?: PasswordVerifier;
}

/** What a {@link ChatServer.reload} changed. */
export interface ReloadResult {
  /** The certificate or key differs from the one served before. */
  certificateChanged: boolean;
  /**
   * The password differs from the one before (a new `verifier` always counts as a change: it
   * cannot be compared).
   */
  passwordChanged: boolean;
  /** SHA-256 fingerprint (lowercase hex) of the certificate served from now on. */
  fingerprint: string;
}

/** Open connections in each state, for one of the two ports. */
export interface ConnectionStates {
  /** Accepted, TLS handshake not complete. */
  handshaking: number;
  /** Web port only: handshake complete, HTTP (the page's files, or before the upgrade). */
  http: number;
  /** A session that has not logged in yet. */
  authenticating: number;
  /** Logged in. */
  loggedIn: number;
  /** Over a cap, waiting for their error frame to go out. */
  refusing: number;
}

/** A snapshot of the server's counters. */
export interface ServerSnapshot extends ServerStats {
  /** Admitted connections that are open, logged in or not (refused ones excluded). */
  connections: number;
  /** Logged-in clients. */
  clients: number;
  /** Connections being refused (over a cap, waiting for their error frame to go out). */
  refusing: number;
  /** Every socket the server holds: admitted, refusing, or in their TLS handshake. */
  sockets: number;
  /** Messages kept in history. */
  historySize: number;
  /** Recipients whose full queue is holding the senders back right now. */
  holders: number;
  /** Senders paused right now. */
  pausedSenders: number;
  /** Bytes charged to every client's send queue together (see `--max-send-queue`). */
  queuedBytes: number;
  /** Open connections by state, on the chat port (`tls`) and the web port (`web`). */
  states: { tls: ConnectionStates; web: ConnectionStates };
  /** The cluster as this node sees it, or `null` without `redis`. */
  cluster: ClusterStatus | null;
}

/** The closing error a connection gets instead of a session. */
interface Refusal {
  code: ErrorCode;
  message: string;
}

/** What the server knows of a TCP connection from its accept on. */
interface Connection {
  ip: string;
  acceptedAt: number;
  /** Set for a connection over a cap: the error it gets once its handshake completes. */
  refusal: Refusal | undefined;
  session: Session | undefined;
  /** Told `shutting_down` instead of getting a session (its handshake completed during the stop). */
  notified: boolean;
  /** Accepted on the web port. */
  web: boolean;
  /** Its TLS handshake completed. */
  secured: boolean;
  /** A web connection's deadline to upgrade to a WebSocket. */
  deadline: ReturnType<typeof setTimeout> | undefined;
}

/** Where a web port's TLS socket keeps its connection record. */
const CONNECTION = Symbol("connection");
type WebSocketSocket = tls.TLSSocket & { [CONNECTION]?: Connection };

/** The chat server. `await listen()`, then `close()` (or `await using`). */
export class ChatServer implements AsyncDisposable {
  #options: ChatServerOptions;
  #limits: Limits;
  #now: () => number;
  /** `#now()` at the last watchdog tick. */
  #tick = 0;
  #logger: Logger = getLogger(["chat-server"]);
  #server: tls.Server | null = null;
  #webServer: tls.Server | null = null;
  #gateway: WebGateway | null = null;
  #flow = new FlowControl();
  #room: Room;
  #redisRoom: RedisRoom | null = null;
  #roomWaiters = new Set<object>();
  #roomStarted = false;
  #ownStore: HistoryStore | null = null;
  #lockout: AuthLockout;
  #connections = new Map<Socket, Connection>();
  #sessions = new Set<Session>();
  #admitted = 0;
  #perIp = new Map<string, number>();
  #refusing = 0;
  #refusingPerIp = new Map<string, number>();
  #watch: ReturnType<typeof setInterval> | undefined;
  #checkedBackpressure = false;
  #closing: Promise<void> | null = null;
  #starting: Promise<Deno.NetAddr> | null = null;
  #context: SessionContext | null = null;
  /** The password check, once {@link ChatServer.listen} or a reload has made it. */
  #verifier: PasswordVerifier | null = null;
  /** Wakes the shutdown when the last session has closed. */
  #allClosed: (() => void) | null = null;
  /** One `close` listener for every accepted socket (`this` is the socket). */
  #released: (this: Socket) => void;
  #stats: ServerStats = {
    accepted: 0,
    rejected: 0,
    handshakeFailures: 0,
    handshakeTimeouts: 0,
    authenticated: 0,
    authFailures: 0,
    lockouts: 0,
    messages: 0,
    deliveries: 0,
    refusedMessages: 0,
    storeErrors: 0,
    stalledReaders: 0,
    writeTimeouts: 0,
    senderPauses: 0,
    errors: {},
  };

  /** A server with these options; nothing happens until {@link ChatServer.listen}. */
  constructor(options: ChatServerOptions) {
    if (options.password === undefined && options.verifier === undefined) {
      throw new TypeError("ChatServer needs a password or a verifier");
    }
    this.#options = { ...options };
    this.#limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#now = options.now ?? (() => performance.now());
    const flow = this.#flow;
    const hold = (mailbox: Mailbox) => flow.hold(mailbox as Outbox);
    if (options.redis) {
      // The room's stream reader waits in flow control too; it is not a paused sender.
      const roomWaiters = this.#roomWaiters;
      this.#room = this.#redisRoom = new RedisRoom({
        url: options.redis.url,
        prefix: options.redis.prefix,
        keep: this.#limits.historyKeep,
        replayBytes: this.#limits.maxSendQueue,
        hold,
        release: (mailbox: Mailbox) => flow.release(mailbox as Outbox),
        holders: () => flow.holders,
        whenFree: (resume) => {
          if (!flow.blocked) {
            resume();
            return () => {};
          }
          const waiter = {
            resume: () => {
              roomWaiters.delete(waiter);
              resume();
            },
          };
          roomWaiters.add(waiter);
          flow.wait(waiter);
          return () => {
            roomWaiters.delete(waiter);
            flow.forget(waiter);
          };
        },
        delivered: flushOutboxes,
        lockout: { maxFailures: this.#limits.maxAuthFailures, windowMs: this.#limits.lockoutMs },
        logger: this.#logger,
      });
    } else {
      let store = options.history;
      if (!store) {
        store = this.#ownStore = memoryStore(this.#limits.historyKeep, {
          startId: clockStartId(),
        });
      }
      this.#room = new LocalRoom({
        store,
        replayBytes: this.#limits.maxSendQueue,
        hold,
        delivered: flushOutboxes,
        logger: this.#logger,
      });
    }
    this.#lockout = new AuthLockout({
      maxFailures: this.#limits.maxAuthFailures,
      windowMs: this.#limits.lockoutMs,
    });
    // deno-lint-ignore no-this-alias
    const server = this;
    this.#released = function (this: Socket) {
      server.#release(this);
    };
  }

  /** The effective limits. */
  get limits(): Readonly<Limits> {
    return this.#limits;
  }

  /** The bound address; throws before {@link ChatServer.listen} has resolved. */
  get addr(): Deno.NetAddr {
    const address = this.#server?.address() as AddressInfo | null | undefined;
    if (!address) throw new TypeError("ChatServer is not listening");
    return { transport: "tcp", hostname: address.address, port: address.port };
  }

  /** The web port's bound address, or `null` when the web client is off. */
  get webAddr(): Deno.NetAddr | null {
    const address = this.#webServer?.address() as AddressInfo | null | undefined;
    if (!address) return null;
    return { transport: "tcp", hostname: address.address, port: address.port };
  }

  /** Whether {@link ChatServer.close} has begun (or the server was closed). */
  get closing(): boolean {
    return this.#closing !== null;
  }

  /** Current counters and gauges. Costs O(connections): it counts states and queued bytes. */
  stats(): ServerSnapshot {
    const states = { tls: emptyStates(), web: emptyStates() };
    for (const connection of this.#connections.values()) {
      const counts = connection.web ? states.web : states.tls;
      if (connection.refusal) counts.refusing++;
      else if (connection.session?.authenticated) counts.loggedIn++;
      else if (connection.session) counts.authenticating++;
      else if (connection.secured && connection.web) counts.http++;
      else counts.handshaking++;
    }
    let queuedBytes = 0;
    for (const session of this.#sessions) queuedBytes += session.outbox.queuedBytes;
    return {
      ...this.#stats,
      messages: this.#room.stats.messages,
      deliveries: this.#room.stats.deliveries,
      refusedMessages: this.#room.stats.refused,
      storeErrors: this.#room.stats.storeErrors,
      errors: { ...this.#stats.errors },
      connections: this.#admitted,
      clients: this.#room.size,
      historySize: this.#room.historySize,
      cluster: this.#room.cluster,
      refusing: this.#refusing,
      sockets: this.#connections.size,
      // Recipients only: a cluster node's Redis backlog is reported apart (`cluster`).
      holders: this.#flow.holders - (this.#room.cluster?.backlogHeld ? 1 : 0),
      pausedSenders: this.#flow.waiting - this.#roomWaiters.size,
      queuedBytes,
      states,
    };
  }

  /**
   * Replaces the certificate and key (of the chat port and the web port) and the password, for
   * the connections that come from now on; connected clients stay connected, logged in, on the
   * certificate their handshake used. Everything given is checked first and nothing changes if a
   * check fails: a certificate that cannot be read, a key that does not match it, an empty
   * password.
   *
   * @throws {CertError} if `cert` or `key` cannot be used (the message says why)
   * @throws {PasswordError} if `password` is empty
   * @throws {TypeError} if only one of `cert` and `key` is given, or the server is closed
   */
  async reload(options: ReloadOptions): Promise<ReloadResult> {
    const { cert, key, password, verifier } = options;
    if ((cert === undefined) !== (key === undefined)) {
      throw new TypeError("ChatServer.reload needs cert and key together");
    }
    if (password !== undefined && verifier !== undefined) {
      throw new TypeError("ChatServer.reload takes a password or a verifier, not both");
    }
    if (this.#closing) throw new TypeError("ChatServer is closed");
    if (cert !== undefined) checkPair(cert, key!);
    const next = verifier ??
      (password === undefined ? undefined : await PasswordVerifier.create(password));
    const current = this.#verifier ?? this.#options.verifier ??
      await PasswordVerifier.create(this.#options.password!);
    const passwordChanged = next !== undefined &&
      (password === undefined || !(await current.verify(password)));
    const [before, fingerprint] = await Promise.all([
      fingerprintOf(this.#options.cert),
      fingerprintOf(cert ?? this.#options.cert),
    ]);
    if (this.#closing) throw new TypeError("ChatServer is closed");
    // From here on, nothing awaits: every new connection sees all of it or none of it.
    const certificateChanged = cert !== undefined &&
      (fingerprint !== before || key !== this.#options.key);
    if (cert !== undefined) {
      this.#options.cert = cert;
      this.#options.key = key!;
      for (const listener of [this.#server, this.#webServer]) {
        listener?.setSecureContext({ cert, key, minVersion: "TLSv1.2" });
      }
    }
    if (next) {
      this.#verifier = next;
      this.#options.verifier = next;
      delete this.#options.password;
      if (this.#context) this.#context.gate.verifier = next;
    }
    return { certificateChanged, passwordChanged, fingerprint };
  }

  /**
   * Binds the TLS listener and starts accepting. Resolves with the bound address. May be called
   * again after it failed (e.g. the port was in use).
   *
   * @throws {Deno.errors.NotCapable} without network permission for the address
   * @throws {Error} from the bind, with a Node.js `code` such as `EADDRINUSE` or `ENOTFOUND`
   * @throws {TypeError} if it is listening, starting, or closed (or its signal aborted)
   */
  listen(): Promise<Deno.NetAddr> {
    if (this.#server || this.#starting) {
      return Promise.reject(new TypeError("ChatServer is already listening"));
    }
    if (this.#closing || this.#options.signal?.aborted) {
      return Promise.reject(new TypeError("ChatServer is closed"));
    }
    // Registered first, so an abort while it starts still closes it.
    this.#options.signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#starting = this.#start().finally(() => this.#starting = null);
    return this.#starting;
  }

  async #start(): Promise<Deno.NetAddr> {
    const hostname = this.#options.hostname ?? "127.0.0.1";
    const port = this.#options.port ?? 4000;
    const web = this.#options.web;
    // node:net throws a missing permission from a later tick, where nobody can catch it.
    for (const wanted of web ? [port, web.port] : [port]) {
      const host = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${wanted}`;
      if (Deno.permissions.querySync({ name: "net", host }).state !== "granted") {
        throw new Deno.errors.NotCapable(`Requires net access to "${host}"`);
      }
    }
    if (!this.#context) {
      const verifier = this.#verifier ??= this.#options.verifier ??
        await PasswordVerifier.create(this.#options.password!);
      delete this.#options.password;
      this.#context = {
        limits: this.#limits,
        gate: new Gatekeeper({
          verifier,
          lockout: this.#lockout,
          shared: this.#redisRoom?.lockout,
          stats: this.#stats,
          logger: this.#logger,
          now: this.#now,
        }),
        room: this.#room,
        welcome: {
          type: "welcome",
          server: SERVER_SOFTWARE,
          limits: {
            max_frame: this.#limits.maxFrame,
            rate: this.#limits.rate,
            burst: this.#limits.burst,
          },
        },
        flow: this.#flow,
        logger: this.#logger,
        stats: this.#stats,
        now: this.#now,
        coarseNow: () => this.#tick,
        tickMs: WATCH_INTERVAL_MS,
        closed: (session) => {
          this.#sessions.delete(session);
          if (this.#sessions.size === 0) this.#allClosed?.();
        },
      };
    }
    if (this.#redisRoom && !this.#roomStarted) {
      this.#roomStarted = true;
      await this.#redisRoom.start();
    }
    if (web) {
      const assets = web.assets ?? await loadAssets();
      this.#gateway ??= new WebGateway({
        assets,
        logger: this.#logger,
        upgraded: (socket, head) => this.#upgraded(socket, head),
        refused: (socket) => (socket as WebSocketSocket)[CONNECTION]?.refusal !== undefined,
      });
    }
    const server = await this.#bind(hostname, port, false);
    if (web) {
      try {
        this.#webServer = await this.#bind(hostname, web.port, true);
      } catch (error) {
        server.close();
        // Says which of the two listeners failed.
        if (error !== null && typeof error === "object") Object.assign(error, { listener: "web" });
        throw error;
      }
    }
    if (this.#closing) {
      // close() was called while this was starting: it must not leave a listener behind.
      server.close();
      this.#webServer?.close();
      this.#webServer = null;
      throw new TypeError("ChatServer was closed while it started listening");
    }
    this.#server = server;
    this.#tick = this.#now();
    this.#watch = setInterval(() => this.#watchConnections(), WATCH_INTERVAL_MS);
    Deno.unrefTimer(this.#watch as unknown as number);
    const addr = this.addr;
    this.#logger.info("server started on port -> {port} and ip -> {hostname}", {
      port: addr.port,
      hostname: addr.hostname,
    });
    const webAddr = this.webAddr;
    if (webAddr) {
      const host = webAddr.hostname.includes(":") ? `[${webAddr.hostname}]` : webAddr.hostname;
      this.#logger.info("web client at https://{host}:{port}/", { host, port: webAddr.port });
    }
    return addr;
  }

  /** Binds one TLS listener: the chat port, or the web port (`web`). */
  async #bind(hostname: string, port: number, web: boolean): Promise<tls.Server> {
    const server = tls.createServer({
      cert: this.#options.cert,
      key: this.#options.key,
      minVersion: "TLSv1.2",
      handshakeTimeout: this.#limits.handshakeTimeoutMs,
      // A peer that leaves during its handshake is closed at once (with allowHalfOpen its socket
      // would wait for the handshake timeout). Sessions switch it on: see #secured.
      allowHalfOpen: false,
      ...(web ? { ALPNProtocols: ["http/1.1"] } : {}),
    });
    server.on("connection", (socket: Socket) => this.#accept(socket, web));
    server.on("secureConnection", (socket: tls.TLSSocket) => {
      if (web) this.#securedWeb(socket);
      else this.#secured(socket);
    });
    server.on("tlsClientError", (error: Error, socket: tls.TLSSocket) => {
      this.#handshakeFailed(error, socket);
    });
    const { cert, key } = this.#options;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: hostname, port, backlog: BACKLOG }, () => {
        server.off("error", reject);
        resolve();
      });
    }).catch((error) => {
      server.close();
      throw error;
    });
    // A reload() while this was binding changed the pair after createServer read it, and could
    // not reach this listener yet: both ports must serve the same certificate.
    if (this.#options.cert !== cert || this.#options.key !== key) {
      server.setSecureContext({
        cert: this.#options.cert,
        key: this.#options.key,
        minVersion: "TLSv1.2",
      });
    }
    server.on("error", (error: Error) => {
      this.#logger.error("Listener error: {error}", { error: String(error) });
    });
    return server;
  }

  /**
   * Stops accepting, closes connections still in their handshake, tells every client
   * `shutting_down`, flushes for at most a couple of seconds and closes everything. Idempotent;
   * resolves when every socket is released.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  /** Closes the server, as {@link ChatServer.close} does (for `await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #onAbort = () => {
    this.close();
  };

  async #shutdown(): Promise<void> {
    this.#options.signal?.removeEventListener("abort", this.#onAbort);
    clearInterval(this.#watch);
    await this.#starting?.catch(() => {});
    const server = this.#server;
    if (!server) {
      await this.#room.stop();
      this.#ownStore?.close();
      return;
    }
    this.#logger.info("Shutting down: {connections} connections", {
      connections: this.#connections.size,
    });
    const listenerClosed = Promise.all(
      [server, this.#webServer].map((listener) =>
        listener && new Promise<void>((resolve) => listener.close(() => resolve()))
      ),
    );
    this.#gateway?.close();
    // Messages accepted this turn are stored, broadcast and acked before the notice goes out;
    // then members leave without presence traffic (everyone is leaving).
    this.#room.flush();
    const settling = this.#room.settle();
    if (settling) {
      // A cluster node: the last messages get their answer from Redis (and their acks).
      await settling;
      this.#room.flush();
    }
    this.#room.close();
    const handshaking: Socket[] = [];
    for (const [socket, connection] of this.#connections) {
      if (connection.session) connection.session.shutdown();
      else if (connection.refusal) socket.destroy();
      else handshaking.push(socket);
    }
    // A handshake about to complete gets the notice (see #secured); a silent one is closed.
    const handshakes = setTimeout(() => {
      for (const socket of handshaking) {
        const connection = this.#connections.get(socket);
        if (connection && !connection.session && !connection.notified) socket.destroy();
      }
    }, HANDSHAKE_GRACE_MS);
    const deadline = setTimeout(() => {
      for (const socket of this.#connections.keys()) socket.destroy();
    }, CLOSE_GRACE_MS + 500);
    if (this.#sessions.size > 0) {
      await new Promise<void>((resolve) => this.#allClosed = resolve);
    }
    while (this.#connections.size > 0) await new Promise((resolve) => setTimeout(resolve, 10));
    clearTimeout(deadline);
    clearTimeout(handshakes);
    await listenerClosed;
    await this.#room.stop();
    this.#ownStore?.close();
    this.#logger.info("Server stopped");
  }

  /** A TCP connection was accepted: count it, and refuse it if it is over a cap. */
  #accept(socket: Socket, web: boolean): void {
    const stats = this.#stats;
    stats.accepted++;
    if (this.#closing) {
      socket.destroy();
      return;
    }
    const ip = normalizeIp(socket.remoteAddress ?? "");
    const connection: Connection = {
      ip,
      acceptedAt: this.#now(),
      refusal: undefined,
      session: undefined,
      notified: false,
      web,
      secured: false,
      deadline: undefined,
    };
    const limits = this.#limits;
    const fromIp = this.#perIp.get(ip) ?? 0;
    if (this.#admitted >= limits.maxClients) {
      connection.refusal = { code: "server_full", message: "Server is full, try again later" };
    } else if (limits.maxPerIp > 0 && fromIp >= limits.maxPerIp) {
      connection.refusal = {
        code: "too_many_connections",
        message: "Too many connections from your address",
      };
    }
    if (connection.refusal) {
      stats.rejected++;
      const refusingFromIp = this.#refusingPerIp.get(ip) ?? 0;
      this.#logger.debug("Refusing connection from {ip}: {code}", {
        ip,
        code: connection.refusal.code,
      });
      if (this.#refusing >= MAX_REFUSING || refusingFromIp >= MAX_REFUSING_PER_IP) {
        socket.destroy(); // before any TLS work
        return;
      }
      this.#refusing++;
      this.#refusingPerIp.set(ip, refusingFromIp + 1);
    } else {
      this.#admitted++;
      this.#perIp.set(ip, fromIp + 1);
    }
    this.#connections.set(socket, connection);
    socket.on("close", this.#released);
    socket.setNoDelay(true);
  }

  /** An accepted socket is gone: give back what it was counted against. */
  #release(socket: Socket): void {
    const connection = this.#connections.get(socket);
    if (!connection) return;
    this.#connections.delete(socket);
    clearTimeout(connection.deadline);
    if (connection.refusal) {
      this.#refusing--;
      decrement(this.#refusingPerIp, connection.ip);
    } else {
      this.#admitted--;
      decrement(this.#perIp, connection.ip);
    }
  }

  /** The TLS handshake completed: start the session, or send the refusal. */
  #secured(socket: tls.TLSSocket): void {
    // deno-lint-ignore no-explicit-any
    const raw = (socket as any)._parent as Socket | undefined;
    const connection = raw ? this.#connections.get(raw) : undefined;
    if (!connection) {
      socket.destroy();
      return;
    }
    connection.secured = true;
    if (!this.#checkedBackpressure) {
      this.#checkedBackpressure = true;
      if (!hasTcpBackpressure(socket)) {
        this.#logger.warn(
          "This Deno cannot stop reading a TLS socket at the TCP level: paused senders are buffered in memory",
        );
      }
      if (!hasDirectWrites(socket)) {
        this.#logger.warn(
          "This Deno's TLS sockets have no handle to write to directly: writes go through node:stream (slower)",
        );
      }
    }
    const refusal: Refusal | undefined = connection.refusal ??
      (this.#closing ? { code: "shutting_down", message: "Server is shutting down" } : undefined);
    if (refusal) {
      connection.notified = true;
      // The error frame, then close; a peer that does not close its side is cut off.
      socket.on("error", () => {});
      socket.end(encodeError(refusal.code, refusal.message), () => socket.destroy());
      const timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
      socket.once("close", () => clearTimeout(timer));
      this.#count(refusal.code);
      return;
    }
    // A client that half-closes still gets its replies: the session ends its side itself, once
    // its last frames are flushed.
    socket.allowHalfOpen = true;
    const session = new Session(new StreamTransport(socket, this.#limits), this.#context!, {
      id: this.#room.newMemberId(),
      ip: connection.ip,
      acceptedAt: connection.acceptedAt,
    });
    connection.session = session;
    this.#sessions.add(session);
  }

  /**
   * A web port's TLS handshake completed: its requests go to the gateway (the page's files, or
   * the WebSocket upgrade, which {@link ChatServer.#upgraded} turns into a session). It must
   * upgrade before the auth deadline; a plain HTTP connection is closed then too.
   */
  #securedWeb(socket: tls.TLSSocket): void {
    // deno-lint-ignore no-explicit-any
    const raw = (socket as any)._parent as Socket | undefined;
    const connection = raw ? this.#connections.get(raw) : undefined;
    if (!connection || this.#closing) {
      socket.destroy();
      return;
    }
    connection.secured = true;
    (socket as WebSocketSocket)[CONNECTION] = connection;
    // A connection over a cap gets its answer (503, or the error frame after an upgrade) only
    // if it asks at once: it holds one of the few refusal slots.
    const wait = connection.refusal
      ? CLOSE_GRACE_MS
      : connection.acceptedAt + this.#limits.authTimeoutMs - this.#now();
    connection.deadline = setTimeout(() => socket.destroy(), Math.max(0, wait));
    socket.on("error", () => {}); // a reset while in HTTP: the close releases it
    this.#gateway!.connection(socket);
  }

  /** A web connection answered 101: start its session, or send its refusal as a frame. */
  #upgraded(socket: tls.TLSSocket, head: Uint8Array): void {
    const connection = (socket as WebSocketSocket)[CONNECTION];
    if (!connection || connection.session || socket.destroyed) {
      socket.destroy();
      return;
    }
    clearTimeout(connection.deadline);
    connection.deadline = undefined;
    const refusal: Refusal | undefined = connection.refusal ??
      (this.#closing ? { code: "shutting_down", message: "Server is shutting down" } : undefined);
    if (refusal) {
      connection.notified = true;
      socket.write(toWebSocketFrames(encodeError(refusal.code, refusal.message)));
      socket.end(new Uint8Array([0x88, 0x02, 0x03, 0xe8]), () => socket.destroy());
      const timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS);
      socket.once("close", () => clearTimeout(timer));
      this.#count(refusal.code);
      return;
    }
    socket.allowHalfOpen = true;
    const transport = new WebSocketTransport(socket, head, this.#limits);
    const session = new Session(transport, this.#context!, {
      id: this.#room.newMemberId(),
      ip: connection.ip,
      acceptedAt: connection.acceptedAt,
    });
    connection.session = session;
    this.#sessions.add(session);
  }

  #handshakeFailed(error: Error, socket: tls.TLSSocket): void {
    socket.destroy();
    // deno-lint-ignore no-explicit-any
    const raw = (socket as any)._parent as Socket | undefined;
    // Not ours to count: closed at once when refused, or cut off by the shutdown.
    if (this.#closing || !raw || !this.#connections.has(raw)) return;
    const timedOut = /timeout/i.test(error.message);
    if (timedOut) this.#stats.handshakeTimeouts++;
    else this.#stats.handshakeFailures++;
    this.#logger.debug("Handshake with {ip} {what}: {error}", {
      ip: normalizeIp(socket.remoteAddress ?? ""),
      what: timedOut ? "timed out" : "failed",
      error: error.message,
    });
  }

  #watchConnections(): void {
    const now = this.#tick = this.#now();
    for (const session of this.#sessions) session.checkStall(now);
    this.#lockout.sweep(now);
  }

  #count(code: ErrorCode): void {
    const errors = this.#stats.errors;
    errors[code] = (errors[code] ?? 0) + 1;
  }
}

function emptyStates(): ConnectionStates {
  return { handshaking: 0, http: 0, authenticating: 0, loggedIn: 0, refusing: 0 };
}

/**
 * Checks that `cert` holds a certificate and `key` is its private key.
 *
 * @throws {CertError} saying which is wrong
 */
function checkPair(cert: string, key: string): void {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (error) {
    throw new CertError(`Cannot use the new certificate: ${(error as Error).message}`);
  }
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new CertError(`Cannot use the new key: ${(error as Error).message}`);
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new CertError("Cannot use the new key: it does not match the new certificate");
  }
  try {
    tls.createSecureContext({ cert, key, minVersion: "TLSv1.2" });
  } catch (error) {
    throw new CertError(`Cannot use the new certificate: ${(error as Error).message}`);
  }
}

function decrement(counts: Map<string, number>, key: string): void {
  const left = (counts.get(key) ?? 1) - 1;
  if (left > 0) counts.set(key, left);
  else counts.delete(key);
}
