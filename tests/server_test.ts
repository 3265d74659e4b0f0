import assert from "node:assert/strict";
import net from "node:net";
import tls from "node:tls";
import { encodeFrame, FrameDecoder } from "../src/protocol/mod.ts";
import { ChatServer } from "../src/server/server.ts";
import {
  type Frame,
  lengthPrefix,
  PASSWORD,
  startServer,
  testCerts,
  TestClient,
} from "./_helpers.ts";

/** Logs in through node:tls from a chosen loopback source address; returns the replies. */
async function loginFrom(
  localAddress: string,
  port: number,
  password: string,
): Promise<{ replies: Frame[]; closed: boolean }> {
  const { cert } = await testCerts();
  const replies: Frame[] = [];
  const decoder = new FrameDecoder();
  const { promise, resolve } = Promise.withResolvers<{ replies: Frame[]; closed: boolean }>();
  const tcp = net.connect({ host: "127.0.0.1", port, localAddress });
  const socket = tls.connect({
    socket: tcp,
    ca: cert,
    servername: "localhost",
  }, () => socket.write(encodeFrame({ type: "auth", password })));
  const timer = setTimeout(() => {
    socket.destroy();
    resolve({ replies, closed: false });
  }, 5000);
  socket.on("data", (chunk: Uint8Array) => {
    for (const body of decoder.push(chunk)) {
      replies.push(JSON.parse(new TextDecoder().decode(body)));
    }
    if (replies.length > 0 && replies[0].success === true) {
      clearTimeout(timer);
      socket.destroy();
      resolve({ replies, closed: false });
    }
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    clearTimeout(timer);
    resolve({ replies, closed: true });
  });
  return promise;
}

Deno.test("ChatServer accepts the right password with the seed's exact reply", async () => {
  await using srv = await startServer();
  const { client, reply } = await TestClient.login(srv.port);
  await using _ = client;
  assert.deepEqual(reply, { success: true, type: "auth_result" });
  assert.equal(srv.server.stats().clients, 1);
});

Deno.test("ChatServer answers a wrong password with the seed's reply, then closes", async () => {
  await using srv = await startServer();
  const { client, reply } = await TestClient.login(srv.port, "wrong");
  await using _ = client;
  assert.deepEqual(reply, { error: "Invalid password", success: false, type: "auth_result" });
  assert.ok(await client.waitClosed(), "connection stays open after a wrong password");
  assert.equal(srv.server.stats().authFailures, 1);
});

Deno.test("ChatServer ignores extra auth fields such as the seed's username", async () => {
  await using srv = await startServer();
  await using client = await TestClient.connect(srv.port);
  await client.send({ type: "auth", password: PASSWORD, username: "alice" });
  assert.deepEqual(await client.recv(), { success: true, type: "auth_result" });
});

Deno.test("ChatServer broadcasts to every other client with sender_ip, never to the sender", async () => {
  await using srv = await startServer();
  await using a = (await TestClient.login(srv.port)).client;
  await using b = (await TestClient.login(srv.port)).client;
  await using c = (await TestClient.login(srv.port)).client;
  await a.send({ type: "message", content: "foo", sender_ip: "6.6.6.6" });
  await b.send({ type: "message", content: "bar", sender: "bob" });
  assert.deepEqual(await c.recv(), {
    content: "foo",
    sender: "anon",
    sender_ip: "127.0.0.1",
    type: "message",
  });
  assert.deepEqual(await c.recv(), {
    content: "bar",
    sender: "bob",
    sender_ip: "127.0.0.1",
    type: "message",
  });
  assert.equal((await b.recv()).content, "foo");
  assert.equal((await a.recv()).content, "bar");
  assert.equal(await a.tryRecv(200), null, "the sender got its own message back");
  assert.equal(await b.tryRecv(0), null);
});

Deno.test("ChatServer delivers one sender's 1000 messages in order to each receiver", async () => {
  await using srv = await startServer({ limits: { rate: 0 } });
  await using sender = (await TestClient.login(srv.port)).client;
  await using r1 = (await TestClient.login(srv.port)).client;
  await using r2 = (await TestClient.login(srv.port)).client;
  for (let i = 0; i < 1000; i++) await sender.send({ type: "message", content: `m${i}` });
  for (const receiver of [r1, r2]) {
    for (let i = 0; i < 1000; i++) assert.equal((await receiver.recv()).content, `m${i}`);
  }
  assert.equal(srv.server.stats().deliveries, 2000);
});

Deno.test("ChatServer delivers a message just over max_frame once sender_ip is added", async () => {
  await using srv = await startServer({ limits: { maxFrame: 1000 } });
  await using a = (await TestClient.login(srv.port)).client;
  await using b = (await TestClient.login(srv.port)).client;
  const content = "x".repeat(1000 - '{"type":"message","content":""}'.length);
  const frame = encodeFrame({ type: "message", content });
  assert.equal(frame.length - 4, 1000);
  await a.sendRaw(frame);
  const got = await b.recv();
  assert.equal(got.content, content);
});

