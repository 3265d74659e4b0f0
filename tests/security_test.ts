/**
 * Security properties checked from outside: old TLS versions are refused, the generated key is
 * private, the password never reaches the logs, password guessing is locked out per address, and
 * a silent TCP connection cannot slip past the connection caps.
 *
 * @module
 */
import assert from "node:assert/strict";
import { encodeFrame } from "../src/protocol/mod.ts";
import { guessOnce } from "./_abuse.ts";
import { BURST_ADDRESS, GUESS_ADDRESS, HONEST_ADDRESS } from "./_soak_common.ts";
import {
  commandAvailable,
  delay,
  lengthPrefix,
  PASSWORD,
  spawnServer,
  startServer,
  testCerts,
  TestClient,
} from "./_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const DECODER = new TextDecoder();

const OPENSSL = commandAvailable("openssl", ["version"]);
if (!OPENSSL) console.log("Skipping the TLS version tests: openssl is not on PATH");

/** Runs `openssl s_client` with `args` against `port`; returns its exit code and output. */
async function sClient(port: number, args: string[]): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await new Deno.Command("openssl", {
    args: ["s_client", "-connect", `${HONEST_ADDRESS}:${port}`, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, output: DECODER.decode(stdout) + DECODER.decode(stderr) };
}

Deno.test({
  name: "ChatServer refuses TLS 1.0 and 1.1 handshakes and accepts TLS 1.2 and 1.3",
  ignore: !OPENSSL,
  async fn(t) {
    await using srv = await startServer();
    // OpenSSL 3 will not even offer TLS < 1.2 at its default security level; level 0 makes the
    // client really try, so a refusal can only come from the server.
    for (const version of ["-tls1", "-tls1_1"]) {
      await t.step(`${version} is refused by the server`, async () => {
        const before = srv.server.stats().handshakeFailures;
        const { code, output } = await sClient(srv.port, [
          version,
          "-cipher",
          "DEFAULT:@SECLEVEL=0",
        ]);
        assert.notEqual(code, 0, output);
        assert.match(output, /alert (handshake failure|protocol version)|SSL alert number/, output);
        assert.match(output, /Cipher is \(NONE\)/, output);
        assert.equal(srv.server.stats().handshakeFailures, before + 1);
      });
    }
    for (const [version, name] of [["-tls1_2", "TLSv1.2"], ["-tls1_3", "TLSv1.3"]]) {
      await t.step(`${version} is accepted`, async () => {
        const { code, output } = await sClient(srv.port, [version]);
        assert.equal(code, 0, output);
        assert.match(output, new RegExp(`New, ${name.replace(".", "\\.")}|Protocol\\s*: ${name}`));
      });
    }
  },
});

/** Runs `main.ts --certs-only` (optionally under a umask) in a fresh cert dir. */
async function generateCerts(umask?: string): Promise<{ dir: string; output: string }> {
  const dir = await Deno.makeTempDir({ prefix: "chat-security-certs-" });
  const command = [Deno.execPath(), "run", "-A", MAIN, "--certs-only", "--cert-dir", dir];
  const quoted = command.map((arg) => `'${arg.replaceAll("'", "'\\''")}'`).join(" ");
  const { code, stdout, stderr } = await new Deno.Command("sh", {
    args: ["-c", umask === undefined ? `exec ${quoted}` : `umask ${umask} && exec ${quoted}`],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const output = DECODER.decode(stdout) + DECODER.decode(stderr);
  assert.equal(code, 0, output);
  return { dir, output };
}

Deno.test({
  name: "main.ts writes key.pem readable by its owner only, whatever the umask",
  ignore: !OPENSSL,
  async fn(t) {
    for (const umask of [undefined, "000"]) {
      await t.step(
        umask === undefined ? "with the inherited umask" : `with umask ${umask}`,
        async () => {
          const { dir, output } = await generateCerts(umask);
          try {
            const key = await Deno.stat(`${dir}/key.pem`);
            assert.equal(
              key.mode! & 0o777,
              0o600,
              `key.pem mode ${(key.mode! & 0o777).toString(8)}`,
            );
            const cert = await Deno.stat(`${dir}/cert.pem`);
            assert.equal(cert.mode! & 0o022, 0, "cert.pem must not be writable by others");
            assert.doesNotMatch(output, /PRIVATE KEY/, "the key must not be printed");
            const leftovers = [];
            for await (const entry of Deno.readDir(dir)) leftovers.push(entry.name);
            assert.deepEqual(leftovers.sort(), ["cert.pem", "key.pem", "server_fingerprint.txt"]);
          } finally {
            await Deno.remove(dir, { recursive: true });
          }
        },
      );
    }
  },
});

/** Every way a client can put the password (or a near miss of it) in front of the server. */
async function exercisePassword(port: number, password: string): Promise<string[]> {
  const replies: string[] = [];
  const collect = async (client: TestClient) => {
    while (true) {
      const frame = await client.tryRecv(500);
      if (frame === null) break;
      replies.push(JSON.stringify(frame));
    }
    await client.close();
  };
  // The right password, then a second auth carrying it after login.
  const { client: ok, reply } = await TestClient.login(port, password);
  assert.equal(reply.success, true);
  await ok.send({ type: "message", content: "hello", sender: "tester" });
  await ok.send({ type: "auth", password });
  await collect(ok);
  // Wrong passwords that contain the right one.
  for (const guess of [`${password}x`, `x${password}`]) {
    const { client, reply } = await TestClient.login(port, guess);
    replies.push(JSON.stringify(reply));
    await collect(client);
  }
  // The password in frames that are refused before it is checked.
  for (
    const body of [
      JSON.stringify({ type: "message", content: password }),
      `{"type":"auth","password":"${password}"`,
      JSON.stringify([{ type: "auth", password }]),
    ]
  ) {
    const client = await TestClient.connect(port);
    const bytes = new TextEncoder().encode(body);
    await client.sendRaw(new Uint8Array([...lengthPrefix(bytes.length), ...bytes]));
    await collect(client);
  }
  // A frame too large, whose body starts with the password.
  const big = await TestClient.connect(port);
  await big.sendRaw(new Uint8Array([...lengthPrefix(70_000), ...encodeFrame({ password })]));
  await collect(big);
  return replies;
}

Deno.test("the password never appears in the server's output, even at debug level", async (t) => {
  const { dir } = await testCerts();
  for (const format of ["text", "json"] as const) {
    await t.step(`--log-format ${format}`, async () => {
      const password = `pw-${crypto.randomUUID()}`;
      const passwordFile = await Deno.makeTempFile({ prefix: "chat-password-" });
      await Deno.writeTextFile(passwordFile, `${password}\n`);
      // Text reads the password from the environment, JSON from --password-file.
      const source: { args: string[]; env: Record<string, string> } = format === "text"
        ? { args: [], env: { CHAT_SERVER_PASSWORD: password } }
        : { args: ["--password-file", passwordFile], env: {} };
      try {
        await using server = await spawnServer(
          [
            "--port",
            "0",
            "--cert-dir",
            dir,
            "--log-level",
            "debug",
            "--log-format",
            format,
            ...source.args,
          ],
          { env: source.env },
        );
        const replies = await exercisePassword(server.port, password);
        await delay(200);
        server.child.kill("SIGTERM");
        const { code, output } = await server.exited();
        assert.equal(code, 0, output);
        assert.ok(!output.includes(password), `the password is in the output:\n${output}`);
        for (const reply of replies) assert.ok(!reply.includes(password), reply);
        // Make sure debug logging really was on, in the right format.
        const lines = output.split("\n").filter((line) => /closed before login/.test(line));
        assert.ok(lines.length > 0, `no debug lines:\n${output}`);
        if (format === "json") {
          for (const line of lines) assert.equal(JSON.parse(line).level, "DEBUG");
        } else {
          assert.match(lines[0], /\[debug\]|DBG|DEBUG/i);
        }
      } finally {
        await Deno.remove(passwordFile);
      }
    });
  }
});

Deno.test("ChatServer locks out an address after --max-auth-failures wrong passwords, not others", async () => {
  await using srv = await startServer({ limits: { maxAuthFailures: 3, lockoutMs: 60_000 } });
  const endpoint = { port: srv.port, cert: (await testCerts()).cert };
  const replies = [];
  for (let i = 0; i < 4; i++) replies.push(await guessOnce(endpoint, `wrong-${i}`, GUESS_ADDRESS));
  assert.deepEqual(replies, ["invalid", "invalid", "invalid", "error:locked_out"]);
  // Locked out even with the right password: the guesser learns nothing more.
  assert.equal(await guessOnce(endpoint, PASSWORD, GUESS_ADDRESS), "error:locked_out");
  // Another address is not affected.
  const { client, reply } = await TestClient.login(srv.port);
  await client.close();
  assert.equal(reply.success, true);
});

Deno.test("ChatServer gives concurrent guesses from one address no more verdicts than --max-auth-failures", async () => {
  await using srv = await startServer({ limits: { maxAuthFailures: 5, lockoutMs: 60_000 } });
  const endpoint = { port: srv.port, cert: (await testCerts()).cert };
  const replies = await Promise.all(
    Array.from({ length: 30 }, (_, i) => guessOnce(endpoint, `guess-${i}`, BURST_ADDRESS)),
  );
  const verdicts = replies.filter((reply) => reply === "invalid").length;
  assert.ok(
    verdicts <= 5,
    `${verdicts} of 30 concurrent wrong passwords were checked and answered; the lockout allows 5`,
  );
});

Deno.test("ChatServer keeps counting a silent TCP connection against --max-per-ip until it is closed", async () => {
  await using srv = await startServer({
    limits: { maxPerIp: 2, handshakeTimeoutMs: 300, authTimeoutMs: 5000 },
  });
  const silent = [
    await Deno.connect({ hostname: HONEST_ADDRESS, port: srv.port }),
    await Deno.connect({ hostname: HONEST_ADDRESS, port: srv.port }),
  ];
  let reads: Promise<boolean>[] = [];
  try {
    await delay(1000); // well past the handshake timeout
    reads = silent.map((conn) => conn.read(new Uint8Array(16)).then((n) => n === null, () => true));
    const closedByServer = await Promise.all(reads.map(async (read) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const result = await Promise.race([
        read,
        new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), 300)),
      ]);
      clearTimeout(timer);
      return result;
    }));
    if (closedByServer.every(Boolean)) return; // the sockets are gone: nothing to count
    // The sockets are still open, so they must still hold this address's two slots.
    const third = await TestClient.connect(srv.port);
    await using _ = third;
    const frame = await third.tryRecv(1000);
    assert.equal(
      frame?.code,
      "too_many_connections",
      `the server forgot ${closedByServer.filter((c) => !c).length} open sockets (stats: ` +
        `${srv.server.stats().connections} connections) and let a third connection in`,
    );
  } finally {
    for (const conn of silent) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await Promise.all(reads);
  }
});
