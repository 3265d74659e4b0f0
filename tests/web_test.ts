/**
 * The web port without a browser: the page's files and their headers, the WebSocket upgrade and
 * its Origin check, and every limit of the TLS protocol applied to WebSocket clients in the same
 * way (sizes, binary, auth timeout, rate, lockout and connection caps shared with TLS clients),
 * one room for both kinds of client, and the hardening of the port (silent handshakes and idle
 * HTTP connections are closed).
 */
import assert from "node:assert/strict";
import {
  concatBytes,
  delay,
  PASSWORD,
  spawnServer,
  startServer,
  testCerts,
  TestClient,
} from "./_helpers.ts";
import { clientFrame, WsClient } from "./_ws.ts";
import type { ChatServerOptions } from "../src/server/server.ts";
import type { Limits } from "../src/server/config.ts";

async function startWeb(options: { limits?: Partial<Limits> } & Partial<ChatServerOptions> = {}) {
  const srv = await startServer({ web: { port: 0 }, ...options });
  return { ...srv, webPort: srv.server.webAddr!.port };
}

/** fetch() trusting the test certificate. */
async function get(
  port: number,
  path: string,
  init: RequestInit = {},
): Promise<{ status: number; headers: Headers; body: string }> {
  const client = Deno.createHttpClient({ caCerts: [(await testCerts()).cert] });
  try {
    const response = await fetch(`https://127.0.0.1:${port}${path}`, { ...init, client });
    return { status: response.status, headers: response.headers, body: await response.text() };
  } finally {
    client.close();
  }
}

Deno.test("web port serves the page with a strict Content-Security-Policy", async () => {
  await using srv = await startWeb();
  const page = await get(srv.webPort, "/");
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type")!, /^text\/html; charset=utf-8/);
  assert.match(page.body, /<html/i);
  const csp = page.headers.get("content-security-policy")!;
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(page.headers.get("x-content-type-options"), "nosniff");
  assert.equal(page.headers.get("referrer-policy"), "no-referrer");
  // Conditional requests: the ETag answers 304.
  const again = await get(srv.webPort, "/", {
    headers: { "if-none-match": page.headers.get("etag")! },
  });
  assert.equal(again.status, 304);
  const missing = await get(srv.webPort, "/../certs/key.pem");
  assert.equal(missing.status, 404);
  assert.equal((await get(srv.webPort, "/nothing-here.js")).status, 404);
  const post = await get(srv.webPort, "/", { method: "POST", body: "x" });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET, HEAD");
  const plain = await get(srv.webPort, "/ws");
  assert.equal(plain.status, 426);
});

Deno.test("web port refuses a WebSocket from another origin (403), allows its own and none", async () => {
  await using srv = await startWeb();
  await using foreign = await WsClient.connect(srv.webPort);
  const refused = await foreign.upgrade({ Origin: "https://evil.example" });
  assert.equal(refused.status, 403);
  assert.equal(await foreign.closed(), -1);
  await using plainHttp = await WsClient.connect(srv.webPort);
  const wrongScheme = await plainHttp.upgrade({ Origin: `http://127.0.0.1:${srv.webPort}` });
  assert.equal(wrongScheme.status, 403);
  await using own = await WsClient.open(srv.webPort, {
    Origin: `https://127.0.0.1:${srv.webPort}`,
  });
  await own.sendJson({ type: "auth", password: PASSWORD });
  assert.deepEqual(await own.recv(), { success: true, type: "auth_result" });
  await using none = await WsClient.open(srv.webPort);
  await none.sendJson({ type: "auth", password: PASSWORD });
  assert.deepEqual(await none.recv(), { success: true, type: "auth_result" });
});

