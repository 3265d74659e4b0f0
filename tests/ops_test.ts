/**
 * Operations: reloading the certificate and the password (`ChatServer.reload`, SIGHUP on a
 * spawned `main.ts`), the Prometheus `/metrics` page and `/healthz`.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import tls from "node:tls";
import { CertError, ensureCertificates } from "../src/server/certs.ts";
import { MetricsServer } from "../src/server/metrics.ts";
import { PasswordError } from "../src/server/password.ts";
import { ChatServer } from "../src/server/server.ts";
import {
  type Frame,
  PASSWORD,
  pipeText,
  spawnServer,
  startServer,
  testCerts,
  TestClient,
  waitFor,
} from "./_helpers.ts";

interface Pair {
  cert: string;
  key: string;
  fingerprint: string;
}

let second: Promise<Pair> | undefined;

/** A second certificate pair (not the test pair), made once per test process. */
function secondPair(): Promise<Pair> {
  second ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "chat-test-certs2-" });
    try {
      const pair = await ensureCertificates({ certDir: dir, host: "127.0.0.1" });
      return { cert: pair.certPem, key: pair.keyPem, fingerprint: pair.fingerprint };
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  })();
  return second;
}

/** What a new connection to `port` is shown: the certificate's fingerprint and the ALPN pick. */
async function peer(
  port: number,
  alpn?: string[],
): Promise<{ fingerprint: string; alpn: string | false | null }> {
  const socket = tls.connect({
    host: "127.0.0.1",
    port,
    rejectUnauthorized: false,
    ...(alpn ? { ALPNProtocols: alpn } : {}),
  });
  const closed = new Promise((resolve) => socket.once("close", resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("secureConnect", resolve);
      socket.once("error", reject);
    });
    const raw = socket.getPeerCertificate().raw;
    return {
      fingerprint: createHash("sha256").update(raw).digest("hex"),
      alpn: socket.alpnProtocol ?? null,
    };
  } finally {
    socket.destroy();
    await closed;
  }
}

/** `from` sends `content`; every one of `to` receives it. */
async function chat(from: TestClient, to: TestClient[], content: string): Promise<void> {
  await from.send({ type: "message", content });
  for (const client of to) {
    const frame: Frame = await client.recv();
    assert.equal(frame.type, "message");
    assert.equal(frame.content, content);
  }
}

Deno.test("ChatServer.reload serves a new certificate on both ports to new connections only", async () => {
  const old = await testCerts();
  const next = await secondPair();
  await using srv = await startServer({ web: { port: 0, assets: new Map() } });
  const { server, port } = srv;
  const webPort = server.webAddr!.port;
  await using before = (await TestClient.login(port)).client;
  await using other = (await TestClient.login(port)).client;
  assert.equal((await peer(port)).fingerprint, old.fingerprint);

  const result = await server.reload({ cert: next.cert, key: next.key });
  assert.deepEqual(result, {
    certificateChanged: true,
    passwordChanged: false,
    fingerprint: next.fingerprint,
  });
  assert.equal((await peer(port)).fingerprint, next.fingerprint);
  const web = await peer(webPort, ["http/1.1"]);
  assert.deepEqual(web, { fingerprint: next.fingerprint, alpn: "http/1.1" });
  // Connected clients chat on; a new one trusts the new certificate and joins the same room.
  await using after = (await TestClient.login(port, PASSWORD, { cert: next.cert })).client;
  await chat(before, [other, after], "after the reload");
  await chat(after, [before, other], "from the new one");
  assert.equal(server.stats().states.tls.loggedIn, 3);
  // The same pair again is no change.
  assert.equal((await server.reload({ cert: next.cert, key: next.key })).certificateChanged, false);
});

