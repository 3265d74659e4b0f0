/**
 * Chat client: connects over TLS, pins the server certificate, logs in, and chats.
 *
 * ```sh
 * export CHAT_SERVER_FINGERPRINT=<hex from the server banner or certs/server_fingerprint.txt>
 * deno task client --name alice
 * # = deno run --no-prompt --allow-net --allow-read \
 * #     --allow-env=CHAT_SERVER_PASSWORD,CHAT_SERVER_FINGERPRINT,HOST,PORT src/client.ts --name alice
 * ```
 *
 * Options (flags win over environment, environment over defaults):
 * - `--host HOST` (`HOST`, default `127.0.0.1`), `--port PORT` (`PORT`, default `4000`)
 * - `--name NAME`: the `sender` of your messages (default `anon`, at most 64 characters)
 * - `--fingerprint HEX` (`CHAT_SERVER_FINGERPRINT`) or `--fingerprint-file FILE` (the server's
 *   `server_fingerprint.txt`): SHA-256 of the server certificate, colons and case ignored. It is
 *   checked before the password is sent. Without one the client warns, prints the fingerprint it
 *   saw, and pins that one for its own reconnects.
 * - Password: `CHAT_SERVER_PASSWORD`, else a hidden prompt (needs a terminal). Never printed.
 * - `--history N`: messages replayed at login by a version 2 server (default 50, 0 = none)
 * - `--json`: scripted mode, printing every received frame as one JSON line on stdout
 * - `--linger SECONDS`: in scripted mode, keep receiving this long after stdin ends (default 0)
 * - `--ack-timeout SECONDS`: in scripted mode with a version 2 server, how long to wait for the
 *   server to confirm every line after stdin ends (default 30, or `--linger` if longer)
 *
 * - `--show-ip`: interactive mode shows every sender's address (by default only where it tells
 *   two people with one name apart)
 *
 * Modes: with a terminal on stdin, an interactive prompt (`/quit`, or Ctrl-D or Ctrl-C on an
 * empty line, leave; Ctrl-C clears a line with text; `/help`; `/me ACTION`); otherwise (or with `--json`) every non-blank stdin line is sent as one message,
 * received messages go to stdout as `[HH:MM:SS] name (ip): text`, status and errors to stderr,
 * and the client exits once stdin ended and its messages were written. A lost connection is
 * re-established with backoff (1 s doubling to 30 s) in both modes; messages typed meanwhile are
 * sent after the new login. The first connection is not retried. The server's rate limit (20
 * messages/s, burst 50 by default) applies to scripted input too; dropped messages are reported.
 *
 * With a version 2 server (protocol "Version 2": the client always asks for ids, presence and
 * history) the client also shows the last messages at login, who joins and leaves, `/who` and
 * `/history`; every message carries a `ref` and is resent (same `ref`) until the server acks
 * it, across reconnects, and a reconnect asks for exactly the messages missed. Against an older
 * server nothing of this happens and the client behaves as a seed client.
 *
 * Exit codes: 0 ok; 1 usage or configuration error; 2 connection failed; 3 fingerprint mismatch
 * (password not sent); 4 password refused or address locked out; 5 scripted lines not confirmed
 * by a version 2 server (they are named); 130 Ctrl-C at the password prompt; 129, 130, 143
 * stopped by SIGHUP, SIGINT, SIGTERM (the terminal restored first).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parseHost, parsePort } from "../common/address.ts";
import { type EnvReader, readEnv } from "../common/env.ts";
import { DEFAULT_SENDER, type JsonObject, parseChat } from "../protocol/mod.ts";
import { ClientError, EXIT_OK, EXIT_USAGE } from "./exit.ts";
import { readFingerprintFile } from "./pin.ts";
import { formatFingerprint, normalizeFingerprint } from "../common/fingerprint.ts";
import { signalExitCode } from "../common/prompt.ts";
import { formatOwn, plural, sanitize } from "./format.ts";
import { ChatLink, messageFrame } from "./link.ts";
import { INTERACTIVE_HELP, parseInput, promptHidden, TerminalUi } from "./tty.ts";
import { ACK_TIMEOUT_MS, runScripted } from "./script.ts";
import { DEFAULT_HISTORY, FEATURES, MAX_HISTORY } from "./v2.ts";
import { ChatView } from "./view.ts";

/** Default server host. */
export const DEFAULT_HOST = "127.0.0.1";
/** Default server port. */
export const DEFAULT_PORT = 4000;
/** Printed (with the fingerprint seen) when no fingerprint is configured. */
export const INSECURE_WARNING =
  "WARNING: CHAT_SERVER_FINGERPRINT is not set. The client will connect INSECURELY and accept any certificate.";