Deno.test("web port: a WebSocket client and a TLS client chat in one room", async () => {
  await using srv = await startWeb();
  await using ws = await WsClient.login(srv.webPort, {
    password: PASSWORD,
    name: "web",
    features: ["ids", "presence"],
  });
  assert.deepEqual(await ws.recv(), { success: true, type: "auth_result" });
  const welcome = await ws.recv();
  assert.equal(welcome.type, "welcome");
  assert.equal((welcome.member as { name: string }).name, "web");
  const { client: tls } = await TestClient.login(srv.port);
  await using _tls = tls;
  const joined = await ws.recv();
  assert.equal(joined.type, "joined");
  await tls.send({ type: "message", sender: "tls", content: "hello browser" });
  const got = await ws.recv();
  assert.equal(got.type, "message");
  assert.equal(got.content, "hello browser");
  assert.equal(got.sender, "tls");
  assert.equal(typeof got.id, "number");
  await ws.sendJson({ type: "message", content: "hello terminal", ref: "r1" });
  const ack = await ws.recv();
  assert.equal(ack.type, "ack");
  assert.equal(ack.ref, "r1");
  assert.equal(ack.id, (got.id as number) + 1);
  const seen = await tls.recv();
  // The seed client sees the seed's frame: no id, no ref.
  assert.deepEqual(Object.keys(seen).sort(), ["content", "sender", "sender_ip", "type"]);
  assert.equal(seen.content, "hello terminal");
  assert.equal(seen.sender, "web");
  assert.equal(seen.sender_ip, "127.0.0.1");
});

Deno.test("web port: a message in fragments, ping and close follow RFC 6455", async () => {
  await using srv = await startWeb();
  await using ws = await WsClient.login(srv.webPort, { password: PASSWORD });
  assert.equal((await ws.recv()).success, true);
  const { client: reader } = await TestClient.login(srv.port);
  await using _reader = reader;
  const text = JSON.stringify({ type: "message", sender: "frag", content: "in three parts" });
  await ws.write(clientFrame(0x1, text.slice(0, 10), { fin: false }));
  await ws.write(clientFrame(0x9, "are you there")); // a control frame between fragments
  await ws.write(clientFrame(0x0, text.slice(10, 20), { fin: false }));
  await ws.write(clientFrame(0x0, text.slice(20)));
  const pong = await ws.frame();
  assert.equal(pong?.op, 0xa);
  assert.equal(new TextDecoder().decode(pong!.payload), "are you there");
  assert.equal((await reader.recv()).content, "in three parts");
  await ws.write(clientFrame(0x8, new Uint8Array([0x03, 0xe8])));
  assert.equal(await ws.closed(), 1000);
});

Deno.test("web port: a ping flood costs a write or two per read and no memory; the newest ping is answered", async () => {
  // A client that sends 20,000 pings and never reads: before, every pong waited in memory.
  await using srv = await startWeb();
  await using ws = await WsClient.connect(srv.webPort);
  await ws.requestUpgrade();
  await ws.write(clientFrame(0x1, JSON.stringify({ type: "auth", password: PASSWORD })));
  await delay(100);
  const burst = concatBytes(Array.from({ length: 20_000 }, (_, i) => clientFrame(0x9, `${i}`)));
  await ws.write(burst);
  await delay(300);
  assert.equal((await ws.readHttp()).status, 101);
  assert.equal((await ws.recv()).success, true);
  const pongs: number[] = [];
  while (pongs.at(-1) !== 19_999) {
    const frame = await ws.frame();
    assert.ok(frame?.op === 0xa, `pongs ${pongs.length}, then ${frame?.op}`);
    pongs.push(Number(new TextDecoder().decode(frame.payload)));
  }
  // A pong per read the server made (each read takes a chunk of many pings), not per ping.
  assert.ok(pongs.length < 2_000, `${pongs.length} pongs for 20,000 pings`);
  assert.ok(pongs.every((p, i) => i === 0 || p > pongs[i - 1]));
});