Deno.test("ChatServer.reload keeps everything when the new certificate or key is unusable", async (t) => {
  const old = await testCerts();
  const next = await secondPair();
  await using srv = await startServer();
  const { server, port } = srv;
  const refused = async (options: Parameters<ChatServer["reload"]>[0], pattern: RegExp) => {
    await assert.rejects(server.reload(options), (error: Error) => {
      assert.ok(error instanceof CertError, String(error));
      assert.match(error.message, pattern);
      return true;
    });
    assert.equal((await peer(port)).fingerprint, old.fingerprint);
  };
  await t.step("a broken certificate", async () => {
    await refused({
      cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
      key: next.key,
    }, /new certificate/);
  });
  await t.step("a broken key", async () => {
    await refused({ cert: next.cert, key: "not a key" }, /new key/);
  });
  await t.step("a mismatched pair", async () => {
    await refused({ cert: next.cert, key: old.key }, /does not match/);
  });
  await t.step("a mismatched pair with a good password changes neither", async () => {
    await assert.rejects(
      server.reload({ cert: next.cert, key: old.key, password: "new password" }),
      CertError,
    );
    const { client, reply } = await TestClient.login(port);
    await using _ = client;
    assert.equal(reply.success, true);
  });
  await t.step("an empty password, or half a pair", async () => {
    await assert.rejects(server.reload({ password: "" }), PasswordError);
    await assert.rejects(server.reload({ cert: next.cert }), TypeError);
  });
  await using client = (await TestClient.login(port)).client;
  assert.equal(client.closed, false);
});

Deno.test("ChatServer.reload of the password: new logins need the new one; logged-in clients stay", async () => {
  await using srv = await startServer();
  const { server, port } = srv;
  await using a = (await TestClient.login(port)).client;
  await using b = (await TestClient.login(port)).client;
  const result = await server.reload({ password: "rotated" });
  assert.equal(result.passwordChanged, true);
  assert.equal(result.certificateChanged, false);
  const old = await TestClient.login(port);
  await using _ = old.client;
  assert.equal(old.reply.success, false);
  const fresh = await TestClient.login(port, "rotated");
  await using c = fresh.client;
  assert.equal(fresh.reply.success, true);
  await chat(a, [b, c], "still here");
  assert.equal((await server.reload({ password: "rotated" })).passwordChanged, false);
});

// --- SIGHUP on main.ts ---------------------------------------------------------------------------

/** Waits until `text()` has `count` matches of `pattern`; fails with the output otherwise. */
async function waitForLines(text: () => string, pattern: RegExp, count: number): Promise<string[]> {
  const global = new RegExp(
    pattern.source,
    pattern.flags.includes("g") ? pattern.flags : `${pattern.flags}g`,
  );
  const ok = await waitFor(() => (text().match(global) ?? []).length >= count, 10_000);
  assert.ok(ok, `no ${count} x ${pattern} in:\n${text()}`);
  return text().match(global)!;
}

