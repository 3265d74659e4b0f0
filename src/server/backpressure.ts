/**
 * Stopping and restarting the reads of a `node:tls` socket at the TCP level, so that a paused
 * sender's own writes block (TCP backpressure) instead of piling up in the server's memory.
 *
 * Deno 2.9's `node:tls` `pause()` only stops delivering decrypted data to JavaScript: its TLS
 * wrap keeps reading the TCP socket and buffers whatever arrives (checked on Deno 2.9.6: a paused
 * socket took in 200 MB). Its own source says so (`ext/node/ops/tls_wrap.rs`, `read_stop`: "the
 * TCP socket keeps receiving ... Properly plumbing a native uv_read_stop through TLSWrap is
 * deferred"). The TCP handle under the TLS wrap does stop, so this module calls `readStop()` /
 * `readStart()` on it. That handle is Deno's internal `_handle._nativeTcpHandle`: if a later Deno
 * drops it, these functions fall back to `pause()`/`resume()` and {@link hasTcpBackpressure}
 * says so (the server logs it, and `tests/flow_test.ts` fails, so an upgrade cannot lose it
 * silently).
 *
 * @module
 */

/** The internal TCP handle of a Deno `node:tls` socket, if it has one. */
interface TcpHandle {
  readStart(): number;
  readStop(): number;
}

/** The parts of a `node:tls` socket this module uses. */
export interface ReadableSocket {
  pause(): unknown;
  resume(): unknown;
}

function tcpHandle(socket: ReadableSocket): TcpHandle | undefined {
  // deno-lint-ignore no-explicit-any
  const handle = (socket as any)._handle?._nativeTcpHandle;
  return typeof handle?.readStop === "function" && typeof handle?.readStart === "function"
    ? handle
    : undefined;
}

/** Whether reads of `socket` can be stopped at the TCP level (see the module doc). */
export function hasTcpBackpressure(socket: ReadableSocket): boolean {
  return tcpHandle(socket) !== undefined;
}

/** Stops reading from the peer: its data stays in the kernel, and then in the peer. */
export function stopReading(socket: ReadableSocket): void {
  const handle = tcpHandle(socket);
  if (handle) handle.readStop();
  else socket.pause();
}

/** Reads from the peer again after {@link stopReading}. */
export function startReading(socket: ReadableSocket): void {
  const handle = tcpHandle(socket);
  if (handle) handle.readStart();
  else socket.resume();
}
