/**
 * Load and abuse generators for the soak (`tests/soak.ts`) and its short variant
 * (`tests/soak_test.ts`): a seeded random source, honest clients that check every delivery,
 * one function per kind of abuse, a canary that keeps logging in, and the final accept check.
 *
 * Everything here talks to a server on loopback only and closes what it opens, so it can run
 * under the test sanitizers. Honest clients connect from 127.0.0.1; password guessers connect
 * from 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8 to `lo`, and `node:net` can pick
 * the source address), so their lockout never reaches the honest clients.
 *
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import {
  CLIENT_MAX_FRAME,
  CLOSING_CODES,
  encodeFrame,
  type ErrorCode,
  FrameDecoder,
  FrameReader,
  type JsonObject,
} from "../src/protocol.ts";
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
const HONEST_FRAME_MAX = 8 * 1024;
/** Extra time allowed past a server timeout before an abuser calls it a miss. */
const SLACK_MS = 3000;

const ENCODER = new TextEncoder();
const DECODER = new TextDecoder();

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

const AUTH_FRAME = encodeFrame({ type: "auth", password: PASSWORD });

function closeQuietly(closer: { close(): void }): void {
  try {
    closer.close();
  } catch {
    // Already closed.
  }
}

/** Writes all of `bytes`; returns false if the connection refused them (e.g. closed by peer). */
async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<boolean> {
  try {
    let offset = 0;
    while (offset < bytes.length) offset += await conn.write(bytes.subarray(offset));
    return true;
  } catch {
    return false;
  }
}

