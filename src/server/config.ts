/**
 * Server configuration: flags win over environment, environment over defaults.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { parseHost, parsePort } from "../common/address.ts";
import type { EnvReader } from "../common/env.ts";
import { DEFAULT_MAX_FRAME } from "../protocol/mod.ts";

/** Limits that protect the server from its clients. Durations are milliseconds. */
export interface Limits {
  /** Largest incoming frame body, bytes. */
  maxFrame: number;
  /** Time allowed for the TLS handshake. */
  handshakeTimeoutMs: number;
  /** Time from accept to a complete auth frame. */
  authTimeoutMs: number;
  /** Concurrent connections, all IPs. */
  maxClients: number;
  /** Concurrent connections from one IP; 0 = unlimited. */
  maxPerIp: number;
  /**
   * Bytes queued for one client (counting what its queued frames keep alive) above which the
   * server stops reading from the senders until the client catches up.
   */
  maxSendQueue: number;
  /** Time a client with queued bytes may accept nothing before it is dropped. */
  writeTimeoutMs: number;
  /** Time a reader whose full queue holds the senders back may accept nothing before it is dropped. */
  stallTimeoutMs: number;
  /** Messages per second per client; 0 disables rate limiting. */
  rate: number;
  /** Token bucket size. */
  burst: number;
  /** Auth failures from one IP within the lockout window before it is locked out. */
  maxAuthFailures: number;
  /** Lockout window and lockout duration. */
  lockoutMs: number;
  /** Messages kept in history (older ones are deleted); 0 keeps none. */
  historyKeep: number;
}

/** Defaults from PROTOCOL.md. */
export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxFrame: DEFAULT_MAX_FRAME,
  handshakeTimeoutMs: 10_000,
  authTimeoutMs: 10_000,
  maxClients: 10_000,
  maxPerIp: 64,
  maxSendQueue: 1024 * 1024,
  writeTimeoutMs: 10_000,
  stallTimeoutMs: 1000,
  rate: 20,
  burst: 50,
  maxAuthFailures: 5,
  lockoutMs: 60_000,
  historyKeep: 100_000,
});

/** Log levels accepted by `--log-level`. */
export const LOG_LEVELS = ["debug", "info", "warning", "error"] as const;
/** Log formats accepted by `--log-format`. */
export const LOG_FORMATS = ["text", "json"] as const;

/** The whole server configuration. */
export interface ServerConfig {
  host: string;
  port: number;
  /** The web client's HTTPS port on `host`; `null` when it is off. */
  webPort: number | null;
  certDir: string;
  certFile?: string;
  keyFile?: string;
  passwordFile?: string;
  /** Where the history database (`chat.db`) lives. */
  dataDir: string;
  /** The plain-HTTP port of `/metrics` and `/healthz`; `null` when off (the default). */
  metricsPort: number | null;
  /** Address of the metrics port (default `127.0.0.1`). */
  metricsHost: string;
  /** Redis URL of the cluster this node joins; `null`: a single node (the default). */
  redis: string | null;
  /** Prefix of the cluster's Redis keys (default `chat:`). */
  redisPrefix: string;
  logLevel: typeof LOG_LEVELS[number];
  logFormat: typeof LOG_FORMATS[number];
  /** Generate certificates (if missing), print the fingerprint and exit. */
  certsOnly: boolean;
  help: boolean;
  limits: Limits;
}