Deno.test("web port: pongs written while a broadcast's write waits on a full socket arrive, and so does everything else", async () => {
  // Pongs come from the transport while the outbox's write is in flight (here: stuck on a socket
  // the client does not read). The TLS handle takes one write at a time, so both go through one
  // writer: nothing may be lost, corrupted or stuck once the client reads again.
  await using srv = await startWeb({
    limits: { rate: 0, stallTimeoutMs: 60_000, writeTimeoutMs: 60_000 },
  });
  await using ws = await WsClient.connect(srv.webPort);
  await ws.requestUpgrade();
  await ws.write(clientFrame(0x1, JSON.stringify({ type: "auth", password: PASSWORD })));
  const { client: talker } = await TestClient.login(srv.port);
  await using _talker = talker;
  await delay(200);
  // More than the kernel's buffers hold: the WebSocket client reads nothing yet.
  const count = 200;
  const content = (i: number) => `m${i} ${"x".repeat(40_000 + i)}`;
  const sending = (async () => {
    for (let i = 0; i < count; i++) await talker.send({ type: "message", content: content(i) });
  })();
  await delay(500);
  for (let i = 0; i < 20; i++) await ws.write(clientFrame(0x9, `p${i}`));
  await delay(200);
  assert.equal((await ws.readHttp()).status, 101);
  assert.equal((await ws.recv()).success, true);
  // While a write is in flight one pong waits, answering the newest ping (RFC 6455, 5.5.3): the
  // pongs come in order and the last answers the last ping.
  const pongs: number[] = [];
  let messages = 0;
  while (pongs.at(-1) !== 19 || messages < count) {
    const frame = await ws.frame();
    assert.ok(frame, `pongs ${pongs} and ${messages} messages, then nothing`);
    const text = new TextDecoder().decode(frame.payload);
    if (frame.op === 0xa) pongs.push(Number(text.slice(1)));
    else {
      assert.equal(frame.op, 0x1);
      assert.equal(JSON.parse(text).content, content(messages++));
    }
  }
  assert.ok(pongs.every((p, i) => i === 0 || p > pongs[i - 1]), `pongs in order: ${pongs}`);
  await sending;
});

for (
  const [name, frames, code] of [
    ["an oversized message", [clientFrame(0x1, "x".repeat(70_000))], "frame_too_large"],
    [
      "an oversized fragmented message",
      [
        clientFrame(0x1, "x".repeat(40_000), { fin: false }),
        clientFrame(0x0, "x".repeat(40_000)),
      ],
      "frame_too_large",
    ],
    ["a binary message", [clientFrame(0x2, '{"type":"message"}')], "invalid_json"],
    ["an unmasked frame", [clientFrame(0x1, '{"type":"who"}', { mask: false })], "invalid_json"],
    ["an empty message", [clientFrame(0x1, "")], "empty_frame"],
    ["text that is not JSON", [clientFrame(0x1, "hello")], "invalid_json"],
  ] as const
) {
  Deno.test(`web port refuses ${name} with ${code}, then closes`, async () => {
    await using srv = await startWeb();
    await using ws = await WsClient.login(srv.webPort, { password: PASSWORD });
    assert.equal((await ws.recv()).success, true);
    for (const frame of frames) await ws.write(frame);
    const error = await ws.recv();
    assert.equal(error.type, "error");
    assert.equal(error.code, code);
    assert.equal(await ws.closed(), 1000);
    assert.equal(srv.server.stats().errors[code], 1);
  });
}

Deno.test("web port refuses a message announced larger than the limit before it arrives", async () => {
  await using srv = await startWeb({ limits: { maxFrame: 1000 } });
  await using ws = await WsClient.login(srv.webPort, { password: PASSWORD });
  assert.equal((await ws.recv()).success, true);
  // A header that announces 2 GB, and nothing after it: refused from the header alone.
  await ws.write(clientFrame(0x1, new Uint8Array(0), { length: 2 ** 31 }).subarray(0, 14));
  const error = await ws.recv();
  assert.equal(error.code, "frame_too_large");
  assert.equal(await ws.closed(), 1000);
});