async function openTls(endpoint: Endpoint): Promise<Deno.TlsConn> {
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

function secs(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

function closed(observation: Observation): boolean {
  return observation.end === "eof" || observation.end === "reset";
}

/** `codes -> closed|open|stalled`, for the report. */
function describe(observation: Observation): string {
  const codes = codesOf(observation.frames);
  const state = closed(observation) ? "closed" : observation.end === "done" ? "open" : "stalled";
  return `${codes.length > 0 ? codes.join(",") : "no error"} -> ${state}`;
}

// ---------------------------------------------------------------------------------------------
// Honest load

/** Counters of one honest client. */
interface HonestCounters {
  sent: number;
  received: number;
  duplicates: number;
  outOfOrder: number;
  errors: string[];
  foreignFrames: number;
  foreignBytes: number;
  lostConnection: string | null;
}

class HonestClient {
  readonly id: number;
  readonly conn: Deno.TlsConn;
  readonly counters: HonestCounters = {
    sent: 0,
    received: 0,
    duplicates: 0,
    outOfOrder: 0,
    errors: [],
    foreignFrames: 0,
    foreignBytes: 0,
    lostConnection: null,
  };
  /** Next expected sequence number from each other honest client. */
  readonly next: Int32Array;
  #reading: Promise<void> | null = null;
  #closing = false;
  #onProgress: () => void;

  constructor(id: number, conn: Deno.TlsConn, total: number, onProgress: () => void) {
    this.id = id;
    this.conn = conn;
    this.next = new Int32Array(total);
    this.#onProgress = onProgress;
  }

  /** Logs in; resolves once `auth_result` arrives, then keeps reading in the background. */
  async start(): Promise<void> {
    const reader = new FrameReader(this.conn.readable, { maxFrame: CLIENT_MAX_FRAME });
    if (!await writeAll(this.conn, AUTH_FRAME)) throw new Error("Cannot send auth");
    const first = await reader.read();
    const reply = first && JSON.parse(DECODER.decode(first));
    if (reply?.success !== true) {
      throw new Error(`Honest login refused: ${JSON.stringify(reply)}`);
    }
    this.#reading = this.#read(reader);
  }

  async send(content: string): Promise<boolean> {
    this.counters.sent++;
    const ok = await writeAll(
      this.conn,
      encodeFrame({ type: "message", content, sender: `${HONEST_PREFIX}${this.id}` }),
    );
    if (!ok) this.counters.lostConnection ??= "write failed";
    return ok;
  }

  async close(): Promise<void> {
    this.#closing = true;
    closeQuietly(this.conn);
    await this.#reading;
  }

  async #read(reader: FrameReader): Promise<void> {
    const c = this.counters;
    try {
      while (true) {
        const body = await reader.read();
        if (body === null) {
          if (!this.#closing) c.lostConnection ??= "closed by server";
          return;
        }
        if (body.length > HONEST_FRAME_MAX) {
          c.foreignFrames++;
          c.foreignBytes += body.length;
          continue;
        }
        this.#take(JSON.parse(DECODER.decode(body)), body.length);
      }
    } catch (error) {
      if (!this.#closing) c.lostConnection ??= (error as Error).name;
    }
  }

  #take(frame: JsonObject, size: number): void {
    const c = this.counters;
    if (frame.type === "error") {
      c.errors.push(String(frame.code));
      return;
    }
    const sender = frame.sender;
    if (
      frame.type !== "message" || typeof sender !== "string" ||
      !sender.startsWith(HONEST_PREFIX)
    ) {
      c.foreignFrames++;
      c.foreignBytes += size;
      return;
    }
    const from = Number(sender.slice(HONEST_PREFIX.length));
    const seq = Number(String(frame.content).split(":", 1)[0]);
    if (from === this.id) {
      c.errors.push("own message echoed");
    } else if (seq === this.next[from]) {
      this.next[from]++;
      c.received++;
    } else if (seq < this.next[from]) {
      c.duplicates++;
    } else {
      // A gap: the skipped messages stay missing; later ones are counted again from here.
      c.outOfOrder++;
      this.next[from] = seq + 1;
      c.received++;
    }
    this.#onProgress();
  }
}

/** Totals of the honest load. */
export interface HonestResult {
  clients: number;
  sent: number;
  /** Deliveries owed: each honest message times the other honest clients. */
  expected: number;
  /** Deliveries received exactly once and in per-sender order. */
  received: number;
  missing: number;
  duplicates: number;
  outOfOrder: number;
  /** `error` frames sent to honest clients, by code (should be none). */
  errors: Record<string, number>;
  /** Honest clients the server disconnected, by reason (should be none). */
  lost: Record<string, number>;
  /** Frames from abusers that honest clients received and ignored. */
  foreignFrames: number;
  foreignBytes: number;
}

/**
 * `clients` honest clients that log in first, then each send `rate` messages per second (with
 * jitter) and check that every message of every other honest client arrives exactly once and in
 * order.
 */
export class HonestLoad implements AsyncDisposable {
  #clients: HonestClient[] = [];
  #rate: number;
  #rng: Rng;
  #stop = new AbortController();
  #loops: Promise<void>[] = [];
  #progress: (() => void) | null = null;

  private constructor(rate: number, rng: Rng) {
    this.#rate = rate;
    this.#rng = rng;
  }

  /** Connects and logs in every client (a few at a time); throws if any login fails. */
  static async start(
    endpoint: Endpoint,
    options: { clients: number; rate: number; rng: Rng },
  ): Promise<HonestLoad> {
    const load = new HonestLoad(options.rate, options.rng);
    const onProgress = () => load.#progress?.();
    try {
      for (let first = 0; first < options.clients; first += 20) {
        const ids = Array.from(
          { length: Math.min(20, options.clients - first) },
          (_, i) => first + i,
        );
        await Promise.all(ids.map(async (id) => {
          const client = new HonestClient(id, await openTls(endpoint), options.clients, onProgress);
          load.#clients.push(client);
          await client.start();
        }));
      }
    } catch (error) {
      await load.close();
      throw error;
    }
    return load;
  }

  /** Starts every client's send loop. */
  startChatting(): void {
    const period = 1000 / this.#rate;
    for (const client of this.#clients) {
      const rng = this.#rng.fork();
      this.#loops.push((async () => {
        await sleep(rng.float() * period, this.#stop.signal);
        while (!this.#stop.signal.aborted) {
          const seq = client.counters.sent;
          const pad = "x".repeat(rng.int(8, 480));
          if (!await client.send(`${seq}:${pad}`)) return;
          await sleep(period * (0.5 + rng.float()), this.#stop.signal);
        }
      })());
    }
  }

  /** Stops sending and waits for the send loops to end. */
  async stopChatting(): Promise<void> {
    this.#stop.abort();
    await Promise.all(this.#loops);
  }

  /** Waits until every owed delivery has arrived, or `timeoutMs` passes. */
  async drain(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#complete() && Date.now() < deadline) {
      const progress = new AbortController();
      this.#progress = () => progress.abort();
      await sleep(250, progress.signal);
      this.#progress = null;
    }
    return this.#complete();
  }

  #complete(): boolean {
    const r = this.result();
    return r.received >= r.expected ||
      this.#clients.every((client) => client.counters.lostConnection !== null);
  }

  /** The totals so far. */
  result(): HonestResult {
    const sent = this.#clients.map((client) => client.counters.sent);
    const total = sent.reduce((a, b) => a + b, 0);
    const result: HonestResult = {
      clients: this.#clients.length,
      sent: total,
      expected: 0,
      received: 0,
      missing: 0,
      duplicates: 0,
      outOfOrder: 0,
      errors: {},
      lost: {},
      foreignFrames: 0,
      foreignBytes: 0,
    };
    for (const client of this.#clients) {
      const c = client.counters;
      const owed = total - c.sent;
      result.expected += owed;
      result.received += c.received;
      result.missing += Math.max(0, owed - c.received);
      result.duplicates += c.duplicates;
      result.outOfOrder += c.outOfOrder;
      result.foreignFrames += c.foreignFrames;
      result.foreignBytes += c.foreignBytes;
      for (const code of c.errors) result.errors[code] = (result.errors[code] ?? 0) + 1;
      if (c.lostConnection) {
        result.lost[c.lostConnection] = (result.lost[c.lostConnection] ?? 0) + 1;
      }
    }
    return result;
  }

  /** Stops sending and closes every client. Idempotent. */
  async close(): Promise<void> {
    await this.stopChatting();
    await Promise.all(this.#clients.map((client) => client.close()));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Abuse

/** Every kind of abuse the soak throws at the server. */
export const ABUSE_KINDS = [
  "tcp-idle",
  "tls-idle",
  "tls-trickle",
  "garbage-tcp",
  "garbage-tls",
  "bad-length",
  "bad-body",
  "bad-fields",
  "long-sender",
  "guess",
  "guess-burst",
  "non-reader",
  "flooder",
  "spammer",
  "mid-frame",
  "churn",
] as const;
/** One kind of abuse. */
export type AbuseKind = typeof ABUSE_KINDS[number];

/** What one kind of abuse produced over a run. */
export interface KindTally {
  runs: number;
  /** Runs whose outcome was not the one the protocol requires. */
  unexpected: number;
  /** Runs that hit a known limitation of the runtime rather than of the server. */
  limited: number;
  /** Outcome descriptions and how often each happened. */
  outcomes: Record<string, number>;
}

/** Outcomes of all abuse, and the error codes abusers saw on the wire. */
export class AbuseTally {
  readonly kinds: Partial<Record<AbuseKind, KindTally>> = {};
  /** `error` frame codes received by abusers. */
  readonly codes: Record<string, number> = {};
  /** Bytes the flooders got accepted (and so broadcast to everyone). */
  floodBytes = 0;

  /**
   * Records one run of `kind`: `ok` true if the outcome is the one the protocol requires, false if
   * not, or `"limitation"` for a known limitation of the runtime (reported, not counted as a miss).
   */
  record(kind: AbuseKind, outcome: string, ok: boolean | "limitation"): void {
    const tally = this.kinds[kind] ??= { runs: 0, unexpected: 0, limited: 0, outcomes: {} };
    tally.runs++;
    if (ok === false) tally.unexpected++;
    if (ok === "limitation") tally.limited++;
    const key = ok === true
      ? outcome
      : ok === false
      ? `UNEXPECTED ${outcome}`
      : `KNOWN LIMITATION ${outcome}`;
    tally.outcomes[key] = (tally.outcomes[key] ?? 0) + 1;
  }

  /** Counts the error codes in `frames`. */
  count(frames: JsonObject[]): void {
    for (const code of codesOf(frames)) this.codes[code] = (this.codes[code] ?? 0) + 1;
  }

  /** Runs with an unexpected outcome, all kinds. */
  get unexpected(): number {
    return Object.values(this.kinds).reduce((sum, tally) => sum + (tally?.unexpected ?? 0), 0);
  }

  /** Runs that hit a known runtime limitation, all kinds. */
  get limited(): number {
    return Object.values(this.kinds).reduce((sum, tally) => sum + (tally?.limited ?? 0), 0);
  }
}

/** What every abuser gets. */
export interface AbuseContext {
  endpoint: Endpoint;
  limits: AbuseLimits;
  tally: AbuseTally;
  rng: Rng;
  /** Aborts at the end of the wave: long-lived abusers stop. */
  waveEnd: AbortSignal;
  /** Flood parameters. */
  flood: { rate: number; bytes: number };
}

type Abuser = (ctx: AbuseContext) => Promise<void>;

async function authenticated(endpoint: Endpoint): Promise<Deno.TlsConn> {
  const conn = await openTls(endpoint);
  await writeAll(conn, AUTH_FRAME);
  return conn;
}

/** A TLS connection, optionally logged in (the `auth_result` is read and checked). */
async function tlsConn(endpoint: Endpoint, loggedIn: boolean): Promise<Deno.TlsConn> {
  if (!loggedIn) return await openTls(endpoint);
  const conn = await authenticated(endpoint);
  if (!await peekAuth(conn)) {
    closeQuietly(conn);
    throw new Error("Abuser login refused");
  }
  return conn;
}

/** Reads exactly the auth reply without locking the stream (so `observe` can read on). */
async function peekAuth(conn: Deno.TlsConn): Promise<boolean> {
  const expected = encodeFrame({ success: true, type: "auth_result" });
  const buf = new Uint8Array(expected.length);
  let got = 0;
  while (got < buf.length) {
    const n = await conn.read(buf.subarray(got));
    if (n === null) return false;
    got += n;
  }
  return DECODER.decode(buf.subarray(4)).includes('"success":true');
}

const abusers: Record<AbuseKind, Abuser> = {
  /**
   * Raw TCP that never starts TLS: the handshake timeout should close it. Deno 2.9.6 cannot close
   * an accepted TLS socket before its handshake (it stays open until the peer sends or leaves), so
   * "still open" is reported as a known limitation; tests/security_test.ts checks that the server
   * at least keeps counting such a socket against its caps.
   */
  async "tcp-idle"(ctx) {
    const conn = await Deno.connect({ hostname: HONEST_ADDRESS, port: ctx.endpoint.port });
    const o = await observe(conn, {
      timeoutMs: ctx.limits.handshakeTimeoutMs + SLACK_MS,
      frames: false,
    });
    const outcome = closed(o)
      ? "closed by server"
      : `socket still open ${secs(SLACK_MS)} after the handshake timeout`;
    ctx.tally.record("tcp-idle", outcome, closed(o) || "limitation");
  },

  /** TLS that never authenticates: `auth_timeout`, then close. */
  async "tls-idle"(ctx) {
    const conn = await openTls(ctx.endpoint);
    const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
    ctx.tally.count(o.frames);
    const codes = codesOf(o.frames);
    ctx.tally.record("tls-idle", describe(o), closed(o) && codes.join() === "auth_timeout");
  },

  /** An auth frame trickled a byte at a time, slower than the auth timeout allows. */
  async "tls-trickle"(ctx) {
    const conn = await openTls(ctx.endpoint);
    const stop = new AbortController();
    const step = Math.max(50, ctx.limits.authTimeoutMs / 8);
    const trickle = (async () => {
      for (const byte of AUTH_FRAME) {
        if (stop.signal.aborted || !await writeAll(conn, Uint8Array.of(byte))) return;
        await sleep(step, stop.signal);
      }
    })();
    const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
    stop.abort();
    await trickle;
    ctx.tally.count(o.frames);
    const codes = codesOf(o.frames);
    ctx.tally.record("tls-trickle", describe(o), closed(o) && codes.join() === "auth_timeout");
  },

  /** Random bytes instead of a TLS ClientHello: the handshake fails, the socket is closed. */
  async "garbage-tcp"(ctx) {
    const conn = await Deno.connect({ hostname: HONEST_ADDRESS, port: ctx.endpoint.port });
    const garbage = ctx.rng.bytes(ctx.rng.int(1, 4096));
    // 0x16 opens a TLS handshake record, which the server would wait to complete.
    if (garbage[0] === 0x16) garbage[0] = 0x17;
    await writeAll(conn, garbage);
    const o = await observe(conn, {
      timeoutMs: ctx.limits.handshakeTimeoutMs + SLACK_MS,
      frames: false,
    });
    ctx.tally.record("garbage-tcp", closed(o) ? "closed by server" : "still open", closed(o));
  },

  /** Random bytes inside TLS before login: some closing error (or the auth timeout), then close. */
  async "garbage-tls"(ctx) {
    const conn = await openTls(ctx.endpoint);
    await writeAll(conn, ctx.rng.bytes(ctx.rng.int(1, 600)));
    const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
    ctx.tally.count(o.frames);
    const codes = codesOf(o.frames);
    const ok = closed(o) && codes.length <= 1 &&
      codes.every((code) => CLOSING_CODES.has(code as ErrorCode));
    ctx.tally.record("garbage-tls", describe(o), ok);
  },

  /** A length prefix of 0, 2^32-1 or max+1 with no body: answered at once, then close. */
  async "bad-length"(ctx) {
    const loggedIn = ctx.rng.chance(0.5);
    const length = ctx.rng.pick([0, 0xffffffff, ctx.limits.maxFrame + 1]);
    const want = length === 0 ? "empty_frame" : "frame_too_large";
    const conn = await tlsConn(ctx.endpoint, loggedIn);
    await writeAll(conn, lengthPrefix(length));
    // Well under the auth timeout: the server must not wait for (or allocate) the body.
    const o = await observe(conn, { timeoutMs: SLACK_MS });
    ctx.tally.count(o.frames);
    const ok = closed(o) && codesOf(o.frames).join() === want;
    ctx.tally.record(
      "bad-length",
      `${length} ${loggedIn ? "after" : "before"} login: ${describe(o)}`,
      ok,
    );
  },

  /** Invalid UTF-8, invalid JSON or a non-object: `invalid_json`/`not_an_object`, then close. */
  async "bad-body"(ctx) {
    const loggedIn = ctx.rng.chance(0.5);
    const [body, want] = ctx.rng.pick(BAD_BODIES);
    const conn = await tlsConn(ctx.endpoint, loggedIn);
    await writeAll(conn, frameOf(body));
    const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
    ctx.tally.count(o.frames);
    ctx.tally.record("bad-body", describe(o), closed(o) && codesOf(o.frames).join() === want);
  },

  /** Wrong types and field types: refused before login (close), reported after it (stay open). */
  async "bad-fields"(ctx) {
    if (ctx.rng.chance(0.4)) {
      const conn = await openTls(ctx.endpoint);
      await writeAll(conn, frameOf(ctx.rng.pick(BAD_AUTH)));
      const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
      ctx.tally.count(o.frames);
      const ok = closed(o) && codesOf(o.frames).join() === "auth_required";
      ctx.tally.record("bad-fields", `before login: ${describe(o)}`, ok);
      return;
    }
    const picks = Array.from({ length: ctx.rng.int(2, 6) }, () => ctx.rng.pick(BAD_FIELDS));
    const conn = await tlsConn(ctx.endpoint, true);
    for (const [body] of picks) await writeAll(conn, frameOf(body));
    const o = await observe(conn, {
      timeoutMs: SLACK_MS,
      until: (frames) => codesOf(frames).length >= picks.length,
    });
    ctx.tally.count(o.frames);
    const want = picks.map(([, code]) => code).join();
    const ok = o.end === "done" && codesOf(o.frames).join() === want;
    ctx.tally.record(
      "bad-fields",
      `after login: ${ok ? "each refused with its code -> open" : describe(o)}`,
      ok,
    );
  },

  /** 10 KB sender names: `invalid_message`, connection stays open. */
  async "long-sender"(ctx) {
    const conn = await tlsConn(ctx.endpoint, true);
    const sender = ctx.rng.pick(["S", "é", "😀"]).repeat(10 * 1024);
    await writeAll(conn, encodeFrame({ type: "message", content: "hi", sender }));
    const o = await observe(conn, {
      timeoutMs: SLACK_MS,
      until: (frames) => codesOf(frames).length >= 1,
    });
    ctx.tally.count(o.frames);
    const ok = o.end === "done" && codesOf(o.frames).join() === "invalid_message";
    ctx.tally.record("long-sender", describe(o), ok);
  },

  /**
   * Sequential wrong passwords from 127.0.0.2, then the right one: at most `max-auth-failures`
   * verdicts, then `locked_out` (even for the right password).
   */
  async guess(ctx) {
    const replies: string[] = [];
    for (let i = 0; i < ctx.limits.maxAuthFailures + 2; i++) {
      replies.push(await guessOnce(ctx.endpoint, `guess-${ctx.rng.next()}`, GUESS_ADDRESS));
    }
    const right = await guessOnce(ctx.endpoint, PASSWORD, GUESS_ADDRESS);
    for (const reply of [...replies, right]) {
      if (reply.startsWith("error:")) ctx.tally.count([{ type: "error", code: reply.slice(6) }]);
    }
    const verdicts = replies.filter((reply) => reply === "invalid").length;
    const ok = verdicts <= ctx.limits.maxAuthFailures && right === "error:locked_out";
    ctx.tally.record(
      "guess",
      `${verdicts} verdicts, ${replies.length - verdicts} locked_out; right password: ${right}`,
      ok,
    );
  },

  /** Concurrent wrong passwords from 127.0.0.3: still at most `max-auth-failures` verdicts. */
  async "guess-burst"(ctx) {
    const replies = await Promise.all(
      Array.from(
        { length: 20 },
        () => guessOnce(ctx.endpoint, `burst-${ctx.rng.next()}`, BURST_ADDRESS),
      ),
    );
    for (const reply of replies) {
      if (reply.startsWith("error:")) ctx.tally.count([{ type: "error", code: reply.slice(6) }]);
    }
    const verdicts = replies.filter((reply) => reply === "invalid").length;
    ctx.tally.record(
      "guess-burst",
      `${verdicts} of ${replies.length} concurrent guesses got a verdict`,
      verdicts <= ctx.limits.maxAuthFailures,
    );
  },

  /** Logged in, never reads: must be dropped as a slow consumer while others chat. */
  async "non-reader"(ctx) {
    const conn = await authenticated(ctx.endpoint);
    await sleep(1e9, ctx.waveEnd);
    // Now read whatever is buffered: a dropped client reaches the end of the stream.
    const o = await observe(conn, { timeoutMs: 5000, frames: false });
    ctx.tally.record("non-reader", closed(o) ? "dropped by server" : "still connected", closed(o));
  },

  /** Big messages near the rate limit, reading and discarding what comes back. */
  async flooder(ctx) {
    const conn = await tlsConn(ctx.endpoint, true);
    const content = "F".repeat(ctx.flood.bytes);
    const frame = encodeFrame({ type: "message", content, sender: "flooder" });
    const reading = observeCodes(conn);
    let sent = 0;
    const period = 1000 / ctx.flood.rate;
    while (!ctx.waveEnd.aborted) {
      if (!await writeAll(conn, frame)) break;
      sent++;
      await sleep(period, ctx.waveEnd);
    }
    const codes = await reading.stop();
    for (const [code, n] of Object.entries(codes.codes)) {
      ctx.tally.codes[code] = (ctx.tally.codes[code] ?? 0) + n;
    }
    ctx.tally.floodBytes += (sent - (codes.codes.rate_limited ?? 0)) * content.length;
    ctx.tally.record("flooder", codes.closed ? "dropped" : "served", !codes.closed);
  },

  /** Small messages as fast as possible: most get `rate_limited`, the connection stays. */
  async spammer(ctx) {
    const conn = await tlsConn(ctx.endpoint, true);
    const reading = observeCodes(conn);
    const frame = encodeFrame({ type: "message", content: "spam", sender: "spammer" });
    const batch = new Uint8Array(frame.length * 100);
    for (let i = 0; i < 100; i++) batch.set(frame, i * frame.length);
    for (let i = 0; i < 3 && !ctx.waveEnd.aborted; i++) await writeAll(conn, batch);
    await sleep(500, ctx.waveEnd);
    const codes = await reading.stop();
    for (const [code, n] of Object.entries(codes.codes)) {
      ctx.tally.codes[code] = (ctx.tally.codes[code] ?? 0) + n;
    }
    const limited = codes.codes.rate_limited ?? 0;
    ctx.tally.record(
      "spammer",
      limited > 0 ? "rate_limited, still connected" : "never rate limited",
      limited > 0 && !codes.closed,
    );
  },

  /** Disconnects in the middle of a frame or of a TLS record. */
  async "mid-frame"(ctx) {
    const variant = ctx.rng.int(0, 3);
    if (variant === 0) {
      const conn = await Deno.connect({ hostname: HONEST_ADDRESS, port: ctx.endpoint.port });
      await writeAll(conn, Uint8Array.of(0x16, 0x03, 0x01, 0x02, 0x00, ...ctx.rng.bytes(40)));
      closeQuietly(conn);
      ctx.tally.record("mid-frame", "quit inside a TLS record", true);
      return;
    }
    const loggedIn = variant !== 1;
    const conn = await tlsConn(ctx.endpoint, loggedIn);
    const frame = variant === 3
      ? AUTH_FRAME.subarray(0, ctx.rng.int(1, AUTH_FRAME.length - 1))
      : Uint8Array.of(...lengthPrefix(1000), ...ctx.rng.bytes(ctx.rng.int(0, 100)));
    await writeAll(conn, frame);
    await sleep(ctx.rng.int(0, 50));
    closeQuietly(conn);
    ctx.tally.record(
      "mid-frame",
      `quit inside a frame (${loggedIn ? "after" : "before"} login)`,
      true,
    );
  },

  /** Fast connect/disconnect churn of every flavour until the wave ends. */
  async churn(ctx) {
    let ops = 0;
    let failed = 0;
    while (!ctx.waveEnd.aborted) {
      try {
        await churnOnce(ctx.endpoint, ctx.rng.int(0, 4));
        ops++;
      } catch {
        failed++;
      }
      await sleep(ctx.rng.int(0, 20), ctx.waveEnd);
    }
    ctx.tally.record(
      "churn",
      failed === 0 ? "all connects accepted" : `${failed} connects failed`,
      failed === 0,
    );
    const tally = ctx.tally.kinds.churn!;
    tally.outcomes[`ops`] = (tally.outcomes[`ops`] ?? 0) + ops;
  },
};

/** Bodies that must be refused with the given code, before or after login. */
const BAD_BODIES: readonly [Uint8Array | string, string][] = [
  [Uint8Array.of(0xff, 0xfe, 0xfd), "invalid_json"],
  [
    Uint8Array.of(...ENCODER.encode('{"type":"auth","password":"'), 0xc3, 0x28, 0x22, 0x7d),
    "invalid_json",
  ],
  [Uint8Array.of(...ENCODER.encode('{"type":"'), 0xc0, 0xaf, 0x22, 0x7d), "invalid_json"],
  [Uint8Array.of(...ENCODER.encode('{"type":"'), 0xed, 0xa0, 0x80, 0x22, 0x7d), "invalid_json"],
  ['{"type":', "invalid_json"],
  ["{type:'auth'}", "invalid_json"],
  ['{"type":"message",}', "invalid_json"],
  ["NaN", "invalid_json"],
  ["", "empty_frame"],
  ["[]", "not_an_object"],
  ['[{"type":"auth"}]', "not_an_object"],
  ['"auth"', "not_an_object"],
  ["42", "not_an_object"],
  ["null", "not_an_object"],
  ["true", "not_an_object"],
];

/** First frames that are not a well-formed auth. */
const BAD_AUTH: readonly string[] = [
  '{"type":"auth","password":123}',
  '{"type":"auth"}',
  '{"type":"auth","password":null}',
  '{"type":"auth","password":["x"]}',
  '{"type":"message","content":"hi"}',
  '{"password":"x"}',
  '{"type":["auth"],"password":"x"}',
  '{"type":"AUTH","password":"x"}',
];

/** Frames after login and the non-closing code each must get. */
const BAD_FIELDS: readonly [string, string][] = [
  ['{"type":7}', "unknown_type"],
  ['{"content":"x"}', "unknown_type"],
  ['{"type":null,"content":"x"}', "unknown_type"],
  ['{"type":"shout","content":"x"}', "unknown_type"],
  ['{"type":"message"}', "invalid_message"],
  ['{"type":"message","content":5}', "invalid_message"],
  ['{"type":"message","content":""}', "invalid_message"],
  ['{"type":"message","content":["x"]}', "invalid_message"],
  ['{"type":"message","content":"x","sender":12}', "invalid_message"],
  ['{"type":"message","content":"x","sender":""}', "invalid_message"],
  ['{"type":"message","content":"x","sender":"a\\u0000b"}', "invalid_message"],
  ['{"type":"message","content":"x","sender":{"name":"x"}}', "invalid_message"],
  [`{"type":"auth","password":${JSON.stringify(PASSWORD)}}`, "already_authenticated"],
];

/** Reads frames in the background, counting error codes; `stop()` closes and returns them. */
function observeCodes(conn: Deno.TlsConn): {
  stop(): Promise<{ codes: Record<string, number>; closed: boolean }>;
} {
  const codes: Record<string, number> = {};
  let ended = false;
  const decoder = new FrameDecoder({ maxFrame: CLIENT_MAX_FRAME });
  const reading = (async () => {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await conn.read(buf);
        if (n === null) break;
        for (const body of decoder.push(buf.subarray(0, n))) {
          if (body.length > 512) continue;
          const frame = JSON.parse(DECODER.decode(body));
          if (frame.type === "error") codes[frame.code] = (codes[frame.code] ?? 0) + 1;
        }
      }
    } catch {
      // Closed by us or by the server.
    }
    ended = true;
  })();
  return {
    async stop() {
      const closedByServer = ended;
      closeQuietly(conn);
      await reading;
      return { codes, closed: closedByServer };
    },
  };
}

/** One password guess over `node:tls` from `localAddress`: `ok`, `invalid`, `error:<code>` or `closed`. */
export async function guessOnce(
  endpoint: Endpoint,
  password: string,
  localAddress: string,
): Promise<string> {
  const raw = net.connect({ host: HONEST_ADDRESS, port: endpoint.port, localAddress });
  const socket = tls.connect({ socket: raw, ca: [endpoint.cert], host: HONEST_ADDRESS });
  const gone = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve("timeout"), 10_000);
      const decoder = new FrameDecoder();
      socket.once("secureConnect", () => socket.write(encodeFrame({ type: "auth", password })));
      socket.on("data", (chunk: Uint8Array) => {
        const [body] = decoder.push(chunk);
        if (!body) return;
        const frame = JSON.parse(DECODER.decode(body));
        if (frame.type === "error") resolve(`error:${frame.code}`);
        else resolve(frame.success === true ? "ok" : "invalid");
      });
      socket.on("error", () => resolve("closed"));
      socket.on("end", () => resolve("closed"));
      socket.on("close", () => resolve("closed"));
    });
  } finally {
    clearTimeout(timer);
    socket.destroy();
    raw.destroy();
    await gone;
  }
}

