import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ClientError,
  EXIT_AUTH,
  EXIT_CONNECT,
  EXIT_FINGERPRINT,
  EXIT_INTERRUPTED,
  EXIT_OK,
  EXIT_UNCONFIRMED,
  EXIT_USAGE,
} from "../src/client/exit.ts";
import { INSECURE_WARNING, parseClientArgs, PASSWORD_PROMPT } from "../src/client/main.ts";
import { parseFingerprintFile, readFingerprintFile } from "../src/client/pin.ts";
import {
  fingerprintOfDer,
  formatFingerprint,
  normalizeFingerprint,
} from "../src/common/fingerprint.ts";
import { formatError, formatIncoming, formatStamp, sanitize } from "../src/client/format.ts";
import { ChatLink, type LinkOptions, messageFrame } from "../src/client/link.ts";
import { type HiddenPromptIo, parseInput, promptHidden } from "../src/client/tty.ts";
import { ensureCertificates, fingerprintFileText, fingerprintOf } from "../src/server/certs.ts";
import { CLIENT_MAX_FRAME, encodeFrame } from "../src/protocol/mod.ts";
import { FEATURES, messageId, Pacer, parseWelcome } from "../src/client/v2.ts";
import { ChatView } from "../src/client/view.ts";
import { FrameReader } from "./_frame_reader.ts";
import {
  commandAvailable,
  type Frame,
  PASSWORD,
  spawnServer,
  startServer,
  testCerts,
  TestClient,
  waitFor,
} from "./_helpers.ts";

const CLIENT = new URL("../src/client/main.ts", import.meta.url).pathname;
/** The permissions of `deno task client`. */
const CLIENT_FLAGS = [
  "--no-prompt",
  "--allow-net",
  "--allow-read",
  "--allow-env=CHAT_SERVER_PASSWORD,CHAT_SERVER_FINGERPRINT,HOST,PORT",
];
/** Blanks the client's variables so the developer's own environment cannot leak into a test. */
const CLEAN_ENV = {
  CHAT_SERVER_PASSWORD: "",
  CHAT_SERVER_FINGERPRINT: "",
  HOST: "",
  PORT: "",
  NO_COLOR: "1",
};
const OTHER_FINGERPRINT = "ab".repeat(32);

// ---------------------------------------------------------------------------------------------
// A spawned client whose output is collected as it arrives.

interface ClientRun {
  code: number;
  stdout: string;
  stderr: string;
}

