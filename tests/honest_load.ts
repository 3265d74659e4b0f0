/**
 * Honest load for the soak: clients that chat at a steady rate and check that they receive every
 * message from every other honest client exactly once and in per-sender order.
 *
 * @module
 */
import { CLIENT_MAX_FRAME, encodeFrame, FrameReader, type JsonObject } from "../src/protocol.ts";
import {
  AUTH_FRAME,
  closeQuietly,
  DECODER,
  type Endpoint,
  HONEST_FRAME_MAX,
  HONEST_PREFIX,
  openTls,
  Rng,
  sleep,
  writeAll,
} from "./soak_common.ts";
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
