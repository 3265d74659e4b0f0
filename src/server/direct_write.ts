/**
 * Writing to a `node:tls` socket's TLS handle directly, below `node:stream`.
 *
 * A `socket.write()` in Deno 2.9 passes through the `Writable` state machine, the socket's write
 * generic, a write request, its completion and the `Writable`'s callbacks before and after the
 * native write. The outbox needs none of it: it has at most one write in flight per connection and
 * does its own queueing. At ten thousand clients a broadcast is ten thousand writes, and those
 * layers cost about 8 % of each (on this project's 2-core VM; `BENCHMARKS.md`, "What mattered").
 *
 * The handle is Deno's internal `TLSWrap` (`socket._handle`, `ext/node/ops/tls_wrap.rs`). Its
 * `writeBuffer(req, data)` copies `data`, encrypts it and writes it; it then calls
 * `req.oncomplete(status)` from the event loop, never from within the call (the source says so:
 * "write callbacks never fire synchronously from the write call itself"). A write still in flight
 * when the socket is destroyed completes with an error (`ECANCELED`, as the handle closes); after
 * a peer's reset, with `EPIPE`. It holds one write at a time: a second
 * write before the first completes would replace it. So every write to a socket that uses this
 * module must go through it, one at a time; `socket.end()` is called only once they are done (the
 * session drains its outbox first). The guards `node:stream` kept are kept here: nothing is
 * written after `end()` or `destroy()` (an error, as `socket.write()` gives), and an empty write
 * completes at once (the handle would never complete it).
 *
 * If a later Deno changes the handle, {@link hasDirectWrites} returns `false` and the transport
 * writes through `socket.write()` as before; `tests/direct_write_test.ts` fails, so an upgrade
 * cannot lose it silently.
 *
 * @module
 */

/** The internal TLS handle of a Deno `node:tls` socket. */
interface TlsHandle {
  writeBuffer(req: WriteRequest, data: Uint8Array): number;
  readonly _nativeTcpHandle?: unknown;
}

/** What the handle calls back once a write is done. */
class WriteRequest {
  readonly done: (error?: Error | null) => void;

  constructor(done: (error?: Error | null) => void) {
    this.done = done;
  }

  /** Called by the handle (as `this.oncomplete(status)`) from the event loop. */
  oncomplete(status: number): void {
    this.done(status < 0 ? writeError(status) : null);
  }
}

function writeError(status: number): Error {
  return Object.assign(new Error(`TLS write failed (status ${status})`), { code: "EWRITE" });
}

/** The TLS handle of a `node:tls` socket, if it is the one this module knows. */
function tlsHandle(socket: object): TlsHandle | undefined {
  // deno-lint-ignore no-explicit-any
  const handle = (socket as any)._handle;
  return typeof handle?.writeBuffer === "function" && handle._nativeTcpHandle !== undefined
    ? handle
    : undefined;
}

/**
 * Whether `socket`'s writes can go to its TLS handle directly (see the module doc). Checked once
 * per socket, after its handshake.
 */
export function hasDirectWrites(socket: object): boolean {
  return tlsHandle(socket) !== undefined;
}

/**
 * Writes `data` to `socket`'s TLS handle; `done` is called from the event loop once the bytes
 * have been handed to the kernel, or with an error (also once the socket is destroyed). Only for
 * a socket {@link hasDirectWrites} accepted: one write in flight at a time, and nothing else may
 * write to the socket.
 */
export function writeDirect(
  socket: DirectSocket,
  data: Uint8Array,
  done: (error?: Error | null) => void,
): void {
  if (socket.writableEnded) {
    queueMicrotask(() => done(Object.assign(new Error("write after end"), { code: "EPIPE" })));
    return;
  }
  if (data.byteLength === 0) {
    queueMicrotask(() => done(null));
    return;
  }
  // The handle goes when the socket is destroyed. (It was checked by hasDirectWrites: a check
  // per write cost 1 % of the server's CPU at ten thousand clients.)
  // deno-lint-ignore no-explicit-any
  const handle: TlsHandle | null = (socket as any)._handle;
  const status = handle ? handle.writeBuffer(new WriteRequest(done), data) : -1;
  if (status !== 0) queueMicrotask(() => done(writeError(status)));
}

/** What {@link writeDirect} reads of a socket besides its handle. */
export interface DirectSocket {
  /** `end()` was called: nothing more may be written. */
  readonly writableEnded: boolean;
}
