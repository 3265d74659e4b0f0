/**
 * Prometheus metrics and a health check for one {@link ChatServer}, on a plain-HTTP port of their
 * own: `GET /metrics` (the text exposition format, written by `prom-client`) and `GET /healthz`
 * (200 `ok` while the server serves, 503 once its `close()` has begun).
 *
 * The values are read from `server.stats()` at scrape time, one snapshot per scrape, into a
 * registry of this endpoint's own (never prom-client's global one), so several servers in one
 * process do not clash. The endpoint has no authentication: bind it to loopback (the default) or
 * a private network.
 *
 * @module
 */
import { Counter, Gauge, Registry } from "prom-client";
import type { ChatServer, ServerSnapshot } from "./server.ts";
import { ERRORS } from "../protocol/mod.ts";
import type { ClusterStatus } from "../room/room.ts";

/** Options for {@link MetricsServer}. */
export interface MetricsServerOptions {
  /** Address to listen on (default `127.0.0.1`). */
  hostname?: string;
  /** Port; 0 picks a free one (default 9464). */
  port?: number;
}

/** A counter fed from one field of the snapshot. */
type CounterField = {
  [K in keyof ServerSnapshot]: ServerSnapshot[K] extends number ? K : never;
}[keyof ServerSnapshot];

/** Counters that mirror one field of the server's snapshot each: name, help, field. */
const COUNTERS: [string, string, CounterField][] = [
  [
    "chat_connections_accepted_total",
    "TCP connections accepted on the chat and web ports, refused ones included",
    "accepted",
  ],
  [
    "chat_connections_rejected_total",
    "Connections refused over a cap (server_full, too_many_connections)",
    "rejected",
  ],
  ["chat_tls_handshake_failures_total", "TLS handshakes that failed", "handshakeFailures"],
  [
    "chat_tls_handshake_timeouts_total",
    "TLS handshakes closed for not finishing within --handshake-timeout",
    "handshakeTimeouts",
  ],
  ["chat_logins_total", "Successful logins", "authenticated"],
  ["chat_login_failures_total", "Logins refused for a wrong password", "authFailures"],
  ["chat_lockouts_total", "Addresses locked out after too many failed logins", "lockouts"],
  ["chat_messages_total", "Messages accepted (stored and broadcast)", "messages"],
  ["chat_deliveries_total", "Messages queued to recipients", "deliveries"],
  [
    "chat_messages_unavailable_total",
    "Messages refused with unavailable because the history store failed",
    "refusedMessages",
  ],
  ["chat_history_store_errors_total", "History store failures", "storeErrors"],
  [
    "chat_sender_pauses_total",
    "Times a sender was paused because a recipient's queue was full",
    "senderPauses",
  ],
];

/** Gauges that mirror one field of the server's snapshot each. */
const GAUGES: [string, string, CounterField][] = [
  [
    "chat_send_queue_bytes",
    "Bytes queued to all clients together, as charged against --max-send-queue",
    "queuedBytes",
  ],
  ["chat_history_messages", "Messages kept in history", "historySize"],
  ["chat_flow_holders", "Recipients whose full queue holds the senders back", "holders"],
  ["chat_paused_senders", "Senders paused by flow control", "pausedSenders"],
];

const STATES = {
  handshaking: "handshaking",
  http: "http",
  authenticating: "authenticating",
  loggedIn: "logged_in",
  refusing: "refusing",
} as const;

/**
 * The metrics of `source` in a registry of their own.
 *
 * @param source takes a snapshot (called once per scrape)
 */