/** Expects an error frame with `code`, then whether the server closed the connection. */
async function expectError(client: TestClient, code: string, closes: boolean): Promise<void> {
  const frame = await client.recv();
  assert.equal(frame.type, "error");
  assert.equal(frame.code, code);
  assert.equal(typeof frame.error, "string");
  if (closes) {
    assert.ok(await client.waitClosed(), `${code}: connection left open`);
  } else {
    assert.equal(client.closed, false, `${code}: connection closed`);
  }
}

Deno.test("ChatServer answers each bad frame with its error code and closes", async (t) => {
  await using srv = await startServer({ limits: { maxFrame: 1024 } });
  const utf8 = new TextEncoder();
  const cases: [string, Uint8Array, string][] = [
    ["length above max_frame", lengthPrefix(1025), "frame_too_large"],
    ["length 2^32-1", lengthPrefix(2 ** 32 - 1), "frame_too_large"],
    ["length 0", lengthPrefix(0), "empty_frame"],
    ["invalid UTF-8", new Uint8Array([0, 0, 0, 3, 0x7b, 0xc3, 0x7d]), "invalid_json"],
    ["invalid JSON", encodeRaw(utf8.encode("{not json")), "invalid_json"],
    ["a JSON array", encodeRaw(utf8.encode("[1,2]")), "not_an_object"],
    ["a JSON string", encodeRaw(utf8.encode('"auth"')), "not_an_object"],
    ["null", encodeRaw(utf8.encode("null")), "not_an_object"],
    ["a message before auth", encodeFrame({ type: "message", content: "hi" }), "auth_required"],
    ["auth without a password", encodeFrame({ type: "auth" }), "auth_required"],
    ["auth with a numeric password", encodeFrame({ type: "auth", password: 1 }), "auth_required"],
  ];
  for (const [name, bytes, code] of cases) {
    await t.step(`before auth: ${name}`, async () => {
      await using client = await TestClient.connect(srv.port);
      await client.sendRaw(bytes);
      await expectError(client, code, true);
    });
  }
  for (const [name, bytes, code] of cases.slice(0, 8)) {
    await t.step(`after auth: ${name}`, async () => {
      await using client = (await TestClient.login(srv.port)).client;
      await client.sendRaw(bytes);
      await expectError(client, code, true);
    });
  }
  await t.step("the server still serves chat afterwards", async () => {
    await using a = (await TestClient.login(srv.port)).client;
    await using b = (await TestClient.login(srv.port)).client;
    await a.send({ type: "message", content: "still here" });
    assert.equal((await b.recv()).content, "still here");
  });
});

function encodeRaw(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + body.length);
  out.set(lengthPrefix(body.length));
  out.set(body, 4);
  return out;
}

Deno.test("ChatServer keeps the connection open after a recoverable error", async (t) => {
  await using srv = await startServer();
  await using a = (await TestClient.login(srv.port)).client;
  await using b = (await TestClient.login(srv.port)).client;
  const cases: [string, unknown, string][] = [
    ["a second auth", { type: "auth", password: PASSWORD }, "already_authenticated"],
    ["an unknown type", { type: "ping" }, "unknown_type"],
    ["a missing type", { content: "x" }, "unknown_type"],
    ["missing content", { type: "message" }, "invalid_message"],
    ["empty content", { type: "message", content: "" }, "invalid_message"],
    ["numeric content", { type: "message", content: 42 }, "invalid_message"],
    ["a numeric sender", { type: "message", content: "x", sender: 1 }, "invalid_message"],
    [
      "a 10 KB sender",
      { type: "message", content: "x", sender: "s".repeat(10_000) },
      "invalid_message",
    ],
    [
      "a sender with a newline",
      { type: "message", content: "x", sender: "a\nb" },
      "invalid_message",
    ],
  ];
  for (const [name, value, code] of cases) {
    await t.step(name, async () => {
      await a.send(value);
      await expectError(a, code, false);
    });
  }
  await t.step("and the client can still chat", async () => {
    await a.send({ type: "message", content: "after errors", sender: "alice" });
    const got = await b.recv();
    assert.equal(got.content, "after errors");
    assert.equal(got.sender, "alice");
    assert.equal(b.pending, 0, "an invalid message was broadcast");
  });
});