class ClientProcess implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #stdinOpen = true;
  #collecting: Promise<unknown>;

  constructor(command: string, args: string[], env: Record<string, string>) {
    this.child = new Deno.Command(command, {
      args,
      env: { ...CLEAN_ENV, ...env },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#writer = this.child.stdin.getWriter();
    const decoder = () => new TextDecoder();
    const collect = async (stream: ReadableStream<Uint8Array>, key: "stdout" | "stderr") => {
      const text = decoder();
      for await (const chunk of stream) this[key] += text.decode(chunk, { stream: true });
    };
    this.#collecting = Promise.all([
      collect(this.child.stdout, "stdout"),
      collect(this.child.stderr, "stderr"),
    ]);
  }

  /** Runs `deno task client`'s command with `args`. */
  static client(args: string[], env: Record<string, string> = {}): ClientProcess {
    return new ClientProcess(Deno.execPath(), ["run", ...CLIENT_FLAGS, CLIENT, ...args], env);
  }

  /** Waits until stdout or stderr matches `pattern`. */
  async waitFor(pattern: RegExp, timeoutMs = 8000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.stdout + this.stderr)) {
      if (Date.now() > deadline) {
        throw new Error(`Timed out waiting for ${pattern}\n${this.describe()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  describe(): string {
    return `--- stdout ---\n${this.stdout}\n--- stderr ---\n${this.stderr}`;
  }

  async write(text: string): Promise<void> {
    await this.#writer.write(new TextEncoder().encode(text));
  }

  async closeStdin(): Promise<void> {
    if (!this.#stdinOpen) return;
    this.#stdinOpen = false;
    await this.#writer.close().catch(() => {});
  }

  /** Closes stdin and waits for the exit; kills the process if it takes longer than `timeoutMs`. */
  async exited(timeoutMs = 10_000): Promise<ClientRun> {
    await this.closeStdin();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    const { code } = await this.child.status;
    clearTimeout(timer);
    await this.#collecting;
    return { code, stdout: this.stdout, stderr: this.stderr };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await this.exited();
  }
}

/** Runs the client to completion with `input` on stdin. */
async function runClient(
  args: string[],
  env: Record<string, string>,
  input = "",
): Promise<ClientRun> {
  await using client = ClientProcess.client(args, env);
  // The client may exit (e.g. on a pin mismatch) before it reads its input.
  if (input) await client.write(input).catch(() => {});
  return await client.exited();
}

/** A TLS server on port 0 with the test certificate, serving one connection with `serve`. */
async function withTlsServer(
  serve: (conn: Deno.TlsConn) => Promise<void>,
  body: (port: number) => Promise<void>,
): Promise<void> {
  const { cert, key } = await testCerts();
  const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key });
  const served = (async () => {
    const conn = await listener.accept();
    try {
      await serve(conn);
    } finally {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
  })();
  try {
    await body(listener.addr.port);
  } finally {
    listener.close();
    await served.catch(() => {});
  }
}

async function makeTempDir(): Promise<{ dir: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "chat-client-test-" });
  return { dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

function pemToDer(pem: string): Uint8Array {
  const body = pem.split("-----")[2].replace(/\s+/g, "");
  return Uint8Array.from(atob(body), (char) => char.charCodeAt(0));
}

// ---------------------------------------------------------------------------------------------
// Pure pieces.

Deno.test("normalizeFingerprint accepts hex with or without colons, in any case", () => {
  const hex = "0123456789abcdef".repeat(4);
  assert.equal(normalizeFingerprint(hex), hex);
  assert.equal(normalizeFingerprint(hex.toUpperCase()), hex);
  assert.equal(normalizeFingerprint(`  ${formatFingerprint(hex).toUpperCase()}\n`), hex);
  assert.equal(normalizeFingerprint(hex.slice(2)), undefined);
  assert.equal(normalizeFingerprint(`${hex}00`), undefined);
  assert.equal(normalizeFingerprint(`${hex.slice(1)}g`), undefined);
  assert.equal(normalizeFingerprint(""), undefined);
});

Deno.test("parseFingerprintFile reads the server's file and plain fingerprint files", () => {
  const hex = "fe".repeat(32);
  assert.equal(parseFingerprintFile(fingerprintFileText(hex, new Date())), hex);
  assert.equal(parseFingerprintFile(`${hex.toUpperCase()}\n`), hex);
  assert.equal(parseFingerprintFile(`# my pin\n\n${formatFingerprint(hex)}\r\n`), hex);
  assert.equal(parseFingerprintFile(`# ${hex}\nnothing here\n`), undefined);
  assert.equal(parseFingerprintFile(""), undefined);
});

Deno.test("readFingerprintFile explains a missing file and a file without a fingerprint", async () => {
  await using tmp = await makeTempDir();
  const good = join(tmp.dir, "server_fingerprint.txt");
  await Deno.writeTextFile(good, fingerprintFileText("0a".repeat(32), new Date()));
  assert.equal(await readFingerprintFile(good), "0a".repeat(32));
  const empty = join(tmp.dir, "empty.txt");
  await Deno.writeTextFile(empty, "# nothing\n");
  await assert.rejects(readFingerprintFile(empty), /Cannot find a SHA-256 fingerprint/);
  await assert.rejects(readFingerprintFile(join(tmp.dir, "missing")), /Cannot read fingerprint/);
});

Deno.test("fingerprintOfDer matches the server's fingerprint of the same certificate", async () => {
  const { cert, fingerprint } = await testCerts();
  assert.equal(await fingerprintOfDer(pemToDer(cert)), fingerprint);
  assert.equal(await fingerprintOf(cert), fingerprint);
});

Deno.test("formatIncoming prints [HH:MM:SS] name (ip): text with hostile text defused", () => {
  const at = new Date(2026, 0, 2, 3, 4, 5);
  const frame = { type: "message", content: "hi", sender: "bob", sender_ip: "10.0.0.1" };
  assert.equal(formatIncoming(frame, at), "[03:04:05] bob (10.0.0.1): hi");
  assert.equal(formatIncoming({ type: "message", content: "x" }, at), "[03:04:05] anon (?): x");
  const hostile = {
    type: "message",
    content: "one\ntwo\x1b[2J\r",
    sender: "ev\u202eil\nname",
    sender_ip: "1.2.3.4",
  };
  assert.equal(
    formatIncoming(hostile, at),
    "[03:04:05] ev\\u202eil\\nname (1.2.3.4): one\n    two\\u001b[2J\\u000d",
  );
  assert.equal(sanitize("tab\tok"), "tab\tok");
});

Deno.test("formatIncoming shows a message's own time (ts), with the date when not today", () => {
  const now = new Date(2026, 10, 26, 12, 0, 0);
  const earlier = new Date(2026, 10, 26, 9, 8, 7);
  const frame = { type: "message", content: "hi", sender: "bob", sender_ip: "10.0.0.1" };
  assert.equal(
    formatIncoming({ ...frame, ts: earlier.toISOString() }, now),
    "[09:08:07] bob (10.0.0.1): hi",
  );
  assert.equal(formatStamp(new Date(2026, 0, 2, 3, 4, 5), now), "2026-01-02 03:04:05");
  assert.equal(
    formatIncoming({ ...frame, ts: "not a time" }, now),
    "[12:00:00] bob (10.0.0.1): hi",
  );
});

Deno.test("formatError explains error frames in plain words", () => {
  assert.equal(
    formatError({ type: "error", code: "rate_limited", error: "Slow down" }),
    "Message dropped: you are sending too fast (Slow down)",
  );
  assert.equal(
    formatError({ type: "error", code: "something_new" }),
    "The server reported an error (something_new)",
  );
});

Deno.test("parseClientArgs applies flags over environment over defaults", () => {
  const none = () => undefined;
  const defaults = parseClientArgs([], none);
  assert.equal(defaults.host, "127.0.0.1");
  assert.equal(defaults.port, 4000);
  assert.equal(defaults.name, "anon");
  assert.equal(defaults.fingerprint, undefined);
  assert.equal(defaults.json, false);
  assert.equal(defaults.lingerMs, 0);
  assert.equal(defaults.history, 50);
  assert.equal(defaults.ackTimeoutMs, 30_000);
  assert.equal(parseClientArgs(["--history", "0"], none).history, 0);
  assert.equal(parseClientArgs(["--history", "1000"], none).history, 1000);
  assert.equal(parseClientArgs(["--ack-timeout", "2.5"], none).ackTimeoutMs, 2500);

  const hex = "cd".repeat(32);
  const env = (name: string) =>
    ({ HOST: "localhost", PORT: "4100", CHAT_SERVER_FINGERPRINT: formatFingerprint(hex) })[name];
  const fromEnv = parseClientArgs(["--name", "alice", "--json", "--linger", "1.5"], env);
  assert.equal(fromEnv.host, "localhost");
  assert.equal(fromEnv.port, 4100);
  assert.equal(fromEnv.fingerprint, hex);
  assert.equal(fromEnv.name, "alice");
  assert.equal(fromEnv.json, true);
  assert.equal(fromEnv.lingerMs, 1500);

  const flags = parseClientArgs(
    ["--host", "::1", "--port", "5", "--fingerprint", "EF".repeat(32)],
    env,
  );
  assert.equal(flags.host, "::1");
  assert.equal(flags.port, 5);
  assert.equal(flags.fingerprint, "ef".repeat(32));
  const file = parseClientArgs(["--fingerprint-file", "pin.txt"], env);
  assert.equal(file.fingerprintFile, "pin.txt");
  assert.equal(file.fingerprint, undefined, "--fingerprint-file wins over the environment");
});

Deno.test("parseClientArgs refuses bad input with the usage exit code", () => {
  const none = () => undefined;
  const bad = [
    ["--port", "0"],
    ["--port", "65536"],
    ["--port", "4x"],
    ["--fingerprint", "abc"],
    ["--fingerprint", "ab".repeat(32), "--fingerprint-file", "x"],
    ["--name", "x".repeat(65)],
    ["--name", "a\tb"],
    ["--linger", "-1"],
    ["--history", "-1"],
    ["--history", "1001"],
    ["--history", "1.5"],
    ["--history", "lots"],
    ["--history", ""],
    ["--ack-timeout", "soon"],
    ["--bogus"],
    ["extra"],
  ];
  for (const args of bad) {
    assert.throws(
      () => parseClientArgs(args, none),
      (error) => error instanceof ClientError && error.exitCode === EXIT_USAGE,
      args.join(" "),
    );
  }
  assert.throws(
    () => parseClientArgs([], (name) => name === "CHAT_SERVER_FINGERPRINT" ? "nope" : undefined),
    /Invalid CHAT_SERVER_FINGERPRINT/,
  );
});

Deno.test("parseInput tells commands from messages", () => {
  assert.deepEqual(parseInput("hello"), { kind: "send", content: "hello" });
  assert.deepEqual(parseInput("  "), { kind: "none" });
  assert.deepEqual(parseInput("/quit"), { kind: "quit" });
  assert.deepEqual(parseInput("/help"), { kind: "help" });
  assert.deepEqual(parseInput("//etc"), { kind: "send", content: "/etc" });
  assert.deepEqual(parseInput("/nope x"), { kind: "unknown", command: "/nope" });
  assert.deepEqual(parseInput("/who"), { kind: "who" });
  assert.deepEqual(parseInput("/history"), { kind: "history", limit: 50 });
  assert.deepEqual(parseInput("/history  20 "), { kind: "history", limit: 20 });
  for (const bad of ["/history 0", "/history 201", "/history x", "/history 1 2", "/history -3"]) {
    assert.equal(parseInput(bad).kind, "invalid", bad);
  }
});

Deno.test("messageFrame refuses a message the server would reject as too large", () => {
  assert.deepEqual(messageFrame("hi", "bob"), { type: "message", content: "hi", sender: "bob" });
  assert.throws(() => messageFrame("x".repeat(70_000), "bob"), /exceeds the server's limit/);
});

/** A fake terminal feeding `chunks`, recording writes and raw-mode switches. */
function fakeTerminal(chunks: (string | Uint8Array)[]): HiddenPromptIo & {
  written: string;
  modes: boolean[];
} {
  const queue = chunks.map((chunk) =>
    typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk
  );
  const io = {
    written: "",
    modes: [] as boolean[],
    read(buffer: Uint8Array): Promise<number | null> {
      const next = queue.shift();
      if (!next) return Promise.resolve(null);
      buffer.set(next);
      return Promise.resolve(next.length);
    },
    write(text: string) {
      io.written += text;
    },
    setRaw(raw: boolean) {
      io.modes.push(raw);
    },
  };
  return io;
}

Deno.test("promptHidden reads a secret without echo and restores the terminal", async (t) => {
  await t.step("typing, editing, escape sequences and UTF-8", async () => {
    const io = fakeTerminal(["s3", "cx\x7fr\x1b[D", "\x1bOAét\x7f\x7fe", "t\r", "ignored"]);
    assert.equal(await promptHidden("Password: ", io), "s3cret");
    assert.equal(
      io.written,
      "\r\x1b[KPassword: \n",
      "only the prompt and the final newline are written",
    );
    assert.deepEqual(io.modes, [true, false]);
  });
  await t.step("Ctrl-U clears the line", async () => {
    const io = fakeTerminal(["wrong\x15right\n"]);
    assert.equal(await promptHidden("P: ", io), "right");
  });
  await t.step("multi-byte characters split across reads", async () => {
    const bytes = new TextEncoder().encode("ü\r");
    const io = fakeTerminal([bytes.subarray(0, 1), bytes.subarray(1)]);
    assert.equal(await promptHidden("P: ", io), "ü");
  });
  await t.step("Ctrl-C cancels with its own exit code and still restores the mode", async () => {
    const io = fakeTerminal(["sec\x03ret\r"]);
    await assert.rejects(
      promptHidden("P: ", io),
      (error) => error instanceof ClientError && error.exitCode === EXIT_INTERRUPTED,
    );
    assert.deepEqual(io.modes, [true, false]);
  });
  await t.step("Ctrl-D or end of input before anything typed is a usage error", async () => {
    for (const chunks of [["\x04"], []]) {
      const io = fakeTerminal(chunks);
      await assert.rejects(
        promptHidden("P: ", io),
        (error) => error instanceof ClientError && error.exitCode === EXIT_USAGE,
      );
      assert.deepEqual(io.modes, [true, false]);
    }
  });
  await t.step("a failing read still restores the mode", async () => {
    const io = fakeTerminal([]);
    io.read = () => Promise.reject(new Error("Read failed: gone"));
    await assert.rejects(promptHidden("P: ", io), /gone/);
    assert.deepEqual(io.modes, [true, false]);
  });
});

// ---------------------------------------------------------------------------------------------
// The client against TLS servers.

Deno.test("client refuses a server whose certificate does not match the pin, sending nothing", async () => {
  const received: number[] = [];
  await withTlsServer(async (conn) => {
    try {
      await conn.handshake();
      const buffer = new Uint8Array(1024);
      while (true) {
        const count = await conn.read(buffer);
        if (count === null) break;
        received.push(count);
      }
    } catch {
      // The client may reset the connection; what matters is what arrived before.
    }
  }, async (port) => {
    const { fingerprint } = await testCerts();
    const run = await runClient(["--port", String(port)], {
      CHAT_SERVER_PASSWORD: PASSWORD,
      CHAT_SERVER_FINGERPRINT: OTHER_FINGERPRINT,
    }, "hello\n");
    assert.equal(run.code, EXIT_FINGERPRINT, run.stderr);
    assert.match(run.stderr, new RegExp(`expected: ${formatFingerprint(OTHER_FINGERPRINT)}`));
    assert.match(run.stderr, new RegExp(`actual: +${formatFingerprint(fingerprint)}`));
    assert.match(run.stderr, /the password was not sent/);
    assert.ok(!run.stderr.includes(PASSWORD) && !run.stdout.includes(PASSWORD));
  });
  assert.deepEqual(received, [], "no byte of application data reached the server");
});

Deno.test("client with the right pin chats through the server (env, --fingerprint, --fingerprint-file)", async (t) => {
  await using srv = await startServer();
  const { fingerprint } = await testCerts();
  await using tmp = await makeTempDir();
  const pinFile = join(tmp.dir, "server_fingerprint.txt");
  await Deno.writeTextFile(pinFile, fingerprintFileText(fingerprint, new Date()));
  const ways: [string, string[], Record<string, string>][] = [
    ["CHAT_SERVER_FINGERPRINT", [], { CHAT_SERVER_FINGERPRINT: fingerprint.toUpperCase() }],
    ["--fingerprint", ["--fingerprint", formatFingerprint(fingerprint)], {}],
    ["--fingerprint-file", ["--fingerprint-file", pinFile], {}],
  ];
  for (const [way, args, env] of ways) {
    await t.step(way, async () => {
      const { client: other, reply } = await TestClient.login(srv.port);
      await using _ = other;
      assert.equal(reply.success, true);
      await using client = ClientProcess.client(
        ["--port", String(srv.port), "--name", "pinned", ...args],
        { CHAT_SERVER_PASSWORD: PASSWORD, ...env },
      );
      await client.waitFor(/Logged in to 127\.0\.0\.1:\d+ \(certificate matches/);
      await other.send({ type: "message", content: `hello ${way}`, sender: "other" });
      await client.waitFor(/\] other \(127\.0\.0\.1\): hello /);
      await client.write(`reply via ${way}\n`);
      const frame = await other.recv();
      assert.deepEqual(frame, {
        type: "message",
        content: `reply via ${way}`,
        sender: "pinned",
        sender_ip: "127.0.0.1",
      });
      const run = await client.exited();
      assert.equal(run.code, EXIT_OK, client.describe());
      assert.match(run.stdout, /^\[\d\d:\d\d:\d\d\] other \(127\.0\.0\.1\): hello /m);
      assert.ok(!run.stderr.includes("WARNING"));
    });
  }
});

Deno.test("client without a pin warns, shows the fingerprint it saw, and goes on", async () => {
  await using srv = await startServer();
  const { fingerprint } = await testCerts();
  const run = await runClient(["--port", String(srv.port)], { CHAT_SERVER_PASSWORD: PASSWORD });
  assert.equal(run.code, EXIT_OK, run.stderr);
  assert.ok(run.stderr.split("\n").includes(INSECURE_WARNING), run.stderr);
  assert.ok(run.stderr.includes(formatFingerprint(fingerprint)));
  assert.ok(run.stderr.includes(`export CHAT_SERVER_FINGERPRINT=${fingerprint}`));
  assert.match(run.stderr, /Logged in to/);
});

Deno.test("scripted clients round-trip messages, --json printing every frame", async () => {
  await using srv = await startServer();
  const { fingerprint } = await testCerts();
  const env = { CHAT_SERVER_PASSWORD: PASSWORD, CHAT_SERVER_FINGERPRINT: fingerprint };
  await using receiver = ClientProcess.client(["--port", String(srv.port), "--json"], env);
  await receiver.waitFor(/Logged in/);
  const sender = await runClient(
    ["--port", String(srv.port), "--name", "script"],
    env,
    'one\r\ntwo\n\n   \nthree with "quotes" and ünïcode\n',
  );
  assert.equal(sender.code, EXIT_OK, sender.stderr);
  await receiver.waitFor(/three with/);
  const run = await receiver.exited();
  assert.equal(run.code, EXIT_OK, run.stderr);
  const frames = run.stdout.trim().split("\n").map((line) => JSON.parse(line));
  assert.deepEqual(frames[0], { success: true, type: "auth_result" });
  // A version 2 server adds welcome/history_end frames and ids; the messages are the same.
  const messages = frames.filter((frame) => frame.type === "message")
    .map(({ id: _id, ts: _ts, ...frame }) => frame);
  assert.deepEqual(
    messages,
    ["one", "two", 'three with "quotes" and ünïcode'].map((content) => ({
      content,
      sender: "script",
      sender_ip: "127.0.0.1",
      type: "message",
    })),
    "blank lines are skipped; order is kept",
  );
});

Deno.test("scripted client with --linger keeps receiving after stdin ends, then exits", async () => {
  await using srv = await startServer();
  const { fingerprint } = await testCerts();
  await using client = ClientProcess.client(["--port", String(srv.port), "--linger", "1"], {
    CHAT_SERVER_PASSWORD: PASSWORD,
    CHAT_SERVER_FINGERPRINT: fingerprint,
  });
  await client.closeStdin();
  await client.waitFor(/Logged in/);
  const { client: other } = await TestClient.login(srv.port);
  await using _ = other;
  await other.send({ type: "message", content: "late news", sender: "other" });
  const started = Date.now();
  const run = await client.exited();
  assert.equal(run.code, EXIT_OK, run.stderr);
  assert.match(run.stdout, /^\[\d\d:\d\d:\d\d\] other \(127\.0\.0\.1\): late news$/m);
  assert.ok(Date.now() - started < 3000);
});

Deno.test("client reports a refused password with its exit code and never prints it", async () => {
  await using srv = await startServer();
  const secret = "not-the-password-123";
  const run = await runClient(
    ["--port", String(srv.port)],
    { CHAT_SERVER_PASSWORD: secret },
    "x\n",
  );
  assert.equal(run.code, EXIT_AUTH, run.stderr);
  assert.match(run.stderr, /Password refused by the server \(Invalid password\)/);
  assert.ok(!run.stderr.includes(secret) && !run.stdout.includes(secret));
});

Deno.test("client exits with the connection code when nothing listens and the usage code without a password", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const refused = await runClient(["--port", String(port)], { CHAT_SERVER_PASSWORD: PASSWORD });
  assert.equal(refused.code, EXIT_CONNECT, refused.stderr);
  assert.match(refused.stderr, /Cannot connect to 127\.0\.0\.1:\d+/);
  const noPassword = await runClient(["--port", String(port)], {});
  assert.equal(noPassword.code, EXIT_USAGE);
  assert.match(noPassword.stderr, /set CHAT_SERVER_PASSWORD/);
});

Deno.test("client works with a seed-style server and ignores frame types it does not know", async () => {
  const replies: unknown[] = [];
  await withTlsServer(async (conn) => {
    await conn.handshake();
    const reader = new FrameReader(conn.readable);
    const auth = await reader.read();
    replies.push(JSON.parse(new TextDecoder().decode(auth!)));
    const frames = [
      { type: "welcome", motd: "hi" },
      { type: "auth_result", success: true },
      { type: "presence", who: ["x"] },
      { type: "message", content: "seed says hi", sender: "elixir", sender_ip: "10.1.2.3" },
    ];
    for (const frame of frames) await conn.write(encodeFrame(frame));
    const body = await reader.read();
    replies.push(JSON.parse(new TextDecoder().decode(body!)));
    await reader.cancel();
  }, async (port) => {
    await using client = ClientProcess.client(["--port", String(port), "--name", "new"], {
      CHAT_SERVER_PASSWORD: PASSWORD,
    });
    await client.waitFor(/seed says hi/);
    await client.write("hello seed\n");
    const run = await client.exited();
    assert.equal(run.code, EXIT_OK, run.stderr);
    assert.equal(run.stdout.trim().split("\n").length, 1, run.stdout);
    assert.match(run.stdout, /\] elixir \(10\.1\.2\.3\): seed says hi$/m);
  });
  assert.deepEqual(replies, [
    // The version 2 opt-in fields, which a seed-era server ignores; no welcome came back, so
    // the message goes out exactly as a seed client's would (no ref).
    {
      type: "auth",
      password: PASSWORD,
      name: "new",
      features: ["ids", "presence", "history"],
      history: 50,
    },
    { type: "message", content: "hello seed", sender: "new" },
  ]);
});

