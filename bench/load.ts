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

/** Where and how to log in. */
export interface Endpoint {
  hostname: string;
  port: number;
  /** PEM of the CA (here: the self-signed server certificate) the clients trust. */
  caCert: string;
  password: string;
}

/** First byte of a stamp, and its last: `~SSSSQQQQQQQQTTTTTTTTTTTTTT~`. */
const MARK = 0x7e;
const SENDER_DIGITS = 4;
const SEQ_DIGITS = 8;
/** Send time in microseconds of `performance.now()`. */
const TIME_DIGITS = 14;
/** Characters a stamp takes at the start of a message's content; the smallest content size. */
export const STAMP_LENGTH = 1 + SENDER_DIGITS + SEQ_DIGITS + TIME_DIGITS + 1;
/** Largest frame a bench client accepts (as the project's client: 1 MiB). */
const MAX_FRAME = 1024 * 1024;
const INITIAL_BUFFER = 16 * 1024;
const DIGIT_0 = 0x30;

/** The current time in whole microseconds of `performance.now()`. */
export function nowUs(): number {
  return Math.floor(performance.now() * 1000);
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

/** One sender's message frame, encoded once; {@link MessageTemplate.stamp} patches it in place. */
export class MessageTemplate {
  /** The sender number written into every stamp. */
  readonly sender: number;
  #frame: Uint8Array;
  #at: number;

  /** A frame whose `content` is `contentBytes` ASCII bytes long (at least {@link STAMP_LENGTH}). */
  constructor(sender: number, contentBytes: number) {
    if (contentBytes < STAMP_LENGTH) {
      throw new RangeError(`Message content must be at least ${STAMP_LENGTH} bytes`);
    }
    this.sender = sender;
    const stamp = "~" + "0".repeat(STAMP_LENGTH - 2) + "~";
    const content = stamp + "x".repeat(contentBytes - STAMP_LENGTH);
    this.#frame = encodeJsonFrame(
      JSON.stringify({ type: "message", content, sender: `bench${sender}` }),
    ).slice();
    this.#at = this.#frame.indexOf(MARK);
    writeDigits(this.#frame, this.#at + 1, SENDER_DIGITS, sender);
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
    writeDigits(this.#frame, this.#at + 1 + SENDER_DIGITS, SEQ_DIGITS, seq);
    writeDigits(this.#frame, this.#at + 1 + SENDER_DIGITS + SEQ_DIGITS, TIME_DIGITS, nowUs());
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
    if (this.received < this.#latencies.length) {
      this.#latencies[this.received] = nowMs - sent / 1000;
    }
    this.received++;
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

  /** The recorded latencies in milliseconds, sorted ascending. */
  latencies(): Float64Array {
    return this.#latencies.slice(0, Math.min(this.received, this.#latencies.length)).sort();
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

/** How {@link BenchClient.connect} opens a client. */
export interface ClientOptions {
  /** Where the client reports deliveries (none if unset or null). */
  tracker?: Tracker | null;
  /** Log in (default); if false, only complete the TLS handshake (a transport floor's client). */
  login?: boolean;
  /**
   * Read nothing after the login reply: the socket stays open and the server's data piles up
   * in the kernel buffers (a stalled reader).
   */
  stallAfterLogin?: boolean;
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
  #reply = Promise.withResolvers<JsonObject | null>();
  #loggedIn = false;
  #closing = false;
  #stall: boolean;
  #loop: Promise<void>;

  private constructor(conn: Deno.TlsConn, index: number, options: ClientOptions) {
    this.conn = conn;
    this.index = index;
    this.#tracker = options.tracker ?? null;
    this.#stall = options.stallAfterLogin ?? false;
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
      // TCP first, so the client can turn Nagle's algorithm off (`Deno.connectTls` cannot):
      // otherwise a sender's small writes wait for delayed ACKs and the bench measures that.
      const tcp = await Deno.connect({ hostname: endpoint.hostname, port: endpoint.port });
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
      const client = new BenchClient(tls, index, options);
      if (options.login === false) return client;
      try {
        await client.send(encodeFrame({ type: "auth", password: endpoint.password }));
        const reply = await client.#reply.promise;
        if (reply?.type !== "auth_result" || reply.success !== true) {
          throw new Error(
            `Login of client ${index} failed: ${
              reply ? JSON.stringify(reply) : `connection ended (${client.endReason})`
            }`,
          );
        }
        client.#loggedIn = true;
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
          this.endReason = "eof";
          break;
        }
        end += n;
        const now = performance.now();
        let offset = 0;
        let need = 0;
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
        if (this.#stall && offset > 0) {
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
    }
  }

  #frame(buf: Uint8Array, start: number, stop: number, now: number): void {
    if (!this.#loggedIn) {
      try {
        this.#reply.resolve(JSON.parse(new TextDecoder().decode(buf.subarray(start, stop))));
      } catch {
        this.#reply.resolve({ type: "unparsable" });
      }
      return;
    }
    const tracker = this.#tracker;
    if (tracker === null) return;
    const at = buf.indexOf(MARK, start);
    if (at >= 0 && at + STAMP_LENGTH <= stop && buf[at + STAMP_LENGTH - 1] === MARK) {
      tracker.record(this.index, buf, at, stop - start + 4, now);
    } else {
      tracker.recordOther(buf.subarray(start, stop));
    }
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
        clients[index] = await BenchClient.connect(endpoint, index, {
          tracker: options.tracker,
          login: options.login,
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
