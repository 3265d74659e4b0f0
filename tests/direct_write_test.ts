/**
 * Writes below `node:stream` (`src/server/direct_write.ts`) on real `node:tls` sockets: this
 * Deno's TLS sockets have the handle the module knows (so an upgrade that drops it fails here,
 * not silently in the benchmark), and what is written arrives whole and in order, completes from
 * the event loop, fails once the socket is gone, and ends cleanly.
 *
 * @module
 */
import assert from "node:assert/strict";
import tls from "node:tls";
import type { AddressInfo } from "node:net";
import { hasDirectWrites, writeDirect } from "../src/server/direct_write.ts";
import { concatBytes, testCerts } from "./_helpers.ts";

/** A TLS listener on a free loopback port, and the next socket it accepts (handshake done). */
async function listen(): Promise<
  { port: number; accepted: Promise<tls.TLSSocket>; close: () => Promise<void> }
> {
  const certs = await testCerts();
  const listener = tls.createServer({ cert: certs.cert, key: certs.key });
  const accepted = new Promise<tls.TLSSocket>((resolve) =>
    listener.once("secureConnection", (socket: tls.TLSSocket) => {
      socket.on("error", () => {});
      resolve(socket);
    })
  );
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  const port = (listener.address() as AddressInfo).port;
  return { port, accepted, close: () => new Promise((resolve) => listener.close(() => resolve())) };
}

/** A connected pair: the server's socket (handshake done) and everything the client reads. */
async function tlsPair(): Promise<
  {
    server: tls.TLSSocket;
    received: () => Uint8Array;
    ended: Promise<void>;
  } & AsyncDisposable
> {
  const certs = await testCerts();
  const listener = await listen();
  const client = tls.connect({
    host: "127.0.0.1",
    port: listener.port,
    ca: certs.cert,
    checkServerIdentity: () => undefined,
  });
  const chunks: Uint8Array[] = [];
  client.on("data", (chunk: Uint8Array) => chunks.push(chunk));
  client.on("error", () => {});
  const ended = new Promise<void>((resolve) => client.once("end", resolve));
  const closed = new Promise<void>((resolve) => client.once("close", resolve));
  const server = await listener.accepted;
  const serverClosed = new Promise<void>((resolve) => server.once("close", resolve));
  return {
    server,
    received: () => concatBytes(chunks),
    ended,
    async [Symbol.asyncDispose]() {
      client.destroy();
      server.destroy();
      await Promise.all([closed, serverClosed]);
      await listener.close();
    },
  };
}

/** A direct write; rejects if it fails, completes from within the call, or never completes. */
function write(socket: tls.TLSSocket, data: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    let sync = true;
    const timer = setTimeout(() => reject(new Error("the write never completed")), 5000);
    writeDirect(socket, data, (error) => {
      clearTimeout(timer);
      if (sync) reject(new Error("done was called from within the write"));
      else if (error) reject(error);
      else resolve();
    });
    sync = false;
  });
}

Deno.test("this Deno's node:tls sockets can be written below node:stream", async () => {
  await using pair = await tlsPair();
  assert.ok(
    hasDirectWrites(pair.server),
    "the TLS handle changed: see src/server/direct_write.ts (writes fell back to socket.write)",
  );
});

Deno.test("direct writes arrive whole and in order: views, small and large writes", async () => {
  await using pair = await tlsPair();
  // A buffer whose views are written, as the outbox writes runs of a shared arena chunk.
  const arena = new Uint8Array(64 * 1024);
  for (let i = 0; i < arena.length; i++) arena[i] = (i * 7) & 0xff;
  const expected: Uint8Array[] = [];
  for (let i = 0; i < 2000; i++) {
    const from = (i * 131) % 60_000;
    const view = arena.subarray(from, from + 1 + (i % 500));
    expected.push(view.slice());
    await write(pair.server, view);
  }
  // Larger than what the TLS handle feeds its TLS library at once (48 KiB), with writes after
  // it: its completion must wait for all of it, or the next write would replace the rest.
  const large = new Uint8Array(300 * 1024).map((_, i) => (i * 13) & 0xff);
  for (const data of [large, arena.subarray(5, 9), large.subarray(1000), arena.subarray(0, 1)]) {
    expected.push(data.slice());
    await write(pair.server, data);
  }
  const total = expected.reduce((n, e) => n + e.byteLength, 0);
  const deadline = Date.now() + 10_000;
  while (pair.received().byteLength < total && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const got = pair.received();
  assert.equal(got.byteLength, total);
  let at = 0;
  for (const part of expected) {
    assert.deepEqual(got.subarray(at, at + part.byteLength), part);
    at += part.byteLength;
  }
});

Deno.test("a direct write to a destroyed socket fails instead of hanging", async () => {
  await using pair = await tlsPair();
  await write(pair.server, new Uint8Array([1, 2, 3]));
  pair.server.destroy();
  await assert.rejects(write(pair.server, new Uint8Array([4])), /TLS write failed/);
});

Deno.test("a direct write keeps node:stream's guards: empty writes complete, none after end", async () => {
  await using pair = await tlsPair();
  const bytes = new Uint8Array([1, 2, 3, 4]);
  // An empty view of a buffer that is not empty (the handle itself would never complete it).
  await write(pair.server, bytes.subarray(2, 2));
  await write(pair.server, bytes);
  pair.server.end();
  await assert.rejects(write(pair.server, bytes), /write after end/);
  await pair.ended;
  assert.deepEqual(pair.received(), bytes);
});

Deno.test("a direct write in flight when the socket is destroyed completes, with an error", async () => {
  const certs = await testCerts();
  const listener = await listen();
  // A peer that completes its handshake and then reads nothing: the write stays in flight.
  const peer = await Deno.connectTls({
    hostname: "127.0.0.1",
    port: listener.port,
    caCerts: [certs.cert],
  });
  await peer.handshake();
  const server = await listener.accepted;
  const closed = new Promise((resolve) => server.once("close", resolve));
  let outcome: Error | null | undefined;
  writeDirect(server, new Uint8Array(32 * 1024 * 1024), (error) => outcome = error);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(outcome, undefined, "32 MiB cannot all be in the kernel of an unread connection");
  server.destroy();
  await closed;
  const result = outcome as Error | null | undefined; // (set by the callback)
  assert.ok(result instanceof Error, `completed with ${result}`);
  peer.close();
  await listener.close();
});

Deno.test("a socket written directly ends cleanly: the peer reads everything, then the end", async () => {
  await using pair = await tlsPair();
  const data = new Uint8Array(100_000).map((_, i) => i & 0xff);
  await write(pair.server, data);
  pair.server.end();
  await pair.ended;
  assert.deepEqual(pair.received(), data);
});