/** A bad flag or environment value; the message says which and why. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Usage text printed by `--help`. */
export const USAGE = `Usage: deno task start [options]

Options (flags win over environment variables, which win over defaults):
  --host HOST               address to listen on (env HOST; default 127.0.0.1)
  --port PORT               port, 0 picks a free one (env PORT; default 4000)
  --web-port PORT|off       the web client's HTTPS port on --host, 0 picks a free one, off
                            turns it off (default 4443)
  --password-file FILE      read the password from FILE (wins over CHAT_SERVER_PASSWORD)
  --cert-dir DIR            where cert.pem, key.pem and server_fingerprint.txt live (default certs)
  --cert FILE --key FILE    use an existing certificate and key instead of generating them
  --certs-only              generate the certificates if needed, print the fingerprint and exit
  --max-frame BYTES         largest incoming frame body (default 65536)
  --handshake-timeout SECS  time allowed for the TLS handshake (default 10)
  --auth-timeout SECS       time from connect to a complete auth frame (default 10)
  --max-clients N           concurrent connections, all IPs (default 10000)
  --max-per-ip N            concurrent connections from one IP, 0 = unlimited (default 64)
  --max-send-queue BYTES    bytes queued for a client above which senders are paused until it
                            catches up; at least 2 x --max-frame (default 1048576)
  --write-timeout SECS      a client with queued bytes that accepts nothing this long is
                            dropped (default 10)
  --stall-timeout SECS      a reader that holds the senders back (full queue) and accepts
                            nothing this long is dropped as a stalled reader (default 1)
  --rate N --burst N        messages per second per client and bucket size; --rate 0 disables
                            (default 20 / 50)
  --data-dir DIR            where the history database chat.db lives (default data); without
                            permission to write it, history is kept in memory
  --history-keep N          messages kept in history, 0 keeps none (default 100000)
  --max-auth-failures N     failed logins from one IP before it is locked out (default 5)
  --lockout SECS            lockout window and duration (default 60)
  --metrics-port PORT|off    serve Prometheus /metrics and /healthz over plain HTTP on this
                            port, 0 picks a free one (default off)
  --metrics-host HOST       address of the metrics port; it has no authentication, keep it
                            private (default 127.0.0.1)
  --redis URL               join the cluster of every server with this Redis, e.g.
                            redis://127.0.0.1:6379 (env REDIS_URL; default: a single node,
                            history in --data-dir); history, presence and lockouts go to Redis
  --redis-prefix PREFIX     prefix of the cluster's Redis keys (default chat:)
  --log-level LEVEL         debug, info, warning or error (default info)
  --log-format FORMAT       text or json (default text)
  -h, --help                show this help

The password comes from --password-file, else CHAT_SERVER_PASSWORD, else a hidden prompt.`;

const NUMERIC_FLAGS = {
  "max-frame": { key: "maxFrame", min: 1, max: 16 * 1024 * 1024, scale: 1 },
  "handshake-timeout": { key: "handshakeTimeoutMs", min: 0.001, max: 3600, scale: 1000 },
  "auth-timeout": { key: "authTimeoutMs", min: 0.001, max: 3600, scale: 1000 },
  "max-clients": { key: "maxClients", min: 1, max: 1_000_000, scale: 1 },
  "max-per-ip": { key: "maxPerIp", min: 0, max: 1_000_000, scale: 1 },
  "max-send-queue": { key: "maxSendQueue", min: 65536, max: 1024 ** 3, scale: 1 },
  "write-timeout": { key: "writeTimeoutMs", min: 1, max: 3600, scale: 1000 },
  "stall-timeout": { key: "stallTimeoutMs", min: 0.5, max: 3600, scale: 1000 },
  "rate": { key: "rate", min: 0, max: 1_000_000, scale: 1 },
  "burst": { key: "burst", min: 1, max: 1_000_000, scale: 1 },
  "max-auth-failures": { key: "maxAuthFailures", min: 1, max: 1_000_000, scale: 1 },
  "lockout": { key: "lockoutMs", min: 0, max: 86_400 * 7, scale: 1000 },
  "history-keep": { key: "historyKeep", min: 0, max: 1_000_000_000, scale: 1 },
} as const satisfies Record<string, { key: keyof Limits; min: number; max: number; scale: number }>;

/**
 * Parses flags and environment into a validated configuration.
 *
 * @param args command-line arguments (without the program name)
 * @param env reads one environment variable; returns `undefined` when unset or not readable
 * @throws {ConfigError} on an unknown flag or an invalid value
 */