Deno.test("web port applies the auth timeout to WebSocket clients", async () => {
  await using srv = await startWeb({ limits: { authTimeoutMs: 300 } });
  await using ws = await WsClient.open(srv.webPort);
  const error = await ws.recv(2000);
  assert.equal(error.code, "auth_timeout");
  assert.equal(await ws.closed(), 1000);
});

Deno.test("web port applies the rate limit to WebSocket clients", async () => {
  await using srv = await startWeb({ limits: { rate: 1, burst: 2 } });
  await using ws = await WsClient.login(srv.webPort, { password: PASSWORD });
  assert.equal((await ws.recv()).success, true);
  const { client: reader } = await TestClient.login(srv.port);
  await using _reader = reader;
  for (let i = 0; i < 4; i++) await ws.sendJson({ type: "message", content: `m${i}` });
  assert.equal((await ws.recv()).code, "rate_limited");
  assert.equal((await reader.recv()).content, "m0");
  assert.equal((await reader.recv()).content, "m1");
  assert.equal(await reader.tryRecv(300), null);
  assert.equal(srv.server.stats().errors.rate_limited, 2);
});

Deno.test("web port shares the login lockout with TLS clients from the same address", async () => {
  await using srv = await startWeb({ limits: { maxAuthFailures: 2, lockoutMs: 60_000 } });
  for (let i = 0; i < 2; i++) {
    const { client, reply } = await TestClient.login(srv.port, "wrong");
    await client.close();
    assert.equal(reply.success, false);
  }
  await using ws = await WsClient.login(srv.webPort, { password: PASSWORD });
  const error = await ws.recv();
  assert.equal(error.code, "locked_out");
  assert.equal(await ws.closed(), 1000);
});

Deno.test("web port shares the per-address connection cap with TLS clients", async () => {
  await using srv = await startWeb({ limits: { maxPerIp: 2 } });
  const { client: tls } = await TestClient.login(srv.port);
  await using _tls = tls;
  await using first = await WsClient.login(srv.webPort, { password: PASSWORD });
  assert.equal((await first.recv()).success, true);
  await using second = await WsClient.open(srv.webPort);
  const error = await second.recv();
  assert.equal(error.code, "too_many_connections");
  assert.equal(await second.closed(), 1000);
  // Over the cap, a plain request is answered 503.
  await using third = await WsClient.connect(srv.webPort);
  await third.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  assert.equal((await third.readHttp()).status, 503);
});

Deno.test("web port closes silent handshakes and idle HTTP connections", async () => {
  await using srv = await startWeb({ limits: { handshakeTimeoutMs: 300, authTimeoutMs: 600 } });
  const silent = await Deno.connect({ hostname: "127.0.0.1", port: srv.webPort });
  await using idle = await WsClient.connect(srv.webPort); // TLS done, no request
  const started = Date.now();
  assert.equal(await silent.read(new Uint8Array(16)).catch(() => null), null);
  silent.close();
  assert.equal(await idle.closed(3000), -1);
  assert.ok(Date.now() - started < 3000);
  await delay(50);
  assert.equal(srv.server.stats().sockets, 0);
  assert.equal(srv.server.stats().handshakeTimeouts, 1);
});

Deno.test("web port tells WebSocket clients shutting_down when the server stops", async () => {
  const srv = await startWeb();
  await using ws = await WsClient.login(srv.webPort, { password: PASSWORD });
  assert.equal((await ws.recv()).success, true);
  const closing = srv.server.close();
  const notice = await ws.recv();
  assert.equal(notice.code, "shutting_down");
  assert.equal(await ws.closed(), 1000);
  await closing;
});