/** The hidden password prompt. */
export const PASSWORD_PROMPT = "Enter server password: ";
/** How long `/quit` waits for the acks of messages just sent, milliseconds. */
const QUIT_ACK_WAIT_MS = 2_000;

/** Usage text for `--help`. */
export const USAGE = `Usage: deno task client [options]

Options:
  --host HOST              server host (env HOST, default ${DEFAULT_HOST})
  --port PORT              server port (env PORT, default ${DEFAULT_PORT})
  --name NAME              sender name shown to others (default ${DEFAULT_SENDER})
  --fingerprint HEX        pinned SHA-256 of the server certificate (env CHAT_SERVER_FINGERPRINT)
  --fingerprint-file FILE  read the pin from the server's server_fingerprint.txt
  --history N              messages shown from before login (default ${DEFAULT_HISTORY}, 0 = none)
  --show-ip                show every sender's address (by default only where two people
                           share a name; /who always shows them)
  --json                   scripted mode; print every received frame as a JSON line
  --linger SECONDS         scripted mode: keep receiving this long after stdin ends (default 0)
  --ack-timeout SECONDS    scripted mode: wait this long for the server to confirm every line
                           (default ${ACK_TIMEOUT_MS / 1000}, or --linger if longer)
  -h, --help               show this help

Password: env CHAT_SERVER_PASSWORD, else a hidden prompt (terminal only).
Exit codes: 0 ok, 1 usage/config error, 2 connection failed, 3 fingerprint mismatch,
            4 password refused or locked out, 5 lines not confirmed by the server,
            130 cancelled at the password prompt; 129/130/143 stopped by
            SIGHUP/SIGINT/SIGTERM.`;

/** Parsed command line and environment. */
export interface ClientOptions {
  host: string;
  port: number;
  name: string;
  /** Normalised pin from `--fingerprint` or `CHAT_SERVER_FINGERPRINT`. */
  fingerprint?: string;
  /** `--fingerprint-file`, read by {@link resolvePin}. */
  fingerprintFile?: string;
  /** Messages to replay at login (`--history`). */
  history: number;
  json: boolean;
  lingerMs: number;
  ackTimeoutMs: number;
  /** Interactive mode: show every sender's address (`--show-ip`). */
  showIp: boolean;
  help: boolean;
}

function usageError(message: string): ClientError {
  return new ClientError(EXIT_USAGE, message);
}

/**
 * Parses flags and environment into {@link ClientOptions}; pure apart from calling `env`.
 *
 * @throws {ClientError} `EXIT_USAGE` on an unknown flag or a bad value.
 */
