/**
 * The load generator of the scale scenarios as several processes: a {@link Fleet} starts load
 * agents (`agent.ts`), gives each a contiguous share of the clients, and adds up what they
 * report. The agents stamp and read on the bench's clock, so a latency is one clock's difference
 * whichever agents sent and received. Each agent's CPU is read from `/proc` like the server's,
 * and its event loop's lateness is reported, so a run where the generator, not the server, was the
 * limit shows.
 *
 * @module
 */
import { type JsonObject } from "../src/protocol/mod.ts";
import {
  type AgentCommand,
  type ChurnReply,
  HIST_BUCKET_MS,
  type Histogram,
  type SettleReply,
} from "./agent.ts";
import { benchNow, type Endpoint } from "./load.ts";
import { cpuSecondsOf } from "./servers.ts";

const AGENT_PATH = new URL("./agent.ts", import.meta.url).pathname;
/** How long an agent may take to answer `init` (it compiles its modules first). */
const START_TIMEOUT_MS = 60_000;
/** How long stopped agents may take to close their clients and exit. */
const STOP_TIMEOUT_MS = 20_000;
/** Characters of an agent's stderr kept for an error message. */
const STDERR_TAIL = 2000;

/** One agent process and its pending commands. */
class AgentProcess {
  readonly pid: number;
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #pending = new Map<number, { resolve(reply: JsonObject): void; reject(e: Error): void }>();
  #next = 1;
  #stderr = "";
  #reading: Promise<void>;
  #exited = false;