async function churnOnce(endpoint: Endpoint, flavour: number): Promise<void> {
  if (flavour === 0) {
    closeQuietly(await Deno.connect({ hostname: HONEST_ADDRESS, port: endpoint.port }));
  } else if (flavour === 1) {
    // Connect and leave before the handshake completes.
    const conn = await Deno.connectTls({
      hostname: HONEST_ADDRESS,
      port: endpoint.port,
      caCerts: [endpoint.cert],
    });
    closeQuietly(conn);
  } else if (flavour === 2) {
    closeQuietly(await openTls(endpoint));
  } else if (flavour === 3) {
    closeQuietly(await authenticated(endpoint));
  } else {
    closeQuietly(await tlsConn(endpoint, true));
  }
}

/** How many of each kind one wave launches, at intensity 1. */
export const WAVE_MIX: Readonly<Record<AbuseKind, number>> = {
  "tcp-idle": 60,
  "tls-idle": 30,
  "tls-trickle": 5,
  "garbage-tcp": 30,
  "garbage-tls": 30,
  "bad-length": 30,
  "bad-body": 30,
  "bad-fields": 20,
  "long-sender": 5,
  guess: 1,
  "guess-burst": 1,
  "non-reader": 4,
  flooder: 2,
  spammer: 2,
  "mid-frame": 30,
  churn: 2,
};

