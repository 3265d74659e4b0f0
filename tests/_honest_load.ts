/**
 * Honest load for the soak: clients that chat at a steady rate, read everything the server sends
 * them as fast as it comes, and check that they receive every message from every other honest
 * client exactly once, in per-sender order, with the sender's real address as `sender_ip`.
 *
 * The clients connect over `node:tls` from several loopback addresses (`honestAddress`), a share
 * of `--max-per-ip` each, so the honest load fits under the per-IP cap.
 *
 * @module
 */
import {
  CLIENT_MAX_FRAME,
  encodeFrame,
  FrameDecoder,
  type JsonObject,
} from "../src/protocol/mod.ts";
import {
  AUTH_FRAME,
  connectFrom,
  DECODER,
  type Endpoint,
  HONEST_FRAME_MAX,
  HONEST_PREFIX,
  honestAddress,
  type NetConn,
  Rng,
  sleep,
} from "./_soak_common.ts";
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
  /** Bytes of every frame received after login (the room's traffic as a member sees it). */
  bytes: number;
  /** Longest time from a send to its arrival here, ms. */
  maxDelayMs: number;
  delaySumMs: number;
}

class HonestClient {
  readonly id: number;
  readonly conn: NetConn;
  readonly counters: HonestCounters = {
    sent: 0,
    received: 0,
    duplicates: 0,
    outOfOrder: 0,
    errors: [],
    foreignFrames: 0,
    foreignBytes: 0,
    lostConnection: null,
    bytes: 0,
    maxDelayMs: 0,
    delaySumMs: 0,
  };
  /** Next expected sequence number from each other honest client. */
  readonly next: Int32Array;
  #addresses: readonly string[];
  #decoder = new FrameDecoder({ maxFrame: CLIENT_MAX_FRAME });
  /** Takes the first frame (the auth reply) while logging in. */
  #first: ((frame: JsonObject | null) => void) | null = null;
  #closing = false;
  #onProgress: () => void;

  constructor(
    id: number,
    conn: NetConn,
    addresses: readonly string[],
    onProgress: () => void,
  ) {
    this.id = id;
    this.conn = conn;
    this.next = new Int32Array(addresses.length);
    this.#addresses = addresses;
    this.#onProgress = onProgress;
  }

