/**
 * A load agent: one process of the bench's load generator for the scale scenarios (11 to 14),
 * which hold up to ten thousand clients, more than one process of Deno TLS clients should read
 * for while it is measured. The bench (`fleet.ts`) starts several agents and gives each a share
 * of the clients; an agent holds its clients with the same {@link BenchClient} and
 * {@link Tracker} as the single-process scenarios, stamps and reads on the bench's clock (see
 * `setClockBase`), and answers with counts and a latency histogram, which the bench adds up.
 *
 * ```sh
 * deno run --no-prompt --allow-net bench/agent.ts   # then one JSON command per line on stdin
 * ```
 *
 * Every command is a JSON object on one line of stdin with a numeric `id` and a `cmd`; its answer
 * is one line of stdout `{"id":..,"ok":true,...}` (or `"ok":false,"error":".."`) once it is done.
 * Commands run concurrently (a `churn` runs while `settle` waits), except that each is answered
 * once. The agent exits when stdin ends.
 *
 * @module
 */
import { type JsonObject } from "../src/protocol/mod.ts";
import {
  BenchClient,
  benchNow,
  type Endpoint,
  type FrameHandler,
  frameType,
  MessageTemplate,
  setClockBase,
  Tracker,
} from "./load.ts";

/** A sparse latency histogram: bucket ({@link HIST_BUCKET_MS} wide) to count. */
export type Histogram = Record<string, number>;

/** Width of a latency histogram's buckets, ms (percentiles are exact to this). */
export const HIST_BUCKET_MS = 0.01;

/** What an agent is told to do. */
export type AgentCommand =
  | { cmd: "init"; endpoint: Endpoint; clockOriginMs: number }
  | {
    cmd: "connect";
    /** Global index of the first client; the agent opens `count` from there. */
    first: number;
    count: number;
    concurrency: number;
    /** Which of them are WebSocket clients of the web port: none, or every odd index. */
    web: "none" | "odd";
    /** Fields added to the `auth` frame of the WebSocket clients (a browser's features). */
    webAuth?: JsonObject;
    /** Log in (default); if false, only complete the TLS handshake (a transport floor). */
    login?: boolean;
  }
  | { cmd: "track"; receivers: number; senders: number; messages: number }
  | {
    cmd: "send";
    /** This agent's senders (client indices; all senders are clients 0..totalSenders-1). */
    senders: number[];
    /** Senders over all agents: sender i starts i/totalSenders of an interval after `startMs`. */
    totalSenders: number;
    rate: number;
    count: number;
    /** Bench clock (ms) of the first send. */
    startMs: number;
    bytes: number;
  }
  | { cmd: "settle"; stallMs: number }
  | { cmd: "close" }
  | {
    cmd: "churn";
    /** Global index of the first churning client (above every steady client's). */
    first: number;
    /** Connections opened per second (each logs in, then leaves at once). */
    rate: number;
    seconds: number;
    /** Most connections in flight at once; a start that would exceed it is skipped. */
    inFlight: number;
    /** Bench clock (ms) of the churn's start, the same for every agent. */
    startMs: number;
    /** This agent's place among `agents`: its starts fall between the other agents'. */
    agent: number;
    agents: number;
    web: "none" | "odd";
    webAuth?: JsonObject;
  };

/** What `settle` answers: this agent's share of a tracked run. */
export interface SettleReply {
  /** Deliveries this agent's clients should get, and got (duplicates included). */
  expected: number;
  received: number;
  /** Deliveries missing, receiver by receiver (a duplicate at one does not hide a loss at another). */
  missing: number;
  outOfOrder: number;
  /** Frames that were neither a delivery nor a frame of a feature the client asked for. */
  other: number;
  firstOther: string;
  /** Latencies of the deliveries, in {@link HIST_BUCKET_MS} buckets. */
  histogram: Histogram;
  /** Clients whose connection ended, and why the first one did. */
  ended: number;
  endReason: string;
  /** Longest delay of the agent's own event loop since `track` (a 10 ms timer's lateness), ms. */
  loopLagMs: number;
  /** Frames of the WebSocket clients' features (welcome, presence, ...) since the agent started. */
  featureFrames: number;
}

/** What `churn` answers. */
export interface ChurnReply {
  /** Connections that logged in (and left), that failed, and starts skipped at `inFlight`. */
  opened: number;
  failed: number;
  skipped: number;
  firstError: string;
  /** Time to connect, complete TLS and log in, in {@link HIST_BUCKET_MS} buckets. */
  histogram: Histogram;
}

