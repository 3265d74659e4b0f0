/**
 * Shared pieces of the soak (`tests/_soak.ts`) and its short variant (`tests/soak_test.ts`): a
 * seeded random source, the loopback addresses each party connects from, a small connection over
 * `node:net`/`node:tls` that can pick its source address, the observation of how a connection
 * ends, a canary that keeps logging in, and the final accept check. The honest load is in
 * `honest_load.ts`, the abusers in `abuse.ts`.
 *
 * The soak runs with a finite `--max-per-ip`, so every party has its own loopback addresses
 * (Linux routes all of 127.0.0.0/8 to `lo`, and `node:net` can pick the source address):
 *
 * | addresses | who |
 * |---|---|
 * | 127.0.0.1 | the canary and the final accept check (`Deno.connectTls`) |
 * | 127.0.1.1, 127.0.1.2, ... | honest clients, a share of `--max-per-ip` each |
 * | 127.0.0.2, 127.0.0.3 | the password guessers (their lockout never reaches anyone else) |
 * | 127.0.2.1 - 127.0.2.250 | the other abusers, leased so that none gets near the cap |
 * | 127.0.3.1 - 127.0.3.250 | the over-cap bursts, one fresh address per burst |
 *
 * Everything here talks to a server on loopback only and closes what it opens (and waits until
 * it is closed), so it can run under the test sanitizers.
 *
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import { startReading, stopReading } from "../src/server/backpressure.ts";
import { CLIENT_MAX_FRAME, encodeFrame, type JsonObject } from "../src/protocol/mod.ts";
import { FrameReader } from "./_frame_reader.ts";
import { lengthPrefix, PASSWORD, TestClient } from "./_helpers.ts";

/** The loopback address the server listens on. */
export const SERVER_HOST = "127.0.0.1";
/**
 * Source address of the canary and the final accept check (the address `Deno.connect` uses).
 * Kept under this name for the tests that import it as the server's address.
 */
export const HONEST_ADDRESS = SERVER_HOST;
/** Source address of the sequential password guesser. */
export const GUESS_ADDRESS = "127.0.0.2";
/** Source address of the concurrent password-guessing burst. */
export const BURST_ADDRESS = "127.0.0.3";
/** `sender` prefix of honest messages; abusers never use it. */
export const HONEST_PREFIX = "honest-";
/** Frames bigger than this cannot be honest messages, so honest clients skip parsing them. */
export const HONEST_FRAME_MAX = 8 * 1024;
/** Extra time allowed past a server timeout before an abuser calls it a miss. */
export const SLACK_MS = 3000;

export const ENCODER = new TextEncoder();
export const DECODER = new TextDecoder();

/** Source address of honest client `index` when each address carries `perAddress` of them. */
export function honestAddress(index: number, perAddress: number): string {
  return `127.0.1.${1 + Math.floor(index / perAddress)}`;
}

/** How many honest clients share one source address under the per-IP cap `maxPerIp`. */
export function honestPerAddress(maxPerIp: number): number {
  // Half the cap at most: the honest load fits under it with room to spare.
  return maxPerIp > 0 ? Math.max(1, Math.min(25, Math.floor(maxPerIp / 2))) : 25;
}

/**
 * Source addresses for abusers, each leased to at most a few abusers at once so that no abuser
 * (other than the over-cap burst, which has its own) comes near the per-IP cap.
 */
export class AddressPool {
  #leases: number[];
  #prefix: string;
  #next = 0;

  constructor(prefix = "127.0.2.", size = 250) {
    this.#prefix = prefix;
    this.#leases = new Array(size).fill(0);
  }

