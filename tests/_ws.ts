/**
 * A WebSocket test client written against RFC 6455 directly (over `Deno.connectTls`, trusting the
 * test certificate), so tests can send what a browser never would: binary, oversized, unmasked
 * and fragmented frames, and an `Origin` of their choice.
 */
import { testCerts } from "./_helpers.ts";
import type { JsonObject } from "../src/protocol/mod.ts";

const ENCODER = new TextEncoder();
const DECODER = new TextDecoder();

/** A frame as the server sent it. */
export interface WsFrame {
  op: number;
  fin: boolean;
  payload: Uint8Array;
}

/** The HTTP answer to an upgrade request. */
export interface UpgradeAnswer {
  status: number;
  headers: Headers;
  /** Body bytes of a refusal (the connection is closed after it). */
  body: string;
}

/** Encodes a client frame (masked, as RFC 6455 requires, unless `mask: false`). */
export function clientFrame(
  op: number,
  payload: Uint8Array | string,
  options: { fin?: boolean; mask?: boolean; length?: number } = {},
): Uint8Array {
  const body = typeof payload === "string" ? ENCODER.encode(payload) : payload;
  const length = options.length ?? body.length;
  const mask = options.mask ?? true;
  const header: number[] = [(options.fin ?? true ? 0x80 : 0) | op];
  const maskBit = mask ? 0x80 : 0;
  if (length < 126) header.push(maskBit | length);
  else if (length < 65536) header.push(maskBit | 126, length >> 8, length & 0xff);
  else {
    header.push(maskBit | 127, 0, 0, 0, 0);
    header.push(
      (length >>> 24) & 0xff,
      (length >>> 16) & 0xff,
      (length >>> 8) & 0xff,
      length & 0xff,
    );
  }
  const key = mask ? crypto.getRandomValues(new Uint8Array(4)) : new Uint8Array(0);
  const out = new Uint8Array(header.length + key.length + body.length);
  out.set(header);
  out.set(key, header.length);
  const at = header.length + key.length;
  for (let i = 0; i < body.length; i++) out[at + i] = mask ? body[i] ^ key[i & 3] : body[i];
  return out;
}

/** A raw WebSocket connection to the web port. */
export class WsClient implements AsyncDisposable {
  readonly conn: Deno.TlsConn;
  #buf = new Uint8Array(0);
  #eof = false;
  #pump: Promise<void> | null = null;
  #waiters: (() => void)[] = [];

  private constructor(conn: Deno.TlsConn) {
    this.conn = conn;
  }