  /** Logs in; resolves once `auth_result` arrives, then keeps reading everything as it comes. */
  async start(): Promise<void> {
    const socket = this.conn.socket;
    const reply = new Promise<JsonObject | null>((resolve) => this.#first = resolve);
    socket.on("data", (chunk: Uint8Array) => this.#receive(chunk));
    socket.on("error", (error: Error) => {
      if (!this.#closing) {
        this.counters.lostConnection ??= (error as { code?: string }).code ?? error.name;
      }
    });
    this.conn.closed.then(() => {
      this.#first?.(null);
      if (!this.#closing) this.counters.lostConnection ??= "closed by server";
    });
    await this.conn.write(AUTH_FRAME);
    const frame = await reply;
    if (frame?.success !== true) {
      throw new Error(`Honest login refused: ${JSON.stringify(frame)}`);
    }
  }

  /** Sends one message; resolves once it is in the kernel (so a paused sender waits here). */
  async send(content: string): Promise<boolean> {
    this.counters.sent++;
    try {
      await this.conn.write(
        encodeFrame({ type: "message", content, sender: `${HONEST_PREFIX}${this.id}` }),
      );
      return true;
    } catch {
      if (!this.#closing) this.counters.lostConnection ??= "write failed";
      return false;
    }
  }

  async close(): Promise<void> {
    this.#closing = true;
    this.conn.close();
    await this.conn.closed;
  }

  #receive(chunk: Uint8Array): void {
    const c = this.counters;
    const decoder = this.#decoder;
    try {
      decoder.feed(chunk);
      for (let body = decoder.next(); body !== null; body = decoder.next()) {
        if (this.#first) {
          const first = this.#first;
          this.#first = null;
          first(JSON.parse(DECODER.decode(body)));
          continue;
        }
        c.bytes += 4 + body.length;
        if (body.length > HONEST_FRAME_MAX) {
          c.foreignFrames++;
          c.foreignBytes += body.length;
          continue;
        }
        this.#take(JSON.parse(DECODER.decode(body)), body.length);
      }
    } catch (error) {
      c.errors.push(`unreadable stream: ${(error as Error).message}`);
      this.conn.close();
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
    const [seqText, sentAt] = String(frame.content).split(":", 2);
    const seq = Number(seqText);
    if (frame.sender_ip !== this.#addresses[from]) {
      c.errors.push(`sender_ip ${frame.sender_ip} instead of ${this.#addresses[from]}`);
    }
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
    const delay = performance.now() - Number(sentAt);
    if (Number.isFinite(delay)) {
      c.maxDelayMs = Math.max(c.maxDelayMs, delay);
      c.delaySumMs += delay;
    }
    this.#onProgress();
  }
}

/** Totals of the honest load. */
export interface HonestResult {
  clients: number;
  /** Source addresses the honest clients came from. */
  addresses: string[];
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
  /** Longest and mean time from a send to its delivery, ms. */
  maxDelayMs: number;
  meanDelayMs: number;
}

/**
 * `clients` honest clients that log in first, then each send `rate` messages per second (with
 * jitter) and check that every message of every other honest client arrives exactly once and in
 * order. Each source address carries `perAddress` clients.
 */
export class HonestLoad implements AsyncDisposable {
  #clients: HonestClient[] = [];
  #addresses: string[];
  #rate: number;
  #rng: Rng;
  #stop = new AbortController();
  #loops: Promise<void>[] = [];
  #progress: (() => void) | null = null;

  private constructor(rate: number, rng: Rng, addresses: string[]) {
    this.#rate = rate;
    this.#rng = rng;
    this.#addresses = addresses;
  }

  /** Connects and logs in every client (a few at a time); throws if any login fails. */
  static async start(
    endpoint: Endpoint,
    options: { clients: number; rate: number; rng: Rng; perAddress: number },
  ): Promise<HonestLoad> {
    const addresses = Array.from(
      { length: options.clients },
      (_, i) => honestAddress(i, options.perAddress),
    );
    const load = new HonestLoad(options.rate, options.rng, addresses);
    const onProgress = () => load.#progress?.();
    try {
      for (let first = 0; first < options.clients; first += 20) {
        const ids = Array.from(
          { length: Math.min(20, options.clients - first) },
          (_, i) => first + i,
        );
        await Promise.all(ids.map(async (id) => {
          const conn = await connectFrom(endpoint, {
            localAddress: addresses[id],
            tls: true,
            pull: false,
          });
          const client = new HonestClient(id, conn, addresses, onProgress);
          load.#clients[id] = client;
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
          const sentAt = Math.round(performance.now());
          if (!await client.send(`${seq}:${sentAt}:${pad}`)) return;
          await sleep(period * (0.5 + rng.float()), this.#stop.signal);
        }
      })());
    }
  }

  /** Stops sending and waits for the send loops to end (every message is in the kernel). */
  async stopChatting(): Promise<void> {
    this.#stop.abort();
    await Promise.all(this.#loops);
  }

  /**
   * Waits until every owed delivery has arrived. Flow control may delay deliveries, so this waits
   * as long as they keep coming: it gives up only after `stallMs` without any delivery, or after
   * `maxMs` in all. Returns whether everything arrived.
   */
  async drain(options: { stallMs: number; maxMs: number }): Promise<boolean> {
    const started = Date.now();
    let last = this.result().received;
    let lastProgress = started;
    while (!this.#complete()) {
      const now = Date.now();
      if (now - lastProgress >= options.stallMs || now - started >= options.maxMs) break;
      const progress = new AbortController();
      this.#progress = () => progress.abort();
      await sleep(250, progress.signal);
      this.#progress = null;
      const received = this.result().received;
      if (received !== last) {
        last = received;
        lastProgress = Date.now();
      }
    }
    return this.#complete();
  }

  /**
   * Bytes the first honest client has received since it logged in: the room's traffic as seen
   * by a member that keeps up (the stalled readers compare what they get with it).
   */
  roomBytes(): number {
    return this.#clients[0]?.counters.bytes ?? 0;
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
      addresses: [...new Set(this.#addresses)],
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
      maxDelayMs: 0,
      meanDelayMs: 0,
    };
    let delaySum = 0;
    for (const client of this.#clients) {
      if (!client) continue;
      const c = client.counters;
      const owed = total - c.sent;
      result.expected += owed;
      result.received += c.received;
      result.missing += Math.max(0, owed - c.received);
      result.duplicates += c.duplicates;
      result.outOfOrder += c.outOfOrder;
      result.foreignFrames += c.foreignFrames;
      result.foreignBytes += c.foreignBytes;
      result.maxDelayMs = Math.max(result.maxDelayMs, Math.round(c.maxDelayMs));
      delaySum += c.delaySumMs;
      for (const code of c.errors) result.errors[code] = (result.errors[code] ?? 0) + 1;
      if (c.lostConnection) {
        result.lost[c.lostConnection] = (result.lost[c.lostConnection] ?? 0) + 1;
      }
    }
    result.meanDelayMs = result.received > 0 ? Math.round(delaySum / result.received) : 0;
    return result;
  }

  /** Stops sending and closes every client. Idempotent. */
  async close(): Promise<void> {
    await this.stopChatting();
    await Promise.all(this.#clients.filter(Boolean).map((client) => client.close()));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