  /** The least leased address (round robin among equals). */
  acquire(): string {
    const n = this.#leases.length;
    let best = this.#next;
    for (let i = 0; i < n; i++) {
      const at = (this.#next + i) % n;
      if (this.#leases[at] < this.#leases[best]) best = at;
      if (this.#leases[best] === 0) break;
    }
    this.#leases[best]++;
    this.#next = (best + 1) % n;
    return `${this.#prefix}${best + 1}`;
  }

  release(address: string): void {
    const at = Number(address.slice(this.#prefix.length)) - 1;
    if (this.#leases[at] > 0) this.#leases[at]--;
  }
}

/** A small seeded PRNG (mulberry32), so a run can be repeated from its printed seed. */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = seed >>> 0;
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.next() / 4294967296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.float() * (max - min + 1));
  }

  /** Whether an event of probability `p` happens. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  /** One element of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.float() * items.length)];
  }

  /** `length` random bytes. */
  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i++) out[i] = this.next() & 0xff;
    return out;
  }

  /** A new generator seeded from this one (for independent streams). */
  fork(): Rng {
    return new Rng(this.next());
  }
}

/** Resolves after `ms`, or at once when `signal` aborts; never leaves a timer behind. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted || ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Where the server under test listens. */
export interface Endpoint {
  port: number;
  /** The server certificate, PEM (trusted as a CA by the clients). */
  cert: string;
}

/** Server limits the abusers need to know to judge the outcomes. */
export interface AbuseLimits {
  maxFrame: number;
  handshakeTimeoutMs: number;
  authTimeoutMs: number;
  maxAuthFailures: number;
  /** 0 = unlimited. */
  maxPerIp: number;
  maxSendQueue: number;
  writeTimeoutMs: number;
  /** Messages per second per client (the rate limit). */
  rate: number;
}

/** Builds one frame from raw body bytes. */
export function frameOf(body: Uint8Array | string): Uint8Array {
  const bytes = typeof body === "string" ? ENCODER.encode(body) : body;
  const out = new Uint8Array(4 + bytes.length);
  out.set(lengthPrefix(bytes.length));
  out.set(bytes, 4);
  return out;
}

export const AUTH_FRAME = encodeFrame({ type: "auth", password: PASSWORD });

// ---------------------------------------------------------------------------------------------
// Connections from a chosen source address

/** A connection the abusers read and write like a `Deno.Conn`. */
export interface Link {
  read(buffer: Uint8Array): Promise<number | null>;
  write(bytes: Uint8Array): Promise<number>;
  close(): void;
}

/** Bytes a {@link NetConn} takes from the socket ahead of its reader before it stops reading. */
const READ_AHEAD = 64 * 1024;

/**
 * A `node:net` or `node:tls` client socket from a chosen source address, read and written like a
 * `Deno.Conn`. It reads from the kernel only while its reader keeps up (at most 64 KiB ahead), and
 * stops at the TCP level otherwise, so a client that does not call `read()` really leaves the
 * server's bytes in the kernel, as a stalled peer would. With `pull: false` it does not read at
 * all: the owner listens to the socket's `data` events itself.
 */
export class NetConn implements Link {
  readonly socket: net.Socket;
  /** Resolves once the socket is closed and released. */
  readonly closed: Promise<void>;
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #error: Error | null = null;
  #reading = true;
  #held = false;
  #wake: (() => void) | null = null;