Deno.test("client reconnects after the server restarts on the same port and cert dir", async () => {
  const { dir: certSource } = await testCerts();
  await using tmp = await makeTempDir();
  for (const file of ["cert.pem", "key.pem"]) {
    await Deno.copyFile(join(certSource, file), join(tmp.dir, file));
  }
  const env = { CHAT_SERVER_PASSWORD: PASSWORD };
  const first = await spawnServer(["--port", "0", "--cert-dir", tmp.dir], { env });
  const port = first.port;
  await using client = ClientProcess.client([
    "--port",
    String(port),
    "--name",
    "phoenix",
    "--fingerprint-file",
    join(tmp.dir, "server_fingerprint.txt"),
  ], env);
  try {
    await client.waitFor(/Logged in/);
    first.child.kill("SIGTERM");
  } finally {
    await first[Symbol.asyncDispose]();
  }
  await client.waitFor(/Connection lost/);
  await using second = await spawnServer(["--port", String(port), "--cert-dir", tmp.dir], { env });
  assert.equal(second.port, port);
  await client.waitFor(/Reconnected and logged in again/);
  const { client: other } = await TestClient.login(port);
  await using _ = other;
  await client.write("back again\n");
  assert.deepEqual(await other.recv(), {
    type: "message",
    content: "back again",
    sender: "phoenix",
    sender_ip: "127.0.0.1",
  });
  await other.send({ type: "message", content: "welcome back", sender: "other" });
  await client.waitFor(/other \(127\.0\.0\.1\): welcome back/);
  const run = await client.exited();
  assert.equal(run.code, EXIT_OK, client.describe());
});