export function parseConfig(
  args: string[],
  env: EnvReader = () => undefined,
): ServerConfig {
  const stringFlags = [
    "host",
    "port",
    "web-port",
    "password-file",
    "cert-dir",
    "data-dir",
    "cert",
    "key",
    "log-level",
    "log-format",
    "metrics-port",
    "metrics-host",
    "redis",
    "redis-prefix",
    ...Object.keys(NUMERIC_FLAGS),
  ];
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        ...Object.fromEntries(stringFlags.map((name) => [name, { type: "string" as const }])),
        "certs-only": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
  const flag = (name: string) => values[name] as string | undefined;

  const limits: Limits = { ...DEFAULT_LIMITS };
  for (const [name, spec] of Object.entries(NUMERIC_FLAGS)) {
    const raw = flag(name);
    if (raw === undefined) continue;
    const value = Number(raw);
    const integral = spec.scale === 1;
    if (
      raw.trim() === "" || !Number.isFinite(value) || (integral && !Number.isInteger(value)) ||
      value < spec.min || value > spec.max
    ) {
      throw new ConfigError(
        `Invalid --${name} ${JSON.stringify(raw)}: expected ${
          integral ? "an integer" : "a number of seconds"
        } from ${spec.min} to ${spec.max}`,
      );
    }
    limits[spec.key] = Math.round(value * spec.scale);
  }
  if (limits.maxSendQueue < 2 * limits.maxFrame) {
    throw new ConfigError(
      `Invalid --max-send-queue ${limits.maxSendQueue}: it must be at least twice --max-frame ` +
        `(${limits.maxFrame}), so a client can hold one broadcast while the next is queued`,
    );
  }

  let host: string;
  let port: number;
  let webPort: number | null;
  try {
    host = parseHost(flag("host") ?? env("HOST") ?? "127.0.0.1");
    port = parsePort(flag("port") ?? env("PORT") ?? "4000", 0);
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
  const web = flag("web-port") ?? "4443";
  try {
    webPort = web.trim() === "off" ? null : parsePort(web, 0);
  } catch {
    throw new ConfigError(`Invalid --web-port ${JSON.stringify(web)}: expected 0 to 65535, or off`);
  }
  if (webPort !== null && webPort !== 0 && webPort === port) {
    throw new ConfigError(`--web-port ${webPort} is the chat port too: pick another one, or off`);
  }

  const metrics = flag("metrics-port") ?? "off";
  let metricsPort: number | null;
  try {
    metricsPort = metrics.trim() === "off" ? null : parsePort(metrics, 0);
  } catch {
    throw new ConfigError(
      `Invalid --metrics-port ${JSON.stringify(metrics)}: expected 0 to 65535, or off`,
    );
  }
  if (metricsPort !== null && metricsPort !== 0 && [port, webPort].includes(metricsPort)) {
    throw new ConfigError(
      `--metrics-port ${metricsPort} is the ${metricsPort === port ? "chat" : "web"} port too: ` +
        "pick another one",
    );
  }
  let metricsHost: string;
  try {
    metricsHost = parseHost(flag("metrics-host") ?? "127.0.0.1");
  } catch {
    throw new ConfigError(`Invalid --metrics-host "": it is empty`);
  }
  if (flag("metrics-host") !== undefined && metricsPort === null) {
    throw new ConfigError("--metrics-host needs --metrics-port");
  }

  const redisFlag = flag("redis") ?? env("REDIS_URL");
  let redis: string | null = null;
  if (redisFlag !== undefined && redisFlag.trim() !== "" && redisFlag.trim() !== "off") {
    redis = redisFlag.trim();
    let url: URL;
    try {
      url = new URL(redis);
    } catch {
      throw new ConfigError("Invalid --redis: expected a URL such as redis://127.0.0.1:6379");
    }
    if (url.protocol !== "redis:" && url.protocol !== "rediss:") {
      throw new ConfigError(
        `Invalid --redis: the URL must start with redis:// or rediss:// (not ${url.protocol}//)`,
      );
    }
    try {
      decodeURIComponent(url.username);
      decodeURIComponent(url.password);
    } catch {
      throw new ConfigError(
        "Invalid --redis: the user or password is not URL-encoded properly (write % as %25)",
      );
    }
    if (!/^\/?\d*$/.test(url.pathname) || url.hostname === "") {
      throw new ConfigError(
        "Invalid --redis: expected redis://[user:password@]host[:port][/db] with a numeric db",
      );
    }
  }
  const redisPrefix = flag("redis-prefix") ?? "chat:";
  if (redisPrefix === "" || redisPrefix.length > 64) {
    throw new ConfigError("Invalid --redis-prefix: expected 1 to 64 characters");
  }
  if (flag("redis-prefix") !== undefined && redis === null) {
    throw new ConfigError("--redis-prefix needs --redis");
  }

  const certFile = flag("cert");
  const keyFile = flag("key");
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new ConfigError("Pass --cert and --key together, or neither to use --cert-dir");
  }

  const logLevel = flag("log-level") ?? "info";
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new ConfigError(`Invalid --log-level ${logLevel}: expected ${LOG_LEVELS.join(", ")}`);
  }
  const logFormat = flag("log-format") ?? "text";
  if (!(LOG_FORMATS as readonly string[]).includes(logFormat)) {
    throw new ConfigError(`Invalid --log-format ${logFormat}: expected ${LOG_FORMATS.join(", ")}`);
  }

  return {
    host,
    port,
    webPort,
    certDir: flag("cert-dir") ?? "certs",
    certFile,
    keyFile,
    passwordFile: flag("password-file"),
    dataDir: flag("data-dir") ?? "data",
    metricsPort,
    metricsHost,
    redis,
    redisPrefix,
    logLevel: logLevel as ServerConfig["logLevel"],
    logFormat: logFormat as ServerConfig["logFormat"],
    certsOnly: values["certs-only"] === true,
    help: values.help === true,
    limits,
  };
}