  constructor(socket: net.Socket, options: { pull?: boolean } = {}) {
    this.socket = socket;
    this.closed = new Promise((resolve) => {
      socket.once("close", () => {
        this.#ended = true;
        this.#notify();
        resolve();
      });
    });
    if (options.pull !== false) {
      socket.on("data", (chunk: Uint8Array) => {
        this.#chunks.push(chunk);
        this.#buffered += chunk.length;
        if (this.#buffered >= READ_AHEAD) this.#stop();
        this.#notify();
      });
    }
    socket.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    socket.on("error", (error: Error) => {
      this.#error ??= error;
      this.#notify();
    });
  }

  /** Stops reading from the kernel until {@link NetConn.release} (or a `read()` after it). */
  hold(): void {
    this.#held = true;
    this.#stop();
  }

  /** Reads from the kernel again after {@link NetConn.hold}. */
  release(): void {
    this.#held = false;
    this.#start();
  }

  async read(buffer: Uint8Array): Promise<number | null> {
    if (this.#held) this.release();
    while (this.#chunks.length === 0) {
      if (this.#error) throw errorOf(this.#error);
      if (this.#ended || this.socket.destroyed) return null;
      if (!this.#held) this.#start();
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    let n = 0;
    while (n < buffer.length && this.#chunks.length > 0) {
      const chunk = this.#chunks[0];
      const take = Math.min(chunk.length, buffer.length - n);
      buffer.set(chunk.subarray(0, take), n);
      n += take;
      if (take === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(take);
    }
    this.#buffered -= n;
    if (this.#buffered < READ_AHEAD / 2 && !this.#held) this.#start();
    return n;
  }

  write(bytes: Uint8Array): Promise<number> {
    return new Promise((resolve, reject) => {
      if (this.socket.destroyed || this.#error) {
        reject(errorOf(this.#error ?? new Error("closed")));
        return;
      }
      this.socket.write(bytes, (error?: Error | null) => {
        if (error) reject(errorOf(error));
        else resolve(bytes.length);
      });
    });
  }

  close(): void {
    this.socket.destroy();
  }

  #stop(): void {
    if (!this.#reading) return;
    this.#reading = false;
    stopReading(this.socket);
  }

  #start(): void {
    if (this.#reading || this.socket.destroyed) return;
    this.#reading = true;
    startReading(this.socket);
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}

/** Errors of `node:net` as the `Deno.errors` the observations classify. */
function errorOf(error: Error): Error {
  const code = (error as { code?: string }).code;
  if (code === "ECONNRESET" || code === "EPIPE") return new Deno.errors.ConnectionReset(code);
  return error;
}

/**
 * Connects from `localAddress`: raw TCP, or TLS (resolving once the handshake is done). Rejects if
 * the server closes first, or after `timeoutMs`.
 */
export function connectFrom(
  endpoint: Endpoint,
  options: { localAddress: string; tls: boolean; timeoutMs?: number; pull?: boolean },
): Promise<NetConn> {
  const socket: net.Socket = options.tls
    ? tls.connect({
      host: SERVER_HOST,
      port: endpoint.port,
      ca: [endpoint.cert],
      localAddress: options.localAddress,
    } as tls.ConnectionOptions)
    : net.connect({ host: SERVER_HOST, port: endpoint.port, localAddress: options.localAddress });
  const conn = new NetConn(socket, { pull: options.pull });
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.close();
      conn.closed.then(() => reject(error));
    };
    const timer = setTimeout(
      () => fail(new Deno.errors.TimedOut("connect timed out")),
      options.timeoutMs ?? 10_000,
    );
    socket.once(options.tls ? "secureConnect" : "connect", () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(conn);
    });
    socket.once("error", (error: Error) => fail(errorOf(error)));
    socket.once("close", () => fail(new Deno.errors.ConnectionReset("closed while connecting")));
  });
}

/** Writes all of `bytes`; returns false if the connection refused them (e.g. closed by peer). */
export async function writeAll(conn: Link, bytes: Uint8Array): Promise<boolean> {
  try {
    let offset = 0;
    while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
    return true;
  } catch {
    return false;
  }
}

/** How an observed connection ended. */
export type End = "eof" | "reset" | "open" | "done";

/** What a client saw on a connection until it ended or the time ran out. */
export interface Observation {
  frames: JsonObject[];
  /** `eof`/`reset`: the server closed it; `open`: still open at the deadline; `done`: `until` held. */
  end: End;
  bytes: number;
  ms: number;
}

function endOf(error: unknown): End {
  return error instanceof Deno.errors.UnexpectedEof ? "eof" : "reset";
}

/**
 * Reads until the server closes the connection, `until` holds, or `timeoutMs` passes, then closes
 * the connection and waits until it is released. With `frames: false` the bytes are only counted
 * (raw TCP, or a TLS client that skips a backlog); `onFrame` sees each frame body before it is
 * parsed and may return false to skip parsing it. Never throws.
 */
export async function observe(
  conn: NetConn,
  options: {
    timeoutMs: number;
    frames?: boolean;
    until?: (frames: JsonObject[]) => boolean;
    onFrame?: (body: Uint8Array) => boolean;
  },
): Promise<Observation> {
  const started = performance.now();
  const frames: JsonObject[] = [];
  let bytes = 0;
  const reading = (async (): Promise<End> => {
    try {
      if (options.frames === false) {
        const buf = new Uint8Array(64 * 1024);
        while (true) {
          const n = await conn.read(buf);
          if (n === null) return "eof";
          bytes += n;
        }
      }
      const reader = new FrameReader(conn, { maxFrame: CLIENT_MAX_FRAME });
      while (true) {
        const body = await reader.read();
        if (body === null) return "eof";
        bytes += body.length + 4;
        if (options.onFrame?.(body) === false) continue;
        frames.push(JSON.parse(DECODER.decode(body)));
        if (options.until?.(frames)) return "done";
      }
    } catch (error) {
      return endOf(error);
    }
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"open">((resolve) => {
    timer = setTimeout(() => resolve("open"), options.timeoutMs);
  });
  const first = await Promise.race([reading, timeout]);
  clearTimeout(timer);
  conn.close();
  await reading;
  await conn.closed;
  return { frames, end: first, bytes, ms: Math.round(performance.now() - started) };
}

/** Error codes in `frames`, in order. */
export function codesOf(frames: JsonObject[]): string[] {
  return frames.filter((frame) => frame.type === "error").map((frame) => String(frame.code));
}

export function secs(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

export function closed(observation: Observation): boolean {
  return observation.end === "eof" || observation.end === "reset";
}

/** `codes -> closed|open|stalled`, for the report. */
export function describe(observation: Observation): string {
  const codes = codesOf(observation.frames);
  const state = closed(observation) ? "closed" : observation.end === "done" ? "open" : "stalled";
  return `${codes.length > 0 ? codes.join(",") : "no error"} -> ${state}`;
}

// ---------------------------------------------------------------------------------------------
// Canary and accept check

/** Logins made while the abuse runs: proof the accept loop is never blocked. */
export interface CanaryResult {
  ok: number;
  failed: number;
  maxMs: number;
  /** Why logins failed, by reason. */
  reasons: Record<string, number>;
}

/** Logs in and out every `intervalMs` until `signal` aborts. */
export async function runCanary(
  endpoint: Endpoint,
  options: { intervalMs: number; signal: AbortSignal },
): Promise<CanaryResult> {
  const result: CanaryResult = { ok: 0, failed: 0, maxMs: 0, reasons: {} };
  while (!options.signal.aborted) {
    const started = performance.now();
    try {
      const { client, reply } = await TestClient.login(endpoint.port);
      await client.close();
      if (reply.success !== true) throw new Error(`refused: ${JSON.stringify(reply)}`);
      result.ok++;
      result.maxMs = Math.max(result.maxMs, Math.round(performance.now() - started));
    } catch (error) {
      result.failed++;
      const reason = String(error).slice(0, 120);
      result.reasons[reason] = (result.reasons[reason] ?? 0) + 1;
    }
    await sleep(options.intervalMs, options.signal);
  }
  return result;
}

/** Whether a fresh pair of clients can log in and exchange a message, and how long it took. */
export async function checkAccept(endpoint: Endpoint): Promise<{ ok: boolean; detail: string }> {
  const started = performance.now();
  let a: TestClient | undefined;
  let b: TestClient | undefined;
  try {
    const first = await TestClient.login(endpoint.port);
    a = first.client;
    const second = await TestClient.login(endpoint.port);
    b = second.client;
    if (first.reply.success !== true || second.reply.success !== true) {
      return { ok: false, detail: `login refused: ${JSON.stringify(second.reply)}` };
    }
    await a.send({ type: "message", content: "still there?", sender: "accept-check" });
    const frame = await b.recv(5000);
    const ok = frame.content === "still there?";
    const ms = Math.round(performance.now() - started);
    return { ok, detail: ok ? `2 logins and a message in ${ms} ms` : JSON.stringify(frame) };
  } catch (error) {
    return { ok: false, detail: String(error) };
  } finally {
    await a?.close();
    await b?.close();
  }
}
