/**
 * A transport floor for the memory scenario: a Deno TLS server that completes the handshake and
 * then holds each connection idle, with no application data and no per-connection state of its
 * own, so RSS per connection is what the TLS stack alone costs.
 *
 * ```sh
 * deno run --no-prompt --allow-net --allow-read=DIR bench/floor_server.ts \
 *   --transport node --port 4600 --cert-dir DIR [--handshake-timeout 10]
 * ```
 *
 * - `--transport node`: `node:tls` `createServer({ cert, key, handshakeTimeout })`, a
 *   `tlsClientError` handler that destroys the socket, `setNoDelay(true)` on each connection and
 *   a `data` listener (the stack the server runs on).
 * - `--transport deno`: `Deno.listenTls`, `handshake()`, then one pending `read` per connection
 *   into a buffer shared by all of them (the stack the server ran on before the hardening; it has
 *   no handshake timeout that releases the socket, nor `setNoDelay`).
 *
 * Both relay: whatever bytes one connection sends are written, as they came, to every other
 * connection (a chat server with no parsing, no login and no limits), so the bench's talking
 * scenarios measure what a delivery costs on the stack alone; idle clients send nothing.
 *
 * Prints `floor server listening on PORT` once it accepts connections; runs until killed.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createServer, type TLSSocket } from "node:tls";
import { join } from "node:path";

/** Which TLS stack the floor holds its connections on. */
export type FloorTransport = "node" | "deno";

/**
 * Bytes of a `Deno.listenTls` connection's read buffer: small, because each idle connection holds
 * one while its read is pending (a chat message is about 130 bytes; longer ones take more reads).
 */
const READ_BUFFER = 512;
const HOSTNAME = "127.0.0.1";

/** Serves the `node:tls` floor. */
function serveNode(port: number, cert: string, key: string, handshakeTimeoutMs: number): void {
  const sockets = new Set<TLSSocket>();
  const server = createServer({ cert, key, handshakeTimeout: handshakeTimeoutMs }, (socket) => {
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.on("data", (chunk: Uint8Array) => {
      for (const other of sockets) if (other !== socket) other.write(chunk);
    });
    socket.on("error", () => socket.destroy());
    socket.on("close", () => sockets.delete(socket));
  });
  // Without this handler a socket whose handshake failed or timed out stays open.
  server.on("tlsClientError", (_error, socket) => socket.destroy());
  server.listen(port, HOSTNAME, () => console.log(`floor server listening on ${port}`));
}

/** A `Deno.listenTls` connection and its writes, chained so that they keep their order. */
interface Held {
  conn: Deno.TlsConn;
  writing: Promise<unknown>;
}

const held = new Set<Held>();

async function writeAll(conn: Deno.TlsConn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

/** Completes the handshake, then relays what it reads until the peer closes. */
async function hold(conn: Deno.TlsConn): Promise<void> {
  const self: Held = { conn, writing: Promise.resolve() };
  try {
    await conn.handshake();
    held.add(self);
    // Its own small buffer: reads of many connections may complete before the first of their
    // continuations runs, so one shared buffer would be overwritten under a relay.
    const buffer = new Uint8Array(READ_BUFFER);
    let n: number | null;
    while ((n = await conn.read(buffer)) !== null) {
      const chunk = buffer.slice(0, n);
      for (const other of held) {
        if (other === self) continue;
        other.writing = other.writing.then(() => writeAll(other.conn, chunk)).catch(() => {});
      }
    }
  } catch {
    // A failed handshake or a reset: the connection is over either way.
  } finally {
    held.delete(self);
    try {
      conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** Serves the `Deno.listenTls` floor. */
async function serveDeno(port: number, cert: string, key: string): Promise<void> {
  const listener = Deno.listenTls({ hostname: HOSTNAME, port, cert, key });
  console.log(`floor server listening on ${port}`);
  for await (const conn of listener) hold(conn);
}

/** Parses the command line and serves until killed. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      transport: { type: "string" },
      port: { type: "string" },
      "cert-dir": { type: "string" },
      "handshake-timeout": { type: "string", default: "10" },
    },
    strict: true,
  });
  const transport = values.transport;
  if (transport !== "node" && transport !== "deno") {
    throw new TypeError(`Invalid --transport ${transport}: expected node or deno`);
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new TypeError(`Invalid --port ${values.port}: expected 1 to 65535`);
  }
  const handshakeTimeoutMs = Number(values["handshake-timeout"]) * 1000;
  if (!(handshakeTimeoutMs > 0)) {
    throw new TypeError(`Invalid --handshake-timeout ${values["handshake-timeout"]}`);
  }
  const certDir = values["cert-dir"] ?? "certs";
  const cert = await Deno.readTextFile(join(certDir, "cert.pem"));
  const key = await Deno.readTextFile(join(certDir, "key.pem"));
  if (transport === "node") serveNode(port, cert, key, handshakeTimeoutMs);
  else await serveDeno(port, cert, key);
}

if (import.meta.main) {
  await main(Deno.args);
}
