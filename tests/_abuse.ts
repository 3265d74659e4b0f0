/**
 * The abusers of the soak: one function per kind of abuse, run together in waves, and the tally
 * of what each one saw, judged by what PROTOCOL.md requires. Shared helpers are in
 * `soak_common.ts`.
 *
 * Each abuser connects from an address of its own (see `soak_common.ts`), so the per-IP cap only
 * ever trips for the over-cap burst, which is its point.
 *
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import {
  CLIENT_MAX_FRAME,
  encodeFrame,
  ERRORS,
  FrameDecoder,
  isErrorCode,
  type JsonObject,
} from "../src/protocol/mod.ts";
import { lengthPrefix, PASSWORD } from "./_helpers.ts";
import {
  type AbuseLimits,
  AddressPool,
  AUTH_FRAME,
  BURST_ADDRESS,
  closed,
  codesOf,
  connectFrom,
  DECODER,
  describe,
  ENCODER,
  type End,
  type Endpoint,
  frameOf,
  GUESS_ADDRESS,
  HONEST_FRAME_MAX,
  HONEST_PREFIX,
  type NetConn,
  observe,
  Rng,
  secs,
  SERVER_HOST,
  SLACK_MS,
  sleep,
  writeAll,
} from "./_soak_common.ts";
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
  "over-cap",
  "non-reader",
  "stalled-reader",
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
  /**
   * Runs that hit a known limitation (of the runtime or of the server) that the protocol allows:
   * reported, not counted as a miss.
   */
  limited: number;
  /** Outcome descriptions and how often each happened. */
  outcomes: Record<string, number>;
  /** Counts that are not runs (connections, operations), for the report. */
  notes: Record<string, number>;
}

/** Outcomes of all abuse, and the error codes abusers saw on the wire. */
export class AbuseTally {
  readonly kinds: Partial<Record<AbuseKind, KindTally>> = {};
  /** `error` frame codes received by abusers. */
  readonly codes: Record<string, number> = {};
  /** Bytes the flooders got accepted (and so broadcast to everyone). */
  floodBytes = 0;
  /** Connections over the per-IP cap that the server closed at once, before TLS. */
  refusedAtOnce = 0;
  /** Connections over the per-IP cap told `too_many_connections` after the handshake. */
  refusedWithNotice = 0;

  /**
   * Records one run of `kind`: `ok` true if the outcome is the one the protocol requires, false if
   * not, or `"limitation"` for a known limitation the protocol allows (reported, not a miss).
   */
  record(kind: AbuseKind, outcome: string, ok: boolean | "limitation"): void {
    const tally = this.#kind(kind);
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

  /** Adds `n` to a count of `kind` that is not a run (e.g. connections of a burst). */
  note(kind: AbuseKind, what: string, n: number): void {
    const notes = this.#kind(kind).notes;
    notes[what] = (notes[what] ?? 0) + n;
  }

  /** Counts the error codes in `frames`. */
  count(frames: JsonObject[]): void {
    for (const code of codesOf(frames)) this.codes[code] = (this.codes[code] ?? 0) + 1;
  }

  /** Runs with an unexpected outcome, all kinds. */
  get unexpected(): number {
    return Object.values(this.kinds).reduce((sum, tally) => sum + (tally?.unexpected ?? 0), 0);
  }

  /** Runs that hit a known limitation, all kinds. */
  get limited(): number {
    return Object.values(this.kinds).reduce((sum, tally) => sum + (tally?.limited ?? 0), 0);
  }

