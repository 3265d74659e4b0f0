/**
 * Shared pieces of the soak (`tests/soak.ts`) and its short variant (`tests/soak_test.ts`): a
 * seeded random source, connection helpers, the observation of how a connection ends, a canary
 * that keeps logging in, and the final accept check. The honest load is in `honest_load.ts`, the
 * abusers in `abuse.ts`.
 *
 * Everything here talks to a server on loopback only and closes what it opens, so it can run
 * under the test sanitizers. Honest clients connect from 127.0.0.1; password guessers connect
 * from 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8 to `lo`, and `node:net` can pick
 * the source address), so their lockout never reaches the honest clients.
 *
 * @module
 */
import { CLIENT_MAX_FRAME, encodeFrame, FrameReader, type JsonObject } from "../src/protocol.ts";
import { lengthPrefix, PASSWORD, TestClient } from "./helpers.ts";

/** Loopback address of the honest clients, the canary and most abusers. */
export const HONEST_ADDRESS = "127.0.0.1";
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

export function closeQuietly(closer: { close(): void }): void {
  try {
    closer.close();
  } catch {
    // Already closed.
  }
}

/** Writes all of `bytes`; returns false if the connection refused them (e.g. closed by peer). */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<boolean> {
  try {
    let offset = 0;
    while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
    return true;
  } catch {
    return false;
  }
}

export async function openTls(endpoint: Endpoint): Promise<Deno.TlsConn> {
  const conn = await Deno.connectTls({
    hostname: HONEST_ADDRESS,
    port: endpoint.port,
    caCerts: [endpoint.cert],
  });
  try {
    await conn.handshake();
  } catch (error) {
    closeQuietly(conn);
    throw error;
  }
  return conn;
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
 * the connection. With `frames: false` the bytes are only counted (raw TCP, or a TLS client that
 * skips a backlog). Never throws.
 */
export async function observe(
  conn: Deno.Conn,
  options: { timeoutMs: number; frames?: boolean; until?: (frames: JsonObject[]) => boolean },
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
      const reader = new FrameReader(conn.readable, { maxFrame: CLIENT_MAX_FRAME });
      while (true) {
        const body = await reader.read();
        if (body === null) return "eof";
        bytes += body.length + 4;
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
  closeQuietly(conn);
  await reading;
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
}

/** Logs in and out every `intervalMs` until `signal` aborts. */
export async function runCanary(
  endpoint: Endpoint,
  options: { intervalMs: number; signal: AbortSignal },
): Promise<CanaryResult> {
  const result: CanaryResult = { ok: 0, failed: 0, maxMs: 0 };
  while (!options.signal.aborted) {
    const started = performance.now();
    try {
      const { client, reply } = await TestClient.login(endpoint.port);
      await client.close();
      if (reply.success !== true) throw new Error("refused");
      result.ok++;
      result.maxMs = Math.max(result.maxMs, Math.round(performance.now() - started));
    } catch {
      result.failed++;
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
