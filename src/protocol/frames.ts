/**
 * Framing: a frame is a 4-byte unsigned big-endian length `N` followed by `N` bytes of UTF-8 JSON.
 * {@link FrameDecoder} turns received chunks into frame bodies, rejecting a bad length before any
 * room for the body is allocated; {@link encodeFrame} does the reverse.
 *
 * @module
 */
import { ProtocolError } from "./errors.ts";

/** Default largest incoming frame body, bytes. */
export const DEFAULT_MAX_FRAME = 65536;
/** Largest frame a client accepts from a server (broadcasts may exceed `max_frame`). */
export const CLIENT_MAX_FRAME = 1024 * 1024;
/** Size of the length prefix. */
export const HEADER_SIZE = 4;
const ENCODER = new TextEncoder();

/**
 * Checks a length prefix against the limits.
 *
 * @throws {ProtocolError} `empty_frame` for 0, `frame_too_large` above `maxFrame`.
 */
export function checkFrameLength(length: number, maxFrame: number): void {
  if (length === 0) {
    throw new ProtocolError("empty_frame", "Cannot accept frame: length is 0");
  }
  if (length > maxFrame) {
    throw new ProtocolError(
      "frame_too_large",
      `Cannot accept frame: ${length} bytes exceeds ${maxFrame}`,
    );
  }
}

/** Encodes an already serialised JSON text as one frame (length prefix + UTF-8 body). */
export function encodeJsonFrame(json: string): Uint8Array {
  // Exact size, so a queued frame pins no more memory than it needs: ASCII text (the usual
  // case) is encoded straight into the frame; other text is encoded first, then copied once.
  let out = new Uint8Array(HEADER_SIZE + json.length);
  const { read, written } = ENCODER.encodeInto(json, out.subarray(HEADER_SIZE));
  if (read < json.length || written < json.length) {
    const body = ENCODER.encode(json);
    out = new Uint8Array(HEADER_SIZE + body.length);
    out.set(body, HEADER_SIZE);
  }
  new DataView(out.buffer).setUint32(0, out.length - HEADER_SIZE);
  return out;
}

/** Encodes a value as one frame. */
export function encodeFrame(value: unknown): Uint8Array {
  return encodeJsonFrame(JSON.stringify(value));
}

/**
 * Push-style frame decoder for callers that receive chunks (`node:tls` sockets): feed it chunks
 * with {@link FrameDecoder.feed} and take frames one at a time with {@link FrameDecoder.next}, so
 * a caller can stop between two frames (flow control) and go on later. A bad length is rejected
 * as soon as its 4 header bytes are in, before any room for the body is allocated.
 *
 * A chunk is kept as it is (no copy) until a frame straddles two chunks; then the pending bytes
 * move to a buffer sized for the whole frame, so a frame that trickles in byte by byte costs
 * linear, not quadratic, copying.
 */
export class FrameDecoder {
  #maxFrame: number;
  /** Holds the pending bytes at `#offset`; either a caller's chunk or our own buffer. */
  #buf: Uint8Array = EMPTY;
  #offset = 0;
  #length = 0;
  /** Whether `#buf` is ours (then later chunks may be appended into its free room). */
  #owned = false;
  #error: ProtocolError | undefined;

  /** A decoder that refuses frames larger than `maxFrame` (default {@link DEFAULT_MAX_FRAME}). */
  constructor(options: { maxFrame?: number } = {}) {
    this.#maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
  }

  /** Bytes received and not yet returned as frames. */
  get buffered(): number {
    return this.#length;
  }

  /**
   * Adds a chunk. The decoder keeps a view of it until its bytes are returned, so the caller
   * must not reuse the chunk's memory.
   */
  feed(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.#length === 0) {
      this.#buf = chunk;
      this.#offset = 0;
      this.#length = chunk.length;
      this.#owned = false;
      return;
    }
    const end = this.#offset + this.#length;
    const need = this.#length + chunk.length;
    if (this.#owned && end + chunk.length <= this.#buf.length) {
      this.#buf.set(chunk, end);
      this.#length = need;
      return;
    }
    // At least twice what is pending, so appends cost linear copying however small the chunks;
    // but no more than the frame being completed needs, so a peer that announces a large frame
    // and sends a few bytes pins a few bytes, not `maxFrame`. Views returned earlier keep the old
    // buffer: it is never overwritten.
    let size = Math.max(need, 2 * this.#length, 1024);
    if (this.#length >= HEADER_SIZE) {
      const frame = HEADER_SIZE + this.#peekLength();
      if (need <= frame && frame <= HEADER_SIZE + this.#maxFrame) size = Math.min(size, frame);
    }
    const grown = new Uint8Array(size);
    grown.set(this.#buf.subarray(this.#offset, end));
    grown.set(chunk, this.#length);
    this.#buf = grown;
    this.#offset = 0;
    this.#length = need;
    this.#owned = true;
  }

  /**
   * Returns the next complete frame body, or `null` if more bytes are needed. The body is a view
   * of the received bytes, valid until the caller changes them.
   *
   * @throws {ProtocolError} on a bad length prefix; the decoder then keeps throwing it.
   */
  next(): Uint8Array | null {
    if (this.#error) throw this.#error;
    if (this.#length < HEADER_SIZE) return null;
    const length = this.#peekLength();
    try {
      checkFrameLength(length, this.#maxFrame);
    } catch (error) {
      this.#error = error as ProtocolError;
      this.#release();
      throw error;
    }
    const size = HEADER_SIZE + length;
    if (this.#length < size) return null;
    const start = this.#offset + HEADER_SIZE;
    const body = this.#buf.subarray(start, start + length);
    this.#offset += size;
    this.#length -= size;
    if (this.#length === 0) this.#release();
    return body;
  }

  /**
   * Adds a chunk and returns (copies of) the complete frame bodies it finished, in order. Unlike
   * {@link FrameDecoder.feed}, it keeps no view of `chunk`: the caller may reuse its memory.
   *
   * @throws {ProtocolError} on a bad length prefix (on the next call if frames came before it in
   * the same chunk); the decoder then keeps throwing it.
   */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.#error) throw this.#error;
    this.feed(chunk);
    const frames: Uint8Array[] = [];
    try {
      for (let body = this.next(); body !== null; body = this.next()) frames.push(body.slice());
    } catch (error) {
      // The frames before the bad prefix are still returned; the error comes on the next push.
      if (frames.length === 0) throw error;
    }
    if (this.#length > 0 && !this.#owned) {
      const pending = this.#buf.slice(this.#offset, this.#offset + this.#length);
      this.#buf = pending;
      this.#offset = 0;
      this.#owned = true;
    }
    return frames;
  }

  #peekLength(): number {
    const buf = this.#buf;
    const at = this.#offset;
    return ((buf[at] << 24) | (buf[at + 1] << 16) | (buf[at + 2] << 8) | buf[at + 3]) >>> 0;
  }

  #release(): void {
    this.#buf = EMPTY;
    this.#offset = 0;
    this.#length = 0;
    this.#owned = false;
  }
}

const EMPTY = new Uint8Array(0);