// ---------------------------------------------------------------------------------------------
// ChatLink in process: what happens across a server restart.

/** A link to 127.0.0.1:`port` recording frames and status lines; closed on dispose. */
function testLink(port: number, options: Partial<LinkOptions> = {}) {
  const frames: Frame[] = [];
  const statuses: string[] = [];
  const link = new ChatLink({
    host: "127.0.0.1",
    port,
    password: PASSWORD,
    backoffInitialMs: 50,
    backoffMaxMs: 200,
    ...options,
  }, { onFrame: (frame) => frames.push(frame), onStatus: (text) => statuses.push(text) });
  return { link, frames, statuses, [Symbol.asyncDispose]: () => link.close() };
}

Deno.test("ChatLink sends what was queued while disconnected, in order, after logging in again", async () => {
  const first = await startServer();
  const port = first.port;
  await using test = testLink(port, { backoffInitialMs: 1000 });
  await test.link.start();
  await first.server.close();
  assert.ok(await waitFor(() => !test.link.connected));
  assert.ok(test.frames.some((frame) => frame.code === "shutting_down"));
  const sent = ["one", "two", "three"].map((text) => test.link.send(messageFrame(text, "q")));
  // The first reconnect attempt comes 1 s after the loss: time enough to be there before it.
  await using second = await startServer({ port });
  const { client: other } = await TestClient.login(second.port);
  await using _ = other;
  await Promise.all(sent);
  await test.link.flushed();
  for (const content of ["one", "two", "three"]) {
    assert.deepEqual(await other.recv(), {
      type: "message",
      content,
      sender: "q",
      sender_ip: "127.0.0.1",
    });
  }
  assert.ok(test.statuses.some((text) => text.startsWith("Connection lost")), test.statuses.join());
  assert.ok(test.statuses.includes("Reconnected and logged in again"));
});

Deno.test("ChatLink stops reconnecting once the password is refused", async () => {
  const first = await startServer();
  const port = first.port;
  await using test = testLink(port);
  await test.link.start();
  await first.server.close();
  assert.ok(await waitFor(() => !test.link.connected));
  await using _second = await startServer({ port, password: "changed meanwhile" });
  const pending = test.link.send(messageFrame("never delivered", "q"));
  const failure = await test.link.failed;
  assert.equal(failure.exitCode, EXIT_AUTH);
  await assert.rejects(pending, /gave up reconnecting/);
  assert.equal(test.link.connected, false);
});

Deno.test("ChatLink without a pin trusts the first certificate only: a new one on reconnect is refused", async () => {
  await using tmp = await makeTempDir();
  const other = await ensureCertificates({ certDir: tmp.dir, host: "127.0.0.1" });
  const first = await startServer();
  const port = first.port;
  await using test = testLink(port);
  await test.link.start();
  await first.server.close();
  await using second = await startServer({ port, cert: other.certPem, key: other.keyPem });
  const failure = await test.link.failed;
  assert.equal(failure.exitCode, EXIT_FINGERPRINT);
  assert.ok(failure.message.includes(formatFingerprint(other.fingerprint)));
  const stats = second.server.stats();
  assert.ok(stats.accepted >= 1, "the client did connect");
  assert.equal(stats.authenticated + stats.authFailures, 0, "no password reached the new server");
});

// ---------------------------------------------------------------------------------------------
// Interactive mode through a pseudo-terminal (util-linux `script`).