export function parseClientArgs(args: string[], env: EnvReader): ClientOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        host: { type: "string" },
        port: { type: "string" },
        name: { type: "string" },
        fingerprint: { type: "string" },
        "fingerprint-file": { type: "string" },
        history: { type: "string" },
        json: { type: "boolean", default: false },
        linger: { type: "string" },
        "ack-timeout": { type: "string" },
        "show-ip": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (error) {
    throw usageError((error as Error).message);
  }
  let host: string;
  let port: number;
  try {
    host = parseHost(values.host ?? env("HOST") ?? DEFAULT_HOST);
    port = parsePort(values.port ?? env("PORT") ?? String(DEFAULT_PORT), 1);
  } catch (error) {
    throw usageError((error as Error).message);
  }
  const name = values.name ?? DEFAULT_SENDER;
  try {
    parseChat({ type: "message", content: "-", sender: name });
  } catch (error) {
    throw usageError(`Invalid --name: ${(error as Error).message}`);
  }
  if (values.fingerprint !== undefined && values["fingerprint-file"] !== undefined) {
    throw usageError("Use either --fingerprint or --fingerprint-file, not both");
  }
  let fingerprint: string | undefined;
  const pinText = values.fingerprint ?? env("CHAT_SERVER_FINGERPRINT");
  if (pinText !== undefined && values["fingerprint-file"] === undefined) {
    const source = values.fingerprint !== undefined ? "--fingerprint" : "CHAT_SERVER_FINGERPRINT";
    fingerprint = normalizeFingerprint(pinText);
    if (!fingerprint) {
      throw usageError(
        `Invalid ${source}: expected a SHA-256 fingerprint, 64 hex digits (colons allowed)`,
      );
    }
  }
  const historyText = values.history ?? String(DEFAULT_HISTORY);
  const history = Number(historyText);
  if (!/^\d+$/.test(historyText) || history > MAX_HISTORY) {
    throw usageError(
      `Invalid --history ${JSON.stringify(historyText)}: expected 0 to ${MAX_HISTORY} messages`,
    );
  }
  return {
    host,
    port,
    name,
    fingerprint,
    fingerprintFile: values["fingerprint-file"],
    history,
    json: values.json,
    lingerMs: parseSeconds("--linger", values.linger ?? "0"),
    ackTimeoutMs: parseSeconds(
      "--ack-timeout",
      values["ack-timeout"] ?? `${ACK_TIMEOUT_MS / 1000}`,
    ),
    showIp: values["show-ip"],
    help: values.help,
  };
}

function parseSeconds(flag: string, text: string): number {
  const seconds = Number(text);
  if (text.trim() === "" || !Number.isFinite(seconds) || seconds < 0) {
    throw usageError(`Invalid ${flag} ${JSON.stringify(text)}: expected seconds >= 0`);
  }
  return Math.round(seconds * 1000);
}

/**
 * Returns the pin to check: from `--fingerprint`/env, or read from `--fingerprint-file`.
 *
 * @throws {ClientError} `EXIT_USAGE` if the file cannot be read or holds no fingerprint.
 */
export async function resolvePin(options: ClientOptions): Promise<string | undefined> {
  if (options.fingerprintFile === undefined) return options.fingerprint;
  try {
    return await readFingerprintFile(options.fingerprintFile);
  } catch (error) {
    throw usageError((error as Error).message);
  }
}

/** The lines printed when connecting without a pin: the warning, what was seen, how to pin. */
export function insecureNotice(fingerprint: string): string {
  return [
    INSECURE_WARNING,
    `Server certificate fingerprint (SHA-256): ${formatFingerprint(fingerprint)}`,
    "Check it against the server's banner or server_fingerprint.txt, then pin it next time with",
    `  export CHAT_SERVER_FINGERPRINT=${fingerprint}`,
    "or --fingerprint HEX, or --fingerprint-file path/to/server_fingerprint.txt",
  ].join("\n");
}

async function readPassword(env: EnvReader): Promise<string> {
  const fromEnv = env("CHAT_SERVER_PASSWORD");
  if (fromEnv !== undefined) return fromEnv;
  if (!Deno.stdin.isTerminal()) {
    throw usageError(
      "Cannot read the password: set CHAT_SERVER_PASSWORD (stdin is not a terminal, so there is no prompt)",
    );
  }
  const password = await promptHidden(PASSWORD_PROMPT);
  if (password === "") throw usageError("Cannot log in with an empty password");
  return password;
}

