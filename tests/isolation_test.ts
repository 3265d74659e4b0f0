import assert from "node:assert/strict";
import net from "node:net";
import { encodeFrame } from "../src/protocol/mod.ts";
import { PASSWORD, startServer, testCerts, TestClient, waitFor } from "./_helpers.ts";

/** Open file descriptors of this process (server and test clients both live here). */
function openFds(): number {
  const out = new Deno.Command("ls", { args: [`/proc/${Deno.pid}/fd`] }).outputSync();
  return new TextDecoder().decode(out.stdout).trim().split("\n").length;
}

/** The first bytes of a TLS record carrying a ClientHello, and no more. */
const HALF_HELLO = new Uint8Array([0x16, 0x03, 0x01, 0x01, 0x00, 0x01]);

/**
 * Opens `count` TCP connections from `localAddress` that send nothing (or half a ClientHello);
 * resolves each `closed` promise when the server closes that connection.
 */
async function silentSockets(
  port: number,
  count: number,
  options: { localAddress: string; halfHello?: (i: number) => boolean },
): Promise<{ sockets: net.Socket[]; closed: Promise<void>[] }> {
  const sockets: net.Socket[] = [];
  const closed: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const socket = net.connect({ host: "127.0.0.1", port, localAddress: options.localAddress });
    socket.on("error", () => {});
    closed.push(new Promise((resolve) => socket.once("close", () => resolve())));
    socket.on("data", () => {}); // read, so the peer's close is seen
    await new Promise<void>((resolve) => {
      socket.once("connect", resolve);
      socket.once("close", resolve);
    });
    if (options.halfHello?.(i)) socket.write(HALF_HELLO);
    sockets.push(socket);
  }
  return { sockets, closed };
}

Deno.test("ChatServer drops a client that never reads while two others receive every message", async () => {
  await using srv = await startServer({ limits: { rate: 0, maxSendQueue: 256 * 1024 } });
  const { cert } = await testCerts();
  // Logs in, then never reads again: the kernel buffers fill, then the outbox, then it is dropped.
  using stalled = await Deno.connectTls({ hostname: "127.0.0.1", port: srv.port, caCerts: [cert] });
  await stalled.write(encodeFrame({ type: "auth", password: PASSWORD }));
  await using sender = (await TestClient.login(srv.port)).client;
  await using r1 = (await TestClient.login(srv.port)).client;
  await using r2 = (await TestClient.login(srv.port)).client;
  assert.ok(await waitFor(() => srv.server.stats().clients === 4));

  const content = "x".repeat(16 * 1024);
  const total = 1600; // 25 MiB to each receiver: far past any socket buffer plus the queue limit
  const window = 8; // the honest receivers keep up; only the stalled one falls behind
  const received = [0, 0];
  for (let i = 0; i < total; i += window) {
    for (let j = i; j < i + window; j++) {
      await sender.send({ type: "message", content: `${j}:${content}` });
    }
    for (const [index, receiver] of [r1, r2].entries()) {
      for (let j = i; j < i + window; j++) {
        assert.equal((await receiver.recv(10_000)).content, `${j}:${content}`);
        received[index]++;
      }
    }
  }
  assert.deepEqual(received, [total, total]);
  assert.ok(
    await waitFor(() => srv.server.stats().stalledReaders === 1),
    "stalled client not dropped",
  );
  assert.equal(srv.server.stats().clients, 3);
});

Deno.test("Idle TCP and TLS connections do not delay a new client's login", async () => {
  await using srv = await startServer({ limits: { maxPerIp: 0 } });
  const { cert } = await testCerts();
  const raw: Deno.TcpConn[] = [];
  const tlsIdle: Deno.TlsConn[] = [];
  try {
    for (let i = 0; i < 50; i++) {
      raw.push(await Deno.connect({ hostname: "127.0.0.1", port: srv.port }));
    }
    for (let i = 0; i < 50; i++) {
      const conn = await Deno.connectTls({
        hostname: "127.0.0.1",
        port: srv.port,
        caCerts: [cert],
      });
      await conn.handshake();
      tlsIdle.push(conn);
    }
    // Raw TCP never sends a ClientHello: if the accept loop waited on handshakes, this login would
    // wait for the 10 s handshake timeout.
    const started = performance.now();
    const { client, reply } = await TestClient.login(srv.port);
    const elapsed = performance.now() - started;
    await client.close();
    assert.equal(reply.success, true);
    assert.ok(elapsed < 3000, `login took ${elapsed.toFixed(0)} ms behind idle connections`);
    assert.ok(await waitFor(() => srv.server.stats().connections === 100));
  } finally {
    for (const conn of [...raw, ...tlsIdle]) conn.close();
  }
});