const SCRIPT_AVAILABLE = commandAvailable("script", ["--version"]);
if (!SCRIPT_AVAILABLE) console.log("Skipping pseudo-terminal tests: util-linux `script` not found");

function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Runs `shellCommand` on a pseudo-terminal; its stdin is what the test writes. */
function onTerminal(shellCommand: string, env: Record<string, string>): ClientProcess {
  return new ClientProcess("script", ["-qefc", shellCommand, "/dev/null"], {
    TERM: "xterm",
    ...env,
  });
}

function clientCommand(args: string[]): string {
  return [Deno.execPath(), "run", ...CLIENT_FLAGS, CLIENT, ...args].map(shellQuote).join(" ");
}

Deno.test({
  name: "interactive client asks for the password without echo and chats on a terminal",
  ignore: !SCRIPT_AVAILABLE,
  async fn() {
    await using srv = await startServer();
    const { fingerprint } = await testCerts();
    const command = clientCommand(["--port", String(srv.port), "--name", "tty"]);
    await using term = onTerminal(`${command}; echo "client exit $?"; stty -a`, {
      CHAT_SERVER_FINGERPRINT: fingerprint,
    });
    await term.waitFor(new RegExp(PASSWORD_PROMPT));
    await term.write(`${PASSWORD}\r`);
    await term.waitFor(/Logged in to/);
    await term.waitFor(/tty> /);
    const { client: other } = await TestClient.login(srv.port);
    await using _ = other;
    await term.write("half-typed");
    await other.send({ type: "message", content: "ping from other", sender: "other" });
    // One "other" here: no address needed to tell who it is.
    await term.waitFor(/\[\d\d:\d\d:\d\d\] other: ping from other/);
    await term.write(" line\r");
    assert.deepEqual(await other.recv(), {
      type: "message",
      content: "half-typed line",
      sender: "tty",
      sender_ip: "127.0.0.1",
    });
    await term.write("/quit\r");
    await term.waitFor(/client exit \d+/);
    const run = await term.exited();
    assert.equal(run.code, 0, term.describe());
    assert.match(run.stdout, /client exit 0/);
    assert.ok(!run.stdout.includes(PASSWORD), "the password is not echoed");
    assert.match(run.stdout, /(^|\s)echo(\s|$)/m, "echo is back on after the client");
    assert.match(run.stdout, /(^|\s)icanon(\s|$)/m, "line editing is back on after the client");
  },
});

Deno.test({
  name: "interactive client leaves on Ctrl-C and Ctrl-D, and Ctrl-C at the prompt cancels",
  ignore: !SCRIPT_AVAILABLE,
  async fn(t) {
    await using srv = await startServer();
    const { fingerprint } = await testCerts();
    const command = clientCommand(["--port", String(srv.port)]);
    const env = { CHAT_SERVER_FINGERPRINT: fingerprint };
    for (const [key, name] of [["\x03", "Ctrl-C"], ["\x04", "Ctrl-D"]]) {
      await t.step(`${name} in the chat exits 0`, async () => {
        await using term = onTerminal(`${command}; echo "client exit $?"`, {
          ...env,
          CHAT_SERVER_PASSWORD: PASSWORD,
        });
        await term.waitFor(/anon> /);
        await term.write(key);
        await term.waitFor(/client exit \d+/);
        assert.match(term.stdout, /client exit 0/, term.describe());
        await term.exited();
      });
    }
    await t.step("Ctrl-C at the password prompt exits 130 and restores the terminal", async () => {
      await using term = onTerminal(`${command}; echo "client exit $?"; stty -a`, env);
      await term.waitFor(new RegExp(PASSWORD_PROMPT));
      await term.write("par\x03");
      await term.waitFor(/client exit \d+[\s\S]*icanon/);
      assert.match(term.stdout, new RegExp(`client exit ${EXIT_INTERRUPTED}`), term.describe());
      assert.match(term.stdout, /(^|\s)echo(\s|$)/m);
      assert.ok(!srv.server.stats().clients);
      await term.exited();
    });
  },
});

// ---------------------------------------------------------------------------------------------
// Protocol version 2: the pieces, then the client against a fake version 2 server.

Deno.test("parseWelcome and messageId read version 2 frames defensively", () => {
  const welcome = parseWelcome({
    type: "welcome",
    features: ["history", "presence", 7],
    member: { id: 7, name: "alice", ip: "127.0.0.1", since: "2026-11-26T10:00:00.000Z" },
    limits: { max_frame: 65536, rate: 20, burst: "50" },
    members: [{ id: 7, name: "alice", ip: "127.0.0.1" }, { id: "x" }, null],
  });
  assert.ok(welcome);
  assert.deepEqual([...welcome.features], ["history", "presence"]);
  assert.equal(welcome.ids, true, "history implies ids");
  assert.deepEqual(welcome.member, { id: 7, name: "alice", ip: "127.0.0.1" });
  assert.deepEqual(welcome.limits, { maxFrame: 65536, rate: 20, burst: undefined });
  assert.deepEqual(welcome.members, [{ id: 7, name: "alice", ip: "127.0.0.1" }]);
  assert.equal(parseWelcome({ type: "welcome", motd: "a seed-era greeting" }), undefined);
  assert.equal(parseWelcome({ type: "welcome", features: [] })?.ids, false);
  assert.equal(messageId({ type: "message", id: 12 }), 12);
  assert.equal(messageId({ type: "message", id: "12" }), undefined);
  assert.equal(messageId({ type: "message", id: 1.5 }), undefined);
  assert.equal(messageId({ type: "ack", id: 12 }), undefined);
});

Deno.test("Pacer keeps within half the server's burst, then 90% of the server's rate", () => {
  let now = 0;
  const pacer = new Pacer({ rate: 20, burst: 50 }, () => now);
  for (let i = 0; i < 25; i++) assert.equal(pacer.take(), 0);
  assert.equal(pacer.take(), 56, "the 26th waits one token period (1/18 s)");
  now += 56;
  assert.equal(pacer.take(), 0);
  assert.ok(pacer.take() > 0);
  const unlimited = new Pacer({ rate: 0, burst: 0 }, () => now);
  for (let i = 0; i < 1000; i++) assert.equal(unlimited.take(), 0);
});

/** A fake version 2 message frame from `sender`, sent at `ts`. */
function v2Message(id: number, content: string, sender = "bob", ts = new Date().toISOString()) {
  return { type: "message", content, sender, sender_ip: "10.0.0.7", id, ts };
}

const ALICE = { id: 7, name: "alice", ip: "127.0.0.1", since: "2026-11-26T10:00:00.000Z" };
const BOB = { id: 8, name: "bob", ip: "10.0.0.7", since: "2026-11-26T10:00:00.000Z" };

function welcomeFrame(member: Frame = ALICE, members: Frame[] = [member]): Frame {
  return {
    type: "welcome",
    features: [...FEATURES],
    member,
    server: "fake/2.0.0",
    limits: { max_frame: 65536, rate: 20, burst: 50 },
    members,
  };
}

/** A view writing into arrays and recording its requests (`connected` says if they go out). */
function testView(options: { history?: number; commands?: boolean } = {}) {
  const chat: string[] = [];
  const notes: string[] = [];
  const requests: Frame[] = [];
  const state = { connected: true };
  const now = new Date(2026, 10, 26, 12, 0, 0);
  const view = new ChatView({ chat: (line) => chat.push(line), note: (line) => notes.push(line) }, {
    history: options.history ?? 50,
    commands: options.commands ?? true,
    send: (frame) => state.connected && requests.push(frame) > 0,
    now: () => now,
  });
  const feed = (...frames: Frame[]) => frames.forEach((frame) => view.onFrame(frame));
  return { view, chat, notes, requests, state, feed };
}

