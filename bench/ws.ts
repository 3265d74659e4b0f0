/**
 * The WebSocket side of the load generator (RFC 6455, client role), lean enough for hundreds of
 * clients in one process: the upgrade request and its answer, masked client text frames (a fresh
 * mask key per frame, as section 5.3 requires), and the header of a server frame (unmasked,
 * 7-, 16- or 64-bit length). The read loop itself is {@link BenchClient}'s (`load.ts`); nothing
 * here allocates per received frame.
 *
 * @module
 */
import { createHash } from "node:crypto";

/** Opcodes the bench client uses (RFC 6455 section 5.2). */
export const OP_TEXT = 0x1;
export const OP_CLOSE = 0x8;
export const OP_PING = 0x9;
export const OP_PONG = 0xa;

/** The GUID of RFC 6455 section 1.3. */
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const ASCII = new TextEncoder();

/** Bytes of a masked client frame's header (mask key included) for a payload of `length`. */
export function maskedHeaderSize(length: number): number {
  return (length < 126 ? 2 : length < 65536 ? 4 : 10) + 4;
}

/**
 * Writes the header of a masked client frame (`fin` set) into `out` at 0, mask key included,
 * and returns where the payload goes. The key is left as zeros: {@link maskInto} writes it.
 */
export function writeMaskedHeader(out: Uint8Array, op: number, length: number): number {
  out[0] = 0x80 | op;
  if (length < 126) {
    out[1] = 0x80 | length;
    return 2 + 4;
  }
  if (length < 65536) {
    out[1] = 0x80 | 126;
    out[2] = length >>> 8;
    out[3] = length & 0xff;
    return 4 + 4;
  }
  out[1] = 0x80 | 127;
  out[2] =
    out[3] =
    out[4] =
    out[5] =
      0;
  out[6] = length >>> 24;
  out[7] = (length >>> 16) & 0xff;
  out[8] = (length >>> 8) & 0xff;
  out[9] = length & 0xff;
  return 10 + 4;
}

/**
 * Draws a fresh mask key into `frame[payloadAt - 4 .. payloadAt)` and writes `payload` masked
 * with it at `payloadAt`. (`Math.random`, not a CSPRNG: the key only has to vary per frame here;
 * its unpredictability protects proxies from browser scripts, which this client is not.)
 */
export function maskInto(frame: Uint8Array, payloadAt: number, payload: Uint8Array): void {
  const key = (Math.random() * 0x1_0000_0000) >>> 0;
  const k0 = key >>> 24, k1 = (key >>> 16) & 0xff, k2 = (key >>> 8) & 0xff, k3 = key & 0xff;
  frame[payloadAt - 4] = k0;
  frame[payloadAt - 3] = k1;
  frame[payloadAt - 2] = k2;
  frame[payloadAt - 1] = k3;
  const n = payload.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    frame[payloadAt + i] = payload[i] ^ k0;
    frame[payloadAt + i + 1] = payload[i + 1] ^ k1;
    frame[payloadAt + i + 2] = payload[i + 2] ^ k2;
    frame[payloadAt + i + 3] = payload[i + 3] ^ k3;
  }
  for (; i < n; i++) frame[payloadAt + i] = payload[i] ^ ((key >>> (24 - 8 * (i & 3))) & 0xff);
}

/** One masked client frame (`fin` set) holding `payload`. */
export function maskedFrame(op: number, payload: Uint8Array): Uint8Array {
  const frame = new Uint8Array(maskedHeaderSize(payload.length) + payload.length);
  maskInto(frame, writeMaskedHeader(frame, op, payload.length), payload);
  return frame;
}

/** An upgrade request for `/ws` on `host:port` (no `Origin`: not a browser), and its key. */
export function upgradeRequest(host: string, port: number): { bytes: Uint8Array; key: string } {
  const key = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(16))));
  const authority = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  const text = `GET /ws HTTP/1.1\r\nHost: ${authority}\r\nUpgrade: websocket\r\n` +
    `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`;
  return { bytes: ASCII.encode(text), key };
}

/** The `Sec-WebSocket-Accept` a server must answer to `key`. */
export function expectedAccept(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** Where the blank line ending an HTTP head starts in `buf[0..end)`, or -1. */
export function headEnd(buf: Uint8Array, end: number): number {
  for (let i = buf.indexOf(13); i >= 0 && i + 3 < end; i = buf.indexOf(13, i + 1)) {
    if (buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}

/**
 * Checks the answer to an upgrade request (`head`: its text up to the blank line): `null` if it
 * is a 101 with the right `Sec-WebSocket-Accept`, else why not.
 */
export function checkUpgrade(head: string, key: string): string | null {
  const [status, ...lines] = head.split("\r\n");
  if (!/^HTTP\/1\.1 101 /.test(status)) return `upgrade refused: ${status}`;
  const accept = lines.find((line) => /^sec-websocket-accept:/i.test(line));
  if (accept?.slice(accept.indexOf(":") + 1).trim() !== expectedAccept(key)) {
    return "upgrade answered without the right Sec-WebSocket-Accept";
  }
  return null;
}

/**
 * The header of the server frame at `buf[at]` (`buf[at..end)` holding what has arrived):
 * writes `[opcode | fin << 4, payload start, payload length]` into `out` and returns true, or
 * returns false if the header is not complete yet.
 *
 * @throws {RangeError} for a masked server frame or a length past 2^53
 */
export function serverFrameHeader(
  buf: Uint8Array,
  at: number,
  end: number,
  out: Float64Array,
): boolean {
  if (end - at < 2) return false;
  const b1 = buf[at + 1];
  if ((b1 & 0x80) !== 0) throw new RangeError("The server sent a masked frame");
  let length = b1 & 0x7f;
  let start = at + 2;
  if (length === 126) {
    if (end - at < 4) return false;
    length = (buf[at + 2] << 8) | buf[at + 3];
    start = at + 4;
  } else if (length === 127) {
    if (end - at < 10) return false;
    const high = ((buf[at + 2] << 24) | (buf[at + 3] << 16) | (buf[at + 4] << 8) | buf[at + 5]) >>>
      0;
    const low = ((buf[at + 6] << 24) | (buf[at + 7] << 16) | (buf[at + 8] << 8) | buf[at + 9]) >>>
      0;
    if (high >= 0x20_0000) throw new RangeError("Frame length past 2^53");
    length = high * 0x1_0000_0000 + low;
    start = at + 10;
  }
  out[0] = (buf[at] & 0x0f) | ((buf[at] & 0x80) >>> 3);
  out[1] = start;
  out[2] = length;
  return true;
}
