/**
 * The browser's transport: RFC 6455 WebSocket framing on the server's own TLS socket, where each
 * text message is one frame body of the TLS protocol.
 *
 * Why not `Deno.serve` and `Deno.upgradeWebSocket`: a `Deno.serve` HTTPS listener keeps a peer
 * that never finishes its TLS handshake for ever (measured on Deno 2.9.6: 20 silent peers still
 * held after 70 s; denoland/deno#3515), so the web port would reopen the hole the TLS port
 * closed; its WebSocket cannot stop reading (no TCP backpressure for a paused sender); and it
 * closes an oversized message with a bare 1009, where the protocol wants `frame_too_large`
 * first. Here both ports share one hardened `node:tls` listener (handshake timeout, connection
 * caps), `node:http` parses the requests, and this module only frames messages: the server side
 * of RFC 6455 without extensions (masked client frames, fragmentation, ping/pong, close).
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { TLSSocket } from "node:tls";
import { HEADER_SIZE, ProtocolError } from "../protocol/mod.ts";
import { SocketTransport, type TransportHandler } from "../server/transport.ts";
import { hasDirectWrites, writeDirect } from "../server/direct_write.ts";

/** The GUID of RFC 6455 section 1.3. */
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`. */
export function acceptKey(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** Whether `key` is a valid `Sec-WebSocket-Key`: base64 of 16 bytes. */
export function isValidKey(key: string | undefined): key is string {
  return key !== undefined && /^[A-Za-z0-9+/]{22}==$/.test(key);
}

const enum Op {
  Continuation = 0x0,
  Text = 0x1,
  Binary = 0x2,
  Close = 0x8,
  Ping = 0x9,
  Pong = 0xa,
}

/** Close codes (RFC 6455 section 7.4.1). */
const NORMAL_CLOSURE = 1000;

const EMPTY = new Uint8Array(0);
/** Most fragments one message may come in (RFC 6455 sets no limit; empty ones cost nothing to send). */
const MAX_FRAGMENTS = 1024;
/** The largest receive buffer an idle connection keeps. */
const KEEP_BUFFER = 4096;

/** A write waiting for the one in flight, and what to tell once it is written. */
interface Waiting {
  data: Uint8Array;
  readonly done?: (error?: Error | null) => void;
}

/** A frame the WebSocket protocol forbids: the connection is closed with the error frame. */
function violation(what: string): ProtocolError {
  return new ProtocolError("invalid_json", `Cannot read WebSocket frame: ${what}`);
}

/** A WebSocket frame header for a server frame (never masked) with a payload of `length` bytes. */
function headerSize(length: number): number {
  return length < 126 ? 2 : length < 65536 ? 4 : 10;
}

function writeHeader(out: Uint8Array, at: number, op: number, length: number): number {
  out[at] = 0x80 | op;
  if (length < 126) {
    out[at + 1] = length;
    return at + 2;
  }
  if (length < 65536) {
    out[at + 1] = 126;
    out[at + 2] = length >>> 8;
    out[at + 3] = length & 0xff;
    return at + 4;
  }
  out[at + 1] = 127;
  out[at + 2] =
    out[at + 3] =
    out[at + 4] =
    out[at + 5] =
      0;
  out[at + 6] = length >>> 24;
  out[at + 7] = (length >>> 16) & 0xff;
  out[at + 8] = (length >>> 8) & 0xff;
  out[at + 9] = length & 0xff;
  return at + 10;
}

/** Encodes one server frame (text, close, pong) on its own. */
export function encodeWebSocketFrame(op: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(headerSize(payload.length) + payload.length);
  out.set(payload, writeHeader(out, 0, op, payload.length));
  return out;
}

/**
 * Converts frames of the TLS protocol (4-byte length + body, back to back, as the outbox writes
 * them) into WebSocket text frames, in one buffer.
 */
export function toWebSocketFrames(data: Uint8Array): Uint8Array {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let size = 0;
  for (let at = 0; at < data.length;) {
    const length = view.getUint32(at);
    size += headerSize(length) + length;
    at += HEADER_SIZE + length;
  }
  const out = new Uint8Array(size);
  let to = 0;
  for (let at = 0; at < data.length;) {
    const length = view.getUint32(at);
    to = writeHeader(out, to, Op.Text, length);
    out.set(data.subarray(at + HEADER_SIZE, at + HEADER_SIZE + length), to);
    to += length;
    at += HEADER_SIZE + length;
  }
  return out;
}

/** The last conversion: the input view, and its WebSocket frames. */
let lastIn: Uint8Array | null = null;
let lastOut: Uint8Array | null = null;

/**
 * {@link toWebSocketFrames}, converted once for every recipient of the same bytes: outboxes write
 * a broadcast's run of the room's arena as the same view for each client, and queued frames are
 * never changed, so the converted frames can be shared too (socket writes do not change them).
 */
function convert(data: Uint8Array): Uint8Array {
  const last = lastIn;
  if (
    last !== null && last.buffer === data.buffer && last.byteOffset === data.byteOffset &&
    last.byteLength === data.byteLength
  ) {
    return lastOut!;
  }
  lastOut = toWebSocketFrames(data);
  lastIn = data;
  return lastOut;
}

/**
 * The session's transport over a WebSocket. Incoming text messages are frame bodies; a message
 * over `maxFrame` (counted from its frame headers, before any of it is buffered) is refused with
 * `frame_too_large`, a binary message or a frame RFC 6455 forbids with `invalid_json`, both
 * closing, exactly as the TLS protocol refuses a bad frame.
 */
export class WebSocketTransport extends SocketTransport {
  #maxFrame: number;
  /** Received bytes not yet parsed, at `#start` up to `#end`. */
  #buf: Uint8Array = EMPTY;
  #start = 0;
  #end = 0;
  /** A fragmented text message so far: its bytes, and how many fragments brought them. */
  #message: Uint8Array = EMPTY;
  #messageSize = 0;
  #fragments = 0;
  #fragmented = false;
  #error: ProtocolError | undefined;
  #closeReceived = false;
  #closeSent = false;
  /** Whether writes can go to the TLS handle directly, below `node:stream` (`direct_write.ts`). */
  #direct: boolean;
  /** A write is in flight: the next ones wait, in order (the handle takes one at a time). */
  #writing = false;
  /**
   * Writes waiting for the one in flight: the outbox's next (it has one write at a time), a pong,
   * the close frame. So a few at most, whatever the peer sends.
   */
  #waiting: Waiting[] | null = null;
  /** The pong among them, if one waits: a newer ping replaces its payload (RFC 6455, 5.5.3). */
  #waitingPong: Waiting | null = null;
  /** `end()` was called while writes were still in flight or waiting. */
  #endAfterWrites = false;

  /**
   * @param socket the TLS socket after a completed upgrade handshake
   * @param head bytes that arrived after the upgrade request
   */
  constructor(socket: TLSSocket, head: Uint8Array, options: { maxFrame: number }) {
    super(socket);
    this.#maxFrame = options.maxFrame;
    this.#direct = hasDirectWrites(socket);
    if (head.length > 0) this.#append(head);
  }

  override attach(handler: TransportHandler): void {
    super.attach(handler);
    // Frames that came with the upgrade request.
    if (this.#end > this.#start) queueMicrotask(() => handler.onReceived());
  }

  protected received(chunk: Uint8Array): void {
    if (this.#closeReceived) return; // nothing may follow a close frame
    this.#append(chunk);
    this.handler.onReceived();
  }

  get partial(): boolean {
    return this.#fragmented || this.#end > this.#start;
  }

  next(): Uint8Array | null {
    if (this.#error) throw this.#error;
    try {
      return this.#parse();
    } catch (error) {
      this.#error = error as ProtocolError;
      this.#buf = EMPTY;
      this.#start = this.#end = 0;
      this.#message = EMPTY;
      throw error;
    }
  }

  write(data: Uint8Array, done: (error?: Error | null) => void): void {
    if (this.#closeSent) {
      queueMicrotask(() => done(null));
      return;
    }
    this.#send(convert(data), done);
  }

  override end(): void {
    if (this.socket.destroyed) return;
    this.#sendClose(NORMAL_CLOSURE);
    // The socket ends once the close frame (and whatever waits before it) is written.
    if (this.#writing) this.#endAfterWrites = true;
    else super.end();
  }

  #sendClose(code: number): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    const payload = new Uint8Array([code >>> 8, code & 0xff]);
    this.#send(encodeWebSocketFrame(Op.Close, payload));
  }

  /**
   * Writes `data` after the writes before it: the outbox has one write in flight at a time, but
   * pongs and the close frame come from here too, and the TLS handle takes one write at a time.
   */
  #send(data: Uint8Array, done?: (error?: Error | null) => void): void {
    if (this.#writing) {
      (this.#waiting ??= []).push({ data, done });
      return;
    }
    this.#writing = true;
    const written = (error?: Error | null) => {
      this.#writing = false;
      // What waits was asked for before anything `done` may write now: it goes first.
      this.#next();
      done?.(error);
    };
    // The upgrade's `101` answer went through `socket.write()`: directly only once it is out.
    if (this.#direct && this.socket.writableLength === 0) writeDirect(this.socket, data, written);
    else this.socket.write(data, written);
  }

  /**
   * Answers a ping. While a write is in flight, one pong waits, answering the newest ping: a
   * flood of pings costs a write or two per read, and no memory, whether the peer reads or not.
   * A pong that cannot be written closes the connection (as a failed write did on the stream).
   */
  #pong(payload: Uint8Array): void {
    const pong = encodeWebSocketFrame(Op.Pong, payload);
    if (this.#waitingPong !== null) {
      this.#waitingPong.data = pong;
      return;
    }
    const queued = this.#writing;
    this.#send(pong, (error) => {
      if (error) this.socket.destroy();
    });
    if (queued) this.#waitingPong = this.#waiting!.at(-1)!;
  }

  #next(): void {
    const waiting = this.#waiting;
    if (waiting !== null && waiting.length > 0) {
      const next = waiting.shift()!;
      if (waiting.length === 0) this.#waiting = null;
      if (next === this.#waitingPong) this.#waitingPong = null;
      this.#send(next.data, next.done);
    } else if (this.#endAfterWrites) {
      this.#endAfterWrites = false;
      super.end();
    }
  }

  #append(chunk: Uint8Array): void {
    const pending = this.#end - this.#start;
    if (this.#end + chunk.length > this.#buf.length) {
      // Moves what is pending to the front, growing (at least doubling) only when it must. A
      // frame announced larger than the limit is refused from its header, so the buffer holds
      // at most one frame's worth beyond what TCP backpressure lets in.
      const size = pending + chunk.length;
      if (size <= this.#buf.length) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        const grown = new Uint8Array(Math.max(size, 2 * this.#buf.length, 1024));
        grown.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = grown;
      }
      this.#start = 0;
      this.#end = pending;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /** Parses frames until a whole text message is complete; handles control frames on the way. */
  #parse(): Uint8Array | null {
    while (true) {
      const buf = this.#buf;
      const at = this.#start;
      const available = this.#end - at;
      if (available < 2) return null;
      const b0 = buf[at];
      const b1 = buf[at + 1];
      const fin = (b0 & 0x80) !== 0;
      const op = b0 & 0x0f;
      if ((b0 & 0x70) !== 0) throw violation("reserved bits set");
      if ((b1 & 0x80) === 0) throw violation("client frames must be masked");
      let length = b1 & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (available < 4) return null;
        length = (buf[at + 2] << 8) | buf[at + 3];
        offset = 4;
      } else if (length === 127) {
        if (available < 10) return null;
        const high = ((buf[at + 2] << 24) | (buf[at + 3] << 16) | (buf[at + 4] << 8) |
          buf[at + 5]) >>> 0;
        const low = ((buf[at + 6] << 24) | (buf[at + 7] << 16) | (buf[at + 8] << 8) |
          buf[at + 9]) >>> 0;
        if (high >= 0x80000000) throw violation("64-bit length with the top bit set");
        length = high * 2 ** 32 + low;
        offset = 10;
      }
      if (op >= Op.Close) {
        if (op > Op.Pong) throw violation(`unknown opcode ${op}`);
        if (!fin || length > 125 || (op === Op.Close && length === 1)) {
          throw violation("bad control frame");
        }
      } else if (op === Op.Binary) {
        throw new ProtocolError("invalid_json", "Cannot accept a binary message: send text");
      } else if (op === Op.Text || op === Op.Continuation) {
        if ((op === Op.Text) === this.#fragmented) throw violation("bad fragmentation");
        // Counted in fragments too: empty fragments would otherwise cost memory for nothing.
        if (this.#fragments >= MAX_FRAGMENTS) {
          throw new ProtocolError(
            "frame_too_large",
            `Cannot accept a message in more than ${MAX_FRAGMENTS} fragments`,
          );
        }
        const total = this.#messageSize + length;
        if (total > this.#maxFrame) {
          throw new ProtocolError(
            "frame_too_large",
            `Cannot accept frame: ${total} bytes exceeds ${this.#maxFrame}`,
          );
        }
      } else {
        throw violation(`unknown opcode ${op}`);
      }
      const size = offset + 4 + length;
      if (available < size) return null;
      const mask = at + offset;
      const payload = buf.subarray(mask + 4, at + size);
      for (let i = 0; i < length; i++) payload[i] ^= buf[mask + (i & 3)];
      this.#start += size;
      if (this.#start === this.#end) {
        this.#start = this.#end = 0;
        // An idle connection keeps a small buffer, not the largest message it ever sent.
        if (this.#buf.length > KEEP_BUFFER) this.#buf = EMPTY;
      }
      switch (op) {
        case Op.Ping:
          // A pong per ping, unless the peer leaves them unread.
          if (!this.#closeSent) this.#pong(payload);
          continue;
        case Op.Pong:
          continue;
        case Op.Close:
          // The peer is done sending: like a TLS client's FIN. The session answers with its
          // own close once its last frames are out.
          this.#closeReceived = true;
          this.#start = this.#end = 0;
          queueMicrotask(() => this.handler.onEnded());
          return null;
      }
      if (!fin || this.#fragmented) {
        // A fragment: collected in one buffer, grown by doubling up to the limit.
        this.#fragmented = true;
        this.#fragments++;
        const size = this.#messageSize + length;
        if (size > this.#message.length) {
          const grown = new Uint8Array(
            Math.min(this.#maxFrame, Math.max(size, 2 * this.#message.length, 256)),
          );
          grown.set(this.#message.subarray(0, this.#messageSize));
          this.#message = grown;
        }
        this.#message.set(payload, this.#messageSize);
        this.#messageSize = size;
        if (!fin) continue;
      }
      let body: Uint8Array;
      if (this.#fragmented) {
        body = this.#message.subarray(0, this.#messageSize);
        this.#message = EMPTY;
        this.#messageSize = 0;
        this.#fragments = 0;
        this.#fragmented = false;
      } else {
        // Copied: the buffer is reused for later frames while the session still holds the body.
        body = payload.slice();
      }
      if (body.length === 0) {
        throw new ProtocolError("empty_frame", "Cannot accept frame: length is 0");
      }
      return body;
    }
  }
}
