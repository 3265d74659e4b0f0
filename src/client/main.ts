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
 * - `--json`: scripted mode, printing every received frame as one JSON line on stdout
 * - `--linger SECONDS`: in scripted mode, keep receiving this long after stdin ends (default 0)
 *
 * Modes: with a terminal on stdin, an interactive prompt (`/quit`, Ctrl-D or Ctrl-C leave,
 * `/help`); otherwise (or with `--json`) every non-blank stdin line is sent as one message,
 * received messages go to stdout as `[HH:MM:SS] name (ip): text`, status and errors to stderr,
 * and the client exits once stdin ended and its messages were written. A lost connection is
 * re-established with backoff (1 s doubling to 30 s) in both modes; messages typed meanwhile are
 * sent after the new login. The first connection is not retried. The server's rate limit (20
 * messages/s, burst 50 by default) applies to scripted input too; dropped messages are reported.
 *
 * Exit codes: 0 ok; 1 usage or configuration error; 2 connection failed; 3 fingerprint mismatch
 * (password not sent); 4 password refused or address locked out; 130 Ctrl-C at the password
 * prompt.
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
import { formatError, formatIncoming } from "./format.ts";
import { ChatLink, messageFrame } from "./link.ts";
import { INTERACTIVE_HELP, parseInput, promptHidden, TerminalUi } from "./tty.ts";
import { runScripted } from "./script.ts";

/** Default server host. */
export const DEFAULT_HOST = "127.0.0.1";
/** Default server port. */
export const DEFAULT_PORT = 4000;
/** Printed (with the fingerprint seen) when no fingerprint is configured. */
export const INSECURE_WARNING =
  "WARNING: CHAT_SERVER_FINGERPRINT is not set. The client will connect INSECURELY and accept any certificate.";
/** The hidden password prompt. */
export const PASSWORD_PROMPT = "Enter server password: ";

/** Usage text for `--help`. */
export const USAGE = `Usage: deno task client [options]

Options:
  --host HOST              server host (env HOST, default ${DEFAULT_HOST})
  --port PORT              server port (env PORT, default ${DEFAULT_PORT})
  --name NAME              sender name shown to others (default ${DEFAULT_SENDER})
  --fingerprint HEX        pinned SHA-256 of the server certificate (env CHAT_SERVER_FINGERPRINT)
  --fingerprint-file FILE  read the pin from the server's server_fingerprint.txt
  --json                   scripted mode; print every received frame as a JSON line
  --linger SECONDS         scripted mode: keep receiving this long after stdin ends (default 0)
  -h, --help               show this help

Password: env CHAT_SERVER_PASSWORD, else a hidden prompt (terminal only).
Exit codes: 0 ok, 1 usage/config error, 2 connection failed, 3 fingerprint mismatch,
            4 password refused or locked out, 130 cancelled at the password prompt.`;

/** Parsed command line and environment. */
export interface ClientOptions {
  host: string;
  port: number;
  name: string;
  /** Normalised pin from `--fingerprint` or `CHAT_SERVER_FINGERPRINT`. */
  fingerprint?: string;
  /** `--fingerprint-file`, read by {@link resolvePin}. */
  fingerprintFile?: string;
  json: boolean;
  lingerMs: number;
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
        json: { type: "boolean", default: false },
        linger: { type: "string" },
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
  const lingerText = values.linger ?? "0";
  const linger = Number(lingerText);
  if (lingerText.trim() === "" || !Number.isFinite(linger) || linger < 0) {
    throw usageError(`Invalid --linger ${JSON.stringify(lingerText)}: expected seconds >= 0`);
  }
  return {
    host,
    port,
    name,
    fingerprint,
    fingerprintFile: values["fingerprint-file"],
    json: values.json,
    lingerMs: Math.round(linger * 1000),
    help: values.help,
  };
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

async function runInteractive(link: ChatLink, ui: TerminalUi, name: string): Promise<void> {
  let failure: ClientError | undefined;
  const failed = link.failed.then((error) => failure = error);
  ui.print("Type /help for help, /quit to leave.");
  await ui.run(`${name}> `, (line) => {
    const action = parseInput(line);
    if (action.kind === "quit") return ui.close();
    if (action.kind === "help") return ui.print(INTERACTIVE_HELP);
    if (action.kind === "unknown") {
      return ui.print(`Unknown command ${action.command}; type /help (or // to send a leading /)`);
    }
    if (action.kind !== "send") return;
    try {
      const frame = messageFrame(action.content, name);
      if (!link.connected) ui.print("Not connected; the message will be sent after reconnecting");
      link.send(frame).catch((error) => ui.print(`! Message not sent: ${error.message}`));
    } catch (error) {
      ui.print(`! ${(error as Error).message}`);
    }
  }, failed);
  await link.close();
  if (failure) throw failure;
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
  const onFrame = (frame: JsonObject) => {
    if (options.json) console.log(JSON.stringify(frame));
    else if (frame.type === "message") {
      const line = formatIncoming(frame, new Date());
      if (ui) ui.print(line);
      else console.log(line);
    } else if (frame.type === "error") status(`! ${formatError(frame)}`);
  };
  const where = `${options.host}:${options.port}`;
  const link = new ChatLink({ host: options.host, port: options.port, password, pin }, {
    onFrame,
    onStatus: status,
    onFingerprint: (fingerprint) => pin ? undefined : console.error(insecureNotice(fingerprint)),
  });
  await link.start();
  status(`Logged in to ${where}${pin ? " (certificate matches the pinned fingerprint)" : ""}`);
  if (ui) await runInteractive(link, ui, options.name);
  else await runScripted(link, { name: options.name, lingerMs: options.lingerMs, warn: status });
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
