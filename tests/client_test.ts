import assert from "node:assert/strict";
import { join } from "node:path";
import {
  ClientError,
  EXIT_AUTH,
  EXIT_CONNECT,
  EXIT_FINGERPRINT,
  EXIT_INTERRUPTED,
  EXIT_OK,
  EXIT_USAGE,
} from "../src/client/exit.ts";
import { INSECURE_WARNING, parseClientArgs, PASSWORD_PROMPT } from "../src/client/main.ts";
import { parseFingerprintFile, readFingerprintFile } from "../src/client/pin.ts";
import {
  fingerprintOfDer,
  formatFingerprint,
  normalizeFingerprint,
} from "../src/common/fingerprint.ts";
import { formatError, formatIncoming, sanitize } from "../src/client/format.ts";
import { ChatLink, type LinkOptions, messageFrame } from "../src/client/link.ts";
import { type HiddenPromptIo, parseInput, promptHidden } from "../src/client/tty.ts";
import { ensureCertificates, fingerprintFileText, fingerprintOf } from "../src/server/certs.ts";
import { encodeFrame } from "../src/protocol/mod.ts";
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
    assert.equal(io.written, "Password: \n", "only the prompt and the final newline are written");
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
  assert.deepEqual(
    frames.slice(1),
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
    { type: "auth", password: PASSWORD },
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
    await term.waitFor(/\[\d\d:\d\d:\d\d\] other \(127\.0\.0\.1\): ping from other/);
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
