/**
 * Secure TLS group-chat server: the command-line entry point.
 *
 * Start it on its defaults (generates certificates on first run, prompts for the password or
 * reads `CHAT_SERVER_PASSWORD`):
 *
 * ```sh
 * deno task start
 * # which runs:
 * deno run --no-prompt --v8-flags=--max-semi-space-size=4 --allow-net --allow-read=certs \
 *   --allow-write=certs --allow-run=openssl \
 *   --allow-env=CHAT_SERVER_PASSWORD,HOST,PORT main.ts
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
import { ChatServer } from "./src/server/server.ts";
import { type HistoryStore, openStore, StoreOpenError } from "./src/room/store.ts";

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
    const opened = openStore({ dataDir: config.dataDir, keep: config.limits.historyKeep });
    store = opened.store;
    if (opened.warning) logger.warn(opened.warning);
    else {logger.info("History in {path}, keeping {keep} messages", {
        path: store.path ?? config.dataDir,
        keep: config.limits.historyKeep,
      });}
    server = new ChatServer({
      history: store,
      hostname: config.host,
      port: config.port,
      cert: pair.certPem,
      key: pair.keyPem,
      verifier,
      limits: config.limits,
    });
  } catch (error) {
    store?.close();
    if (!isUserError(error)) throw error; // a bug: main's caller prints it and exits 1
    printError(error.message);
    // "run with --allow-..." cannot be given to `deno task start`: print a command that works.
    if (/run with --allow-/.test(error.message)) printWorkingCommand(config, Deno.args);
    return 1;
  }
  try {
    await server.listen();
  } catch (error) {
    store.close();
    printError(new ListenError(config.host, config.port, error).message);
    return 1;
  }
  // From here on, a stray rejection in one connection must not stop the server.
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    logger.error("Unhandled rejection: {reason}", { reason: String(event.reason) });
  });

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
  await stopped.promise;
  await server.close();
  store.close();
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
  const writes = unique(["certs", "data", config.certDir, config.dataDir]);
  const reads = unique([
    "certs",
    "data",
    config.certDir,
    config.dataDir,
    config.certFile,
    config.keyFile,
    config.passwordFile,
  ]);
  const quote = (word: string) =>
    /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
  const main = new URL(import.meta.url).pathname;
  const cwd = Deno.cwd();
  const script = main.startsWith(`${cwd}/`) ? main.slice(cwd.length + 1) : main;
  const command = [
    "deno run --no-prompt --v8-flags=--max-semi-space-size=4 --allow-net",
    `--allow-read=${reads}`,
    `--allow-write=${writes}`,
    "--allow-run=openssl --allow-env=CHAT_SERVER_PASSWORD,HOST,PORT",
    script,
    ...args,
  ].map((part, i) => i < 4 ? part : quote(part)).join(" ");
  console.error(
    `(\`deno task start\` grants less; this grants what these flags need:)\n  ${command}`,
  );
}

/** `host:port`, with an IPv6 host in brackets (`[::1]:4000`), as `--allow-net` spells it. */
function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** The listener cannot be bound; the message says why in words a person can act on. */
class ListenError extends Error {
  constructor(host: string, port: number, cause: unknown) {
    super(`Cannot listen on ${hostPort(host, port)}: ${listenReason(cause)}`, { cause });
    this.name = "ListenError";
  }
}

/**
 * Binds and releases `host:port` before anything is printed or asked, so a port in use is
 * reported first, not after the banner and the password prompt.
 *
 * @throws {ListenError} if it cannot be bound.
 */
function checkListen(host: string, port: number): void {
  try {
    Deno.listen({ hostname: host, port }).close();
  } catch (error) {
    throw new ListenError(host, port, error);
  }
}

/** Why the listener could not be bound, in words a person can act on. */
function listenReason(error: unknown): string {
  const { code, syscall } = (error ?? {}) as { code?: unknown; syscall?: unknown };
  const message = error instanceof Error ? error.message : String(error);
  if (syscall === "getaddrinfo" || /lookup address/.test(message)) {
    return `cannot resolve the host name (${message}); check --host`;
  }
  switch (code) {
    case "EADDRINUSE":
      return "the port is already in use (pick another with --port)";
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
