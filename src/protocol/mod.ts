/**
 * Frame codec and message validation for the chat protocol.
 *
 * A frame is a 4-byte unsigned big-endian length `N` followed by `N` bytes of UTF-8 JSON.
 * Everything here is pure except {@link FrameReader}, which pulls frames from a byte stream (the
 * clients' and tests' way of reading); the server feeds the chunks of its `node:tls` sockets to a
 * {@link FrameDecoder}.
 *
 * @module
 */

/** Default largest incoming frame body, bytes. */
export const DEFAULT_MAX_FRAME = 65536;
/** Largest frame a client accepts from a server (broadcasts may exceed `max_frame`). */
export const CLIENT_MAX_FRAME = 1024 * 1024;
/** Size of the length prefix. */
export const HEADER_SIZE = 4;
/** Longest `sender` name, in characters (code points). */
export const MAX_SENDER_CHARS = 64;
/** `sender` used when a message carries none. */
export const DEFAULT_SENDER = "anon";

/** Error codes that go on the wire in `error` frames. */
export type ErrorCode =
  | "frame_too_large"
  | "empty_frame"
  | "invalid_json"
  | "not_an_object"
  | "auth_required"
  | "auth_timeout"
  | "locked_out"
  | "server_full"
  | "too_many_connections"
  | "already_authenticated"
  | "unknown_type"
  | "invalid_message"
  | "rate_limited"
  | "shutting_down";

/** Codes after which the server closes the connection. */
export const CLOSING_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "frame_too_large",
  "empty_frame",
  "invalid_json",
  "not_an_object",
  "auth_required",
  "auth_timeout",
  "locked_out",
  "server_full",
  "too_many_connections",
  "shutting_down",
]);

/** A protocol violation (or refusal) that is reported to the peer as an `error` frame. */
export class ProtocolError extends Error {
  /** The wire code. */
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
  }
  /** Whether the server closes the connection after reporting this error. */
  get closes(): boolean {
    return CLOSING_CODES.has(this.code);
  }
}

/** Any JSON object received from a peer. */
export type JsonObject = Record<string, unknown>;

/** A chat message accepted from a client, after validation. */
export interface ChatMessage {
  content: string;
  sender: string;
}

const ENCODER = new TextEncoder();
const DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
// deno-lint-ignore no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;

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

/** The seed's exact reply to a good password. */
export const AUTH_OK_FRAME: Uint8Array = encodeJsonFrame(
  '{"success":true,"type":"auth_result"}',
);
/** The seed's exact reply to a wrong password. */
export const AUTH_FAILED_FRAME: Uint8Array = encodeJsonFrame(
  '{"error":"Invalid password","success":false,"type":"auth_result"}',
);

/** Encodes an `error` frame. */
export function encodeError(code: ErrorCode, message: string): Uint8Array {
  return encodeFrame({ type: "error", code, error: message });
}

/**
 * Encodes a broadcast exactly as the seed did (keys in sorted order). Called once per accepted
 * message; the same bytes are queued to every recipient.
 */
export function encodeBroadcast(message: ChatMessage, senderIp: string): Uint8Array {
  return encodeFrame({
    content: message.content,
    sender: message.sender,
    sender_ip: senderIp,
    type: "message",
  });
}

/**
 * Decodes a frame body into a JSON object.
 *
 * @throws {ProtocolError} `invalid_json` for bad UTF-8 or JSON, `not_an_object` otherwise.
 */
export function decodeBody(body: Uint8Array): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(DECODER.decode(body));
  } catch {
    throw new ProtocolError("invalid_json", "Cannot parse frame: body is not valid UTF-8 JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ProtocolError("not_an_object", "Cannot accept frame: body is not a JSON object");
  }
  return value as JsonObject;
}

/**
 * Validates the first frame of a connection and returns the password it carries.
 *
 * @throws {ProtocolError} `auth_required` unless it is `{"type":"auth","password":"<string>"}`.
 */
export function parseAuth(message: JsonObject): string {
  if (message.type !== "auth") {
    throw new ProtocolError("auth_required", "Cannot continue: the first frame must be auth");
  }
  if (typeof message.password !== "string") {
    throw new ProtocolError("auth_required", "Cannot authenticate: password must be a string");
  }
  return message.password;
}

/**
 * Validates a frame received after login and returns the chat message it carries.
 *
 * @throws {ProtocolError} `already_authenticated`, `unknown_type` or `invalid_message`.
 */