Deno.test("ChatServer closes 300 idle and half-hello connections from 30 addresses at --handshake-timeout and releases their sockets", async () => {
  await using srv = await startServer({ limits: { handshakeTimeoutMs: 500 } });
  const before = openFds();
  const opened = await Promise.all(
    Array.from({ length: 30 }, (_, a) =>
      silentSockets(srv.port, 10, {
        localAddress: `127.0.1.${a + 1}`,
        halfHello: (i) => i % 2 === 1,
      })),
  );
  const sockets = opened.flatMap((o) => o.sockets);
  try {
    assert.equal(srv.server.stats().sockets, 300);
    const started = performance.now();
    await Promise.all(opened.flatMap((o) => o.closed));
    const elapsed = performance.now() - started;
    assert.ok(elapsed < 5000, `closed after ${Math.round(elapsed)} ms`);
    assert.ok(await waitFor(() => srv.server.stats().sockets === 0));
    assert.equal(srv.server.stats().handshakeTimeouts, 300);
    // The server's 300 descriptors are back: only the test's own client sides are left.
    assert.ok(openFds() <= before + 300 + 5, `${openFds() - before} descriptors more than before`);
    const { client, reply } = await TestClient.login(srv.port);
    await client.close();
    assert.equal(reply.success, true);
  } finally {
    for (const socket of sockets) socket.destroy();
  }
  assert.ok(
    await waitFor(() => openFds() <= before + 5),
    `${openFds() - before} descriptors leaked`,
  );
});

Deno.test("ChatServer counts refused connections and holds no more than the caps allow", async () => {
  await using srv = await startServer({ limits: { maxPerIp: 2, handshakeTimeoutMs: 1000 } });
  const before = openFds();
  let most = 0;
  const watch = setInterval(() => most = Math.max(most, srv.server.stats().sockets), 5);
  const { sockets, closed } = await silentSockets(srv.port, 600, { localAddress: "127.0.2.1" });
  try {
    await Promise.all(closed);
    clearInterval(watch);
    // Two admitted, a few being refused politely; every other one closed at once.
    assert.ok(most <= 2 + 4, `the server held ${most} sockets for one address with --max-per-ip 2`);
    assert.ok(srv.server.stats().rejected >= 598);
    assert.ok(await waitFor(() => srv.server.stats().sockets === 0));
    const { client, reply } = await TestClient.login(srv.port);
    await client.close();
    assert.equal(reply.success, true, "the address's slots were not given back");
  } finally {
    clearInterval(watch);
    for (const socket of sockets) socket.destroy();
  }
  assert.ok(
    await waitFor(() => openFds() <= before + 5),
    `${openFds() - before} descriptors leaked`,
  );
});

Deno.test("ChatServer frees the slot of a peer that leaves during its TLS handshake at once", async () => {
  await using srv = await startServer({ limits: { maxPerIp: 2, handshakeTimeoutMs: 10_000 } });
  for (let i = 0; i < 70; i++) {
    const socket = net.connect({ host: "127.0.0.1", port: srv.port, localAddress: "127.0.3.1" });
    socket.on("error", () => {});
    await new Promise((resolve) => socket.once("connect", resolve));
    if (i % 2 === 1) socket.write(HALF_HELLO);
    socket.destroy();
  }
  // Long before the 10 s handshake timeout, the address has its two slots back.
  assert.ok(await waitFor(() => srv.server.stats().sockets === 0, 2000), "slots held");
  const { sockets } = await silentSockets(srv.port, 2, { localAddress: "127.0.3.1" });
  try {
    assert.ok(await waitFor(() => srv.server.stats().connections === 2));
    assert.equal(srv.server.stats().refusing, 0);
  } finally {
    for (const socket of sockets) socket.destroy();
  }
});

Deno.test("Garbage that is not TLS never crashes the server", async () => {
  await using srv = await startServer();
  for (
    const bytes of [
      new Uint8Array(4096).fill(0x41),
      new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"),
      crypto.getRandomValues(new Uint8Array(1000)),
    ]
  ) {
    using conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
    await conn.write(bytes).catch(() => 0);
    await conn.read(new Uint8Array(1024)).catch(() => null);
  }
  await using a = (await TestClient.login(srv.port)).client;
  await using b = (await TestClient.login(srv.port)).client;
  await a.send({ type: "message", content: "alive" });
  assert.equal((await b.recv()).content, "alive");
  assert.ok(srv.server.stats().handshakeFailures >= 3);
});

Deno.test("A client that disconnects in the middle of a frame is cleaned up", async () => {
  await using srv = await startServer();
  const { client } = await TestClient.login(srv.port);
  const frame = encodeFrame({ type: "message", content: "cut short" });
  await client.sendRaw(frame.subarray(0, 8));
  await client.close();
  assert.ok(await waitFor(() => srv.server.stats().connections === 0));
  assert.equal(srv.server.stats().clients, 0);
});
