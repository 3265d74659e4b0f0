/**
 * The load generator's WebSocket frame code (`bench/ws.ts`) against the server's own framing
 * (`src/web/websocket.ts`): what the bench sends, the server reads; what the server sends, the
 * bench reads, at 7-, 16- and 64-bit lengths.
 *
 * @module
 */
import assert from "node:assert/strict";
import { encodeWebSocketFrame, WebSocketTransport } from "../src/web/websocket.ts";
import {
  checkUpgrade,
  expectedAccept,
  headEnd,
  maskedFrame,
  OP_TEXT,
  serverFrameHeader,
} from "../bench/ws.ts";
import { MessageTemplate, STAMP_LENGTH } from "../bench/load.ts";
import type { TLSSocket } from "node:tls";

const LENGTHS = [1, 125, 126, 65535, 65536, 70_000];

function payload(length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 7 + 3) & 0xff);
}

/** A transport reading `bytes` as if they had arrived on its socket. */
function serverRead(bytes: Uint8Array): Uint8Array | null {
  const socket = { writableLength: 0 } as unknown as TLSSocket;
  return new WebSocketTransport(socket, bytes, { maxFrame: 1 << 20 }).next();
}

Deno.test("bench/ws.ts masked client frames are what the server reads", () => {
  for (const length of LENGTHS) {
    const body = payload(length);
    const frame = maskedFrame(OP_TEXT, body);
    assert.equal(frame[1] & 0x80, 0x80, "masked");
    assert.deepEqual(serverRead(frame), body, `length ${length}`);
  }
});

Deno.test("bench/ws.ts reads the server's frame headers", () => {
  const header = new Float64Array(3);
  for (const length of LENGTHS) {
    const frame = encodeWebSocketFrame(OP_TEXT, payload(length));
    assert.equal(serverFrameHeader(frame, 0, frame.length - length - 1, header), false);
    assert.ok(serverFrameHeader(frame, 0, frame.length, header));
    assert.equal(header[0], OP_TEXT | 0x10, "text, fin");
    assert.equal(header[2], length);
    assert.equal(header[1] + length, frame.length);
  }
  assert.throws(() => serverFrameHeader(maskedFrame(OP_TEXT, payload(3)), 0, 9, header));
});

Deno.test("a web MessageTemplate stamps a fresh masked frame the server reads", () => {
  const template = new MessageTemplate(7, 64, { web: true, ref: true });
  const first = serverRead(template.stamp(1).slice())!;
  const second = serverRead(template.stamp(2).slice())!;
  const text = new TextDecoder().decode(second);
  const message = JSON.parse(text);
  assert.equal(message.type, "message");
  assert.equal(message.content.length, 64);
  assert.equal(message.ref, message.content.slice(0, STAMP_LENGTH));
  assert.match(message.ref, /^~000700000002\d{14}~$/);
  assert.notDeepEqual(first, second);
});

Deno.test("bench/ws.ts checks the upgrade answer", () => {
  const key = "dGhlIHNhbXBsZSBub25jZQ==";
  assert.equal(expectedAccept(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  const ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" +
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
  const bytes = new TextEncoder().encode(ok);
  const end = headEnd(bytes, bytes.length);
  assert.equal(end, ok.length - 4);
  assert.equal(checkUpgrade(ok.slice(0, end), key), null);
  assert.match(checkUpgrade("HTTP/1.1 403 Forbidden", key)!, /403/);
  assert.match(checkUpgrade("HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x", key)!, /Accept/);
});