export function parseChat(message: JsonObject): ChatMessage {
  const type = message.type;
  if (type !== "message") {
    if (type === "auth") {
      throw new ProtocolError("already_authenticated", "Cannot authenticate: already logged in");
    }
    throw new ProtocolError(
      "unknown_type",
      typeof type === "string"
        ? `Cannot handle frame: unknown type ${JSON.stringify(type.slice(0, 32))}`
        : "Cannot handle frame: type must be a string",
    );
  }
  const content = message.content;
  if (typeof content !== "string" || content.length === 0) {
    throw new ProtocolError(
      "invalid_message",
      "Cannot send message: content must be a non-empty string",
    );
  }
  const sender = message.sender ?? DEFAULT_SENDER;
  if (typeof sender !== "string") {
    throw new ProtocolError("invalid_message", "Cannot send message: sender must be a string");
  }
  if (sender.length === 0 || countChars(sender, MAX_SENDER_CHARS + 1) > MAX_SENDER_CHARS) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot send message: sender must be 1 to ${MAX_SENDER_CHARS} characters`,
    );
  }
  if (CONTROL_CHARS.test(sender)) {
    throw new ProtocolError(
      "invalid_message",
      "Cannot send message: sender has control characters",
    );
  }
  return { content, sender };
}

/** Counts code points of `text`, stopping early once `stop` is reached. */
function countChars(text: string, stop: number): number {
  if (text.length <= MAX_SENDER_CHARS) return text.length <= stop ? [...text].length : stop;
  let count = 0;
  for (const _ of text) {
    if (++count >= stop) break;
  }
  return count;
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
const INITIAL_BUFFER = 1024;
const SHRINK_ABOVE = 32 * 1024;

/** Reads bytes into a buffer and resolves with the count, or `null` at the end (as `Deno.Conn`). */
export interface ByteSource {
  read(buffer: Uint8Array): Promise<number | null>;
}

/**
 * Pull-style frame reader over a byte stream: a BYOB reader of a `ReadableStream`, or straight
 * `read()` calls on a {@link ByteSource} such as a `Deno.Conn` (no stream machinery per read).
 *
 * Reads into one growable buffer; a frame body is returned as a view into that buffer and is
 * valid only until the next call to {@link FrameReader.read}. The length prefix is checked
 * before any byte of the body is read or any room for it allocated.
 */
export class FrameReader {
  #reader: ReadableStreamBYOBReader | null = null;
  #source: ByteSource | null = null;
  #maxFrame: number;
  #buf: ArrayBuffer = new ArrayBuffer(INITIAL_BUFFER);
  #start = 0;
  #end = 0;

  constructor(
    source: ReadableStream<Uint8Array> | ByteSource,
    options: { maxFrame?: number } = {},
  ) {
    if (source instanceof ReadableStream) this.#reader = source.getReader({ mode: "byob" });
    else this.#source = source;
    this.#maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
  }

  /** Bytes received but not yet returned as frames. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /**
   * Returns the next frame body, or `null` once the stream ends cleanly between frames.
   *
   * @throws {ProtocolError} on a bad length prefix.
   * @throws {Deno.errors.UnexpectedEof} if the stream ends inside a frame.
   */
  async read(): Promise<Uint8Array | null> {
    let need = HEADER_SIZE;
    if (this.#start === this.#end && this.#buf.byteLength > SHRINK_ABOVE) {
      // Give back the room a large frame needed; idle connections stay small.
      this.#buf = new ArrayBuffer(INITIAL_BUFFER);
      this.#start = this.#end = 0;
    }
    while (true) {
      const have = this.#end - this.#start;
      if (have >= HEADER_SIZE) {
        const length = new DataView(this.#buf, this.#start, HEADER_SIZE).getUint32(0);
        checkFrameLength(length, this.#maxFrame);
        need = HEADER_SIZE + length;
        if (have >= need) {
          const body = new Uint8Array(this.#buf, this.#start + HEADER_SIZE, length);
          this.#start += need;
          if (this.#start === this.#end) this.#start = this.#end = 0;
          return body;
        }
      }
      this.#reserve(need);
      const count = await this.#fill();
      if (count === null) {
        if (this.#end === this.#start) return null;
        throw new Deno.errors.UnexpectedEof(
          `Connection closed inside a frame (${this.#end - this.#start} bytes pending)`,
        );
      }
      this.#end += count;
    }
  }

  /** Reads into the free end of the buffer; returns the bytes read, `null` at the end. */
  async #fill(): Promise<number | null> {
    const free = new Uint8Array(this.#buf, this.#end, this.#buf.byteLength - this.#end);
    if (this.#source) return await this.#source.read(free);
    const { value, done } = await this.#reader!.read(free);
    if (value) this.#buf = value.buffer as ArrayBuffer;
    return done || !value ? null : value.byteLength;
  }

  /** Makes room for `need` bytes from `#start`, compacting or growing only as needed. */
  #reserve(need: number): void {
    if (this.#start + need <= this.#buf.byteLength && this.#end < this.#buf.byteLength) return;
    const have = this.#end - this.#start;
    if (need <= this.#buf.byteLength) {
      new Uint8Array(this.#buf).copyWithin(0, this.#start, this.#end);
    } else {
      const grown = new Uint8Array(Math.max(need, this.#buf.byteLength * 2));
      grown.set(new Uint8Array(this.#buf, this.#start, have));
      this.#buf = grown.buffer;
    }
    this.#start = 0;
    this.#end = have;
  }

  /** Cancels the underlying stream and releases the reader. Safe to call more than once. */
  async cancel(): Promise<void> {
    try {
      await this.#reader?.cancel();
    } catch {
      // The stream may already be closed or errored.
    }
  }
}
