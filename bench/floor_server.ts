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
 *   a `data` listener that discards (the stack the server is moving to).
 * - `--transport deno`: `Deno.listenTls`, `handshake()`, then one pending `read` per connection
 *   into a buffer shared by all of them (the stack the server is moving from; it has no handshake
 *   timeout that releases the socket, nor `setNoDelay`).
 *
 * Prints `floor server listening on PORT` once it accepts connections; runs until killed.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createServer } from "node:tls";
import { join } from "node:path";

/** Which TLS stack the floor holds its connections on. */
export type FloorTransport = "node" | "deno";

/** Every floor connection reads into this one buffer: idle clients send nothing, and it is discarded. */
const SINK = new Uint8Array(16 * 1024);
const HOSTNAME = "127.0.0.1";

/** Serves the `node:tls` floor. */
function serveNode(port: number, cert: string, key: string, handshakeTimeoutMs: number): void {
  const server = createServer({ cert, key, handshakeTimeout: handshakeTimeoutMs }, (socket) => {
    socket.setNoDelay(true);
    socket.on("data", () => {});
    socket.on("error", () => socket.destroy());
  });
  // Without this handler a socket whose handshake failed or timed out stays open.
  server.on("tlsClientError", (_error, socket) => socket.destroy());
  server.listen(port, HOSTNAME, () => console.log(`floor server listening on ${port}`));
}

/** Completes the handshake, then reads (and discards) until the peer closes. */
async function hold(conn: Deno.TlsConn): Promise<void> {
  try {
    await conn.handshake();
    while (await conn.read(SINK) !== null) {
      // Idle clients send nothing; anything else is discarded.
    }
  } catch {
    // A failed handshake or a reset: the connection is over either way.
  } finally {
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