/** Frame types of version 2 features a browser asks for, which an agent's client takes quietly. */
const FEATURE_FRAMES = new Set(["welcome", "joined", "left", "who", "history_end", "ack"]);

/** Frames of the features the WebSocket clients asked for are not deliveries: they are counted. */
let featureFrames = 0;
const takeFeatureFrames: FrameHandler = (_client, buf, start, stop) => {
  const type = frameType(buf, start, stop);
  if (!FEATURE_FRAMES.has(type)) return false;
  featureFrames++;
  return true;
};

/** Adds `ms` to a histogram. */
function count(histogram: Histogram, ms: number): void {
  const bucket = String(Math.max(0, Math.round(ms / HIST_BUCKET_MS)));
  histogram[bucket] = (histogram[bucket] ?? 0) + 1;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The state of one agent process. */
class Agent {
  #endpoint: Endpoint | null = null;
  #clients = new Map<number, BenchClient>();
  #tracker: Tracker | null = null;
  /** Deliveries this agent's clients should get in the tracked run, in all and each. */
  #expected = 0;
  #due = new Map<number, number>();
  #loopLag = 0;
  #lagTimer: ReturnType<typeof setInterval>;
  /** Set once stdin ended (the bench stopped or died): loops stop starting anything new. */
  #stopping = false;

  constructor() {
    let last = performance.now();
    this.#lagTimer = setInterval(() => {
      const now = performance.now();
      this.#loopLag = Math.max(this.#loopLag, now - last - 10);
      last = now;
    }, 10);
  }

  get endpoint(): Endpoint {
    if (this.#endpoint === null) throw new Error("init first");
    return this.#endpoint;
  }

  async run(command: AgentCommand): Promise<JsonObject> {
    switch (command.cmd) {
      case "init":
        this.#endpoint = command.endpoint;
        setClockBase(command.clockOriginMs);
        return {};
      case "connect":
        return await this.#connect(command);
      case "track":
        return this.#track(command);
      case "send":
        return await this.#send(command);
      case "settle":
        return await this.#settle(command.stallMs) as unknown as JsonObject;
      case "close":
        return { closed: await this.#close() };
      case "churn":
        return await this.#churn(command) as unknown as JsonObject;
    }
  }

  /** Opens client `index`; it reports to `tracker` (churning clients report nowhere). */
  #open(
    index: number,
    tracker: Tracker | null,
    web: "none" | "odd",
    webAuth?: JsonObject,
    login = true,
  ): Promise<BenchClient> {
    const isWeb = login && web === "odd" && index % 2 === 1;
    return BenchClient.connect(this.endpoint, index, {
      tracker,
      login,
      web: isWeb,
      auth: isWeb ? webAuth : undefined,
      onFrame: isWeb && webAuth ? takeFeatureFrames : null,
    });
  }

  async #connect(command: Extract<AgentCommand, { cmd: "connect" }>): Promise<JsonObject> {
    const start = performance.now();
    let next = command.first;
    const end = command.first + command.count;
    let failed = 0;
    let firstError = "";
    const worker = async () => {
      while (next < end && !this.#stopping) {
        const index = next++;
        try {
          const client = await this.#open(
            index,
            this.#tracker,
            command.web,
            command.webAuth,
            command.login,
          );
          this.#clients.set(index, client);
        } catch (error) {
          failed++;
          firstError ||= errorText(error);
        }
      }
    };
    const workers = Math.max(1, Math.min(command.concurrency, command.count));
    await Promise.all(Array.from({ length: workers }, worker));
    return { opened: command.count - failed, failed, firstError, ms: performance.now() - start };
  }

  #track(command: Extract<AgentCommand, { cmd: "track" }>): JsonObject {
    const tracker = new Tracker(command);
    this.#tracker = tracker;
    this.#expected = 0;
    this.#due.clear();
    for (const [index, client] of this.#clients) {
      client.track(tracker);
      if (client.ended) continue;
      const due = command.senders * command.messages -
        (index < command.senders ? command.messages : 0);
      this.#due.set(index, due);
      this.#expected += due;
    }
    this.#loopLag = 0;
    return { expected: this.#expected };
  }

  async #send(command: Extract<AgentCommand, { cmd: "send" }>): Promise<JsonObject> {
    const interval = 1000 / command.rate;
    let sent = 0;
    let late = 0;
    await Promise.all(command.senders.map(async (index) => {
      const client = this.#clients.get(index);
      if (!client) throw new Error(`client ${index} is not this agent's`);
      const template = new MessageTemplate(index, command.bytes, { web: client.web });
      // The senders of all agents start apart, by their index among all of them, so that
      // their messages do not leave in bunches.
      const offset = index * interval / command.totalSenders;
      for (let seq = 0; seq < command.count && !this.#stopping; seq++) {
        const at = command.startMs + offset + seq * interval;
        const wait = at - benchNow();
        if (wait > 0.5) await delay(wait);
        else if (wait < -interval / 2) late++;
        if (client.ended) return;
        await client.send(template.stamp(seq));
        sent++;
      }
    }));
    return { sent, late };
  }

  async #settle(stallMs: number): Promise<SettleReply> {
    const tracker = this.#tracker;
    if (tracker === null) throw new Error("track first");
    await tracker.settle(stallMs, this.#expected);
    const histogram: Histogram = {};
    for (const latency of tracker.latencies()) count(histogram, latency);
    const ended = [...this.#clients.values()].filter((client) => client.ended);
    let missing = 0;
    for (const index of this.#clients.keys()) {
      missing += Math.max(0, (this.#due.get(index) ?? 0) - tracker.receivedBy(index));
    }
    return {
      expected: this.#expected,
      received: tracker.received,
      missing,
      outOfOrder: tracker.outOfOrder,
      other: tracker.other,
      firstOther: tracker.firstOther,
      histogram,
      ended: ended.length,
      endReason: ended[0]?.endReason ?? "",
      loopLagMs: this.#loopLag,
      featureFrames,
    };
  }

  async #close(): Promise<number> {
    const clients = [...this.#clients.values()];
    this.#clients.clear();
    this.#tracker = null;
    await Promise.all(clients.map((client) => client.close()));
    return clients.length;
  }

  async #churn(command: Extract<AgentCommand, { cmd: "churn" }>): Promise<ChurnReply> {
    const reply: ChurnReply = { opened: 0, failed: 0, skipped: 0, firstError: "", histogram: {} };
    // `rate` is this agent's share: its starts are `agents` times its interval apart, offset
    // by its place, so that all agents' starts together are evenly spread.
    const interval = 1000 / command.rate;
    const total = Math.round(command.rate * command.seconds);
    const start = command.startMs + command.agent * interval / command.agents;
    let inFlight = 0;
    const pending: Promise<void>[] = [];
    const one = async (index: number) => {
      const began = performance.now();
      try {
        const client = await this.#open(index, null, command.web, command.webAuth);
        count(reply.histogram, performance.now() - began);
        reply.opened++;
        await client.close();
      } catch (error) {
        reply.failed++;
        reply.firstError ||= errorText(error);
      } finally {
        inFlight--;
      }
    };
    for (let i = 0; i < total && !this.#stopping; i++) {
      const wait = start + i * interval - benchNow();
      if (wait > 0.5) await delay(wait);
      if (inFlight >= command.inFlight) {
        reply.skipped++;
        continue;
      }
      inFlight++;
      pending.push(one(command.first + i));
    }
    await Promise.all(pending);
    return reply;
  }

  /** Stops starting anything new (stdin ended). */
  abort(): void {
    this.#stopping = true;
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#lagTimer);
    await this.#close();
  }
}

/** Reads stdin line by line and runs each command; exits once stdin ends. */
async function serve(): Promise<void> {
  const agent = new Agent();
  const encoder = new TextEncoder();
  const answer = (reply: JsonObject) => {
    const bytes = encoder.encode(JSON.stringify(reply) + "\n");
    for (let at = 0; at < bytes.length;) at += Deno.stdout.writeSync(bytes.subarray(at));
  };
  const running = new Set<Promise<void>>();
  let rest = "";
  const decoder = new TextDecoder();
  for await (const chunk of Deno.stdin.readable) {
    rest += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = rest.indexOf("\n")) >= 0) {
      const line = rest.slice(0, newline);
      rest = rest.slice(newline + 1);
      if (line.trim() === "") continue;
      const command = JSON.parse(line) as AgentCommand & { id: number };
      const task = agent.run(command).then(
        (reply) => answer({ id: command.id, ok: true, ...reply }),
        (error) => answer({ id: command.id, ok: false, error: errorText(error) }),
      );
      running.add(task);
      task.finally(() => running.delete(task));
    }
  }
  // The bench is gone or done: stop what runs (a settle resolves on its own stall timeout),
  // then close every client.
  agent.abort();
  await Promise.all(running);
  await agent.stop();
}

if (import.meta.main) {
  await serve();
}