  #kind(kind: AbuseKind): KindTally {
    return this.kinds[kind] ??= { runs: 0, unexpected: 0, limited: 0, outcomes: {}, notes: {} };
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
  /** The source address leased to this abuser. */
  address: string;
  /**
   * This abuser's number among those of its kind in the wave: the first few of a kind cover
   * each of its variants once, so every wave produces every error code whatever the seed.
   */
  index: number;
  /** Connections this abuser opened (closed at the end of the wave whatever happened). */
  opened: Set<NetConn>;
  /** Bytes a member that keeps up has received from the room so far, if known. */
  roomBytes?: () => number;
}

type Abuser = (ctx: AbuseContext) => Promise<void>;

/** Connects from the abuser's address (or `address`), raw TCP or TLS. */
async function open(ctx: AbuseContext, useTls: boolean, address = ctx.address): Promise<NetConn> {
  const conn = await connectFrom(ctx.endpoint, {
    localAddress: address,
    tls: useTls,
    timeoutMs: ctx.limits.handshakeTimeoutMs + SLACK_MS,
  });
  ctx.opened.add(conn);
  conn.closed.then(() => ctx.opened.delete(conn));
  return conn;
}

/** A TLS connection, optionally logged in (the `auth_result` is read and checked). */
async function tlsConn(ctx: AbuseContext, loggedIn: boolean): Promise<NetConn> {
  let conn: NetConn;
  try {
    conn = await open(ctx, true);
  } catch (error) {
    // Closed before the handshake: the server refuses it at once (over a cap).
    if (error instanceof Deno.errors.ConnectionReset) throw new Refused("closed before TLS");
    throw error;
  }
  if (!loggedIn) return conn;
  await writeAll(conn, AUTH_FRAME);
  const reply = await readOneFrame(conn);
  if (reply?.success !== true) {
    conn.close();
    await conn.closed;
    const code = reply?.type === "error" ? String(reply.code) : "";
    if (code === "too_many_connections" || code === "server_full") throw new Refused(code);
    throw new Error(`Abuser login refused: ${JSON.stringify(reply)}`);
  }
  return conn;
}

/** A connection the server refused over a cap (at once, or with the notice). */
class Refused extends Error {
  constructor(how: string) {
    super(`refused over the cap (${how})`);
    this.name = "Refused";
  }
}

/** Reads exactly one frame without taking more (so `observe` can read on); null at the end. */
async function readOneFrame(conn: NetConn): Promise<JsonObject | null> {
  const readExactly = async (buf: Uint8Array): Promise<boolean> => {
    let got = 0;
    while (got < buf.length) {
      const n = await conn.read(buf.subarray(got)).catch(() => null);
      if (n === null) return false;
      got += n;
    }
    return true;
  };
  const header = new Uint8Array(4);
  if (!await readExactly(header)) return null;
  const length = new DataView(header.buffer).getUint32(0);
  if (length > CLIENT_MAX_FRAME) return null;
  const body = new Uint8Array(length);
  if (!await readExactly(body)) return null;
  try {
    return JSON.parse(DECODER.decode(body));
  } catch {
    return null;
  }
}

/** Resolves with `promise`'s value, or with `"aborted"` as soon as `signal` aborts. */
function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T | "aborted"> {
  if (signal.aborted) return Promise.resolve("aborted");
  return new Promise((resolve, reject) => {
    const onAbort = () => resolve("aborted");
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * Reads a connection frame by frame in stretches (`run`), keeping its place in between, so a
 * client can read, stop reading for a while (its bytes stay in the kernel) and read on.
 */
class FrameTap {
  #conn: NetConn;
  #decoder = new FrameDecoder({ maxFrame: CLIENT_MAX_FRAME });
  #pending: Promise<{ n: number | null; buf: Uint8Array } | { error: unknown }> | null = null;
  /** Bytes read so far. */
  bytes = 0;
  /** How the server ended the connection, once it has. */
  end: End | null = null;

  constructor(conn: NetConn) {
    this.#conn = conn;
  }

  /**
   * Reads until the server closes the connection (returns how) or `signal` aborts (returns
   * `"open"`); each complete frame body goes to `onBody`, which must not keep it.
   */
  async run(onBody: (body: Uint8Array) => void, signal: AbortSignal): Promise<End> {
    // A read left pending by the last stretch waits for bytes the kernel must deliver again.
    this.#conn.release();
    while (this.end === null) {
      if (!this.#pending) {
        // A fresh buffer per read: the decoder keeps views of what it was fed.
        const buf = new Uint8Array(64 * 1024);
        this.#pending = this.#conn.read(buf).then((n) => ({ n, buf }), (error) => ({ error }));
      }
      const result = await unlessAborted(this.#pending, signal);
      if (result === "aborted") return "open";
      this.#pending = null;
      if ("error" in result) {
        this.end = result.error instanceof Deno.errors.UnexpectedEof ? "eof" : "reset";
      } else if (result.n === null) {
        this.end = "eof";
      } else {
        this.bytes += result.n;
        this.#decoder.feed(result.buf.subarray(0, result.n));
        try {
          for (let body = this.#decoder.next(); body !== null; body = this.#decoder.next()) {
            onBody(body);
          }
        } catch {
          this.end = "reset";
          this.#conn.close();
        }
      }
    }
    return this.end;
  }
}

/**
 * What a member that read the room's traffic saw: per honest sender, every message once and in
 * order from the first one it saw (a gap is a message the server skipped without dropping it).
 */
class RoomView {
  #next = new Map<string, number>();
  honest = 0;
  gaps = 0;
  duplicates = 0;
  codes: Record<string, number> = {};

  take = (body: Uint8Array): void => {
    if (body.length > HONEST_FRAME_MAX) return;
    const frame = JSON.parse(DECODER.decode(body));
    if (frame.type === "error") {
      this.codes[frame.code] = (this.codes[frame.code] ?? 0) + 1;
      return;
    }
    const sender = frame.sender;
    if (frame.type !== "message" || typeof sender !== "string") return;
    if (!sender.startsWith(HONEST_PREFIX)) return;
    const seq = Number(String(frame.content).split(":", 1)[0]);
    const next = this.#next.get(sender);
    if (next !== undefined && seq > next) this.gaps += seq - next;
    if (next !== undefined && seq < next) this.duplicates++;
    this.#next.set(sender, Math.max(next ?? 0, seq + 1));
    this.honest++;
  };
}

/**
 * The verdict on a client that stopped reading while the room carried `roomBytes` (what a member
 * that keeps up received meanwhile): dropped by the server (a stalled reader, or the write
 * timeout), or, if the room sent too little to fill its buffers and queue, still connected and
 * then getting all of it. Never a gap (a message skipped without a drop), dropped or not.
 */
function judgeStall(
  ctx: AbuseContext,
  kind: AbuseKind,
  view: RoomView,
  after: { end: End; roomBytes: number | null; bytesAfter: number },
): void {
  for (const [code, n] of Object.entries(view.codes)) {
    ctx.tally.codes[code] = (ctx.tally.codes[code] ?? 0) + n;
  }
  const wasClosed = after.end === "eof" || after.end === "reset";
  if (view.gaps > 0 || view.duplicates > 0) {
    ctx.tally.record(
      kind,
      `${
        wasClosed ? "dropped" : "kept"
      }, but silently skipped ${view.gaps} and repeated ${view.duplicates} honest messages`,
      false,
    );
    return;
  }
  const codes = Object.keys(view.codes);
  if (codes.length > 0) {
    ctx.tally.record(kind, `got error frames: ${codes.join(",")}`, false);
    return;
  }
  if (after.roomBytes !== null) {
    ctx.tally.note(kind, "MiB the room carried during the stalls", mib(after.roomBytes));
  }
  ctx.tally.note(kind, "MiB read after the stalls", mib(after.bytesAfter));
  if (wasClosed) {
    ctx.tally.record(kind, "dropped by the server, no gap in what it got before", true);
    return;
  }
  // Not dropped: then everything the room carried meanwhile waited for it and arrived after.
  const missing = after.roomBytes === null ? 0 : after.roomBytes - after.bytesAfter;
  ctx.tally.record(
    kind,
    missing > STALL_SLACK
      ? `not dropped, but got only ${mib(after.bytesAfter)} of the ${
        mib(after.roomBytes!)
      } MiB the room carried during its stall`
      : "not dropped (the room did not fill its buffers and queue), then got all of it without a gap",
    missing <= STALL_SLACK,
  );
}

/** What a stalled client may get less than the reference member: a frame or two in flight. */
const STALL_SLACK = 256 * 1024;

function mib(bytes: number): number {
  return Math.round(bytes / 1048576 * 10) / 10;
}

/** How long a logged-in abuser waits for a reply: a stalled reader may hold the room ~1 s. */
const REPLY_MS = SLACK_MS + 2000;

/** The over-cap bursts each get a fresh address from 127.0.3.x. */
let overCapAddress = 0;

/** A TCP connection made just to be counted: it never starts TLS. */
async function silentFrom(ctx: AbuseContext, address: string): Promise<NetConn> {
  return await open(ctx, false, address);
}

/** What an over-cap TLS connection saw: handshake or not, frames, and when it was closed. */
interface OverCapTls {
  secured: boolean;
  frames: JsonObject[];
  closedMs: number | null;
}

/**
 * A TLS client over the cap: connects (TCP first, so the server counts it in order), completes
 * the handshake if the server lets it, sends the auth frame and reads until the server closes.
 */
async function overCapTls(
  endpoint: Endpoint,
  address: string,
  timeoutMs: number,
): Promise<{ result: Promise<OverCapTls> }> {
  const started = performance.now();
  const socket = tls.connect({
    host: SERVER_HOST,
    port: endpoint.port,
    ca: [endpoint.cert],
    localAddress: address,
  } as tls.ConnectionOptions);
  const out: OverCapTls = { secured: false, frames: [], closedMs: null };
  const decoder = new FrameDecoder({ maxFrame: CLIENT_MAX_FRAME });
  socket.on("error", () => {});
  const gone = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  gone.then(() => out.closedMs = Math.round(performance.now() - started));
  socket.once("secureConnect", () => {
    out.secured = true;
    socket.write(AUTH_FRAME);
  });
  socket.on("data", (chunk: Uint8Array) => {
    try {
      for (const body of decoder.push(chunk)) out.frames.push(JSON.parse(DECODER.decode(body)));
    } catch {
      out.frames.push({ type: "garbage" });
    }
  });
  // The TCP connection is made (so the server counts this one before the next), or refused.
  await Promise.race([new Promise((resolve) => socket.once("connect", resolve)), gone]);
  const result = (async () => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<void>((resolve) => timer = setTimeout(resolve, timeoutMs));
    await Promise.race([gone, timeout]);
    clearTimeout(timer);
    const seen = { ...out, frames: [...out.frames] };
    socket.destroy();
    await gone;
    return seen;
  })();
  return { result };
}

const abusers: Record<AbuseKind, Abuser> = {
  /** Raw TCP that never starts TLS: closed by the server at the handshake timeout. */
  async "tcp-idle"(ctx) {
    const started = performance.now();
    const conn = await open(ctx, false);
    const o = await observe(conn, {
      timeoutMs: ctx.limits.handshakeTimeoutMs + SLACK_MS,
      frames: false,
    });
    // The server's clock starts at its accept, ours before the connect: only far off is early.
    const early = performance.now() - started < ctx.limits.handshakeTimeoutMs / 2;
    const outcome = !closed(o)
      ? `socket still open ${secs(SLACK_MS)} after the handshake timeout`
      : early
      ? "closed by the server before the handshake timeout"
      : "closed by the server at the handshake timeout";
    ctx.tally.record("tcp-idle", outcome, closed(o) && !early);
  },

  /** TLS that never authenticates: `auth_timeout`, then close. */
  async "tls-idle"(ctx) {
    const conn = await open(ctx, true);
    const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
    ctx.tally.count(o.frames);
    const codes = codesOf(o.frames);
    ctx.tally.record("tls-idle", describe(o), closed(o) && codes.join() === "auth_timeout");
  },

  /** An auth frame trickled a byte at a time, slower than the auth timeout allows. */
  async "tls-trickle"(ctx) {
    const conn = await open(ctx, true);
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
    const conn = await open(ctx, false);
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
    const conn = await open(ctx, true);
    await writeAll(conn, ctx.rng.bytes(ctx.rng.int(1, 600)));
    const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
    ctx.tally.count(o.frames);
    const codes = codesOf(o.frames);
    const ok = closed(o) && codes.length <= 1 &&
      codes.every((code) => isErrorCode(code) && ERRORS[code].closes);
    ctx.tally.record("garbage-tls", describe(o), ok);
  },

  /** A length prefix of 0, 2^32-1 or max+1 with no body: answered at once, then close. */
  async "bad-length"(ctx) {
    const lengths = [0, 0xffffffff, ctx.limits.maxFrame + 1];
    const loggedIn = ctx.index < 2 * lengths.length ? ctx.index % 2 === 1 : ctx.rng.chance(0.5);
    const length = ctx.index < 2 * lengths.length
      ? lengths[Math.floor(ctx.index / 2)]
      : ctx.rng.pick(lengths);
    const want = length === 0 ? "empty_frame" : "frame_too_large";
    const conn = await tlsConn(ctx, loggedIn);
    await writeAll(conn, lengthPrefix(length));
    // Well under the auth timeout: the server must not wait for (or allocate) the body.
    const o = await observe(conn, {
      timeoutMs: loggedIn ? REPLY_MS : SLACK_MS,
      onFrame: (body) => body.length <= HONEST_FRAME_MAX,
    });
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
    // One body of each code first.
    const codes = [...new Set(BAD_BODIES.map(([, code]) => code))];
    const [body, want] = ctx.index < codes.length
      ? BAD_BODIES.find(([, code]) => code === codes[ctx.index])!
      : ctx.rng.pick(BAD_BODIES);
    const conn = await tlsConn(ctx, loggedIn);
    await writeAll(conn, frameOf(body));
    const o = await observe(conn, {
      timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS,
      onFrame: (body) => body.length <= HONEST_FRAME_MAX,
    });
    ctx.tally.count(o.frames);
    ctx.tally.record("bad-body", describe(o), closed(o) && codesOf(o.frames).join() === want);
  },

  /** Wrong types and field types: refused before login (close), reported after it (stay open). */
  async "bad-fields"(ctx) {
    if (ctx.index === 0 || (ctx.index > 1 && ctx.rng.chance(0.4))) {
      const conn = await open(ctx, true);
      await writeAll(conn, frameOf(ctx.rng.pick(BAD_AUTH)));
      const o = await observe(conn, { timeoutMs: ctx.limits.authTimeoutMs + SLACK_MS });
      ctx.tally.count(o.frames);
      const ok = closed(o) && codesOf(o.frames).join() === "auth_required";
      ctx.tally.record("bad-fields", `before login: ${describe(o)}`, ok);
      return;
    }
    const picks = Array.from({ length: ctx.rng.int(2, 6) }, () => ctx.rng.pick(BAD_FIELDS));
    if (ctx.index === 1) {
      // One frame of each code.
      for (const code of new Set(BAD_FIELDS.map(([, code]) => code))) {
        picks.push(BAD_FIELDS.find(([, c]) => c === code)!);
      }
    }
    const conn = await tlsConn(ctx, true);
    for (const [body] of picks) await writeAll(conn, frameOf(body));
    const o = await observe(conn, {
      timeoutMs: REPLY_MS,
      until: (frames) => codesOf(frames).length >= picks.length,
      onFrame: (body) => body.length <= HONEST_FRAME_MAX,
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
    const conn = await tlsConn(ctx, true);
    const sender = ctx.rng.pick(["S", "é", "😀"]).repeat(10 * 1024);
    await writeAll(conn, encodeFrame({ type: "message", content: "hi", sender }));
    const o = await observe(conn, {
      timeoutMs: REPLY_MS,
      until: (frames) => codesOf(frames).length >= 1,
      onFrame: (body) => body.length <= HONEST_FRAME_MAX,
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

  /**
   * A burst from one fresh address past `--max-per-ip`: `max-per-ip` silent TCP connections fill
   * the cap (each closed at the handshake timeout), then TLS clients and silent ones over it. Each
   * of those must be closed by the server, at once or after a `too_many_connections` frame, never
   * logged in and never held past the handshake timeout. Once the burst is gone the address can
   * log in again (the server counted every close).
   */
  async "over-cap"(ctx) {
    const { maxPerIp, handshakeTimeoutMs } = ctx.limits;
    if (maxPerIp <= 0) {
      ctx.tally.record("over-cap", "no per-IP cap to exceed (--max-per-ip 0)", true);
      return;
    }
    const address = `127.0.3.${1 + overCapAddress++ % 250}`;
    const deadline = handshakeTimeoutMs + SLACK_MS;
    const problems: string[] = [];
    // The cap, filled at once (every connect completes before the next step, so the server
    // accepts all of these before any connection over the cap).
    const fill = await Promise.all(
      Array.from({ length: maxPerIp }, () => silentFrom(ctx, address)),
    );
    const filling = fill.map((conn) => observe(conn, { timeoutMs: deadline, frames: false }));
    // Over it: a few TLS clients (they get the handshake and the notice), silent ones (the first
    // few take the server's refusal slots for this address until the handshake timeout), and
    // TLS clients again (closed at once while those slots are taken).
    const tlsFirst = ctx.rng.int(2, 3);
    const silentOver = ctx.rng.int(6, 8);
    const tlsAfter = ctx.rng.int(2, 3);
    const tlsRuns: Promise<OverCapTls>[] = [];
    for (let i = 0; i < tlsFirst; i++) {
      tlsRuns.push((await overCapTls(ctx.endpoint, address, deadline)).result);
    }
    const silent: Promise<{ closedMs: number | null }>[] = [];
    for (let i = 0; i < silentOver; i++) {
      const started = performance.now();
      const conn = await silentFrom(ctx, address).catch(() => null);
      if (conn === null) {
        silent.push(Promise.resolve({ closedMs: 0 }));
        continue;
      }
      silent.push(
        observe(conn, { timeoutMs: deadline, frames: false }).then((o) => ({
          closedMs: closed(o) ? Math.round(performance.now() - started) : null,
        })),
      );
    }
    for (let i = 0; i < tlsAfter; i++) {
      tlsRuns.push((await overCapTls(ctx.endpoint, address, deadline)).result);
    }
    const atOnce = handshakeTimeoutMs / 2;
    let noticed = 0;
    let closedAtOnce = 0;
    let heldToTimeout = 0;
    for (const run of await Promise.all(tlsRuns)) {
      const codes = codesOf(run.frames);
      const loggedIn = run.frames.some((frame) => frame.type === "auth_result");
      if (run.closedMs === null) {
        problems.push(
          `a TLS client over the cap was still open after ${secs(deadline)} (${
            run.secured ? "handshake done" : "no handshake"
          }, frames ${JSON.stringify(codes)})`,
        );
      } else if (loggedIn) problems.push("a TLS client over the cap logged in");
      else if (run.secured && codes.join() === "too_many_connections") noticed++;
      else if (!run.secured && run.frames.length === 0 && run.closedMs < atOnce) closedAtOnce++;
      else if (!run.secured && run.frames.length === 0) heldToTimeout++;
      else {
        problems.push(
          `a TLS client over the cap saw ${run.secured ? "a handshake and " : ""}${
            JSON.stringify(codes)
          }`,
        );
      }
    }
    for (const run of await Promise.all(silent)) {
      if (run.closedMs === null) problems.push("a silent connection over the cap was never closed");
      else if (run.closedMs < atOnce) closedAtOnce++;
      else heldToTimeout++;
    }
    let held = 0;
    for (const o of await Promise.all(filling)) {
      if (!closed(o)) held++;
    }
    if (held > 0) {
      problems.push(`${held} of the ${maxPerIp} admitted silent connections never closed`);
    }
    // The address is free again once the server has seen every close.
    let again = "no login tried";
    for (let attempt = 0; attempt < 10 && problems.length === 0; attempt++) {
      const reply = await guessOnce(ctx.endpoint, PASSWORD, address);
      again = reply;
      if (reply === "ok") break;
      await sleep(200);
    }
    if (problems.length === 0 && again !== "ok") {
      problems.push(`the address could not log in afterwards: ${again}`);
    }
    ctx.tally.refusedAtOnce += closedAtOnce;
    ctx.tally.refusedWithNotice += noticed;
    ctx.tally.codes.too_many_connections = (ctx.tally.codes.too_many_connections ?? 0) + noticed;
    ctx.tally.note("over-cap", "admitted up to the cap, closed at the handshake timeout", maxPerIp);
    ctx.tally.note("over-cap", "over the cap: closed at once", closedAtOnce);
    ctx.tally.note("over-cap", "over the cap: handshake, too_many_connections, closed", noticed);
    ctx.tally.note("over-cap", "over the cap: closed at the handshake timeout", heldToTimeout);
    ctx.tally.record(
      "over-cap",
      problems.length === 0
        ? "every connection over the cap closed (at once or after too_many_connections), none logged in; the address logs in again afterwards"
        : problems.join("; "),
      problems.length === 0,
    );
  },

  /**
   * Logs in and never reads a byte (not even its `auth_result`) until the wave ends, while the
   * room carries the flood: dropped by the server (a stalled reader, or the write timeout). If it
   * is not, the room must not have sent more than the buffers on its way hold, and it must then
   * get all of it, without a gap.
   */
  async "non-reader"(ctx) {
    const conn = await open(ctx, true);
    conn.hold();
    await writeAll(conn, AUTH_FRAME);
    const roomAtStall = ctx.roomBytes?.();
    await sleep(1e9, ctx.waveEnd);
    const roomBytes = roomAtStall === undefined ? null : ctx.roomBytes!() - roomAtStall;
    const view = new RoomView();
    const tap = new FrameTap(conn);
    const end = await readFor(tap, view, SLACK_MS);
    conn.close();
    await conn.closed;
    judgeStall(ctx, "non-reader", view, { end, roomBytes, bytesAfter: tap.bytes });
  },

  /**
   * Logs in, reads the room like any member for a moment, then stops reading in the middle of the
   * stream until the wave ends: dropped by the server about a second after its buffers and queue
   * fill, while the honest clients keep getting everything. What it read, before and after, has
   * no gap.
   */
  async "stalled-reader"(ctx) {
    const conn = await tlsConn(ctx, true);
    const view = new RoomView();
    const tap = new FrameTap(conn);
    await readFor(tap, view, ctx.rng.int(200, 800));
    conn.hold();
    const before = tap.bytes;
    const roomAtStall = ctx.roomBytes?.();
    await sleep(1e9, ctx.waveEnd);
    const roomBytes = roomAtStall === undefined ? null : ctx.roomBytes!() - roomAtStall;
    const end = tap.end ?? await readFor(tap, view, SLACK_MS);
    conn.close();
    await conn.closed;
    judgeStall(ctx, "stalled-reader", view, {
      end,
      roomBytes,
      bytesAfter: tap.bytes - before,
    });
  },

  /** Big messages near the rate limit, reading (and checking) what comes back. */
  async flooder(ctx) {
    const conn = await tlsConn(ctx, true);
    const content = "F".repeat(ctx.flood.bytes);
    const frame = encodeFrame({ type: "message", content, sender: "flooder" });
    const view = new RoomView();
    const tap = new FrameTap(conn);
    const stopReading = new AbortController();
    const reading = tap.run(view.take, stopReading.signal);
    let sent = 0;
    const period = 1000 / ctx.flood.rate;
    while (!ctx.waveEnd.aborted && tap.end === null) {
      // A paused sender waits here (TCP backpressure) until the room is free again.
      const wrote = await unlessAborted(writeAll(conn, frame), ctx.waveEnd);
      if (wrote !== true) break;
      sent++;
      await sleep(period, ctx.waveEnd);
    }
    // What is already on its way still reaches the room; a little grace to read the replies.
    await sleep(200);
    const closedByServer = tap.end !== null;
    stopReading.abort();
    await reading;
    conn.close();
    await conn.closed;
    for (const [code, n] of Object.entries(view.codes)) {
      ctx.tally.codes[code] = (ctx.tally.codes[code] ?? 0) + n;
    }
    ctx.tally.floodBytes += (sent - (view.codes.rate_limited ?? 0)) * content.length;
    const problems = [
      closedByServer ? "dropped" : "",
      view.gaps + view.duplicates > 0 ? `saw ${view.gaps} gaps in the honest traffic` : "",
    ].filter(Boolean);
    ctx.tally.record(
      "flooder",
      problems.length === 0 ? "served, read the room without a gap" : problems.join(", "),
      problems.length === 0,
    );
  },

  /**
   * Small messages as fast as possible: the excess is dropped with `rate_limited`, one notice per
   * token period at most, and the connection stays.
   */
  async spammer(ctx) {
    const conn = await tlsConn(ctx, true);
    const view = new RoomView();
    const tap = new FrameTap(conn);
    const stopReading = new AbortController();
    const reading = tap.run(view.take, stopReading.signal);
    const frame = encodeFrame({ type: "message", content: "spam", sender: "spammer" });
    const batch = new Uint8Array(frame.length * 100);
    for (let i = 0; i < 100; i++) batch.set(frame, i * frame.length);
    const started = performance.now();
    for (let i = 0; i < 3 && !ctx.waveEnd.aborted; i++) {
      if (await unlessAborted(writeAll(conn, batch), ctx.waveEnd) !== true) break;
    }
    await sleep(REPLY_MS);
    const closedByServer = tap.end !== null;
    stopReading.abort();
    await reading;
    const elapsed = performance.now() - started;
    conn.close();
    await conn.closed;
    for (const [code, n] of Object.entries(view.codes)) {
      ctx.tally.codes[code] = (ctx.tally.codes[code] ?? 0) + n;
    }
    const notices = view.codes.rate_limited ?? 0;
    // One notice per token period (1/rate s) at most, plus one for the edge.
    const allowed = Math.ceil(elapsed / 1000 * ctx.limits.rate) + 1;
    const ok = notices > 0 && notices <= allowed && !closedByServer;
    ctx.tally.record(
      "spammer",
      closedByServer
        ? "dropped"
        : notices === 0
        ? "never rate limited"
        : notices > allowed
        ? `${notices} rate_limited notices in ${secs(elapsed)} (more than one per token period)`
        : "rate_limited (at most one notice per token period), still connected",
      ok,
    );
    ctx.tally.note("spammer", "rate_limited notices", notices);
  },

  /** Disconnects in the middle of a frame or of a TLS record. */
  async "mid-frame"(ctx) {
    const variant = ctx.rng.int(0, 3);
    if (variant === 0) {
      const conn = await open(ctx, false);
      await writeAll(conn, Uint8Array.of(0x16, 0x03, 0x01, 0x02, 0x00, ...ctx.rng.bytes(40)));
      conn.close();
      await conn.closed;
      ctx.tally.record("mid-frame", "quit inside a TLS record", true);
      return;
    }
    const loggedIn = variant !== 1;
    const conn = await tlsConn(ctx, loggedIn);
    const frame = variant === 3
      ? AUTH_FRAME.subarray(0, ctx.rng.int(1, AUTH_FRAME.length - 1))
      : Uint8Array.of(...lengthPrefix(1000), ...ctx.rng.bytes(ctx.rng.int(0, 100)));
    await writeAll(conn, frame);
    await sleep(ctx.rng.int(0, 50));
    conn.close();
    await conn.closed;
    ctx.tally.record(
      "mid-frame",
      `quit inside a frame (${loggedIn ? "after" : "before"} login)`,
      true,
    );
  },

  /**
   * Fast connect/disconnect churn of every flavour from one address until the wave ends: every
   * connect is accepted. A connection is counted until its socket is released, and the server
   * releases it as soon as the peer leaves, even inside the TLS handshake, so churn from one
   * address never pushes it over `--max-per-ip`: a refusal is unexpected.
   */
  async churn(ctx) {
    let ops = 0;
    let refused = 0;
    let failed = 0;
    const reasons = new Set<string>();
    while (!ctx.waveEnd.aborted) {
      try {
        await churnOnce(ctx, ctx.rng.int(0, 4));
        ops++;
      } catch (error) {
        if (error instanceof Refused) {
          refused++;
        } else {
          failed++;
          reasons.add(String((error as Error).message).slice(0, 80));
        }
      }
      await sleep(ctx.rng.int(0, 20), ctx.waveEnd);
    }
    if (failed > 0) {
      ctx.tally.record("churn", `${failed} connects failed: ${[...reasons].join("; ")}`, false);
    } else if (refused > 0) {
      ctx.tally.record(
        "churn",
        `${refused} connects refused over the per-IP cap: closed connections still counted`,
        false,
      );
    } else {
      ctx.tally.record("churn", "all connects accepted", true);
    }
    ctx.tally.note("churn", "connections opened and closed", ops);
    if (refused > 0) ctx.tally.note("churn", "connects refused over the per-IP cap", refused);
  },
};

/** Reads for `ms` (or until the server closes the connection); returns how it ended. */
async function readFor(tap: FrameTap, view: RoomView, ms: number): Promise<End> {
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), ms);
  try {
    return await tap.run(view.take, stop.signal);
  } finally {
    clearTimeout(timer);
  }
}

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

/** One password guess over `node:tls` from `localAddress`: `ok`, `invalid`, `error:<code>` or `closed`. */
export async function guessOnce(
  endpoint: Endpoint,
  password: string,
  localAddress: string,
): Promise<string> {
  const raw = net.connect({ host: SERVER_HOST, port: endpoint.port, localAddress });
  const socket = tls.connect({ socket: raw, ca: [endpoint.cert], host: SERVER_HOST });
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

/** The first bytes of a TLS record carrying a ClientHello, and no more. */
const HALF_HELLO = Uint8Array.of(0x16, 0x03, 0x01, 0x01, 0x00, 0x01);

async function churnOnce(ctx: AbuseContext, flavour: number): Promise<void> {
  let conn: NetConn;
  if (flavour === 0) {
    conn = await open(ctx, false);
  } else if (flavour === 1) {
    // Connect and leave inside the handshake.
    conn = await open(ctx, false);
    await writeAll(conn, HALF_HELLO);
  } else if (flavour === 2) {
    conn = await tlsConn(ctx, false);
  } else if (flavour === 3) {
    conn = await tlsConn(ctx, false);
    await writeAll(conn, AUTH_FRAME);
  } else {
    conn = await tlsConn(ctx, true);
  }
  conn.close();
  await conn.closed;
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
  "over-cap": 1,
  "non-reader": 2,
  "stalled-reader": 2,
  flooder: 2,
  spammer: 2,
  "mid-frame": 30,
  churn: 2,
};

/** Kinds that last the whole wave (the rest start at random times in its first half). */
const LONG_LIVED: ReadonlySet<AbuseKind> = new Set([
  "non-reader",
  "stalled-reader",
  "flooder",
  "spammer",
  "churn",
]);

/** Source addresses of the abusers, shared by all waves. */
const POOL = new AddressPool();

/**
 * Runs one wave: every kind at once, for `waveMs`: `WAVE_MIX[kind] * intensity` abusers of each
 * kind (at least one), or exactly `mix[kind]` where given, each from its own leased address.
 * Resolves once every abuser has finished and every connection it opened is closed.
 */
export async function runWave(
  ctx: Omit<AbuseContext, "waveEnd" | "address" | "opened" | "index">,
  options: { waveMs: number; mix?: Partial<Record<AbuseKind, number>>; intensity?: number },
): Promise<void> {
  const intensity = options.intensity ?? 1;
  const end = new AbortController();
  const timer = setTimeout(() => end.abort(), options.waveMs);
  const tasks: Promise<void>[] = [];
  const opened = new Set<NetConn>();
  for (const kind of ABUSE_KINDS) {
    const count = options.mix?.[kind] ??
      (WAVE_MIX[kind] === 0 ? 0 : Math.max(1, Math.round(WAVE_MIX[kind] * intensity)));
    for (let i = 0; i < count; i++) {
      const rng = ctx.rng.fork();
      const start = LONG_LIVED.has(kind) ? 0 : rng.float() * options.waveMs / 2;
      tasks.push((async () => {
        await sleep(start, end.signal);
        const address = POOL.acquire();
        try {
          await abusers[kind]({ ...ctx, rng, waveEnd: end.signal, address, opened, index: i });
        } catch (error) {
          ctx.tally.record(
            kind,
            `abuser failed: ${(error as Error).name}: ${(error as Error).message}`,
            false,
          );
        } finally {
          POOL.release(address);
        }
      })());
    }
  }
  await Promise.all(tasks);
  clearTimeout(timer);
  // Whatever an abuser left open (it failed half-way) is closed now.
  const left = [...opened];
  for (const conn of left) conn.close();
  await Promise.all(left.map((conn) => conn.closed));
}