  /** Connects and completes the TLS handshake. */
  static async connect(port: number): Promise<WsClient> {
    const { cert } = await testCerts();
    const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [cert] });
    await conn.handshake();
    return new WsClient(conn);
  }

  /**
   * Connects and upgrades; throws unless the answer is 101.
   *
   * @param headers extra request headers (e.g. `Origin`)
   */
  static async open(port: number, headers: Record<string, string> = {}): Promise<WsClient> {
    const client = await WsClient.connect(port);
    const answer = await client.upgrade(headers);
    if (answer.status !== 101) {
      await client.close();
      throw new Error(`Upgrade refused: ${answer.status} ${answer.body}`);
    }
    return client;
  }

  /** Opens, logs in with `auth` (a frame body object) and returns the client and its replies. */
  static async login(port: number, auth: JsonObject): Promise<WsClient> {
    const client = await WsClient.open(port);
    await client.sendJson({ type: "auth", ...auth });
    return client;
  }

  /** Sends an upgrade request for `path` and reads the answer's head (and a refusal's body). */
  async upgrade(
    headers: Record<string, string> = {},
    path = "/ws",
  ): Promise<UpgradeAnswer> {
    await this.requestUpgrade(headers, path);
    return await this.readHttp();
  }

  /** Sends an upgrade request without reading anything (the answer waits for {@link readHttp}). */
  async requestUpgrade(headers: Record<string, string> = {}, path = "/ws"): Promise<void> {
    const lines = [
      `GET ${path} HTTP/1.1`,
      `Host: 127.0.0.1:${(this.conn.remoteAddr as Deno.NetAddr).port}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
      "Sec-WebSocket-Version: 13",
      ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
    ];
    await this.write(ENCODER.encode(lines.join("\r\n") + "\r\n\r\n"));
  }

  /** Reads one HTTP response head, and its body when it has a Content-Length. */
  async readHttp(): Promise<UpgradeAnswer> {
    let end = -1;
    while ((end = indexOfBlankLine(this.#buf)) < 0) {
      if (!await this.#fill()) throw new Error("Connection ended before the HTTP answer");
    }
    const head = DECODER.decode(this.#buf.subarray(0, end));
    this.#buf = this.#buf.slice(end + 4);
    const [statusLine, ...rest] = head.split("\r\n");
    const headers = new Headers();
    for (const line of rest) {
      const colon = line.indexOf(":");
      headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    }
    const status = Number(statusLine.split(" ")[1]);
    const length = Number(headers.get("content-length") ?? 0);
    while (this.#buf.length < length) {
      if (!await this.#fill()) break;
    }
    const body = DECODER.decode(this.#buf.subarray(0, length));
    this.#buf = this.#buf.slice(length);
    return { status, headers, body };
  }

  /** Writes raw bytes. */
  async write(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) offset += await this.conn.write(bytes.subarray(offset));
  }

  /** Sends one text message holding `value` as JSON. */
  sendJson(value: unknown): Promise<void> {
    return this.write(clientFrame(0x1, JSON.stringify(value)));
  }

  /** Reads the next frame from the server, or `null` at the end of the stream or on timeout. */
  async frame(timeoutMs = 5000): Promise<WsFrame | null> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const frame = this.#parse();
      if (frame) return frame;
      if (this.#eof || Date.now() >= deadline) return null;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const more = await Promise.race([
        this.#fill(),
        new Promise<"timeout">((resolve) =>
          timer = setTimeout(resolve, deadline - Date.now(), "timeout")
        ),
      ]);
      clearTimeout(timer);
      if (more === "timeout") return null;
      if (!more) return this.#parse();
    }
  }

  /** The next text message parsed as JSON (control frames are skipped); throws on close or timeout. */
  async recv(timeoutMs = 5000): Promise<JsonObject> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const frame = await this.frame(Math.max(0, deadline - Date.now()));
      if (!frame) {
        throw new Error(this.#eof ? "Connection ended" : "Timed out waiting for a message");
      }
      if (frame.op === 0x1) return JSON.parse(DECODER.decode(frame.payload));
      if (frame.op === 0x8) throw new Error(`Closed by the server (${closeCode(frame)})`);
    }
  }

  /** Reads until the server's close frame and the end of the stream; returns the close code. */
  async closed(timeoutMs = 5000): Promise<number | null> {
    const deadline = Date.now() + timeoutMs;
    let code: number | null = null;
    while (Date.now() < deadline) {
      const frame = await this.frame(Math.max(0, deadline - Date.now()));
      if (!frame) break;
      if (frame.op === 0x8) code = closeCode(frame);
    }
    return this.#eof ? code ?? -1 : null;
  }

  /** Whether the server ended the stream. */
  get ended(): boolean {
    return this.#eof;
  }

  async close(): Promise<void> {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
    await this.#pump;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #parse(): WsFrame | null {
    const buf = this.#buf;
    if (buf.length < 2) return null;
    let length = buf[1] & 0x7f;
    let at = 2;
    if (length === 126) {
      if (buf.length < 4) return null;
      length = (buf[2] << 8) | buf[3];
      at = 4;
    } else if (length === 127) {
      if (buf.length < 10) return null;
      length = ((buf[6] << 24) | (buf[7] << 16) | (buf[8] << 8) | buf[9]) >>> 0;
      at = 10;
    }
    if (buf.length < at + length) return null;
    const frame = {
      op: buf[0] & 0x0f,
      fin: (buf[0] & 0x80) !== 0,
      payload: buf.slice(at, at + length),
    };
    this.#buf = buf.slice(at + length);
    return frame;
  }

  /** Waits for more bytes (true) or the end of the stream (false). */
  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const before = this.#buf.length;
    this.#pump ??= this.#run();
    while (this.#buf.length === before && !this.#eof) {
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#waiters.push(resolve);
      await promise;
    }
    return this.#buf.length > before;
  }

  async #run(): Promise<void> {
    const chunk = new Uint8Array(65536);
    try {
      while (true) {
        const n = await this.conn.read(chunk);
        if (n === null) break;
        const grown = new Uint8Array(this.#buf.length + n);
        grown.set(this.#buf);
        grown.set(chunk.subarray(0, n), this.#buf.length);
        this.#buf = grown;
        this.#wake();
      }
    } catch {
      // Reset or closed by us: the end of the stream either way.
    }
    this.#eof = true;
    this.#wake();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}

function closeCode(frame: WsFrame): number {
  return frame.payload.length >= 2 ? (frame.payload[0] << 8) | frame.payload[1] : 1005;
}

function indexOfBlankLine(buf: Uint8Array): number {
  for (let i = 0; i + 3 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) return i;
  }
  return -1;
}