Deno.test("main.ts: --web-port 0 logs the web client's address, off turns it off, a busy port is named", async () => {
  const env = { CHAT_SERVER_PASSWORD: PASSWORD, NO_COLOR: "1" };
  const certDir = ["--cert-dir", (await testCerts()).dir];
  {
    await using spawned = await spawnServer(["--port", "0", "--web-port", "0", ...certDir], {
      env,
    });
    assert.ok(spawned.webPort > 0);
    assert.match(spawned.output(), /web client at https:\/\/127\.0\.0\.1:\d+\//);
    const page = await get(spawned.webPort, "/");
    assert.equal(page.status, 200);
    // The busy web port is named in the error, and the chat port is not left bound.
    const dataDir = await Deno.makeTempDir({ prefix: "chat-web-test-" });
    const busy = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "main.ts",
        ...["--port", "0", "--web-port", String(spawned.webPort), "--data-dir", dataDir],
        ...certDir,
      ],
      env,
      stdin: "null",
    }).output();
    await Deno.remove(dataDir, { recursive: true });
    assert.equal(busy.code, 1);
    assert.match(
      new TextDecoder().decode(busy.stderr),
      new RegExp(
        `Cannot listen on 127\\.0\\.0\\.1:${spawned.webPort} \\(the web client; .*--web-port off\\).*in use`,
      ),
    );
  }
  {
    await using spawned = await spawnServer(["--port", "0", "--web-port", "off", ...certDir], {
      env,
    });
    assert.equal(spawned.webPort, 0);
    assert.doesNotMatch(spawned.output(), /web client at/);
  }
  const bad = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "--web-port", "http"],
    env,
    stdin: "null",
  }).output();
  assert.equal(bad.code, 1);
  assert.match(
    new TextDecoder().decode(bad.stderr),
    /Invalid --web-port "http": expected 0 to 65535, or off/,
  );
});

Deno.test("web port refuses a message in too many (empty) fragments", async () => {
  await using srv = await startWeb();
  await using ws = await WsClient.login(srv.webPort, { password: PASSWORD });
  assert.equal((await ws.recv()).success, true);
  const empty = clientFrame(0x1, "", { fin: false });
  const more = clientFrame(0x0, "", { fin: false });
  const flood = new Uint8Array(empty.length + 2000 * more.length);
  flood.set(empty);
  for (let i = 0; i < 2000; i++) flood.set(more, empty.length + i * more.length);
  await ws.write(flood);
  const error = await ws.recv();
  assert.equal(error.code, "frame_too_large");
  assert.match(error.error as string, /1024 fragments/);
  assert.equal(await ws.closed(), 1000);
});

Deno.test("web port answers one plain request per connection, so pipelined requests cannot pile up", async () => {
  await using srv = await startWeb();
  await using http = await WsClient.connect(srv.webPort);
  const one = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  await http.write(new TextEncoder().encode(one.repeat(200)));
  const answer = await http.readHttp();
  assert.equal(answer.status, 200);
  assert.equal(answer.headers.get("connection"), "close");
  // Nothing else: the rest of the pipeline is never read, and the connection is closed.
  assert.equal(await http.closed(), -1);
  // An upgrade after a plain request on the same connection is not served either.
  await using twice = await WsClient.connect(srv.webPort);
  await twice.write(new TextEncoder().encode(one));
  const upgrade = await twice.upgrade();
  assert.equal(upgrade.status, 200); // the answer to the GET; the upgrade is never read
  assert.equal(await twice.closed(), -1);
});

Deno.test("web port holds a connection over a cap no longer than the close grace", async () => {
  await using srv = await startWeb({ limits: { maxPerIp: 1, authTimeoutMs: 10_000 } });
  await using held = await WsClient.login(srv.webPort, { password: PASSWORD });
  assert.equal((await held.recv()).success, true);
  await using silent = await WsClient.connect(srv.webPort); // over the cap, asks nothing
  const started = Date.now();
  assert.equal(await silent.closed(5000), -1);
  assert.ok(Date.now() - started < 3500, `held ${Date.now() - started} ms`);
  assert.equal(srv.server.stats().refusing, 0);
});