Deno.test("ChatView shows the replay, presence and pages, and nothing twice", () => {
  const { view, chat, notes, requests, feed } = testView();
  const at = (hour: number) => new Date(2026, 10, 26, hour, 0, 0).toISOString();
  feed(
    { type: "auth_result", success: true },
    welcomeFrame(ALICE, [ALICE, BOB]),
    { ...v2Message(10, "ten", "bob", at(9)), replay: true },
    { ...v2Message(11, "eleven", "bob", at(10)), replay: true },
    { type: "history_end", count: 2, more: true },
    v2Message(11, "eleven again"),
    { type: "joined", member: { ...BOB, id: 9, name: "carol" } },
    { type: "left", member: BOB, reason: "dropped" },
    { type: "left", member: { ...BOB, name: "dave" }, reason: "quit" },
    { type: "ack", ref: "r1", id: 12, ts: at(11) },
  );
  assert.deepEqual(chat, ["[09:00:00] bob (10.0.0.7): ten", "[10:00:00] bob (10.0.0.7): eleven"]);
  assert.deepEqual(notes, [
    "* 2 here: alice (127.0.0.1, you), bob (10.0.0.7)",
    "-- 2 earlier messages (more with /history) --",
    "* carol joined",
    "* bob left (dropped)",
    "* dave left",
  ]);

  // A reconnect: the gap fill replays our own message 12 (not shown again) and 13 (missed).
  chat.length = notes.length = 0;
  feed(
    { type: "auth_result", success: true },
    welcomeFrame(),
    { ...v2Message(12, "mine", "alice"), replay: true },
    { ...v2Message(13, "missed", "bob", at(11)), replay: true },
    { type: "history_end", count: 2, more: false },
    { type: "who", members: [ALICE] },
  );
  assert.deepEqual(chat, ["[11:00:00] bob (10.0.0.7): missed"]);
  assert.deepEqual(notes, [
    "-- 1 message missed while disconnected --",
    "* 1 here: alice (127.0.0.1, you)",
  ]);

  // A reconnect that missed nothing shows no banner.
  chat.length = notes.length = 0;
  feed({ type: "auth_result", success: true }, welcomeFrame(), {
    type: "history_end",
    count: 0,
    more: false,
  });
  assert.deepEqual([chat, notes], [[], []]);

  // /history pages back from the oldest message shown (10).
  view.requestPage(2);
  assert.deepEqual([...requests], [{ type: "history", before: 10, limit: 2 }]);
  feed(
    { ...v2Message(8, "eight", "bob", at(7)), replay: true },
    { ...v2Message(9, "nine", "bob", at(8)), replay: true },
    { type: "history_end", count: 2, more: false },
  );
  assert.deepEqual(chat, ["[07:00:00] bob (10.0.0.7): eight", "[08:00:00] bob (10.0.0.7): nine"]);
  assert.deepEqual(notes, ["-- 2 earlier messages (the start of the history) --"]);
  view.requestPage(2);
  assert.deepEqual(requests[1], { type: "history", before: 8, limit: 2 });
});

Deno.test("ChatView pages forward through a gap the reconnect replay left open", () => {
  const { chat, notes, requests, state, feed } = testView();
  const login = { type: "auth_result", success: true };
  const end = (count: number, more: boolean) => ({ type: "history_end", count, more });
  const replayed = (id: number) => ({ ...v2Message(id, `m${id}`), replay: true });
  feed(login, welcomeFrame(), replayed(10), end(1, false));
  chat.length = notes.length = 0;

  // Reconnected after 10: the replay stops at 12 with more to come, live 20 arrives meanwhile.
  feed(login, welcomeFrame(), replayed(11), replayed(12), end(2, true), v2Message(20, "m20"));
  assert.deepEqual([...requests], [{ type: "history", after: 12, limit: 200 }]);
  feed(replayed(13), replayed(14), end(2, true));
  assert.deepEqual(requests[1], { type: "history", after: 14, limit: 200 });
  // The last page reaches the live message 20, which is not shown twice.
  feed(replayed(15), replayed(20), end(2, false));
  assert.equal(requests.length, 2);
  assert.deepEqual(chat.map((line) => line.split(": ")[1]), [
    "m11",
    "m12",
    "m20",
    "m13",
    "m14",
    "m15",
  ]);
  assert.deepEqual(notes, ["-- 5 messages missed while disconnected --"]);

  // Disconnected again before the next page could be asked for: said so, not hidden.
  chat.length = notes.length = 0;
  state.connected = false;
  feed(login, welcomeFrame(), replayed(21), end(1, true));
  assert.deepEqual(notes, ["-- 1 message missed while disconnected; some could not be fetched --"]);

  // The store cannot be read: the page asked for ends with `unavailable`, not `history_end`.
  notes.length = 0;
  state.connected = true;
  feed(login, welcomeFrame(), end(0, true));
  assert.deepEqual(requests.at(-1), { type: "history", after: 21, limit: 200 });
  feed({ type: "error", code: "unavailable", error: "store down" });
  assert.deepEqual(notes, [
    "-- the messages missed while disconnected could not be fetched --",
    "! The server cannot take messages right now; they will be resent (store down)",
  ]);
});

Deno.test("ChatView: empty history, history 0, older servers, quiet unavailable notices", () => {
  const empty = testView({ commands: false });
  empty.feed({ type: "auth_result", success: true }, welcomeFrame(), {
    type: "history_end",
    count: 0,
    more: false,
  });
  assert.deepEqual(empty.notes.slice(1), ["-- no earlier messages --"]);

  const none = testView({ history: 0 });
  none.feed({ type: "auth_result", success: true }, welcomeFrame(), {
    type: "history_end",
    count: 0,
    more: false,
  });
  assert.deepEqual(none.notes.slice(1), [], "no banner when no history was asked for");

  const down = testView();
  down.feed(
    { type: "auth_result", success: true },
    welcomeFrame(),
    { type: "error", code: "unavailable", error: "store down" },
    { type: "history_end", count: 0, more: true },
  );
  assert.equal(down.notes.at(-1), "-- earlier messages could not be loaded --");

  const old = testView();
  old.feed(
    { type: "auth_result", success: true },
    { type: "message", content: "seed", sender: "x", sender_ip: "1.2.3.4" },
    { type: "message", content: "seed", sender: "x", sender_ip: "1.2.3.4" },
  );
  assert.equal(old.chat.length, 2, "messages without ids are all shown");
  old.view.requestWho();
  old.view.requestPage(5);
  assert.deepEqual(old.requests, [], "nothing is sent to an older server");
  assert.match(old.notes.join("\n"), /\/who needs[\s\S]*\/history needs/);

  const { notes, feed } = testView();
  feed({ type: "auth_result", success: true }, welcomeFrame());
  notes.length = 0;
  const unavailable = { type: "error", code: "unavailable", error: "store down", ref: "r" };
  feed(unavailable, unavailable, { type: "error", code: "rate_limited", error: "Slow down" });
  assert.deepEqual(notes, [
    "! The server cannot take messages right now; they will be resent (store down)",
    "! Message dropped: you are sending too fast (Slow down); it will be resent",
  ]);
});

/** One connection to a {@link FakeServer}, seen from the server's side. */
class FakeConn {
  /** The client's auth frame. */
  auth: Frame = {};
  readonly #conn: Deno.TlsConn;
  #frames: Frame[] = [];
  #closed = false;
  #wake?: () => void;
  #pump: Promise<void>;

  constructor(conn: Deno.TlsConn) {
    this.#conn = conn;
    this.#pump = this.#run();
  }