Deno.test("ChatServer drops messages past the rate limit with one rate_limited notice per token period", async () => {
  await using srv = await startServer({ limits: { rate: 0.1, burst: 3 } });
  await using a = (await TestClient.login(srv.port)).client;
  await using b = (await TestClient.login(srv.port)).client;
  for (let i = 0; i < 6; i++) await a.send({ type: "message", content: `m${i}` });
  for (let i = 0; i < 3; i++) assert.equal((await b.recv()).content, `m${i}`);
  // Three frames dropped, one notice: a flood cannot make the server write one error per frame.
  await expectError(a, "rate_limited", false);
  assert.equal(await a.tryRecv(300), null, "a second notice within one token period (10 s)");
  assert.equal(await b.tryRecv(0), null, "a rate-limited message was delivered");
  // Invalid frames cost a token too (taken before the frame is parsed): a flood of them is limited.
  await a.send({ type: "ping" });
  assert.equal(await a.tryRecv(300), null, "an unknown_type reply for a frame without a token");
  assert.equal(srv.server.stats().errors.rate_limited, 4, "dropped frames are all counted");
  assert.equal(srv.server.stats().errors.unknown_type, undefined);
});

Deno.test("ChatServer closes a connection that does not authenticate in time", async (t) => {
  await using srv = await startServer({ limits: { authTimeoutMs: 200 } });
  await t.step("silent after the handshake", async () => {
    await using client = await TestClient.connect(srv.port);
    await expectError(client, "auth_timeout", true);
  });
  await t.step("half an auth frame", async () => {
    await using client = await TestClient.connect(srv.port);
    const frame = encodeFrame({ type: "auth", password: PASSWORD });
    await client.sendRaw(frame.subarray(0, 10));
    await expectError(client, "auth_timeout", true);
  });
  await t.step("a logged-in client is not timed out", async () => {
    await using client = (await TestClient.login(srv.port)).client;
    assert.equal(await client.tryRecv(400), null);
    assert.equal(client.closed, false);
  });
});

Deno.test("ChatServer locks out an IP after repeated failures while another IP logs in", async () => {
  await using srv = await startServer({ limits: { maxAuthFailures: 3, lockoutMs: 60_000 } });
  for (let i = 0; i < 3; i++) {
    const { replies, closed } = await loginFrom("127.0.0.2", srv.port, `guess${i}`);
    assert.deepEqual(replies, [{ error: "Invalid password", success: false, type: "auth_result" }]);
    assert.ok(closed);
  }
  const locked = await loginFrom("127.0.0.2", srv.port, PASSWORD);
  assert.equal(locked.replies.length, 1);
  assert.equal(locked.replies[0].code, "locked_out", "the right password was checked while locked");
  assert.ok(locked.closed);
  const other = await loginFrom("127.0.0.3", srv.port, PASSWORD);
  assert.deepEqual(other.replies, [{ success: true, type: "auth_result" }]);
  const { reply, client } = await TestClient.login(srv.port);
  await client.close();
  assert.equal(reply.success, true);
});

Deno.test("ChatServer lifts a lockout once the window has passed", async () => {
  let now = 1_000_000;
  await using srv = await startServer({
    limits: { maxAuthFailures: 2, lockoutMs: 60_000 },
    now: () => now,
  });
  for (let i = 0; i < 2; i++) await loginFrom("127.0.0.4", srv.port, "bad");
  assert.equal((await loginFrom("127.0.0.4", srv.port, PASSWORD)).replies[0].code, "locked_out");
  now += 60_001;
  assert.equal((await loginFrom("127.0.0.4", srv.port, PASSWORD)).replies[0].success, true);
});

Deno.test("ChatServer's lockout and rate limit ignore steps of the wall clock", async () => {
  // Date.now is replaced before the server starts, so a server that read the wall clock (even
  // through a reference taken at start) would see the step.
  const wallClock = Date.now;
  let step = 0;
  Date.now = () => wallClock() + step;
  try {
    await using srv = await startServer({
      limits: { maxAuthFailures: 2, lockoutMs: 60_000, rate: 0.1, burst: 1 },
    });
    await using a = (await TestClient.login(srv.port)).client;
    await using b = (await TestClient.login(srv.port)).client;
    for (let i = 0; i < 2; i++) await loginFrom("127.0.0.5", srv.port, "bad");
    assert.equal((await loginFrom("127.0.0.5", srv.port, PASSWORD)).replies[0].code, "locked_out");
    await a.send({ type: "message", content: "one" });
    assert.equal((await b.recv()).content, "one");
    step = 2 * 3600_000; // e.g. NTP steps the clock two hours ahead
    const after = await loginFrom("127.0.0.5", srv.port, PASSWORD);
    assert.equal(after.replies[0].code, "locked_out", "a clock step lifted the lockout");
    await a.send({ type: "message", content: "two" });
    assert.equal((await a.recv()).code, "rate_limited", "a clock step refilled the bucket");
    assert.equal(await b.tryRecv(200), null);
  } finally {
    Date.now = wallClock;
  }
});

