/**
 * Turns Nagle's algorithm off for every connection a listener accepts. `Deno.listenTls` has no
 * such option and `Deno.TlsConn` no `setNoDelay`, so this sets `TCP_NODELAY` on the listening
 * socket through libc (Linux copies it to each accepted socket). It needs `--allow-ffi` and does
 * nothing without it or off Linux. Without it, a small write waits for the peer's delayed ACK
 * (up to 40 ms) whenever earlier data is unacknowledged.
 *
 * @module
 */

const SOL_SOCKET = 1;
const SO_ACCEPTCONN = 30;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const AF_INET = 2;
const AF_INET6 = 10;
/** The listener is opened at startup, so its descriptor is low. */
const MAX_FD = 4096;

/**
 * Sets `TCP_NODELAY` on the listening TCP socket bound to `port`.
 *
 * @returns whether it was set (false without `--allow-ffi`, off Linux, or if not found)
 */
export function setListenerNoDelay(port: number): boolean {
  if (Deno.build.os !== "linux") return false;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return false;
  let libc;
  try {
    libc = Deno.dlopen(
      "libc.so.6",
      {
        setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
        getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
        getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
      } as const,
    );
  } catch {
    return false;
  }
  try {
    const { getsockname, getsockopt, setsockopt } = libc.symbols;
    const addr = new Uint8Array(128);
    const size = new Uint32Array(1);
    const value = new Int32Array(1);
    const one = new Int32Array([1]);
    let set = false;
    for (let fd = 3; fd < MAX_FD; fd++) {
      size[0] = addr.byteLength;
      if (getsockname(fd, addr, new Uint8Array(size.buffer)) !== 0) continue;
      const family = addr[0] | (addr[1] << 8);
      if (family !== AF_INET && family !== AF_INET6) continue;
      if (((addr[2] << 8) | addr[3]) !== port) continue;
      size[0] = 4;
      const listening = getsockopt(
            fd,
            SOL_SOCKET,
            SO_ACCEPTCONN,
            new Uint8Array(value.buffer),
            new Uint8Array(size.buffer),
          ) === 0 && value[0] === 1;
      if (!listening) continue;
      if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, new Uint8Array(one.buffer), 4) === 0) set = true;
    }
    return set;
  } finally {
    libc.close();
  }
}