  constructor() {
    this.#child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--allow-net", AGENT_PATH],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.pid = this.#child.pid;
    this.#writer = this.#child.stdin.getWriter();
    this.#reading = Promise.all([this.#readReplies(), this.#readErrors()]).then(() => {});
    this.#child.status.then(() => {
      this.#exited = true;
      this.#failAll(new Error(`load agent ${this.pid} exited: ${this.#stderr.trim()}`));
    });
  }

  /** Sends one command; resolves with its reply, or rejects with the agent's error. */
  async request<T = JsonObject>(command: AgentCommand): Promise<T> {
    if (this.#exited) throw new Error(`load agent ${this.pid} has exited: ${this.#stderr}`);
    const id = this.#next++;
    const reply = new Promise<JsonObject>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
    });
    await this.#writer.write(new TextEncoder().encode(JSON.stringify({ id, ...command }) + "\n"));
    return await reply as T;
  }

  async #readReplies(): Promise<void> {
    const decoder = new TextDecoder();
    let rest = "";
    for await (const chunk of this.#child.stdout) {
      rest += decoder.decode(chunk, { stream: true });
      let newline: number;
      while ((newline = rest.indexOf("\n")) >= 0) {
        const reply = JSON.parse(rest.slice(0, newline)) as JsonObject;
        rest = rest.slice(newline + 1);
        const waiter = this.#pending.get(reply.id as number);
        if (!waiter) continue;
        this.#pending.delete(reply.id as number);
        if (reply.ok === true) waiter.resolve(reply);
        else waiter.reject(new Error(`load agent ${this.pid}: ${reply.error}`));
      }
    }
  }

  async #readErrors(): Promise<void> {
    const decoder = new TextDecoder();
    for await (const chunk of this.#child.stderr) {
      this.#stderr = (this.#stderr + decoder.decode(chunk, { stream: true })).slice(-STDERR_TAIL);
    }
  }

  #failAll(error: Error): void {
    for (const waiter of this.#pending.values()) waiter.reject(error);
    this.#pending.clear();
  }

  /** Ends its stdin (it closes its clients and exits); kills it if it takes too long. */
  async stop(): Promise<void> {
    await this.#writer.close().catch(() => {});
    const timer = setTimeout(() => {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, STOP_TIMEOUT_MS);
    try {
      await this.#child.status;
      await this.#reading;
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * The merged `settle` replies of every agent: counts added up, histograms merged, the largest
 * event-loop lateness, and the deliveries that never came.
 */
export interface FleetDeliveries extends SettleReply {
  lost: number;
}

/** The merged `churn` replies of every agent. */
export type FleetChurn = ChurnReply;

/** The `p`-quantile (0..1) of a histogram, in ms; NaN if it is empty. */
export function histogramPercentile(histogram: Histogram, p: number): number {
  const buckets = Object.entries(histogram).map(([bucket, n]) => [Number(bucket), n]);
  buckets.sort((a, b) => a[0] - b[0]);
  const total = buckets.reduce((sum, [, n]) => sum + n, 0);
  if (total === 0) return NaN;
  const rank = Math.max(1, Math.ceil(p * total));
  let seen = 0;
  for (const [bucket, n] of buckets) {
    seen += n;
    if (seen >= rank) return bucket * HIST_BUCKET_MS;
  }
  return buckets[buckets.length - 1][0] * HIST_BUCKET_MS;
}

/** Adds `from` into `into`. */
function mergeHistogram(into: Histogram, from: Histogram): void {
  for (const [bucket, n] of Object.entries(from)) into[bucket] = (into[bucket] ?? 0) + n;
}

/** Several load agents, driven as one load generator. */
export class Fleet implements AsyncDisposable {
  #agents: AgentProcess[];
  /** Which agent holds each range of client indices. */
  #ranges: { first: number; end: number; agent: number }[] = [];

  private constructor(agents: AgentProcess[]) {
    this.#agents = agents;
  }

  /** Starts `count` agents that connect to `endpoint`, on this process's clock. */
  static async start(count: number, endpoint: Endpoint): Promise<Fleet> {
    const agents: AgentProcess[] = [];
    const fleet = new Fleet(agents);
    try {
      for (let k = 0; k < count; k++) agents.push(new AgentProcess());
    } catch (error) {
      await fleet.stop();
      throw error;
    }
    try {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error("load agents did not start in time")),
          START_TIMEOUT_MS,
        );
      });
      try {
        await Promise.race([
          Promise.all(
            agents.map((agent) =>
              agent.request({ cmd: "init", endpoint, clockOriginMs: performance.timeOrigin })
            ),
          ),
          timeout,
        ]);
      } finally {
        clearTimeout(timer);
      }
      return fleet;
    } catch (error) {
      await fleet.stop();
      throw error;
    }
  }

  /** The agents' process ids. */
  get pids(): number[] {
    return this.#agents.map((agent) => agent.pid);
  }

  /** The agents' CPU time so far, s, each. */
  cpuSeconds(): Promise<number[]> {
    return cpuSecondsOf(this.pids);
  }

  /**
   * Opens clients `first` to `first + count - 1`, split in contiguous shares over the agents,
   * `concurrency` logins in flight in all. Resolves with the time it took and the failures.
   */
  async connect(
    first: number,
    count: number,
    options: { concurrency: number; web?: "none" | "odd"; webAuth?: JsonObject; login?: boolean },
  ): Promise<{ ms: number; failed: number; firstError: string }> {
    const n = this.#agents.length;
    const start = performance.now();
    const replies = await Promise.all(this.#agents.map((agent, k) => {
      const from = first + Math.floor(count * k / n);
      const end = first + Math.floor(count * (k + 1) / n);
      this.#ranges.push({ first: from, end, agent: k });
      return agent.request<{ failed: number; firstError: string }>({
        cmd: "connect",
        first: from,
        count: end - from,
        concurrency: Math.max(1, Math.round(options.concurrency / n)),
        web: options.web ?? "none",
        webAuth: options.webAuth,
        login: options.login,
      });
    }));
    return {
      ms: performance.now() - start,
      failed: replies.reduce((sum, reply) => sum + reply.failed, 0),
      firstError: replies.find((reply) => reply.firstError)?.firstError ?? "",
    };
  }

  /** Starts counting deliveries: `senders` (clients 0..senders-1) x `messages` to `receivers`. */
  async track(receivers: number, senders: number, messages: number): Promise<void> {
    await Promise.all(
      this.#agents.map((agent) => agent.request({ cmd: "track", receivers, senders, messages })),
    );
  }

  /**
   * Lets clients 0..senders-1 each send `count` messages of `bytes` at `rate` per second from
   * `startMs` (bench clock); resolves once all are sent.
   */
  async send(
    senders: number,
    options: { rate: number; count: number; startMs: number; bytes: number },
  ): Promise<{ late: number }> {
    const byAgent = new Map<number, number[]>();
    for (let sender = 0; sender < senders; sender++) {
      const range = this.#ranges.find((r) => sender >= r.first && sender < r.end);
      if (!range) throw new Error(`no agent holds client ${sender}`);
      byAgent.set(range.agent, [...byAgent.get(range.agent) ?? [], sender]);
    }
    const replies = await Promise.all(
      [...byAgent].map(([agent, indices]) =>
        this.#agents[agent].request<{ late: number }>({
          cmd: "send",
          senders: indices,
          totalSenders: senders,
          ...options,
        })
      ),
    );
    return { late: replies.reduce((sum, reply) => sum + reply.late, 0) };
  }

  /** Waits until every agent's deliveries are in, or stalled for `stallMs`; adds them up. */
  async settle(stallMs: number): Promise<FleetDeliveries> {
    const replies = await Promise.all(
      this.#agents.map((agent) => agent.request<SettleReply>({ cmd: "settle", stallMs })),
    );
    const merged: FleetDeliveries = {
      expected: 0,
      received: 0,
      missing: 0,
      lost: 0,
      outOfOrder: 0,
      other: 0,
      firstOther: "",
      histogram: {},
      ended: 0,
      endReason: "",
      loopLagMs: 0,
      featureFrames: 0,
    };
    for (const reply of replies) {
      merged.expected += reply.expected;
      merged.received += reply.received;
      merged.missing += reply.missing;
      merged.outOfOrder += reply.outOfOrder;
      merged.other += reply.other;
      merged.firstOther ||= reply.firstOther;
      mergeHistogram(merged.histogram, reply.histogram);
      merged.ended += reply.ended;
      merged.endReason ||= reply.endReason;
      merged.loopLagMs = Math.max(merged.loopLagMs, reply.loopLagMs);
      merged.featureFrames += reply.featureFrames;
    }
    merged.lost = merged.missing;
    return merged;
  }

  /**
   * Churn: `rate` connections per second in all (split over the agents) for `seconds`, each
   * logging in and leaving at once, with client indices from `first`.
   */
  async churn(
    first: number,
    options: {
      rate: number;
      seconds: number;
      inFlight: number;
      web?: "none" | "odd";
      webAuth?: JsonObject;
    },
  ): Promise<FleetChurn> {
    const n = this.#agents.length;
    const perAgent = Math.ceil(options.rate * options.seconds / n) + 1;
    // One start for all agents, a little ahead so that every agent has its command by then.
    const startMs = benchNow() + 50;
    const replies = await Promise.all(this.#agents.map((agent, k) =>
      agent.request<ChurnReply>({
        cmd: "churn",
        first: first + k * perAgent,
        rate: options.rate / n,
        seconds: options.seconds,
        inFlight: Math.max(1, Math.round(options.inFlight / n)),
        startMs,
        agent: k,
        agents: n,
        web: options.web ?? "none",
        webAuth: options.webAuth,
      })
    ));
    const merged: FleetChurn = { opened: 0, failed: 0, skipped: 0, firstError: "", histogram: {} };
    for (const reply of replies) {
      merged.opened += reply.opened;
      merged.failed += reply.failed;
      merged.skipped += reply.skipped;
      merged.firstError ||= reply.firstError;
      mergeHistogram(merged.histogram, reply.histogram);
    }
    return merged;
  }

  /** Closes every client of every agent (the agents keep running). */
  async closeClients(): Promise<void> {
    await Promise.all(this.#agents.map((agent) => agent.request({ cmd: "close" })));
    this.#ranges = [];
  }

  /** Stops every agent (their clients close). */
  async stop(): Promise<void> {
    await Promise.all(this.#agents.map((agent) => agent.stop()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
