/**
 * Secure TLS group-chat server: the command-line entry point.
 *
 * Start it on its defaults (generates certificates on first run, prompts for the password or
 * reads `CHAT_SERVER_PASSWORD`):
 *
 * ```sh
 * deno task start
 * # which runs:
 * deno run --no-prompt --v8-flags=--max-semi-space-size=4 --allow-net \
 *   --allow-read=certs,data,web --allow-write=certs,data --allow-run=openssl \
 *   --allow-env=CHAT_SERVER_PASSWORD,HOST,PORT,REDIS_URL main.ts
 * ```
 *
 * Once certificates exist (`deno task certs`), network and read access are enough:
 *
 * ```sh
 * deno run --allow-net --allow-read main.ts --password-file /path/to/password
 * ```
 *
 * `--help` lists every flag. Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 on a
 * configuration, password, certificate or permission error.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import {
  CertError,
  type CertPair,
  ensureCertificates,
  fingerprintBanner,
  writeFingerprintFile,
} from "./src/server/certs.ts";
import { readEnv } from "./src/common/env.ts";
import { ConfigError, parseConfig, type ServerConfig, USAGE } from "./src/server/config.ts";
import { setupLogging } from "./src/server/log.ts";
import { PasswordError, PasswordVerifier, readPassword } from "./src/server/password.ts";
import { hasPermission, PermissionError, requirePermission } from "./src/common/permissions.ts";
import { ChatServer, type ChatServerOptions } from "./src/server/server.ts";
import { type Asset, loadAssets, WEB_DIR } from "./src/web/gateway.ts";
import { MetricsServer } from "./src/server/metrics.ts";
import { reloadOnSighup } from "./src/server/reload.ts";
import { type HistoryStore, openStore, StoreOpenError } from "./src/room/store.ts";
import { redactRedisUrl } from "./src/room/cluster.ts";

/**
 * Signals within this many milliseconds of the first are the same request to stop: Ctrl-C reaches
 * both `deno task` (which forwards it) and the server, and `timeout` and systemd signal the whole
 * process group. Only a later, separate signal (once the graceful stop, which flushes for up to
 * 2 s, has had its chance) forces an exit.
 */
const SAME_STOP_MS = 2_000;

/** Errors whose message is meant for the person at the terminal. */
function isUserError(error: unknown): error is Error {
  return error instanceof ConfigError || error instanceof CertError ||
    error instanceof PasswordError || error instanceof PermissionError ||
    error instanceof StoreOpenError || error instanceof ListenError;
}

function printError(message: string): void {
  console.error(`error: ${message}`);
}

/** Makes sure the certificates exist, prints the banner and rewrites the fingerprint file. */
async function loadCertificates(config: ServerConfig): Promise<CertPair> {
  const pair = await ensureCertificates({
    certDir: config.certDir,
    certFile: config.certFile,
    keyFile: config.keyFile,
    host: config.host,
  });
  await printBanner(config, pair.fingerprint, pair.generated);
  return pair;
}

/**
 * Runs the server until SIGINT or SIGTERM.
 *
 * @returns the process exit code
 */
export async function main(args: string[]): Promise<number> {
  // SIGHUP's default action ends the process. Until the reload handler is up, and after it is
  // gone, a SIGHUP is only noted (one during start-up reloads once the server has started).
  const early = { hangups: 0 };
  const onEarlyHangup = () => early.hangups++;
  const hangups = Deno.build.os !== "windows";
  if (hangups) Deno.addSignalListener("SIGHUP", onEarlyHangup);
  try {
    return await run(args, early);
  } finally {
    if (hangups) Deno.removeSignalListener("SIGHUP", onEarlyHangup);
  }
}