export function chatRegistry(source: () => ServerSnapshot): {
  registry: Registry;
  render: () => Promise<string>;
} {
  const registry = new Registry();
  let snapshot: ServerSnapshot | undefined;
  const read = () => snapshot ?? source();
  const registers = [registry];
  for (const [name, help, field] of COUNTERS) {
    new Counter({
      name,
      help,
      registers,
      collect() {
        this.reset();
        this.inc(read()[field]);
      },
    });
  }
  new Counter({
    name: "chat_clients_dropped_total",
    help: "Clients dropped by the server for not reading, by reason",
    labelNames: ["reason"],
    registers,
    collect() {
      const stats = read();
      this.reset();
      this.inc({ reason: "stalled_reader" }, stats.stalledReaders);
      this.inc({ reason: "write_timeout" }, stats.writeTimeouts);
    },
  });
  new Counter({
    name: "chat_errors_total",
    help: "Requests refused with an error, by code (rate_limited: every message dropped for " +
      "the rate, whether or not its notice was sent)",
    labelNames: ["code"],
    registers,
    collect() {
      const errors = read().errors;
      this.reset();
      for (const code of Object.keys(ERRORS) as (keyof typeof ERRORS)[]) {
        this.inc({ code }, errors[code] ?? 0);
      }
    },
  });
  new Gauge({
    name: "chat_connections",
    help: "Open connections by port (tls: the chat port, web: the web port) and state",
    labelNames: ["transport", "state"],
    registers,
    collect() {
      const { states } = read();
      for (const transport of ["tls", "web"] as const) {
        for (const [key, state] of Object.entries(STATES)) {
          this.set({ transport, state }, states[transport][key as keyof typeof STATES]);
        }
      }
    },
  });
  for (const [name, help, field] of GAUGES) {
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read()[field]);
      },
    });
  }
  if (source().cluster !== null) {
    const cluster = () => read().cluster!;
    for (
      const [name, help, value] of [
        ["chat_redis_up", "1 while the cluster's Redis answers, else 0", (c) => +c.redisUp],
        ["chat_cluster_nodes", "Live nodes in the cluster at the last heartbeat", (c) => c.nodes],
        [
          "chat_cluster_remote_members",
          "Members logged in on the other nodes, as this node knows them",
          (c) => c.remoteMembers,
        ],
        [
          "chat_cluster_senders_held",
          "1 while this node's senders wait for Redis (a backlog, or a node catching up), else 0",
          (c) => +c.backlogHeld,
        ],
      ] as [string, string, (status: ClusterStatus) => number][]
    ) {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(value(cluster()));
        },
      });
    }
  }
  const render = async () => {
    snapshot = source();
    try {
      return await registry.metrics();
    } finally {
      snapshot = undefined;
    }
  };
  return { registry, render };
}

/** How long {@link MetricsServer.close} waits for requests in flight. */
const CLOSE_WAIT_MS = 1000;

/** `/metrics` and `/healthz` for one {@link ChatServer}. `await listen()`, then `close()`. */
export class MetricsServer implements AsyncDisposable {
  #server: ChatServer;
  #options: MetricsServerOptions;
  #http: Deno.HttpServer<Deno.NetAddr> | null = null;
  #registry: Registry;
  #render: () => Promise<string>;

  /** An endpoint for `server`'s metrics; nothing listens until {@link MetricsServer.listen}. */
  constructor(server: ChatServer, options: MetricsServerOptions = {}) {
    this.#server = server;
    this.#options = options;
    ({ registry: this.#registry, render: this.#render } = chatRegistry(() => server.stats()));
  }

  /** The bound address; throws before {@link MetricsServer.listen}. */
  get addr(): Deno.NetAddr {
    if (!this.#http) throw new TypeError("MetricsServer is not listening");
    return this.#http.addr;
  }

  /** The metrics page, as `GET /metrics` serves it. */
  metrics(): Promise<string> {
    return this.#render();
  }

  /**
   * Binds the HTTP listener; resolves with its address.
   *
   * @throws {Deno.errors.AddrInUse} and the other errors of `Deno.serve`
   */
  listen(): Promise<Deno.NetAddr> {
    if (this.#http) return Promise.reject(new TypeError("MetricsServer is already listening"));
    const ready = Promise.withResolvers<Deno.NetAddr>();
    try {
      this.#http = Deno.serve({
        hostname: this.#options.hostname ?? "127.0.0.1",
        port: this.#options.port ?? 9464,
        onListen: (addr) => ready.resolve(addr as Deno.NetAddr),
        onError: () => new Response("Internal Server Error\n", { status: 500 }),
      }, (request) => this.#handle(request));
    } catch (error) {
      return Promise.reject(error);
    }
    return ready.promise;
  }

  /**
   * Stops listening; idempotent. Waits for requests in flight for at most a second: a client
   * that announces a body and never sends it must not hold the server's exit.
   */
  async close(): Promise<void> {
    const http = this.#http;
    if (!http) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      http.shutdown(),
      new Promise<void>((resolve) => timer = setTimeout(resolve, CLOSE_WAIT_MS)),
    ]);
    clearTimeout(timer);
  }

  /** Closes it, as {@link MetricsServer.close} does (for `await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #handle(request: Request): Promise<Response> {
    const { pathname } = new URL(request.url);
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("Method Not Allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    if (pathname === "/metrics") {
      return new Response(await this.#render(), {
        headers: { "content-type": this.#registry.contentType },
      });
    }
    if (pathname === "/healthz") {
      if (this.#server.closing) return new Response("shutting down\n", { status: 503 });
      if (!listening(this.#server)) return new Response("starting\n", { status: 503 });
      return new Response("ok\n");
    }
    return new Response("Not Found\n", { status: 404 });
  }
}

function listening(server: ChatServer): boolean {
  try {
    server.addr;
    return true;
  } catch {
    return false;
  }
}
