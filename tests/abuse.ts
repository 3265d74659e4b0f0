/**
 * The abusers of the soak: one function per kind of abuse, run together in waves, and the tally
 * of what each one saw. Shared helpers are in `soak_common.ts`.
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
  type JsonObject,
} from "../src/protocol.ts";
import { lengthPrefix, PASSWORD } from "./helpers.ts";
import {
  type AbuseLimits,
  AUTH_FRAME,
  BURST_ADDRESS,
  closed,
  closeQuietly,
  codesOf,
  DECODER,
  describe,
  ENCODER,
  type Endpoint,
  frameOf,
  GUESS_ADDRESS,
  HONEST_ADDRESS,
  observe,
  openTls,
  Rng,
  secs,
  SLACK_MS,
  sleep,
  writeAll,
} from "./soak_common.ts";
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