  /** The next frame from the client, or `null` once it closed (or after `timeoutMs`). */
  async recv(timeoutMs = 8000): Promise<Frame | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.#frames.length === 0 && !this.#closed && Date.now() < deadline) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        timer = setTimeout(resolve, deadline - Date.now());
      });
      clearTimeout(timer);
    }
    return this.#frames.shift() ?? null;
  }

  /** The next frame from the client; fails if none comes. */
  async take(): Promise<Frame> {
    const frame = await this.recv();
    assert.ok(frame, "expected a frame from the client");
    return frame;
  }

  async send(...frames: Frame[]): Promise<void> {
    for (const frame of frames) {
      const bytes = encodeFrame(frame);
      let offset = 0;
      while (offset < bytes.length) offset += await this.#conn.write(bytes.subarray(offset));
    }
  }

  /**
   * Answers the login as a version 2 server: `auth_result`, `welcome`, the `replay` frames
   * (marked `replay: true`) and `history_end`.
   */
  async welcome(options: { replay?: Frame[]; more?: boolean; welcome?: Frame } = {}) {
    const replay = (options.replay ?? []).map((frame) => ({ ...frame, replay: true }));
    await this.send(
      { success: true, type: "auth_result" },
      options.welcome ?? welcomeFrame({ ...ALICE, name: this.auth.name }),
      ...replay,
      { type: "history_end", count: replay.length, more: options.more ?? false },
    );
  }

  /** Acks every message from now on, ids from `firstId`, until the client goes. */
  async ackAll(firstId: number): Promise<Frame[]> {
    const messages: Frame[] = [];
    for (let id = firstId;; id++) {
      const frame = await this.recv();
      if (!frame) return messages;
      messages.push(frame);
      await this.send({ type: "ack", ref: frame.ref, id, ts: new Date().toISOString() });
    }
  }

  async close(): Promise<void> {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
    await this.#pump;
  }

  async #run(): Promise<void> {
    try {
      const reader = new FrameReader(this.#conn.readable, { maxFrame: CLIENT_MAX_FRAME });
      while (true) {
        const body = await reader.read();
        if (body === null) break;
        this.#frames.push(JSON.parse(new TextDecoder().decode(body)));
        this.#wake?.();
      }
    } catch {
      // The client reset the connection, or we closed it.
    } finally {
      this.#closed = true;
      this.#wake?.();
    }
  }
}

/**
 * A TLS server on 127.0.0.1 port 0 with the test certificate that speaks length-prefixed JSON
 * frames and leaves every answer to the test: a stand-in for a version 2 server (or an older one).
 */
class FakeServer implements AsyncDisposable {
  readonly port: number;
  #listener: Deno.TlsListener;
  #conns: FakeConn[] = [];
  #taken = 0;
  #accepting: Promise<void>;