Deno.test({
  name: "SIGHUP reloads the cert dir and --password-file without dropping anyone",
  ignore: Deno.build.os === "windows",
  async fn() {
    const old = await testCerts();
    const next = await secondPair();
    const dir = await Deno.makeTempDir({ prefix: "chat-ops-" });
    try {
      const certDir = `${dir}/certs`;
      await Deno.mkdir(certDir);
      await Deno.writeTextFile(`${certDir}/cert.pem`, old.cert);
      await Deno.writeTextFile(`${certDir}/key.pem`, old.key, { mode: 0o600 });
      const passwordFile = `${dir}/password`;
      await Deno.writeTextFile(passwordFile, `${PASSWORD}\n`);
      await using spawned = await spawnServer([
        "--port=0",
        "--cert-dir",
        certDir,
        "--password-file",
        passwordFile,
        "--metrics-port=0",
      ]);
      const { child, port } = spawned;
      const metricsUrl = /metrics at (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(spawned.output())
        ?.[1];
      assert.ok(metricsUrl, spawned.output());
      await using before = (await TestClient.login(port)).client;
      await using other = (await TestClient.login(port)).client;

      // A new pair and a new password, then SIGHUP.
      await Deno.writeTextFile(`${certDir}/cert.pem`, next.cert);
      await Deno.writeTextFile(`${certDir}/key.pem`, next.key);
      await Deno.writeTextFile(passwordFile, "the new password\n");
      child.kill("SIGHUP");
      const [line] = await waitForLines(spawned.output, /\[\w+\] chat-server: Reload: [^\n]*/, 1);
      assert.match(
        line,
        /^\[info\] .*certificate changed \(fingerprint ([0-9a-f]{2}:){31}[0-9a-f]{2}\); password changed/,
      );
      assert.ok(line.includes(next.fingerprint.match(/../g)!.join(":")), line);
      assert.ok(spawned.output().includes(`export CHAT_SERVER_FINGERPRINT=${next.fingerprint}`));
      const written = await Deno.readTextFile(`${certDir}/server_fingerprint.txt`);
      assert.ok(written.includes(next.fingerprint), written);

      await chat(before, [other], "through the reload");
      assert.equal((await peer(port)).fingerprint, next.fingerprint);
      const refused = await TestClient.login(port, PASSWORD, { cert: next.cert });
      await using _refused = refused.client;
      assert.equal(refused.reply.success, false, "the old password still works");
      const fresh = await TestClient.login(port, "the new password", { cert: next.cert });
      await using after = fresh.client;
      assert.equal(fresh.reply.success, true);
      await chat(after, [before, other], "hello from after");

      // A broken certificate, then an empty password: the old ones stay, with the reason logged.
      await Deno.writeTextFile(`${certDir}/cert.pem`, "garbage\n");
      child.kill("SIGHUP");
      const broken =
        (await waitForLines(spawned.output, /\[\w+\] chat-server: Reload: [^\n]*/, 2))[1];
      assert.match(broken, /^\[warning\] .*kept the old certificate: Cannot use .*cert\.pem/);
      assert.match(broken, /password unchanged/);
      await Deno.writeTextFile(`${certDir}/cert.pem`, next.cert);
      await Deno.writeTextFile(`${certDir}/key.pem`, old.key);
      await Deno.writeTextFile(passwordFile, "");
      child.kill("SIGHUP");
      const mismatched =
        (await waitForLines(spawned.output, /\[\w+\] chat-server: Reload: [^\n]*/, 3))[2];
      assert.match(mismatched, /kept the old certificate: .*does not match/);
      assert.match(mismatched, /kept the old password: Cannot use an empty password/);
      assert.equal((await peer(port)).fingerprint, next.fingerprint);
      const still = await TestClient.login(port, "the new password", { cert: next.cert });
      await using _still = still.client;
      assert.equal(still.reply.success, true);
      await chat(before, [other, after, still.client], "nothing crashed");

      // The metrics page saw all of it.
      const page = await (await fetch(metricsUrl)).text();
      const values = parseExposition(page);
      assert.equal(values.get("chat_logins_total"), 4);
      assert.equal(values.get("chat_login_failures_total"), 1);
      assert.equal(values.get("chat_messages_total"), 3);
      assert.equal(values.get('chat_connections{transport="tls",state="logged_in"}'), 4);

      child.kill("SIGTERM");
      const { code } = await spawned.exited();
      assert.equal(code, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "SIGHUP re-reads --cert/--key; a broken certificate leaves the old one serving",
  ignore: Deno.build.os === "windows",
  async fn() {
    const old = await testCerts();
    const next = await secondPair();
    const dir = await Deno.makeTempDir({ prefix: "chat-ops-" });
    try {
      const [cert, key] = [`${dir}/fullchain.pem`, `${dir}/privkey.pem`];
      await Deno.writeTextFile(cert, old.cert);
      await Deno.writeTextFile(key, old.key);
      await using spawned = await spawnServer(["--port=0", "--cert", cert, "--key", key], {
        env: { CHAT_SERVER_PASSWORD: PASSWORD },
      });
      const { child, port } = spawned;
      await using before = (await TestClient.login(port)).client;
      await Deno.writeTextFile(
        cert,
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
      );
      child.kill("SIGHUP");
      const [line] = await waitForLines(spawned.output, /\[\w+\] chat-server: Reload: [^\n]*/, 1);
      assert.match(line, /kept the old certificate: Cannot use .*fullchain\.pem/);
      assert.match(line, /password not reloaded/);
      assert.equal((await peer(port)).fingerprint, old.fingerprint);
      await using other = (await TestClient.login(port)).client;
      await chat(before, [other], "old certificate, still serving");

      await Deno.writeTextFile(key, next.key);
      await Deno.writeTextFile(cert, next.cert);
      child.kill("SIGHUP");
      const good =
        (await waitForLines(spawned.output, /\[\w+\] chat-server: Reload: [^\n]*/, 2))[1];
      assert.match(good, /certificate changed/);
      assert.equal((await peer(port)).fingerprint, next.fingerprint);
      await chat(other, [before], "new certificate, same room");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// --- metrics -------------------------------------------------------------------------------------

/**
 * A strict reader of the Prometheus text format (0.0.4): every line is a well-formed `# HELP`,
 * `# TYPE` or sample line (`name{label="value",...} number`), every sample's family has a TYPE
 * given before it, counters end in `_total` and are not negative, and no series appears twice.
 * Returns each series (`name{labels}` as written) with its value.
 */
function parseExposition(text: string): Map<string, number> {
  const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const LABEL = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
  const sample = new RegExp(
    `^(${NAME})(\\{(?:${LABEL}(?:,${LABEL})*)?\\})? (-?(?:\\d+(?:\\.\\d+)?(?:e[+-]?\\d+)?|Inf|NaN)|\\+Inf)$`,
  );
  const help = new RegExp(`^# HELP (${NAME}) .*$`);
  const type = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);
  const types = new Map<string, string>();
  const helped = new Set<string>();
  const values = new Map<string, number>();
  assert.ok(text.endsWith("\n"), "the page must end with a newline");
  for (const [i, line] of text.slice(0, -1).split("\n").entries()) {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line === "") continue;
    if (line.startsWith("#")) {
      const h = help.exec(line);
      const t = type.exec(line);
      assert.ok(h || t, `a comment that is neither HELP nor TYPE: ${where}`);
      if (h) {
        assert.ok(!helped.has(h[1]), `a second HELP: ${where}`);
        helped.add(h[1]);
      }
      if (t) {
        assert.ok(!types.has(t[1]), `a second TYPE: ${where}`);
        types.set(t[1], t[2]);
      }
      continue;
    }
    const s = sample.exec(line);
    assert.ok(s, `not a sample: ${where}`);
    const [, name, labels = "", raw] = s;
    const kind = types.get(name);
    assert.ok(kind, `a sample without a TYPE before it: ${where}`);
    const value = Number(raw.replace("Inf", "Infinity"));
    if (kind === "counter") {
      assert.match(name, /_total$/, `a counter not named *_total: ${where}`);
      assert.ok(value >= 0, `a negative counter: ${where}`);
    }
    const series = `${name}${labels}`;
    assert.ok(!values.has(series), `a series twice: ${where}`);
    values.set(series, value);
  }
  return values;
}

/** GETs `url`: status, body and content type. */
async function fetchText(url: string): Promise<{ status: number; text: string; type: string }> {
  const response = await fetch(url);
  return {
    status: response.status,
    text: await response.text(),
    type: response.headers.get("content-type") ?? "",
  };
}

Deno.test("/metrics parses as Prometheus text and its counters match a scripted session", async () => {
  await using srv = await startServer({
    limits: { rate: 0.001, burst: 4, maxAuthFailures: 2, lockoutMs: 60_000 },
  });
  const { server, port } = srv;
  await using metrics = new MetricsServer(server, { port: 0 });
  const { port: metricsPort } = await metrics.listen();
  const url = `http://127.0.0.1:${metricsPort}/metrics`;

  const empty = await fetchText(url);
  assert.equal(empty.status, 200);
  assert.match(empty.type, /^text\/plain; version=0\.0\.4/);
  const zero = parseExposition(empty.text);
  assert.equal(zero.get("chat_messages_total"), 0);
  assert.equal(zero.get('chat_errors_total{code="rate_limited"}'), 0);

  // Three logins, then two wrong passwords (the second locks 127.0.0.1 out), then a refused one.
  await using a = (await TestClient.login(port)).client;
  await using b = (await TestClient.login(port)).client;
  await using c = (await TestClient.login(port)).client;
  for (let i = 0; i < 2; i++) {
    const { client, reply } = await TestClient.login(port, "wrong");
    await using _ = client;
    assert.equal(reply.success, false);
  }
  const locked = await TestClient.login(port);
  await using _locked = locked.client;
  assert.equal(locked.reply.code, "locked_out");
  // a: 5 messages, the burst is 4: the fifth is dropped (rate_limited). b: 1 message.
  for (let i = 0; i < 4; i++) await chat(a, [b, c], `a${i}`);
  await a.send({ type: "message", content: "too fast" });
  assert.equal((await a.recv()).code, "rate_limited");
  await chat(b, [a, c], "b0");
  // An unknown request type: an error that does not close.
  await c.send({ type: "dance" });
  assert.equal((await c.recv()).code, "unknown_type");

  const page = await fetchText(url);
  const values = parseExposition(page.text);
  const expected: Record<string, number> = {
    chat_logins_total: 3,
    chat_login_failures_total: 2,
    chat_lockouts_total: 1,
    chat_messages_total: 5,
    chat_deliveries_total: 10,
    'chat_errors_total{code="rate_limited"}': 1,
    'chat_errors_total{code="locked_out"}': 1,
    'chat_errors_total{code="unknown_type"}': 1,
    'chat_errors_total{code="invalid_json"}': 0,
    'chat_clients_dropped_total{reason="stalled_reader"}': 0,
    'chat_clients_dropped_total{reason="write_timeout"}': 0,
    chat_connections_accepted_total: 6,
    chat_connections_rejected_total: 0,
    chat_tls_handshake_timeouts_total: 0,
    chat_tls_handshake_failures_total: 0,
    chat_history_messages: 5,
    chat_history_store_errors_total: 0,
    'chat_connections{transport="tls",state="logged_in"}': 3,
    'chat_connections{transport="web",state="logged_in"}': 0,
  };
  for (const [series, value] of Object.entries(expected)) {
    assert.equal(values.get(series), value, series);
  }
  assert.ok(values.has("chat_send_queue_bytes"));
  // The stats behind it agree.
  const stats = server.stats();
  assert.equal(stats.messages, 5);
  assert.equal(stats.lockouts, 1);
});

Deno.test("/healthz answers 200 while serving and 503 once the server is shutting down", async () => {
  const srv = await startServer();
  const { server } = srv;
  await using metrics = new MetricsServer(server, { port: 0 });
  const { port } = await metrics.listen();
  const base = `http://127.0.0.1:${port}`;
  await using client = (await TestClient.login(srv.port)).client;
  assert.deepEqual(await fetchText(`${base}/healthz`).then((r) => [r.status, r.text]), [
    200,
    "ok\n",
  ]);
  assert.equal((await fetchText(`${base}/nothing`)).status, 404);
  const closing = server.close();
  assert.equal(server.closing, true);
  assert.equal((await fetchText(`${base}/healthz`)).status, 503);
  assert.equal((await fetchText(`${base}/metrics`)).status, 200, "metrics stay up while it stops");
  await closing;
  assert.equal((await client.recv()).code, "shutting_down");
  assert.equal((await fetchText(`${base}/healthz`)).status, 503);
});

Deno.test("ChatServer.reload while listen() binds: both ports end up on the new certificate", async () => {
  const next = await secondPair();
  const { cert, key } = await testCerts();
  for (let ticks = 0; ticks < 12; ticks++) {
    await using server = new ChatServer({
      hostname: "127.0.0.1",
      port: 0,
      cert,
      key,
      password: PASSWORD,
      web: { port: 0, assets: new Map() },
    });
    const reloaded = server.reload({ cert: next.cert, key: next.key });
    for (let i = 0; i < ticks; i++) await Promise.resolve();
    const listening = server.listen();
    await reloaded;
    const { port } = await listening;
    assert.equal((await peer(port)).fingerprint, next.fingerprint, `chat port, ${ticks} ticks`);
    assert.equal((await peer(server.webAddr!.port)).fingerprint, next.fingerprint, `web port`);
  }
});

Deno.test({
  name: "main.ts: a SIGHUP during start-up is a reload once started, not the end of the process",
  ignore: Deno.build.os === "windows",
  async fn() {
    const { dir } = await testCerts();
    const data = await Deno.makeTempDir({ prefix: "chat-ops-hup-" });
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../main.ts", import.meta.url).pathname,
        ...["--port", "0", "--web-port", "off", "--cert-dir", dir, "--data-dir", data],
      ],
      env: { CHAT_SERVER_PASSWORD: PASSWORD, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let text = "";
    const collecting = pipeText([child.stdout, child.stderr], (piece) => text += piece);
    try {
      // Hang-ups from its first output (the banner: main() runs; before that the runtime itself
      // is starting, and no program can catch a signal yet) until the server is up.
      assert.ok(await waitFor(() => text.length > 0, 15_000));
      for (let i = 0; i < 100 && !/server started/.test(text); i++) {
        child.kill("SIGHUP");
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      assert.ok(await waitFor(() => /server started/.test(text), 15_000), text);
      assert.ok(await waitFor(() => /Reload: certificate unchanged/.test(text), 5000), text);
      child.kill("SIGTERM");
      const { code } = await child.status;
      assert.equal(code, 0, text);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // Exited.
      }
      await child.status;
      await collecting;
      await Deno.remove(data, { recursive: true });
    }
  },
});

Deno.test("MetricsServer.close does not wait for a request whose body never comes", async () => {
  await using srv = await startServer();
  const metrics = new MetricsServer(srv.server, { port: 0 });
  const { port } = await metrics.listen();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(
    new TextEncoder().encode(
      "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nabc",
    ),
  );
  await new Promise((resolve) => setTimeout(resolve, 100));
  const started = performance.now();
  await metrics.close();
  const took = performance.now() - started;
  conn.close();
  assert.ok(took < 3000, `close took ${Math.round(took)} ms`);
});