async function run(args: string[], early: { hangups: number }): Promise<number> {
  let config: ServerConfig;
  try {
    config = parseConfig(args, readEnv);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    printError(`${error.message}\nRun with --help to see the options.`);
    return 1;
  }
  if (config.help) {
    console.log(USAGE);
    return 0;
  }
  await setupLogging({ level: config.logLevel, format: config.logFormat });
  const logger = getLogger(["chat-server"]);

  let server: ChatServer;
  let store: HistoryStore | undefined;
  let metrics: MetricsServer | undefined;
  try {
    if (config.certsOnly) {
      await loadCertificates(config);
      return 0;
    }
    // Everything that can fail without asking anything comes first: the port, then a password
    // given by file or variable; then the certificate and its banner; then the prompt, if any.
    const address = hostPort(config.host, config.port);
    requirePermission({ name: "net", host: address }, `listen on ${address}`);
    checkListen(config.host, config.port);
    let web: ChatServerOptions["web"];
    if (config.webPort !== null) {
      const webAddress = hostPort(config.host, config.webPort);
      requirePermission({ name: "net", host: webAddress }, `serve the web client on ${webAddress}`);
      checkListen(config.host, config.webPort, true);
      web = { port: config.webPort, assets: await loadWebClient() };
    }
    if (config.metricsPort !== null) {
      const metricsAddress = hostPort(config.metricsHost, config.metricsPort);
      requirePermission(
        { name: "net", host: metricsAddress },
        `serve metrics on ${metricsAddress}`,
      );
      checkListen(config.metricsHost, config.metricsPort, "metrics");
    }
    const sources = {
      env: config.passwordFile === undefined ? readEnv("CHAT_SERVER_PASSWORD") : undefined,
      file: config.passwordFile,
    };
    const prompting = sources.file === undefined && sources.env === undefined &&
      Deno.stdin.isTerminal();
    let password = prompting ? undefined : await readPassword(sources);
    const pair = await loadCertificates(config);
    password ??= await readPassword(sources);
    const verifier = await PasswordVerifier.create(password);
    console.log("Server password set successfully...");
    if (config.redis === null) {
      const opened = openStore({ dataDir: config.dataDir, keep: config.limits.historyKeep });
      store = opened.store;
      if (opened.warning) logger.warn(opened.warning);
      else {logger.info("History in {path}, keeping {keep} messages", {
          path: store.path ?? config.dataDir,
          keep: config.limits.historyKeep,
        });}
    } else {
      logger.info("Cluster on Redis at {url}, keeping {keep} messages of history there", {
        url: redactRedisUrl(config.redis),
        keep: config.limits.historyKeep,
      });
    }
    server = new ChatServer({
      history: store,
      redis: config.redis === null ? undefined : { url: config.redis, prefix: config.redisPrefix },
      hostname: config.host,
      port: config.port,
      web,
      cert: pair.certPem,
      key: pair.keyPem,
      verifier,
      limits: config.limits,
    });
    metrics = await startMetrics(server, config);
  } catch (error) {
    store?.close();
    if (!isUserError(error)) throw error; // a bug: main's caller prints it and exits 1
    printError(error.message);
    // "run with --allow-..." cannot be given to `deno task start`: print a command that works.
    if (/run with --allow-/.test(error.message)) printWorkingCommand(config, Deno.args);
    return 1;
  }
  // The signal handlers come first: a signal while the listeners start (the started line is
  // logged before the web port is up) stops the server gracefully once they are up.
  const stopped = Promise.withResolvers<void>();
  let stopAt: number | undefined;
  const onSignal = () => {
    const now = performance.now();
    if (stopAt === undefined) {
      stopAt = now;
      stopped.resolve();
    } else if (now - stopAt >= SAME_STOP_MS) {
      logger.error("Second signal: exiting without waiting for clients");
      Deno.exit(1);
    }
    // Else the same request to stop, delivered twice (see SAME_STOP_MS).
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const stopReloads = reloadOnSighup(server, config, {
    logger,
    changed: (fingerprint) => printBanner(config, fingerprint, false),
    now: early.hangups > 0,
  });
  try {
    await server.listen();
  } catch (error) {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await stopReloads();
    await metrics?.close();
    store?.close();
    const web = (error as { listener?: string } | null)?.listener === "web";
    printError(
      new ListenError(config.host, web ? config.webPort! : config.port, error, web).message,
    );
    return 1;
  }
  // From here on, a stray rejection in one connection must not stop the server.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    logger.error("Unhandled rejection: {reason}", { reason: String(event.reason) });
  });

  await stopped.promise;
  await server.close();
  await stopReloads();
  await metrics?.close();
  store?.close();
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  return 0;
}

/**
 * Prints a `deno run` command line with every permission this configuration needs (the flags of
 * `deno task start` plus the files and folders the flags name) and the same arguments.
 */
function printWorkingCommand(config: ServerConfig, args: string[]): void {
  const unique = (paths: (string | undefined)[]) =>
    [...new Set(paths.filter((path) => path !== undefined))].join(",");
  // Paths as seen from the current directory, where Deno resolves --allow-read and --allow-write.
  const cwd = Deno.cwd();
  const relative = (url: URL) => {
    const path = decodeURIComponent(url.pathname).replace(/(.)\/$/, "$1");
    return path.startsWith(`${cwd}/`) ? path.slice(cwd.length + 1) : path;
  };
  const writes = unique(["certs", "data", config.certDir, config.dataDir]);
  const reads = unique([
    "certs",
    "data",
    config.webPort === null ? undefined : relative(WEB_DIR),
    config.certDir,
    config.dataDir,
    config.certFile,
    config.keyFile,
    config.passwordFile,
  ]);
  const quote = (word: string) =>
    /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
  const command = [
    "deno run --no-prompt --v8-flags=--max-semi-space-size=4 --allow-net",
    `--allow-read=${reads}`,
    `--allow-write=${writes}`,
    "--allow-run=openssl --allow-env=CHAT_SERVER_PASSWORD,HOST,PORT,REDIS_URL",
    relative(new URL(import.meta.url)),
    ...args,
  ].map((part, i) => i === 0 || i === 3 ? part : quote(part)).join(" ");
  console.error(
    `(\`deno task start\` grants less; this grants what these flags need:)\n  ${command}`,
  );
}