/** Kinds that last the whole wave (the rest start at random times in its first half). */
const LONG_LIVED: ReadonlySet<AbuseKind> = new Set(["non-reader", "flooder", "spammer", "churn"]);

/**
 * Runs one wave: every kind at once, for `waveMs`: `WAVE_MIX[kind] * intensity` abusers of each
 * kind (at least one), or exactly `mix[kind]` where given. Resolves once every abuser has finished and closed its connections.
 */
export async function runWave(
  ctx: Omit<AbuseContext, "waveEnd">,
  options: { waveMs: number; mix?: Partial<Record<AbuseKind, number>>; intensity?: number },
): Promise<void> {
  const intensity = options.intensity ?? 1;
  const end = new AbortController();
  const timer = setTimeout(() => end.abort(), options.waveMs);
  const tasks: Promise<void>[] = [];
  for (const kind of ABUSE_KINDS) {
    const count = options.mix?.[kind] ??
      (WAVE_MIX[kind] === 0 ? 0 : Math.max(1, Math.round(WAVE_MIX[kind] * intensity)));
    for (let i = 0; i < count; i++) {
      const rng = ctx.rng.fork();
      const start = LONG_LIVED.has(kind) ? 0 : rng.float() * options.waveMs / 2;
      tasks.push((async () => {
        await sleep(start, end.signal);
        try {
          await abusers[kind]({ ...ctx, rng, waveEnd: end.signal });
        } catch (error) {
          ctx.tally.record(
            kind,
            `abuser failed: ${(error as Error).name}: ${(error as Error).message}`,
            false,
          );
        }
      })());
    }
  }
  await Promise.all(tasks);
  clearTimeout(timer);
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