async function runInteractive(
  link: ChatLink,
  ui: TerminalUi,
  view: ChatView,
  name: string,
): Promise<void> {
  let failure: ClientError | undefined;
  const failed = link.failed.then((error) => failure = error);
  ui.print("Type /help for help, /quit to leave.");
  await ui.run(`${name}> `, (line) => {
    const action = parseInput(line);
    if (action.kind === "quit") return ui.close();
    if (action.kind === "help") return ui.print(INTERACTIVE_HELP);
    if (action.kind === "who") return view.requestWho();
    if (action.kind === "history") return view.requestPage(action.limit);
    if (action.kind === "invalid") return ui.print(`! ${action.message}`);
    if (action.kind === "unknown") {
      return ui.print(`Unknown command ${action.command}; type /help (or // to send a leading /)`);
    }
    if (action.kind !== "send") return;
    try {
      const frame = messageFrame(action.content, name);
      ui.print(formatOwn(action.content, name, new Date()));
      if (!link.connected) ui.print("Not connected; the message will be sent after reconnecting");
      link.send(frame).catch((error) => ui.print(`! Message not sent: ${error.message}`));
    } catch (error) {
      ui.print(`! ${(error as Error).message}`);
    }
  }, failed);
  if (!failure && link.acking) await warnUnconfirmed(link);
  await link.close();
  if (failure) throw failure;
}

/** On leaving, waits briefly for the acks of messages just sent and names any still missing. */
async function warnUnconfirmed(link: ChatLink): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    link.settled(),
    new Promise((wake) => timer = setTimeout(wake, QUIT_ACK_WAIT_MS)),
  ]);
  clearTimeout(timer);
  const missing = link.unconfirmed();
  if (missing.length === 0) return;
  console.error(
    `! ${plural(missing.length, "message")} not confirmed by the server; they may be lost:`,
  );
  for (const frame of missing.slice(0, 5)) console.error(`  ${sanitize(String(frame.content))}`);
}

async function run(args: string[]): Promise<number> {
  const options = parseClientArgs(args, readEnv);
  if (options.help) {
    console.log(USAGE);
    return EXIT_OK;
  }
  const pin = await resolvePin(options);
  const password = await readPassword(readEnv);
  const ui = options.json || !Deno.stdin.isTerminal() ? undefined : new TerminalUi();
  const status = (text: string) => ui ? ui.print(text) : console.error(text);
  const view = new ChatView({
    chat: (line) => ui ? ui.print(line) : console.log(line),
    note: status,
  }, {
    history: options.history,
    commands: ui !== undefined,
    send: (frame) => link.request(frame),
    // Scripts read the lines as they always were: with the address.
    calm: ui !== undefined && !options.showIp,
    name: options.name,
  });
  const onFrame = (frame: JsonObject) => {
    if (options.json) console.log(JSON.stringify(frame));
    else view.onFrame(frame);
  };
  const where = `${options.host}:${options.port}`;
  const hello = { name: options.name, features: FEATURES, history: options.history };
  const link = new ChatLink({ host: options.host, port: options.port, password, pin, hello }, {
    onFrame,
    onStatus: status,
    onFingerprint: (fingerprint) => pin ? undefined : console.error(insecureNotice(fingerprint)),
    onLoggedIn: () =>
      status(`Logged in to ${where}${pin ? " (certificate matches the pinned fingerprint)" : ""}`),
  });
  await link.start();
  if (ui) {
    await runInteractive(link, ui, view, options.name);
    // Stopped by a signal: the terminal is restored; the exit code says which, as a shell's.
    if (ui.endedBy) return signalExitCode(ui.endedBy);
  } else {
    await runScripted(link, {
      name: options.name,
      lingerMs: options.lingerMs,
      ackTimeoutMs: options.ackTimeoutMs,
      warn: status,
    });
  }
  return EXIT_OK;
}

/** Runs the client with command-line `args`; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  try {
    return await run(args);
  } catch (error) {
    if (!(error instanceof ClientError)) throw error;
    console.error(`error: ${error.message}`);
    if (error.exitCode === EXIT_USAGE) console.error("Run with --help for usage.");
    return error.exitCode;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