  private constructor(listener: Deno.TlsListener) {
    this.#listener = listener;
    this.port = listener.addr.port;
    this.#accepting = (async () => {
      try {
        for await (const conn of listener) this.#conns.push(new FakeConn(conn));
      } catch {
        // Closed.
      }
    })();
  }

  static async start(): Promise<FakeServer> {
    const { cert, key } = await testCerts();
    return new FakeServer(Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert, key }));
  }

  /** The next connection, once its auth frame has arrived. */
  async next(timeoutMs = 8000): Promise<FakeConn> {
    assert.ok(await waitFor(() => this.#conns.length > this.#taken, timeoutMs), "no connection");
    const conn = this.#conns[this.#taken++];
    conn.auth = await conn.take();
    return conn;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    await Promise.all(this.#conns.map((conn) => conn.close()));
  }
}

/** Environment for a client process that trusts the test certificate. */
async function pinnedEnv(): Promise<Record<string, string>> {
  const { fingerprint } = await testCerts();
  return { CHAT_SERVER_PASSWORD: PASSWORD, CHAT_SERVER_FINGERPRINT: fingerprint };
}

Deno.test("v2: the auth frame asks for name, features and history", async (t) => {
  await using server = await FakeServer.start();
  const env = await pinnedEnv();
  for (const [args, history] of [[[], 50], [["--history", "0"], 0]] as const) {
    await t.step(`history ${history}`, async () => {
      await using client = ClientProcess.client(
        ["--port", String(server.port), "--name", "alice", ...args],
        env,
      );
      const conn = await server.next();
      assert.deepEqual(conn.auth, {
        type: "auth",
        password: PASSWORD,
        name: "alice",
        features: ["ids", "presence", "history"],
        history,
      });
      await conn.welcome();
      const run = await client.exited();
      assert.equal(run.code, EXIT_OK, client.describe());
    });
  }
});

Deno.test("v2: replayed messages show their own time, then a banner; presence shows", async () => {
  await using server = await FakeServer.start();
  await using client = ClientProcess.client(
    ["--port", String(server.port), "--name", "alice"],
    await pinnedEnv(),
  );
  const conn = await server.next();
  const old = "2020-01-02T03:04:05.000Z";
  await conn.welcome({
    replay: [v2Message(1, "old news", "bob", old), v2Message(2, "newer news")],
    more: true,
    welcome: welcomeFrame(ALICE, [ALICE, BOB]),
  });
  await conn.send(
    { type: "joined", member: { ...BOB, id: 9, name: "carol" } },
    v2Message(3, "live news", "carol"),
    v2Message(2, "newer news"),
    { type: "left", member: BOB, reason: "dropped" },
  );
  await client.waitFor(/bob left/);
  const run = await client.exited();
  assert.equal(run.code, EXIT_OK, client.describe());
  const stamp = formatStamp(new Date(old), new Date());
  assert.deepEqual(run.stdout.trim().split("\n").map((line) => line.replace(/^\[[^\]]+\]/, "[]")), [
    "[] bob (10.0.0.7): old news",
    "[] bob (10.0.0.7): newer news",
    "[] carol (10.0.0.7): live news",
  ], "message 2 arriving again is not shown twice");
  assert.ok(run.stdout.startsWith(`[${stamp}] bob (10.0.0.7): old news\n`), run.stdout);
  const notes = [
    "* 2 here: alice (127.0.0.1, you), bob (10.0.0.7)",
    "-- 2 earlier messages (more on the server) --",
    "* carol joined",
    "* bob left (dropped)",
  ];
  assert.match(run.stderr, /^Logged in to /);
  assert.ok(
    run.stderr.includes(`(certificate matches the pinned fingerprint)\n${notes.join("\n")}\n`),
  );
});

Deno.test("v2: an unacked message is resent with its ref after a drop; after=last id", async () => {
  await using server = await FakeServer.start();
  await using client = ClientProcess.client(
    ["--port", String(server.port), "--name", "alice"],
    await pinnedEnv(),
  );
  const first = await server.next();
  await first.welcome({ replay: [v2Message(10, "ten"), v2Message(11, "eleven")] });
  await client.write("acked before the drop\n");
  const acked = await first.take();
  assert.equal(acked.content, "acked before the drop");
  assert.equal(typeof acked.ref, "string");
  await first.send({ type: "ack", ref: acked.ref, id: 12, ts: new Date().toISOString() });
  await client.write("lost in the drop\n");
  const lost = await first.take();
  assert.equal(lost.content, "lost in the drop");
  assert.notEqual(lost.ref, acked.ref);
  await first.close();

  const second = await server.next();
  assert.equal(second.auth.after, 11, "after = the largest message id seen");
  // The gap fill replays our own acked message 12: not shown again, not resent.
  await second.welcome({ replay: [v2Message(12, "acked before the drop", "alice")] });
  assert.deepEqual(await second.take(), lost, "same frame, same ref");
  await second.send({ type: "ack", ref: lost.ref, id: 13, ts: new Date().toISOString() });
  const run = await client.exited();
  assert.equal(run.code, EXIT_OK, client.describe());
  assert.equal(await second.recv(1000), null, "nothing else was sent");
  assert.equal(run.stdout.match(/acked before the drop/g), null, run.stdout);
  assert.match(run.stderr, /Reconnected and logged in again/);
  assert.doesNotMatch(run.stderr, /missed while disconnected/);
});

Deno.test("v2: scripted mode exits 0 once all lines are acked; --json shows it all", async () => {
  await using server = await FakeServer.start();
  await using client = ClientProcess.client(
    ["--port", String(server.port), "--name", "ci", "--json"],
    await pinnedEnv(),
  );
  const conn = await server.next();
  await conn.welcome();
  const serving = conn.ackAll(100);
  await client.write("one\ntwo\nthree\n");
  const run = await client.exited();
  assert.equal(run.code, EXIT_OK, client.describe());
  const messages = await serving;
  assert.deepEqual(messages.map((frame) => frame.content), ["one", "two", "three"]);
  assert.equal(new Set(messages.map((frame) => frame.ref)).size, 3, "one ref per message");
  const types = run.stdout.trim().split("\n").map((line) => JSON.parse(line).type);
  assert.deepEqual(types, ["auth_result", "welcome", "history_end", "ack", "ack", "ack"]);
});

Deno.test("v2: scripted mode fails naming the lines the server never acked", async () => {
  await using server = await FakeServer.start();
  await using client = ClientProcess.client(
    ["--port", String(server.port), "--ack-timeout", "1"],
    await pinnedEnv(),
  );
  const conn = await server.next();
  await conn.welcome();
  await client.write("alpha\n\nbeta\ngamma\n");
  const alpha = await conn.take();
  await conn.send({ type: "ack", ref: alpha.ref, id: 1, ts: new Date().toISOString() });
  const run = await client.exited();
  assert.equal(run.code, EXIT_UNCONFIRMED, client.describe());
  assert.ok(
    run.stderr.includes(
      "2 messages of 3 not confirmed by the server within 1 s; " +
        'they may not have been delivered:\n  line 3: "beta"\n  line 4: "gamma"\n',
    ),
    run.stderr,
  );
});

Deno.test("v2: against an older server (no welcome) scripted mode behaves as before", async () => {
  await using server = await FakeServer.start();
  await using client = ClientProcess.client(["--port", String(server.port)], await pinnedEnv());
  const conn = await server.next();
  await conn.send({ success: true, type: "auth_result" });
  await client.write("plain\n");
  const run = await client.exited();
  assert.equal(run.code, EXIT_OK, client.describe());
  assert.deepEqual(await conn.take(), { type: "message", content: "plain", sender: "anon" });
  assert.equal(await conn.recv(1000), null);
});

Deno.test("ChatLink resends after unavailable with the same ref, drops refused ones", async () => {
  await using server = await FakeServer.start();
  await using test = testLink(server.port, {
    hello: { name: "q", features: FEATURES, history: 0 },
    resendInitialMs: 50,
  });
  const starting = test.link.start();
  const conn = await server.next();
  await conn.welcome();
  await starting;
  assert.equal(test.link.acking, true);
  const later = test.link.send(messageFrame("later", "q"));
  const bad = test.link.send(messageFrame("bad", "q"));
  const first = await conn.take();
  const second = await conn.take();
  await later;
  await conn.send(
    { type: "error", code: "unavailable", error: "store down", ref: first.ref },
    { type: "error", code: "invalid_message", error: "nope", ref: second.ref },
  );
  await assert.doesNotReject(bad, "it was written before it was refused");
  assert.deepEqual(await conn.take(), first, "resent with the same ref");
  await conn.send({ type: "ack", ref: first.ref, id: 5, ts: new Date().toISOString() });
  await test.link.settled();
  assert.deepEqual(test.link.unconfirmed(), []);
  assert.deepEqual(test.link.refused(), [{ frame: messageFrame("bad", "q"), reason: "nope" }]);
});

Deno.test({
  name: "v2: interactive /who lists members and /history pages back from the oldest shown",
  ignore: !SCRIPT_AVAILABLE,
  async fn() {
    await using server = await FakeServer.start();
    const command = clientCommand(["--port", String(server.port), "--name", "tty"]);
    await using term = onTerminal(`${command}; echo "client exit $?"`, await pinnedEnv());
    const conn = await server.next();
    await conn.welcome({
      replay: [v2Message(40, "forty"), v2Message(41, "forty-one")],
      more: true,
    });
    await term.waitFor(/-- 2 earlier messages \(more with \/history\) --/);
    await term.write("/who\r");
    assert.deepEqual(await conn.take(), { type: "who" });
    await conn.send({ type: "who", members: [{ ...ALICE, name: "tty" }, BOB] });
    await term.waitFor(/\* 2 here: tty \(127\.0\.0\.1, you\), bob \(10\.0\.0\.7\)/);
    await term.write("/history 2\r");
    assert.deepEqual(await conn.take(), { type: "history", before: 40, limit: 2 });
    await conn.send(
      { ...v2Message(38, "thirty-eight"), replay: true },
      { ...v2Message(39, "thirty-nine"), replay: true },
      { type: "history_end", count: 2, more: false },
    );
    await term.waitFor(/thirty-nine[\s\S]*-- 2 earlier messages \(the start of the history\) --/);
    await term.write("/help\r");
    await term.waitFor(/\/who lists who is here/);
    await term.write("/quit\r");
    await term.waitFor(/client exit \d+/);
    assert.match(term.stdout, /client exit 0/, term.describe());
  },
});

Deno.test("scripted client: 500 piped lines all arrive, in order, paced to the server's limits; exit 0", async (t) => {
  for (
    const [label, limits, count] of [
      ["default limits (rate 20, burst 50)", {}, 500],
      ["a strict server (rate 10, burst 1)", { rate: 10, burst: 1 }, 30],
    ] as const
  ) {
    await t.step(label, async () => {
      await using srv = await startServer({ limits });
      const { client: reader } = await TestClient.login(srv.port);
      await using _ = reader;
      const lines = Array.from({ length: count }, (_, i) => `line ${i + 1}`);
      await using client = ClientProcess.client(
        ["--port", String(srv.port), "--name", "ci", "--history", "0", "--ack-timeout", "60"],
        await pinnedEnv(),
      );
      await client.write(lines.join("\n") + "\n");
      const run = await client.exited(60_000);
      assert.equal(run.code, EXIT_OK, run.stderr);
      const got: string[] = [];
      while (got.length < count) {
        const frame = await reader.recv(5000);
        if (frame.type === "message") got.push(String(frame.content));
      }
      assert.deepEqual(got, lines);
      assert.ok(!/too fast|rate/i.test(run.stderr), run.stderr);
    });
  }
});

Deno.test("scripted client: a line too large to send is named and the exit code is 5", async () => {
  await using srv = await startServer();
  const { client: reader } = await TestClient.login(srv.port);
  await using _ = reader;
  await using client = ClientProcess.client(
    ["--port", String(srv.port), "--name", "ci", "--history", "0"],
    await pinnedEnv(),
  );
  await client.write(`a\n${"x".repeat(70_000)}\nc\n`);
  const run = await client.exited(30_000);
  assert.equal(run.code, EXIT_UNCONFIRMED, run.stderr);
  assert.match(
    run.stderr,
    new RegExp(`1 line of 3 not sent:\\n  line 2: "x{60}\\.\\.\\." \\(Cannot send message: `),
  );
  const got = [(await reader.recv()).content, (await reader.recv()).content];
  assert.deepEqual(got, ["a", "c"]);
});

Deno.test("scripted client: \\r\\n ends a line; a lone \\r stays part of the message", async () => {
  await using srv = await startServer();
  const { client: reader } = await TestClient.login(srv.port);
  await using _ = reader;
  await using client = ClientProcess.client(
    ["--port", String(srv.port), "--name", "ci", "--history", "0"],
    await pinnedEnv(),
  );
  await client.write("one\r\ntwo\rstill two\nthree");
  const run = await client.exited(30_000);
  assert.equal(run.code, EXIT_OK, run.stderr);
  const got = [];
  for (let i = 0; i < 3; i++) got.push((await reader.recv()).content);
  assert.deepEqual(got, ["one", "two\rstill two", "three"]);
  assert.equal(await reader.tryRecv(200), null);
});
