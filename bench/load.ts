/**
 * The client side of the benchmark: Deno TLS clients that speak the chat protocol.
 *
 * The load generator shares the CPU with the server it measures, so it does as little as it can:
 * one read loop per client over `conn.read` into a reused buffer, no JSON parsing after login
 * (a delivery is recognised by a fixed-width stamp in its content), and every sender patches the
 * stamp of one prepared frame in place instead of encoding each message.
 *
 * @module
 */
import { encodeFrame, encodeJsonFrame, type JsonObject } from "../src/protocol/mod.ts";
import {
  checkUpgrade,
  headEnd,
  maskedFrame,
  maskedHeaderSize,
  maskInto,
  OP_CLOSE,
  OP_PING,
  OP_PONG,
  OP_TEXT,
  serverFrameHeader,
  upgradeRequest,
  writeMaskedHeader,
} from "./ws.ts";

/** Where and how to log in. */
export interface Endpoint {
  hostname: string;
  port: number;
  /** PEM of the CA (here: the self-signed server certificate) the clients trust. */
  caCert: string;
  password: string;
  /** The web port (`GET /ws` WebSocket) on `hostname`, if the server has one. */
  webPort?: number;
}

/** First byte of a stamp, and its last: `~SSSSQQQQQQQQTTTTTTTTTTTTTT~`. */
const MARK = 0x7e;
const SENDER_DIGITS = 4;
const SEQ_DIGITS = 8;
/** Send time in microseconds of the bench clock ({@link benchNow}). */
const TIME_DIGITS = 14;
/** Characters a stamp takes at the start of a message's content; the smallest content size. */
export const STAMP_LENGTH = 1 + SENDER_DIGITS + SEQ_DIGITS + TIME_DIGITS + 1;
/** Largest frame a bench client accepts (as the project's client: 1 MiB). */
const MAX_FRAME = 1024 * 1024;
const INITIAL_BUFFER = 16 * 1024;
const DIGIT_0 = 0x30;

/**
 * How far this process's `performance.now()` is from the bench clock, in ms: 0 in the bench's own
 * process; set by {@link setClockBase} in a load agent (`agent.ts`), another process, so that
 * stamps written in one process and read in another are on one clock.
 */
let clockShiftMs = 0;

/**
 * Puts this process on the bench clock of the process whose `performance.timeOrigin` is
 * `baseOriginMs` (both origins are wall-clock times of one machine, so the shift between the two
 * `performance.now()` is their difference).
 */
export function setClockBase(baseOriginMs: number): void {
  clockShiftMs = performance.timeOrigin - baseOriginMs;
}

/** The bench clock in ms: `performance.now()` of the bench's process, in any process. */
export function benchNow(): number {
  return performance.now() + clockShiftMs;
}

/** The current time in whole microseconds of the bench clock ({@link benchNow}). */
export function nowUs(): number {
  return Math.floor(benchNow() * 1000);
}

function writeDigits(buf: Uint8Array, at: number, width: number, value: number): void {
  for (let i = at + width - 1; i >= at; i--) {
    buf[i] = DIGIT_0 + value % 10;
    value = Math.floor(value / 10);
  }
}

function readDigits(buf: Uint8Array, at: number, width: number): number {
  let value = 0;
  for (let i = at; i < at + width; i++) value = value * 10 + buf[i] - DIGIT_0;
  return value;
}

/**
 * One sender's message frame, encoded once; {@link MessageTemplate.stamp} patches it in place.
 * With `ref`, the frame also carries `"ref"`: a copy of the stamp, unique in the room (the
 * sender, the sequence number and the send time in microseconds), which the server's `ack`
 * echoes, so an ack is timed and matched like a delivery. With `web`, the frame is a masked
 * WebSocket text frame (for a client of the web port) instead of a length-prefixed one: the
 * stamp is patched into a plain copy of the body, which is then masked into the frame with a
 * fresh key.
 */
export class MessageTemplate {
  /** The sender number written into every stamp. */
  readonly sender: number;
  #frame: Uint8Array;
  /** Where the stamp is patched: the frame itself, or for `web` the unmasked body. */
  #plain: Uint8Array;
  /** Where the body starts in the frame, for `web`; -1 otherwise. */
  #payloadAt = -1;
  #at: number;
  /** Where the ref's copy of the stamp starts, or -1 without a ref. */
  #refAt = -1;