/** Reads the web client's files, or says which permission is missing. */
async function loadWebClient(): Promise<Map<string, Asset>> {
  try {
    return await loadAssets(WEB_DIR);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw new PermissionError(
        "Cannot read the web client's files in web/: run with --allow-read=web (as " +
          "`deno task start` does), or turn the web client off with --web-port off",
        "--allow-read=web",
      );
    }
    throw error;
  }
}

/** `host:port`, with an IPv6 host in brackets (`[::1]:4000`), as `--allow-net` spells it. */
function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** The listener cannot be bound; the message says why in words a person can act on. */
class ListenError extends Error {
  constructor(host: string, port: number, cause: unknown, web: boolean | "metrics" = false) {
    const what = web === "metrics"
      ? " (metrics; pick another with --metrics-port)"
      : web
      ? " (the web client; pick another with --web-port, or --web-port off)"
      : "";
    super(`Cannot listen on ${hostPort(host, port)}${what}: ${listenReason(cause, !!web)}`, {
      cause,
    });
    this.name = "ListenError";
  }
}

/**
 * Binds and releases `host:port` before anything is printed or asked, so a port in use is
 * reported first, not after the banner and the password prompt.
 *
 * @throws {ListenError} if it cannot be bound.
 */
function checkListen(host: string, port: number, web: boolean | "metrics" = false): void {
  try {
    Deno.listen({ hostname: host, port }).close();
  } catch (error) {
    throw new ListenError(host, port, error, web);
  }
}

/** Serves `/metrics` and `/healthz` when `--metrics-port` is set, and logs where. */
async function startMetrics(
  server: ChatServer,
  config: ServerConfig,
): Promise<MetricsServer | undefined> {
  if (config.metricsPort === null) return undefined;
  const metrics = new MetricsServer(server, {
    hostname: config.metricsHost,
    port: config.metricsPort,
  });
  let port: number;
  try {
    ({ port } = await metrics.listen());
  } catch (error) {
    throw new ListenError(config.metricsHost, config.metricsPort, error, "metrics");
  }
  const host = config.metricsHost.includes(":") ? `[${config.metricsHost}]` : config.metricsHost;
  getLogger(["chat-server"]).info("metrics at http://{host}:{port}/metrics", { host, port });
  return metrics;
}

/** Why the listener could not be bound, in words a person can act on. */
function listenReason(error: unknown, web = false): string {
  const { code, syscall } = (error ?? {}) as { code?: unknown; syscall?: unknown };
  const message = error instanceof Error ? error.message : String(error);
  if (syscall === "getaddrinfo" || /lookup address/.test(message)) {
    return `cannot resolve the host name (${message}); check --host`;
  }
  switch (code) {
    case "EADDRINUSE":
      return web
        ? "the port is already in use"
        : "the port is already in use (pick another with --port)";
    case "EACCES":
    case "EPERM":
      return `not allowed (${message}); ports below 1024 need root or CAP_NET_BIND_SERVICE`;
    case "EADDRNOTAVAIL":
    case "EINVAL":
      return `this machine has no such address (${message}); check --host`;
    default:
      return message;
  }
}

/** Prints the fingerprint banner and rewrites `server_fingerprint.txt` (if allowed). */
async function printBanner(
  config: ServerConfig,
  fingerprint: string,
  generated: boolean,
): Promise<void> {
  const logger = getLogger(["chat-server"]);
  if (generated) logger.info("Generated a new certificate in {dir}", { dir: config.certDir });
  console.log(fingerprintBanner(fingerprint));
  if (!hasPermission({ name: "write", path: config.certDir })) {
    logger.warn(
      "Not updating server_fingerprint.txt: run with --allow-write={dir} to keep it current",
      { dir: config.certDir },
    );
    return;
  }
  try {
    await writeFingerprintFile(config.certDir, fingerprint);
  } catch (error) {
    logger.warn("Cannot write server_fingerprint.txt: {error}", { error: String(error) });
  }
}

if (import.meta.main) {
  main(Deno.args).then(
    (code) => Deno.exit(code),
    (error) => {
      printError(error instanceof Error ? (error.stack ?? error.message) : String(error));
      Deno.exit(1);
    },
  );
}