Deno.test("ChatServer refuses connections past the global and per-IP caps", async (t) => {
  await t.step("server_full", async () => {
    await using srv = await startServer({ limits: { maxClients: 2 } });
    await using _a = (await TestClient.login(srv.port)).client;
    await using _b = await TestClient.connect(srv.port);
    await using c = await TestClient.connect(srv.port);
    await expectError(c, "server_full", true);
    assert.equal(srv.server.stats().rejected, 1);
  });
  await t.step("too_many_connections", async () => {
    await using srv = await startServer({ limits: { maxPerIp: 2 } });
    await using _a = (await TestClient.login(srv.port)).client;
    await using _b = (await TestClient.login(srv.port)).client;
    await using c = await TestClient.connect(srv.port);
    await expectError(c, "too_many_connections", true);
    const other = await loginFrom("127.0.0.5", srv.port, PASSWORD);
    assert.equal(other.replies[0].success, true, "another IP is refused too");
  });
  await t.step("a freed slot can be used again", async () => {
    await using srv = await startServer({ limits: { maxClients: 1 } });
    const first = (await TestClient.login(srv.port)).client;
    await first.close();
    let reply: Frame | undefined;
    for (let i = 0; i < 50 && reply?.success !== true; i++) {
      const attempt = await TestClient.login(srv.port);
      reply = attempt.reply;
      await attempt.client.close();
    }
    assert.equal(reply?.success, true);
  });
});

Deno.test("ChatServer serves a client that half-closes after sending: its message and replies go out", async () => {
  await using srv = await startServer();
  await using b = (await TestClient.login(srv.port)).client;
  const a = await TestClient.connect(srv.port);
  await using _ = a;
  await a.send({ type: "auth", password: PASSWORD });
  await a.send({ type: "message", content: "last words" });
  await a.conn.closeWrite(); // e.g. `printf ... | openssl s_client`: stdin ended
  assert.deepEqual(await a.recv(), { success: true, type: "auth_result" });
  assert.equal((await b.recv()).content, "last words");
  assert.ok(await a.waitClosed(), "the server kept a half-closed connection open");
});

Deno.test("ChatServer tells clients shutting_down and closes them on close()", async () => {
  const srv = await startServer();
  const a = (await TestClient.login(srv.port)).client;
  const b = await TestClient.connect(srv.port);
  await srv.server.close();
  await expectError(a, "shutting_down", true);
  await expectError(b, "shutting_down", true);
  await a.close();
  await b.close();
  await srv.server.close(); // idempotent
});

Deno.test("ChatServer.listen can be retried after the port was busy, and still knows the password", async () => {
  const { cert, key } = await testCerts();
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  const server = new ChatServer({ hostname: "127.0.0.1", port, cert, key, password: PASSWORD });
  await using _ = server;
  await assert.rejects(server.listen(), (error: Error & { code?: string }) => {
    assert.equal(error.code, "EADDRINUSE");
    return true;
  });
  taken.close();
  assert.equal((await server.listen()).port, port);
  const { client, reply } = await TestClient.login(port);
  await client.close();
  assert.equal(reply.success, true);
});

Deno.test({
  name: "ChatServer.listen rejects without network permission instead of throwing later",
  permissions: { read: true, write: true, run: true, env: true, net: false },
  async fn() {
    const { cert, key } = await testCerts();
    const server = new ChatServer({ port: 0, cert, key, password: PASSWORD });
    try {
      // node:net would throw this from a later tick, where nothing can catch it.
      await assert.rejects(server.listen(), Deno.errors.NotCapable);
    } finally {
      await server.close();
    }
  },
});

Deno.test("ChatServer.close() while listen() is starting leaves no listener behind", async () => {
  const { cert, key } = await testCerts();
  const server = new ChatServer({ port: 0, cert, key, password: PASSWORD });
  const listening = server.listen();
  await assert.rejects(server.listen(), TypeError, "a second listen() while starting");
  await server.close();
  await assert.rejects(listening, TypeError);
  await assert.rejects(server.listen(), TypeError, "listen() after close()");
  assert.throws(() => server.addr, TypeError, "the server is still bound");
});

Deno.test("ChatServer stops when its signal aborts, also while it is starting", async () => {
  const { cert, key } = await testCerts();
  const controller = new AbortController();
  const server = new ChatServer({
    port: 0,
    cert,
    key,
    password: PASSWORD,
    signal: controller.signal,
  });
  const listening = server.listen();
  controller.abort();
  await assert.rejects(listening, TypeError);
  await server.close();
  const aborted = new ChatServer({
    port: 0,
    cert,
    key,
    password: PASSWORD,
    signal: AbortSignal.abort(),
  });
  await assert.rejects(aborted.listen(), TypeError);
});
