import assert from "node:assert/strict";
import { encodeFrame } from "../src/protocol.ts";
import { PASSWORD, startServer, testCerts, TestClient, waitFor } from "./helpers.ts";

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
    await waitFor(() => srv.server.stats().slowConsumers === 1),
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

Deno.test("A stalled TLS handshake keeps its slot until the peer leaves and blocks nobody", async (t) => {
  await using srv = await startServer({ limits: { handshakeTimeoutMs: 200, maxPerIp: 0 } });
  const stats = () => srv.server.stats();
  await t.step("a silent peer is timed out but still counted", async () => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
    assert.ok(await waitFor(() => stats().handshakeTimeouts === 1));
    assert.equal(stats().connections, 1, "a socket Deno still holds is not counted");
    const { client, reply } = await TestClient.login(srv.port);
    await client.close();
    assert.equal(reply.success, true);
    conn.close();
    assert.ok(await waitFor(() => stats().connections === 0), "slot not released");
  });
  await t.step("a peer that completes its handshake late is closed at once", async () => {
    const { cert } = await testCerts();
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port: srv.port });
    assert.ok(await waitFor(() => stats().handshakeTimeouts === 2));
    using conn = await Deno.startTls(tcp, { hostname: "127.0.0.1", caCerts: [cert] });
    await conn.write(encodeFrame({ type: "auth", password: PASSWORD })).catch(() => 0);
    const n = await conn.read(new Uint8Array(64)).catch(() => null);
    assert.equal(n, null, "a late handshake was served");
    assert.ok(await waitFor(() => stats().connections === 0));
  });
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