  /** A frame whose `content` is `contentBytes` ASCII bytes long (at least {@link STAMP_LENGTH}). */
  constructor(
    sender: number,
    contentBytes: number,
    options: { ref?: boolean; web?: boolean } = {},
  ) {
    if (contentBytes < STAMP_LENGTH) {
      throw new RangeError(`Message content must be at least ${STAMP_LENGTH} bytes`);
    }
    this.sender = sender;
    const stamp = "~" + "0".repeat(STAMP_LENGTH - 2) + "~";
    const content = stamp + "x".repeat(contentBytes - STAMP_LENGTH);
    const message: Record<string, string> = { type: "message", content, sender: `bench${sender}` };
    if (options.ref) message.ref = stamp;
    const framed = encodeJsonFrame(JSON.stringify(message)).slice();
    if (options.web) {
      this.#plain = framed.subarray(4);
      this.#frame = new Uint8Array(maskedHeaderSize(this.#plain.length) + this.#plain.length);
      this.#payloadAt = writeMaskedHeader(this.#frame, OP_TEXT, this.#plain.length);
    } else {
      this.#frame = this.#plain = framed;
    }
    const plain = this.#plain;
    this.#at = plain.indexOf(MARK);
    writeDigits(plain, this.#at + 1, SENDER_DIGITS, sender);
    if (options.ref) {
      this.#refAt = plain.indexOf(MARK, this.#at + STAMP_LENGTH);
      plain.copyWithin(this.#refAt, this.#at, this.#at + STAMP_LENGTH);
    }
    if (this.#payloadAt >= 0) maskInto(this.#frame, this.#payloadAt, plain);
  }

  /** Frame size in bytes, prefix included. */
  get byteLength(): number {
    return this.#frame.byteLength;
  }

  /**
   * Writes `seq` and the current time into the frame and returns it. The same buffer is
   * returned every time: send it before stamping again.
   */
  stamp(seq: number): Uint8Array {
    const plain = this.#plain;
    writeDigits(plain, this.#at + 1 + SENDER_DIGITS, SEQ_DIGITS, seq);
    writeDigits(plain, this.#at + 1 + SENDER_DIGITS + SEQ_DIGITS, TIME_DIGITS, nowUs());
    if (this.#refAt >= 0) {
      plain.copyWithin(this.#refAt, this.#at, this.#at + STAMP_LENGTH);
    }
    if (this.#payloadAt >= 0) maskInto(this.#frame, this.#payloadAt, plain);
    return this.#frame;
  }
}

/** What a scenario expects to be delivered. */
export interface TrackerOptions {
  /** Clients that receive (all connected clients, senders included). */
  receivers: number;
  /** Senders are clients 0..senders-1. */
  senders: number;
  /** Messages per sender. */
  messages: number;
  /**
   * Splits the deliveries into groups 0 and 1, by receiver (e.g. TLS and WebSocket clients) or
   * by sender and receiver (e.g. same-node and cross-node deliveries of a cluster), which are
   * also counted and timed apart: see {@link Tracker.group}.
   */
  group?: (receiver: number, sender: number) => 0 | 1;
}

/** The deliveries of one group (see {@link TrackerOptions.group}). */
export interface GroupFigures {
  /** Deliveries of the group that should be made. */
  expected: number;
  /** Deliveries of the group made. */
  received: number;
  /** `performance.now()` (ms) of the group's latest delivery. */
  lastDelivery: number;
  /** The group's latencies in milliseconds, sorted ascending. */
  latencies(): Float64Array;
}

/**
 * Counts and times deliveries: every message goes to every client but its sender, in order.
 * Latency is the receive time of the chunk holding the frame minus the stamp's send time.
 */
export class Tracker {
  /** Deliveries every message should make. */
  readonly expected: number;
  /** Deliveries seen. */
  received = 0;
  /** Frame bytes of the deliveries seen (prefix included). */
  bytes = 0;
  /** Deliveries that came out of order, twice, or after a gap. */
  outOfOrder = 0;
  /** Frames that were neither a stamp nor the login reply (e.g. `error` frames). */
  other = 0;
  /** The first of those frames, for the report. */
  firstOther = "";
  /** `performance.now()` (ms) of the latest delivery. */
  lastDelivery = 0;
  /**
   * Longest time (ms) any receiver waited between two of its deliveries; see also
   * {@link Tracker.openGapMs}.
   */
  maxGapMs = 0;
  #senders: number;
  #messages: number;
  #recipients: number;
  #latencies: Float64Array;
  #last: Int32Array;
  /** `performance.now()` of each receiver's latest delivery; -1 before its first. */
  #lastAt: Float64Array;
  /** Deliveries seen by each receiver. */
  #counts: Uint32Array;
  #acks: Uint32Array;
  #completed: Int32Array;
  #waiters: { sender: number; count: number; resolve: () => void }[] = [];
  #released = false;
  #goal = Infinity;
  #reached: (() => void) | null = null;
  /** The group of each receiver and sender (at `receiver * senders + sender`), or null. */
  #groupOf: Uint8Array | null = null;
  #groupExpected = new Float64Array(2);
  #groupReceived = new Float64Array(2);
  #groupLast = new Float64Array(2);
  #groupLatencies: Float64Array[] = [];

  constructor(options: TrackerOptions) {
    this.#senders = options.senders;
    this.#messages = options.messages;
    this.#recipients = options.receivers - 1;
    this.expected = options.senders * options.messages * this.#recipients;
    this.#latencies = new Float64Array(Math.max(1, this.expected));
    this.#last = new Int32Array(options.receivers * options.senders).fill(-1);
    this.#lastAt = new Float64Array(options.receivers).fill(-1);
    this.#counts = new Uint32Array(options.receivers);
    this.#acks = new Uint32Array(options.senders * options.messages);
    this.#completed = new Int32Array(options.senders);
    if (options.group) {
      this.#groupOf = new Uint8Array(options.receivers * options.senders);
      for (let receiver = 0; receiver < options.receivers; receiver++) {
        for (let sender = 0; sender < options.senders; sender++) {
          const group = options.group(receiver, sender);
          this.#groupOf[receiver * options.senders + sender] = group;
          if (sender !== receiver) this.#groupExpected[group] += options.messages;
        }
      }
      this.#groupLatencies = [0, 1].map((group) =>
        new Float64Array(Math.max(1, this.#groupExpected[group]))
      );
    }
  }

  /** Records one stamped frame that `receiver` got at `nowMs`. */
  record(receiver: number, buf: Uint8Array, at: number, frameBytes: number, nowMs: number): void {
    const sender = readDigits(buf, at + 1, SENDER_DIGITS);
    const seq = readDigits(buf, at + 1 + SENDER_DIGITS, SEQ_DIGITS);
    const sent = readDigits(buf, at + 1 + SENDER_DIGITS + SEQ_DIGITS, TIME_DIGITS);
    if (sender >= this.#senders || seq >= this.#messages || receiver === sender) {
      this.#noteOther(buf.subarray(at, at + STAMP_LENGTH));
      return;
    }
    const slot = receiver * this.#senders + sender;
    if (seq !== this.#last[slot] + 1) this.outOfOrder++;
    if (seq > this.#last[slot]) this.#last[slot] = seq;
    const latency = nowMs - sent / 1000;
    if (this.received < this.#latencies.length) this.#latencies[this.received] = latency;
    this.received++;
    if (this.#groupOf !== null) {
      const group = this.#groupOf[slot];
      const n = this.#groupReceived[group]++;
      const latencies = this.#groupLatencies[group];
      if (n < latencies.length) latencies[n] = latency;
      this.#groupLast[group] = nowMs;
    }
    this.bytes += frameBytes;
    this.lastDelivery = nowMs;
    const previous = this.#lastAt[receiver];
    if (previous >= 0 && nowMs - previous > this.maxGapMs) this.maxGapMs = nowMs - previous;
    this.#lastAt[receiver] = nowMs;
    this.#counts[receiver]++;
    const ack = sender * this.#messages + seq;
    if (++this.#acks[ack] === this.#recipients) {
      if (seq + 1 > this.#completed[sender]) this.#completed[sender] = seq + 1;
      if (this.#waiters.length > 0) this.#wake();
    }
    if (this.received >= this.#goal) {
      this.#goal = Infinity;
      this.#reached?.();
    }
  }

  /** Records a frame that is not a delivery. */
  recordOther(body: Uint8Array): void {
    this.#noteOther(body);
  }

  /**
   * Resolves once `until` deliveries (default: all expected) arrived, or once none arrived for
   * `stallMs` (then the missing ones are lost).
   */
  async settle(stallMs: number, until = this.expected): Promise<void> {
    if (this.received >= until) return;
    const reached = new Promise<void>((resolve) => this.#reached = resolve);
    this.#goal = until;
    let seen = -1;
    let since = performance.now();
    let timer: ReturnType<typeof setInterval> | undefined;
    const stalled = new Promise<void>((resolve) => {
      timer = setInterval(() => {
        if (this.received !== seen) {
          seen = this.received;
          since = performance.now();
        } else if (performance.now() - since >= stallMs) resolve();
      }, 50);
    });
    try {
      await Promise.race([reached, stalled]);
    } finally {
      clearInterval(timer);
      this.#goal = Infinity;
      this.#reached = null;
    }
  }

  /** Resolves once the first `count` messages of `sender` reached every recipient. */
  completed(sender: number, count: number): Promise<void> {
    if (this.#released || this.#completed[sender] >= count) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ sender, count, resolve });
    return promise;
  }

  /** Stops holding senders back in {@link Tracker.completed}, now and later (when giving up). */
  release(): void {
    this.#released = true;
    for (const waiter of this.#waiters) waiter.resolve();
    this.#waiters = [];
  }

  /**
   * The longest wait still open at `nowMs`: over the receivers that `include` selects and that
   * still miss deliveries, `nowMs` minus their latest delivery (or minus `sinceMs`, if none).
   */
  openGapMs(nowMs: number, sinceMs: number, include: (receiver: number) => boolean): number {
    let gap = 0;
    for (let receiver = 0; receiver < this.#counts.length; receiver++) {
      const own = receiver < this.#senders ? this.#messages : 0;
      const due = this.#senders * this.#messages - own;
      if (this.#counts[receiver] >= due || !include(receiver)) continue;
      const last = this.#lastAt[receiver] >= 0 ? this.#lastAt[receiver] : sinceMs;
      gap = Math.max(gap, nowMs - last);
    }
    return gap;
  }

  /** Deliveries `receiver` has seen. */
  receivedBy(receiver: number): number {
    return this.#counts[receiver];
  }

  /** The recorded latencies in milliseconds, sorted ascending. */
  latencies(): Float64Array {
    return this.#latencies.slice(0, Math.min(this.received, this.#latencies.length)).sort();
  }

  /** Whether the deliveries are grouped ({@link TrackerOptions.group}). */
  get hasGroups(): boolean {
    return this.#groupOf !== null;
  }

  /**
   * The figures of group `group` (0 or 1) of {@link TrackerOptions.group}.
   *
   * @throws {Error} if the tracker has no groups
   */
  group(group: 0 | 1): GroupFigures {
    if (this.#groupOf === null) throw new Error("This tracker has no groups");
    const latencies = this.#groupLatencies[group];
    const received = this.#groupReceived[group];
    return {
      expected: this.#groupExpected[group],
      received,
      lastDelivery: this.#groupLast[group],
      latencies: () => latencies.slice(0, Math.min(received, latencies.length)).sort(),
    };
  }

  #wake(): void {
    const waiting = [];
    for (const waiter of this.#waiters) {
      if (this.#completed[waiter.sender] >= waiter.count) waiter.resolve();
      else waiting.push(waiter);
    }
    this.#waiters = waiting;
  }

  #noteOther(body: Uint8Array): void {
    this.other++;
    if (this.firstOther === "") {
      this.firstOther = new TextDecoder().decode(body.subarray(0, 200));
    }
  }
}

/**
 * Looks at one frame a client received after its login reply (`buf[start..stop)`, the body
 * without the length prefix) before the tracker does; returns `true` if it took the frame.
 */
export type FrameHandler = (
  client: BenchClient,
  buf: Uint8Array,
  start: number,
  stop: number,
  nowMs: number,
) => boolean;

/** How {@link BenchClient.connect} opens a client. */
export interface ClientOptions {
  /** Where the client reports deliveries (none if unset or null). */
  tracker?: Tracker | null;
  /** Fields added to the `auth` frame (version 2: `features`, `history`, ...). */
  auth?: JsonObject;
  /** Sees every frame after the login reply first (acks, replays, `welcome`, ...). */
  onFrame?: FrameHandler | null;
  /** Log in (default); if false, only complete the TLS handshake (a transport floor's client). */
  login?: boolean;
  /**
   * Read nothing after the login reply: the socket stays open and the server's data piles up
   * in the kernel buffers (a stalled reader).
   */
  stallAfterLogin?: boolean;
  /**
   * Connect to the web port (`endpoint.webPort`) and speak the protocol over a WebSocket
   * (`GET /ws`): masked text frames out, one frame body per text message in.
   */
  web?: boolean;
}

/** How long one client may take to connect, complete TLS and log in. */
const CONNECT_TIMEOUT_MS = 20_000;

function closeQuietly(conn: Deno.Conn | undefined): void {
  try {
    conn?.close();
  } catch {
    // Already closed.
  }
}

/** A benchmark client (logged in, unless opened for a floor) with its own read loop. */
export class BenchClient {
  /** Position among the clients of a scenario; senders are the first ones. */
  readonly index: number;
  readonly conn: Deno.TlsConn;
  /** Why the read loop ended, if it ended before {@link BenchClient.close}. */
  endReason: string | null = null;
  #tracker: Tracker | null;
  #onFrame: FrameHandler | null;
  #reply = Promise.withResolvers<JsonObject | null>();
  /** Whether the login reply is in: every later frame, even of the same chunk, is the room's. */
  #replied = false;
  #closing = false;
  #stall: boolean;
  /** Whether the client speaks WebSocket (see {@link ClientOptions.web}). */
  readonly web: boolean;
  /** For `web`: the upgrade request's key, until its answer is in. */
  #upgradeKey: string | null = null;
  /** For `web`: resolves with null once upgraded, or with why not. */
  #upgraded = Promise.withResolvers<string | null>();
  /** For `web`: a server frame's header (see `serverFrameHeader`). */
  #header = new Float64Array(3);
  /** For `web`: bytes the frame at the start of the buffer needs, if it is incomplete. */
  #need = 0;
  #loop: Promise<void>;

  private constructor(
    conn: Deno.TlsConn,
    index: number,
    options: ClientOptions,
    upgradeKey: string | null,
  ) {
    this.conn = conn;
    this.index = index;
    this.#tracker = options.tracker ?? null;
    this.#onFrame = options.onFrame ?? null;
    this.#stall = options.stallAfterLogin ?? false;
    // A transport floor's client logs in to nothing: its first frame is already a delivery.
    this.#replied = options.login === false;
    this.web = upgradeKey !== null;
    this.#upgradeKey = upgradeKey;
    this.#loop = this.#run();
  }

  /**
   * Connects and completes TLS, then (unless `login` is false) sends `auth` and waits for a
   * successful `auth_result`. Gives up after 20 s, so a server that never answers cannot hang
   * the bench.
   */
  static async connect(
    endpoint: Endpoint,
    index: number,
    options: ClientOptions = {},
  ): Promise<BenchClient> {
    let conn: Deno.Conn | undefined;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      closeQuietly(conn);
    }, CONNECT_TIMEOUT_MS);
    try {
      const web = options.web ?? false;
      const port = web ? endpoint.webPort : endpoint.port;
      if (port === undefined) throw new Error("The server has no web port");
      // TCP first, so the client can turn Nagle's algorithm off (`Deno.connectTls` cannot):
      // otherwise a sender's small writes wait for delayed ACKs and the bench measures that.
      const tcp = await Deno.connect({ hostname: endpoint.hostname, port });
      conn = tcp;
      if (timedOut) closeQuietly(tcp);
      let tls: Deno.TlsConn;
      try {
        tcp.setNoDelay(true);
        tls = await Deno.startTls(tcp, { hostname: endpoint.hostname, caCerts: [endpoint.caCert] });
        conn = tls;
        if (options.login === false) await tls.handshake();
      } catch (error) {
        closeQuietly(conn);
        throw error;
      }
      const upgrade = web ? upgradeRequest(endpoint.hostname, port) : null;
      const client = new BenchClient(tls, index, options, upgrade?.key ?? null);
      if (options.login === false) return client;
      try {
        const auth = encodeFrame({ type: "auth", password: endpoint.password, ...options.auth });
        if (upgrade) {
          // As a browser does: the first message only once the upgrade is answered.
          await client.send(upgrade.bytes);
          const refused = await client.#upgraded.promise;
          if (refused !== null) throw new Error(`WebSocket of client ${index}: ${refused}`);
          await client.send(maskedFrame(OP_TEXT, auth.subarray(4)));
        } else {
          await client.send(auth);
        }
        const reply = await client.#reply.promise;
        if (reply?.type !== "auth_result" || reply.success !== true) {
          throw new Error(
            `Login of client ${index} failed: ${
              reply ? JSON.stringify(reply) : `connection ended (${client.endReason})`
            }`,
          );
        }
        return client;
      } catch (error) {
        await client.close();
        throw error;
      }
    } catch (error) {
      if (!timedOut) throw error;
      throw new Error(`Client ${index} did not connect within ${CONNECT_TIMEOUT_MS / 1000} s`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Writes all of `bytes`. */
  async send(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.byteLength) {
      offset += await this.conn.write(offset === 0 ? bytes : bytes.subarray(offset));
    }
  }

  /** Reports this client's deliveries to `tracker` from now on (none if null). */
  track(tracker: Tracker | null): void {
    this.#tracker = tracker;
  }

  /** Whether the read loop has ended (the server closed the connection or it failed). */
  get ended(): boolean {
    return this.endReason !== null;
  }

  /** Closes the connection and waits for the read loop. Idempotent. */
  async close(): Promise<void> {
    this.#closing = true;
    closeQuietly(this.conn);
    await this.#loop;
  }

  async #run(): Promise<void> {
    let buf = new Uint8Array(INITIAL_BUFFER);
    let end = 0;
    let stalled = false;
    try {
      while (true) {
        const n = await this.conn.read(end === 0 ? buf : buf.subarray(end));
        if (n === null) {
          this.endReason ??= "eof";
          break;
        }
        end += n;
        const now = benchNow();
        let offset = 0;
        let need = 0;
        if (this.web) {
          if (this.#upgradeKey !== null) {
            // The answer to the upgrade request comes first.
            const blank = headEnd(buf, end);
            if (blank >= 0) {
              const refused = checkUpgrade(
                new TextDecoder().decode(buf.subarray(0, blank)),
                this.#upgradeKey,
              );
              this.#upgradeKey = null;
              this.#upgraded.resolve(refused);
              if (refused !== null) {
                this.endReason = refused;
                break;
              }
              offset = blank + 4;
            }
          }
          if (this.#upgradeKey === null) {
            offset = this.#webFrames(buf, offset, end, now);
            need = this.#need;
          }
        } else {
          while (end - offset >= 4) {
            const length = ((buf[offset] << 24) | (buf[offset + 1] << 16) |
              (buf[offset + 2] << 8) | buf[offset + 3]) >>> 0;
            if (length > MAX_FRAME) throw new RangeError(`Frame of ${length} bytes is too large`);
            const stop = offset + 4 + length;
            if (stop > end) {
              need = 4 + length;
              break;
            }
            this.#frame(buf, offset + 4, stop, now);
            offset = stop;
          }
        }
        if (this.#stall && this.#replied) {
          // The login reply is in: read nothing more, ever.
          stalled = true;
          return;
        }
        if (offset > 0) {
          if (offset < end) buf.copyWithin(0, offset, end);
          end -= offset;
        }
        if (need > buf.length || end === buf.length) {
          const grown = new Uint8Array(Math.max(need, buf.length * 2));
          grown.set(buf.subarray(0, end));
          buf = grown;
        }
      }
    } catch (error) {
      this.endReason = this.#closing ? "closed" : (error as Error).name ?? "error";
    } finally {
      if (!stalled) this.endReason ??= "closed";
      this.#reply.resolve(null);
      this.#upgraded.resolve("connection ended before the upgrade's answer");
    }
  }

  /**
   * Handles the complete WebSocket frames in `buf[offset..end)` (text messages go where a TLS
   * client's frames go; a close frame ends the client; a ping gets its pong) and returns where
   * the first incomplete one starts; sets {@link BenchClient.#need} to its size, if known.
   */
  #webFrames(buf: Uint8Array, offset: number, end: number, now: number): number {
    const header = this.#header;
    this.#need = 0;
    while (serverFrameHeader(buf, offset, end, header)) {
      const op = header[0];
      const start = header[1];
      const length = header[2];
      if (length > MAX_FRAME) throw new RangeError(`Frame of ${length} bytes is too large`);
      const stop = start + length;
      if (stop > end) {
        this.#need = stop - offset;
        break;
      }
      if (op === (OP_TEXT | 0x10)) {
        this.#frame(buf, start, stop, now);
      } else if ((op & 0x0f) === OP_CLOSE) {
        const code = length >= 2 ? (buf[start] << 8) | buf[start + 1] : 1005;
        this.endReason ??= `websocket close ${code}`;
      } else if ((op & 0x0f) === OP_PING) {
        this.send(maskedFrame(OP_PONG, buf.slice(start, stop))).catch(() => {});
      } else if ((op & 0x0f) !== OP_PONG) {
        // The server sends whole text messages only: anything else is unexpected.
        this.#tracker?.recordOther(buf.subarray(offset, Math.min(stop, offset + 200)));
      }
      offset = stop;
    }
    return offset;
  }

  #frame(buf: Uint8Array, start: number, stop: number, now: number): void {
    if (!this.#replied) {
      this.#replied = true;
      try {
        this.#reply.resolve(JSON.parse(new TextDecoder().decode(buf.subarray(start, stop))));
      } catch {
        this.#reply.resolve({ type: "unparsable" });
      }
      return;
    }
    if (this.#onFrame !== null && this.#onFrame(this, buf, start, stop, now)) return;
    const tracker = this.#tracker;
    if (tracker === null) return;
    const at = stampAt(buf, start, stop);
    if (at >= 0) tracker.record(this.index, buf, at, stop - start + 4, now);
    else tracker.recordOther(buf.subarray(start, stop));
  }
}

/** Where the first stamp of a frame body starts, or -1 if it has none. */
export function stampAt(buf: Uint8Array, start: number, stop: number): number {
  const at = buf.indexOf(MARK, start);
  return at >= 0 && at + STAMP_LENGTH <= stop && buf[at + STAMP_LENGTH - 1] === MARK ? at : -1;
}

const ASCII = new TextEncoder();
/** How the server's message frames start (its keys are sorted; `content` comes first). */
const MESSAGE_PREFIX = ASCII.encode(`{"content":`);
/** How its other frames start (`type` first, as `encodeFrame` writes them). */
const TYPE_PREFIX = ASCII.encode(`{"type":"`);
const QUOTE = 0x22;

function startsWith(buf: Uint8Array, start: number, stop: number, prefix: Uint8Array): boolean {
  if (stop - start < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (buf[start + i] !== prefix[i]) return false;
  return true;
}

/**
 * The `type` of a frame body from the server (`""` if it has none): read from its first bytes
 * when its keys are in the server's usual order, parsed as JSON otherwise.
 */
export function frameType(buf: Uint8Array, start: number, stop: number): string {
  if (startsWith(buf, start, stop, MESSAGE_PREFIX)) return "message";
  if (startsWith(buf, start, stop, TYPE_PREFIX)) {
    const from = start + TYPE_PREFIX.length;
    const end = buf.indexOf(QUOTE, from);
    if (end > from && end < stop) return String.fromCharCode(...buf.subarray(from, end));
  }
  return parseFrame(buf, start, stop)?.type as string ?? "";
}

/** A frame body as JSON, or `null` if it is not a JSON object. */
export function parseFrame(buf: Uint8Array, start: number, stop: number): JsonObject | null {
  try {
    const value = JSON.parse(new TextDecoder().decode(buf.subarray(start, stop)));
    return typeof value === "object" && value !== null && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

/** Options for {@link connectMany}. */
export interface ConnectOptions {
  /** Logins in flight at once. */
  concurrency: number;
  /** Where the clients report deliveries. */
  tracker?: Tracker | null;
  /** Log in (default); if false, the clients only complete the TLS handshake. */
  login?: boolean;
  /** Fields added to every client's `auth` frame. */
  auth?: JsonObject;
  /** Sees every client's frames after its login reply first. */
  onFrame?: FrameHandler | null;
  /** Which clients speak WebSocket on the web port (see {@link ClientOptions.web}); none if unset. */
  web?: (index: number) => boolean;
  /** Where each client connects (e.g. the nodes of a cluster); `endpoint` for all if unset. */
  endpointOf?: (index: number) => Endpoint;
}

/**
 * Opens `count` clients (logged in unless `login` is false), at most `concurrency` at a time.
 * If any fails, closes the others and throws the first error.
 */
export async function connectMany(
  endpoint: Endpoint,
  count: number,
  options: ConnectOptions,
): Promise<BenchClient[]> {
  const clients: BenchClient[] = [];
  let next = 0;
  let failure: unknown = undefined;
  const worker = async () => {
    while (next < count && failure === undefined) {
      const index = next++;
      try {
        clients[index] = await BenchClient.connect(options.endpointOf?.(index) ?? endpoint, index, {
          tracker: options.tracker,
          login: options.login,
          auth: options.auth,
          onFrame: options.onFrame,
          web: options.web?.(index) ?? false,
        });
      } catch (error) {
        failure ??= error;
      }
    }
  };
  const workers = Math.max(1, Math.min(options.concurrency, count));
  await Promise.all(Array.from({ length: workers }, worker));
  if (failure !== undefined) {
    await closeAll(clients);
    throw failure;
  }
  return clients;
}

/** Closes every client (holes in the array are skipped). */
export async function closeAll(clients: readonly (BenchClient | undefined)[]): Promise<void> {
  await Promise.all(clients.map((client) => client?.close()));
}

/**
 * Sends messages `first` to `first + count - 1` as fast as the connection takes them, or at
 * most `window` ahead of their full delivery.
 */
export async function sendBurst(
  client: BenchClient,
  template: MessageTemplate,
  options: { first?: number; count: number; tracker: Tracker; window?: number },
): Promise<void> {
  const window = options.window ?? Infinity;
  const first = options.first ?? 0;
  for (let seq = first; seq < first + options.count; seq++) {
    if (seq >= window) await options.tracker.completed(template.sender, seq - window + 1);
    if (client.ended) return;
    await client.send(template.stamp(seq));
  }
}

/**
 * Sends `count` messages at `rate` per second, each at its scheduled time from `startMs`
 * (`performance.now()`), so a late timer does not lower the rate.
 */
export async function sendPaced(
  client: BenchClient,
  template: MessageTemplate,
  options: { count: number; rate: number; startMs: number },
): Promise<void> {
  const interval = 1000 / options.rate;
  for (let seq = 0; seq < options.count; seq++) {
    const wait = options.startMs + seq * interval - performance.now();
    if (wait > 0.5) await new Promise((resolve) => setTimeout(resolve, wait));
    if (client.ended) return;
    await client.send(template.stamp(seq));
  }
}

/**
 * Resolves once `done()` holds, or once `progress()` has not changed for `stallMs` (checked
 * every 10 ms: the figures come from the times recorded with each frame, not from this wait).
 */
async function settleOn(
  progress: () => number,
  done: () => boolean,
  stallMs: number,
): Promise<void> {
  let seen = progress();
  let since = performance.now();
  while (!done()) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    const now = progress();
    if (now !== seen) {
      seen = now;
      since = performance.now();
    } else if (performance.now() - since >= stallMs) return;
  }
}

/**
 * Counts and times the `ack`s of senders whose messages carry a `ref` (a {@link MessageTemplate}
 * made with `ref`): ack latency is the receive time of the chunk holding the ack minus the send
 * time in its ref's stamp.
 */
export class AckTracker {
  /** Acks every run should get: one per message. */
  readonly expected: number;
  /** Acks seen (each message's first). */
  received = 0;
  /** Acks of a message acked before, or of a message no sender of this run sent. */
  unexpected = 0;
  /** Acks that came after the ack of a later message of the same sender. */
  outOfOrder = 0;
  /** `performance.now()` (ms) of the first and the latest ack. */
  firstAck = 0;
  lastAck = 0;
  #senders: number;
  #messages: number;
  #latencies: Float64Array;
  #seen: Uint8Array;
  #acked: Uint32Array;
  #lastSeq: Int32Array;
  #waiters: ({ count: number; resolve: () => void } | null)[];
  #released = false;

  constructor(options: { senders: number; messages: number }) {
    this.#senders = options.senders;
    this.#messages = options.messages;
    this.expected = options.senders * options.messages;
    this.#latencies = new Float64Array(Math.max(1, this.expected));
    this.#seen = new Uint8Array(this.expected);
    this.#acked = new Uint32Array(options.senders);
    this.#lastSeq = new Int32Array(options.senders).fill(-1);
    this.#waiters = new Array(options.senders).fill(null);
  }

  /** Records the ack whose ref's stamp starts at `buf[at]`, received at `nowMs`. */
  record(buf: Uint8Array, at: number, nowMs: number): void {
    const sender = readDigits(buf, at + 1, SENDER_DIGITS);
    const seq = readDigits(buf, at + 1 + SENDER_DIGITS, SEQ_DIGITS);
    const sent = readDigits(buf, at + 1 + SENDER_DIGITS + SEQ_DIGITS, TIME_DIGITS);
    const slot = sender * this.#messages + seq;
    if (sender >= this.#senders || seq >= this.#messages || this.#seen[slot] !== 0) {
      this.unexpected++;
      return;
    }
    this.#seen[slot] = 1;
    if (seq < this.#lastSeq[sender]) this.outOfOrder++;
    else this.#lastSeq[sender] = seq;
    if (this.received === 0) this.firstAck = nowMs;
    this.#latencies[this.received++] = nowMs - sent / 1000;
    this.lastAck = nowMs;
    const acked = ++this.#acked[sender];
    const waiter = this.#waiters[sender];
    if (waiter !== null && acked >= waiter.count) {
      this.#waiters[sender] = null;
      waiter.resolve();
    }
  }

  /** Acks `sender` has received. */
  acked(sender: number): number {
    return this.#acked[sender];
  }

  /** Whether {@link AckTracker.release} was called: senders stop. */
  get released(): boolean {
    return this.#released;
  }

  /** Resolves once `sender` has `count` acks (one waiter per sender), or on release. */
  waitFor(sender: number, count: number): Promise<void> {
    if (this.#released || this.#acked[sender] >= count) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters[sender] = { count, resolve };
    return promise;
  }

  /** Lets every waiting sender go (and stop): the run is over or has stalled. */
  release(): void {
    this.#released = true;
    for (const waiter of this.#waiters) waiter?.resolve();
    this.#waiters.fill(null);
  }

  /** Resolves once every ack arrived, or none arrived for `stallMs`. */
  settle(stallMs: number): Promise<void> {
    return settleOn(() => this.received, () => this.received >= this.expected, stallMs);
  }

  /** The ack latencies in milliseconds, sorted ascending. */
  latencies(): Float64Array {
    return this.#latencies.slice(0, this.received).sort();
  }
}

/**
 * A {@link FrameHandler} that records `ack`s in `acks` and takes `welcome`; message frames and
 * anything else go on to the client's tracker (deliveries, and unexpected frames such as errors).
 */
export function ackFrames(acks: AckTracker): FrameHandler {
  return (_client, buf, start, stop, now) => {
    const type = frameType(buf, start, stop);
    if (type === "ack") {
      const at = stampAt(buf, start, stop);
      if (at < 0) return false;
      acks.record(buf, at, now);
      return true;
    }
    return type === "welcome";
  };
}

/** Most bytes one write of {@link sendWindowed} holds. */
const WINDOW_BATCH_BYTES = 64 * 1024;

/**
 * Sends messages 0 to `count - 1` of `template` (made with `ref`) as fast as a window of
 * `window` unacked messages allows: whatever the window has room for goes out at once, in one
 * write of up to 64 KiB. Stops early if the client ends or `acks` is released.
 */
export async function sendWindowed(
  client: BenchClient,
  template: MessageTemplate,
  options: { count: number; window: number; acks: AckTracker },
): Promise<void> {
  const { count, window, acks } = options;
  const size = template.byteLength;
  const most = Math.max(1, Math.min(window, Math.floor(WINDOW_BATCH_BYTES / size)));
  const batch = new Uint8Array(most * size);
  let seq = 0;
  while (seq < count) {
    const room = window - (seq - acks.acked(template.sender));
    if (room <= 0) {
      await acks.waitFor(template.sender, seq - window + 1);
    }
    if (acks.released || client.ended) return;
    if (room <= 0) continue;
    const n = Math.min(room, count - seq, most);
    for (let i = 0; i < n; i++) batch.set(template.stamp(seq++), i * size);
    await client.send(batch.subarray(0, n * size));
  }
}

const REPLAY_FIELD = ASCII.encode(`"replay":true`);

function contains(buf: Uint8Array, start: number, stop: number, needle: Uint8Array): boolean {
  const first = needle[0];
  for (let i = buf.indexOf(first, start); i >= 0 && i + needle.length <= stop;) {
    if (startsWith(buf, i, stop, needle)) return true;
    i = buf.indexOf(first, i + 1);
  }
  return false;
}

/**
 * Follows the history replays of clients that log in with the `history` feature: each should
 * get the `messages` stamped messages of `sender` (sequence numbers 0 to `messages - 1`, in
 * order, each with `"replay":true`), then `history_end` with that count.
 */
export class ReplayTracker {
  /** Clients whose `history_end` arrived. */
  ended = 0;
  /** Replayed messages seen, over all clients. */
  replayed = 0;
  /** Frames that were neither part of a replay nor `welcome`. */
  other = 0;
  /** The first of those, for the report. */
  firstOther = "";
  #clients: number;
  #messages: number;
  #sender: number;
  #counts: Uint32Array;
  #bad: Uint8Array;
  #endAt: Float64Array;
  #endCount: Int32Array;

  constructor(options: { clients: number; messages: number; sender: number }) {
    this.#clients = options.clients;
    this.#messages = options.messages;
    this.#sender = options.sender;
    this.#counts = new Uint32Array(options.clients);
    this.#bad = new Uint8Array(options.clients);
    this.#endAt = new Float64Array(options.clients).fill(NaN);
    this.#endCount = new Int32Array(options.clients).fill(-1);
  }

  /** The {@link FrameHandler} of the joining clients: takes every frame. */
  readonly handler: FrameHandler = (client, buf, start, stop, now) => {
    const i = client.index;
    const type = frameType(buf, start, stop);
    if (type === "message") {
      const at = stampAt(buf, start, stop);
      const ok = at >= 0 && !(this.#endAt[i] >= 0) && contains(buf, start, stop, REPLAY_FIELD) &&
        readDigits(buf, at + 1, SENDER_DIGITS) === this.#sender &&
        readDigits(buf, at + 1 + SENDER_DIGITS, SEQ_DIGITS) === this.#counts[i];
      if (!ok) this.#bad[i] = 1;
      this.#counts[i]++;
      this.replayed++;
    } else if (type === "history_end") {
      const count = parseFrame(buf, start, stop)?.count;
      if (this.#endAt[i] >= 0) this.#bad[i] = 1;
      else this.ended++;
      this.#endAt[i] = now;
      this.#endCount[i] = typeof count === "number" ? count : -1;
    } else if (type !== "welcome") {
      this.other++;
      if (this.firstOther === "") {
        this.firstOther = new TextDecoder().decode(
          buf.subarray(start, Math.min(stop, start + 200)),
        );
      }
    }
    return true;
  };

  /** Resolves once every client's replay ended, or nothing arrived for `stallMs`. */
  settle(stallMs: number): Promise<void> {
    return settleOn(
      () => this.replayed + this.ended,
      () => this.ended >= this.#clients,
      stallMs,
    );
  }

  /** Times (`performance.now()`, ms) at which each client's `history_end` came, NaN if none. */
  endTimes(): Float64Array {
    return this.#endAt.slice();
  }

  /**
   * Clients whose replay was not exactly the expected messages in order (`"replay":true`, the
   * right stamps) followed by one `history_end` with that count.
   */
  incomplete(): number {
    let n = 0;
    for (let i = 0; i < this.#clients; i++) {
      if (
        this.#bad[i] !== 0 || this.#counts[i] !== this.#messages ||
        this.#endCount[i] !== this.#messages
      ) n++;
    }
    return n;
  }
}
