/**
 * The ten benchmark scenarios. Each run measures one server once and returns named figures;
 * the bench takes the median of each figure over the runs (or, for a figure that says so, the
 * largest).
 *
 * @module
 */
import {
  ackFrames,
  AckTracker,
  BenchClient,
  closeAll,
  connectMany,
  MessageTemplate,
  ReplayTracker,
  sendBurst,
  sendPaced,
  sendWindowed,
  Tracker,
} from "./load.ts";
import { cpuSeconds, cpuSecondsOf, FLOOR_NAMES, rssBytes, type ServerHandle } from "./servers.ts";
import { ServerWatch } from "./watch.ts";

/** Figures of one run, by metric key. `NaN` when not measurable (no server pid). */
export type Metrics = Record<string, number>;

/** One run's figures and anything worth telling about it. */
export interface RunResult {
  metrics: Metrics;
  notes: string[];
}

/** How a figure is shown. */
export interface MetricSpec {
  key: string;
  label: string;
  unit: string;
  digits: number;
  /** The whole `label value unit` text, for a figure that needs words (e.g. "not dropped"). */
  format?: (value: number) => string;
  /** How the runs' values are combined: their median (default) or the largest. */
  over?: "median" | "max";
}

/** The sizes of every scenario; {@link FULL_SIZES} by default, {@link QUICK_SIZES} for smoke. */
export interface Sizes {
  /** `rounds` bursts per run, one after the other, so the CPU time spans enough clock ticks. */
  burst: { clients: number; senders: number; messages: number; bytes: number; rounds: number };
  steady: { clients: number; senders: number; rate: number; seconds: number; bytes: number };
  connect: { clients: number };
  idle: { clients: number; settleMs: number };
  large: { clients: number; senders: number; messages: number; bytes: number; window: number };
  /** `readers` reading clients (the senders among them) and one stalled reader. */
  stalled: { readers: number; senders: number; messages: number; bytes: number };
  /** Senders with `ids`, each at most `window` messages ahead of its acks. */
  acks: { senders: number; messages: number; bytes: number; window: number };
  /** `prefill` messages stored, then `clients` log in at once asking for `replay` of them. */
  join: { prefill: number; clients: number; replay: number; bytes: number };
  /**
   * `ws` WebSocket and `tls` TLS clients in one room (interleaved), then as many TLS clients
   * only; both times `senders` x `messages` per burst, `rounds` bursts per run.
   */
  web: {
    ws: number;
    tls: number;
    senders: number;
    messages: number;
    bytes: number;
    rounds: number;
  };
  /**
   * Scenario 10, a two-node cluster against a single node: `clients` split evenly over the two
   * nodes (every other client), `senders` of them (half on each node) at `rate` messages/s for
   * `seconds`; then `flood.clients`, split the same way, `flood.senders` x `flood.messages` as
   * fast as flow control allows, `flood.rounds` bursts per run. Each configuration gets each
   * measurement in two halves (`seconds / 2`, `rounds / 2`), in the order ABBA.
   */
  cluster: {
    clients: number;
    senders: number;
    rate: number;
    seconds: number;
    bytes: number;
    flood: { clients: number; senders: number; messages: number; rounds: number };
  };
  /**
   * The scale scenarios (11 to 14), whose clients `agents` load-agent processes hold: up to
   * `clients` clients, logged in `concurrency` at a time in all; growth `steps` (client counts)
   * at which `senders` send `rate` messages/s of `bytes` for `seconds`; `churn.rate` clients/s
   * logging in and leaving for `churn.seconds` while `churn.steady` clients each send
   * `churn.chatRate` messages/s.
   */
  scale: {
    agents: number;
    clients: number;
    concurrency: number;
    steps: number[];
    senders: number;
    rate: number;
    seconds: number;
    bytes: number;
    churn: { steady: number; chatRate: number; rate: number; seconds: number };
  };
  /** Logins in flight at once. */
  concurrency: number;
  /** Deliveries missing after this long without progress count as lost. */
  stallMs: number;
  /** Whether a run first waits until the server is idle (its last run's cleanup is over). */
  waitIdle: boolean;
}

/** The sizes the issue asks for. */
export const FULL_SIZES: Sizes = {
  burst: { clients: 100, senders: 10, messages: 100, bytes: 64, rounds: 5 },
  steady: { clients: 100, senders: 10, rate: 50, seconds: 10, bytes: 64 },
  connect: { clients: 1000 },
  idle: { clients: 5000, settleMs: 1000 },
  // 5 senders x 3 messages in flight x 60 KiB stays under the default 1 MiB send queue.
  large: { clients: 20, senders: 5, messages: 40, bytes: 60 * 1024, window: 3 },
  // 5 x 200 x 16 KiB = 16 MB for every reader: over 3x what the 1 MiB send queue and the kernel
  // (about 4 MiB here) hold for a socket that is never read.
  stalled: { readers: 20, senders: 5, messages: 200, bytes: 16 * 1024 },
  acks: { senders: 10, messages: 20_000, bytes: 64, window: 200 },
  join: { prefill: 1000, clients: 100, replay: 1000, bytes: 64 },
  // 10 x 100 messages to 999 recipients: about 1 M deliveries per burst, 2 M per phase.
  web: { ws: 500, tls: 500, senders: 10, messages: 100, bytes: 64, rounds: 2 },
  // 8 senders x 20 messages/s x 125 recipients = 20,000 deliveries/s offered, 63 clients and 4
  // senders per node (20 messages/s per client is also the server's default --rate); the flood
  // is scenario 1's bursts (6 of them: each measurement runs in two halves).
  cluster: {
    clients: 126,
    senders: 8,
    rate: 20,
    seconds: 4,
    bytes: 64,
    flood: { clients: 100, senders: 10, messages: 100, rounds: 6 },
  },
  // 10 senders x 1 message/s x 9,999 recipients: 100,000 deliveries/s offered at 10,000 clients.
  scale: {
    agents: 4,
    clients: 10_000,
    concurrency: 200,
    steps: [1000, 2500, 5000, 10_000],
    senders: 10,
    rate: 1,
    seconds: 10,
    bytes: 64,
    churn: { steady: 100, chatRate: 1, rate: 500, seconds: 60 },
  },
  concurrency: 100,
  stallMs: 3000,
  waitIdle: true,
};

/** Seconds-long sizes for the smoke test. */
export const QUICK_SIZES: Sizes = {
  burst: { clients: 10, senders: 3, messages: 20, bytes: 64, rounds: 1 },
  steady: { clients: 10, senders: 2, rate: 50, seconds: 1, bytes: 64 },
  connect: { clients: 20 },
  idle: { clients: 50, settleMs: 200 },
  large: { clients: 4, senders: 2, messages: 4, bytes: 60 * 1024, window: 3 },
  // 8 MiB for every reader: past the 1 MiB send queue plus the stalled socket's kernel buffers.
  stalled: { readers: 4, senders: 2, messages: 256, bytes: 16 * 1024 },
  acks: { senders: 10, messages: 300, bytes: 64, window: 200 },
  join: { prefill: 200, clients: 10, replay: 200, bytes: 64 },
  web: { ws: 5, tls: 5, senders: 2, messages: 20, bytes: 64, rounds: 1 },
  cluster: {
    clients: 10,
    senders: 2,
    rate: 20,
    seconds: 1,
    bytes: 64,
    flood: { clients: 10, senders: 2, messages: 20, rounds: 2 },
  },
  scale: {
    agents: 2,
    clients: 100,
    concurrency: 20,
    steps: [40, 100],
    senders: 3,
    rate: 5,
    seconds: 1,
    bytes: 64,
    churn: { steady: 10, chatRate: 5, rate: 20, seconds: 1 },
  },
  concurrency: 20,
  stallMs: 2000,
  waitIdle: false,
};

/** A scenario of the bench. */
export interface Scenario {
  id: number;
  title: string;
  /** What one run does, for the report. */
  describe(sizes: Sizes): string;
  metrics: MetricSpec[];
  /** Whether each run needs a server that has had no clients yet (memory baseline). */
  freshServerPerRun: boolean;
  /** Whether an unmeasured run first warms the server's JIT up. */
  warmup: boolean;
  /** Whether the transport floors (`floor_server.ts`) are measured too, beside the servers. */
  floors?: boolean;
  /**
   * Whether the scenario needs version 2 of the protocol (ids and acks, history): then only our
   * server (or `--target`) runs it, not the reference or a `--baseline` without it.
   */
  v2Only?: boolean;
  /**
   * Whether the scenario needs the server's web port (WebSocket clients): then only our server,
   * started by the bench with `--web-port`, runs it.
   */
  web?: boolean;
  /**
   * Whether our server (started by the bench) gets its web port for the scenario, which then
   * puts WebSocket clients on it, while servers without one (the reference) run it with TLS
   * clients only.
   */
  webOptional?: boolean;
  /**
   * What the scenario adds to the report once every server ran it (e.g. a growth table), from
   * the medians of every server by name; `plot`, if set, is where it may write a figure.
   */
  report?(all: Record<string, Metrics>, sizes: Sizes, plot: string | null): Promise<string>;
  /**
   * Whether the scenario needs a cluster of our server beside it (`ServerHandle.cluster`: two
   * nodes on a private Redis): then only our server, started by the bench, runs it, and only
   * where `redis-server` is installed.
   */
  cluster?: boolean;
  /** Measured runs per server unless `--runs` says otherwise (the short, noisy ones get more). */
  runs: number;
  /** Clients the scenario holds open at once. */
  clients(sizes: Sizes): number;
  /** The target, if the scenario has one. */
  target?: Target;
  run(server: ServerHandle, sizes: Sizes): Promise<RunResult>;
}

/**
 * A target: its wording, and whether the medians meet it (`null`: cannot tell). `all` holds the
 * medians of every server that ran the scenario, by name (the floors included).
 */
export interface Target {
  text: string;
  check(
    ours: Metrics,
    reference: Metrics | undefined,
    all: Record<string, Metrics>,
  ): boolean | null;
}

export const LATENCY: MetricSpec[] = [
  { key: "p50_ms", label: "p50", unit: "ms", digits: 2 },
  { key: "p99_ms", label: "p99", unit: "ms", digits: 2 },
];
export const LOST: MetricSpec = { key: "lost", label: "lost", unit: "", digits: 0 };

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function cpuOf(server: ServerHandle): Promise<number> {
  return server.pid === undefined ? Promise.resolve(NaN) : cpuSeconds(server.pid);
}

/** Waits until the server has used no CPU for 200 ms (at most 3 s): the last run is over. */
export async function quiesce(server: ServerHandle, sizes: Sizes): Promise<void> {
  if (!sizes.waitIdle) return await delay(20);
  if (server.pid === undefined) return await delay(500);
  let last = await cpuOf(server);
  let quiet = 0;
  for (let i = 0; i < 30 && quiet < 2; i++) {
    await delay(100);
    const now = await cpuOf(server);
    quiet = now === last ? quiet + 1 : 0;
    last = now;
  }
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

/** Notes on what went wrong in a run: disconnections, reordering, unexpected frames. */
function problems(tracker: Tracker, clients: BenchClient[]): string[] {
  const notes: string[] = [];
  const ended = clients.filter((client) => client.ended);
  if (ended.length > 0) {
    notes.push(`${ended.length} clients were disconnected (${ended[0].endReason})`);
  }
  if (tracker.outOfOrder > 0) notes.push(`${tracker.outOfOrder} deliveries out of order`);
  if (tracker.other > 0) {
    notes.push(`${tracker.other} unexpected frames, e.g. ${tracker.firstOther}`);
  }
  return notes;
}

interface FanOut {
  clients: number;
  senders: number;
  messages: number;
  bytes: number;
  /** Messages a sender may have ahead of full delivery; unbounded if unset. */
  window?: number;
  /** Messages per second per sender; as fast as possible if unset. */
  rate?: number;
  /** Bursts of `messages` per sender, each once the last is delivered (default 1). */
  rounds?: number;
  /**
   * Which clients are WebSocket clients of the web port (the rest are TLS clients); the
   * tracker then counts and times them apart as group 1, the TLS clients as group 0.
   */
  web?: (index: number) => boolean;
  /**
   * With several servers: which one client `index` connects to (an index into them); all
   * connect to the first if unset.
   */
  place?: (index: number) => number;
  /** Groups the deliveries by receiver and sender instead of by `web` (see `Tracker.group`). */
  group?: (receiver: number, sender: number) => 0 | 1;
}

interface FanOutResult {
  tracker: Tracker;
  /** The load generator's own CPU over the run, s. */
  genCpu: number;
  /** From the first send to the last delivery (summed over rounds), ms. */
  elapsedMs: number;
  /** Server CPU over the run, s (all the servers' together). */
  cpu: number;
  /** Each server's CPU over the run, s. */
  cpus: number[];
  /** The CPU over the run of each process of `also` (e.g. Redis), s. */
  alsoCpu: number[];
  /** With `web`: like `elapsedMs`, to the last delivery of group 0 (TLS) and 1 (WebSocket). */
  groupElapsedMs: [number, number];
  /** From the first send to the end of the CPU measurement, ms. */
  wallMs: number;
  notes: string[];
}

/**
 * Logs in the clients (on `target`, or spread over several servers as `spec.place` says), lets
 * the senders send, and waits until every delivery arrived or stalled. Measures the CPU of the
 * servers, of the load generator and of the processes `also` over the same window.
 */
async function fanOut(
  target: ServerHandle | readonly ServerHandle[],
  spec: FanOut,
  sizes: Sizes,
  also: readonly number[] = [],
): Promise<FanOutResult> {
  const servers = Array.isArray(target) ? target : [target as ServerHandle];
  const rounds = spec.rounds ?? 1;
  const web = spec.web;
  const place = spec.place;
  const tracker = new Tracker({
    receivers: spec.clients,
    senders: spec.senders,
    messages: spec.messages * rounds,
    group: spec.group ?? (web ? (receiver) => web(receiver) ? 1 : 0 : undefined),
  });
  const clients = await connectMany(servers[0].endpoint, spec.clients, {
    concurrency: sizes.concurrency,
    tracker,
    web,
    endpointOf: place ? (index) => servers[place(index)].endpoint : undefined,
  });
  try {
    const templates = clients.slice(0, spec.senders).map((client) =>
      new MessageTemplate(client.index, spec.bytes, { web: client.web })
    );
    for (const server of servers) await quiesce(server, sizes);
    const pids = [Deno.pid, ...servers.map((server) => server.pid), ...also];
    const before = await cpuSecondsOf(pids);
    const first = performance.now();
    let elapsedMs = 0;
    const groupElapsedMs: [number, number] = [0, 0];
    for (let round = 0; round < rounds; round++) {
      const start = performance.now();
      // Paced senders start a little apart so their messages do not all leave at once.
      const sending = Promise.all(
        templates.map((template, i) =>
          spec.rate
            ? sendPaced(clients[i], template, {
              count: spec.messages,
              rate: spec.rate,
              startMs: start + i * 1000 / spec.rate / spec.senders,
            })
            : sendBurst(clients[i], template, {
              first: round * spec.messages,
              count: spec.messages,
              tracker,
              window: spec.window,
            })
        ),
      );
      const until = tracker.expected / rounds * (round + 1);
      await tracker.settle(sizes.stallMs, until);
      tracker.release();
      await sending;
      if (tracker.received < until) await tracker.settle(sizes.stallMs, until);
      elapsedMs += tracker.lastDelivery - start;
      if (web) {
        for (const group of [0, 1] as const) {
          groupElapsedMs[group] += tracker.group(group).lastDelivery - start;
        }
      }
      if (tracker.received < until) break;
    }
    const used = (await cpuSecondsOf(pids)).map((after, i) => after - before[i]);
    const wallMs = performance.now() - first;
    const cpus = used.slice(1, 1 + servers.length);
    return {
      tracker,
      elapsedMs,
      groupElapsedMs,
      wallMs,
      cpu: cpus.reduce((sum, cpu) => sum + cpu, 0),
      cpus,
      alsoCpu: used.slice(1 + servers.length),
      genCpu: used[0],
      notes: problems(tracker, clients),
    };
  } finally {
    await closeAll(clients);
  }
}

const burst: Scenario = {
  id: 1,
  title: "Burst fan-out",
  describe: ({ burst: s }) =>
    `${s.clients} clients, ${s.senders} senders x ${s.messages} messages of ${s.bytes} B` +
    (s.rounds > 1 ? ` (${s.rounds} bursts per run)` : ""),
  metrics: [
    { key: "deliveries_per_s", label: "deliveries/s", unit: "", digits: 0 },
    { key: "cpu_us_per_delivery", label: "CPU/delivery", unit: "µs", digits: 2 },
    ...LATENCY,
    LOST,
    { key: "gen_cpu_us_per_delivery", label: "load generator CPU/delivery", unit: "µs", digits: 2 },
  ],
  freshServerPerRun: false,
  warmup: true,
  runs: 5,
  clients: (sizes) => sizes.burst.clients,
  target: {
    text: "deliveries/s >= 1.0x reference, CPU/delivery <= 1.0x reference",
    check: (ours, ref) =>
      ref === undefined ? null : ours.deliveries_per_s >= ref.deliveries_per_s &&
        ours.cpu_us_per_delivery <= ref.cpu_us_per_delivery && ours.lost === 0,
  },
  async run(server, sizes) {
    const { tracker, elapsedMs, cpu, genCpu, notes } = await fanOut(server, sizes.burst, sizes);
    const latencies = tracker.latencies();
    return {
      metrics: {
        deliveries_per_s: tracker.received / (elapsedMs / 1000),
        cpu_us_per_delivery: cpu * 1e6 / tracker.received,
        p50_ms: percentile(latencies, 0.5),
        p99_ms: percentile(latencies, 0.99),
        lost: tracker.expected - tracker.received,
        gen_cpu_us_per_delivery: genCpu * 1e6 / tracker.received,
      },
      notes,
    };
  },
};

const steady: Scenario = {
  id: 2,
  title: "Steady",
  describe: ({ steady: s }) =>
    `${s.clients} clients, ${s.senders} senders at ${s.rate} messages/s each for ${s.seconds} s`,
  metrics: [
    ...LATENCY,
    { key: "max_ms", label: "max", unit: "ms", digits: 2 },
    LOST,
    { key: "cpu_pct", label: "server CPU", unit: "%", digits: 0 },
    { key: "gen_cpu_pct", label: "load generator CPU", unit: "%", digits: 0 },
  ],
  freshServerPerRun: false,
  warmup: false,
  runs: 3,
  clients: (sizes) => sizes.steady.clients,
  target: {
    text: "p99 <= 25 ms, 0 lost",
    check: (ours) => ours.p99_ms <= 25 && ours.lost === 0,
  },
  async run(server, sizes) {
    const s = sizes.steady;
    const { tracker, cpu, genCpu, notes } = await fanOut(server, {
      ...s,
      messages: Math.round(s.rate * s.seconds),
    }, sizes);
    const latencies = tracker.latencies();
    return {
      metrics: {
        p50_ms: percentile(latencies, 0.5),
        p99_ms: percentile(latencies, 0.99),
        max_ms: percentile(latencies, 1),
        lost: tracker.expected - tracker.received,
        cpu_pct: cpu * 100 / s.seconds,
        gen_cpu_pct: genCpu * 100 / s.seconds,
      },
      notes,
    };
  },
};

const connections: Scenario = {
  id: 3,
  title: "Connections",
  describe: ({ connect, concurrency }) =>
    `${connect.clients} clients connect and authenticate, ${concurrency} at a time`,
  metrics: [
    { key: "conn_per_s", label: "connections/s", unit: "", digits: 0 },
    { key: "total_s", label: "total", unit: "s", digits: 2 },
    { key: "cpu_ms_per_conn", label: "CPU/connection", unit: "ms", digits: 2 },
    { key: "gen_cpu_ms_per_conn", label: "load generator CPU/connection", unit: "ms", digits: 2 },
  ],
  freshServerPerRun: false,
  warmup: false,
  runs: 3,
  clients: (sizes) => sizes.connect.clients,
  target: {
    text: "connections/s >= 1.0x reference (>= 1000 without one)",
    check: (ours, ref) => ours.conn_per_s >= (ref ? ref.conn_per_s : 1000),
  },
  async run(server, sizes) {
    const count = sizes.connect.clients;
    await quiesce(server, sizes);
    const cpu0 = await cpuOf(server);
    const gen0 = await cpuSeconds(Deno.pid);
    const start = performance.now();
    const clients = await connectMany(server.endpoint, count, { concurrency: sizes.concurrency });
    const seconds = (performance.now() - start) / 1000;
    const cpu = await cpuOf(server) - cpu0;
    const genCpu = await cpuSeconds(Deno.pid) - gen0;
    await closeAll(clients);
    return {
      metrics: {
        total_s: seconds,
        conn_per_s: count / seconds,
        cpu_ms_per_conn: cpu * 1000 / count,
        gen_cpu_ms_per_conn: genCpu * 1000 / count,
      },
      notes: [],
    };
  },
};

/** Largest RSS per idle client that meets scenario 4's target, whatever the floor. */
const IDLE_KIB_TARGET = 30;
/** Or: at most this many times the `node:tls` floor's RSS per idle connection. */
const IDLE_FLOOR_RATIO = 1.15;

const memory: Scenario = {
  id: 4,
  title: "Memory",
  describe: ({ idle }) =>
    `${idle.clients} idle clients (logged in; TLS handshake only on the transport floors)`,
  metrics: [
    { key: "kib_per_client", label: "RSS/client", unit: "KiB", digits: 1 },
    { key: "base_mib", label: "RSS idle", unit: "MiB", digits: 1 },
    { key: "loaded_mib", label: "RSS loaded", unit: "MiB", digits: 1 },
  ],
  freshServerPerRun: true,
  warmup: false,
  floors: true,
  runs: 3,
  clients: (sizes) => sizes.idle.clients,
  target: {
    text:
      `<= ${IDLE_KIB_TARGET} KiB per idle client, or within ${IDLE_FLOOR_RATIO}x of the node:tls floor`,
    check: (ours, _reference, all) => {
      const kib = ours.kib_per_client;
      if (Number.isNaN(kib)) return null;
      const floor = all[FLOOR_NAMES.node]?.kib_per_client ?? NaN;
      return kib <= IDLE_KIB_TARGET || kib <= IDLE_FLOOR_RATIO * floor;
    },
  },
  async run(server, sizes) {
    const count = sizes.idle.clients;
    const rss = () => server.pid === undefined ? Promise.resolve(NaN) : rssBytes(server.pid);
    await quiesce(server, sizes);
    const base = await rss();
    // A floor's clients only complete the TLS handshake; a chat server's log in.
    const clients = await connectMany(server.endpoint, count, {
      concurrency: sizes.concurrency,
      login: !server.transportOnly,
    });
    try {
      await delay(sizes.idle.settleMs);
      await quiesce(server, sizes);
      const loaded = await rss();
      const ended = clients.filter((client) => client.ended).length;
      return {
        metrics: {
          kib_per_client: (loaded - base) / 1024 / count,
          base_mib: base / 1024 ** 2,
          loaded_mib: loaded / 1024 ** 2,
        },
        notes: ended > 0 ? [`${ended} clients were disconnected while idle`] : [],
      };
    } finally {
      await closeAll(clients);
    }
  },
};

const large: Scenario = {
  id: 5,
  title: "Large messages",
  describe: ({ large: s }) =>
    `${s.clients} clients, ${s.senders} senders x ${s.messages} messages of ${
      s.bytes / 1024
    } KiB, ${s.window} in flight per sender`,
  metrics: [
    { key: "mb_per_s", label: "delivered", unit: "MB/s", digits: 1 },
    { key: "cpu_ms_per_mb", label: "CPU/MB", unit: "ms", digits: 2 },
    LOST,
  ],
  freshServerPerRun: false,
  warmup: true,
  runs: 5,
  clients: (sizes) => sizes.large.clients,
  async run(server, sizes) {
    const { tracker, elapsedMs, cpu, notes } = await fanOut(server, sizes.large, sizes);
    const mb = tracker.bytes / 1e6;
    return {
      metrics: {
        mb_per_s: mb / (elapsedMs / 1000),
        cpu_ms_per_mb: cpu * 1000 / mb,
        lost: tracker.expected - tracker.received,
      },
      notes,
    };
  },
};

/** How often scenario 6 samples the server's RSS and the stalled reader's socket. */
const WATCH_INTERVAL_MS = 100;
/** Scenario 6's target for the longest wait of a reading client (PROTOCOL.md: about 1 s). */
const MAX_GAP_TARGET_MS = 2000;

/** Resolves with whether `promise` settled within `ms`. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  try {
    return await Promise.race([promise.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

function formatDrop(seconds: number): string {
  if (seconds === Infinity) return "stalled reader not dropped";
  if (Number.isNaN(seconds)) return "stalled reader dropped: n/a";
  return `stalled reader dropped after ${formatSeconds(seconds)} s`;
}

function formatSeconds(seconds: number): string {
  return seconds.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

function formatKib(bytes: number): string {
  return Math.round(bytes / 1024).toLocaleString("en-US");
}

const stalledReader: Scenario = {
  id: 6,
  title: "Burst with a stalled reader",
  describe: ({ stalled: s }) =>
    `${s.readers} reading clients and 1 that logs in and never reads again; ${s.senders} of the ` +
    `readers send ${s.messages} messages of ${s.bytes / 1024} KiB each, as fast as TCP lets them`,
  metrics: [
    { key: "deliveries_per_s", label: "deliveries/s", unit: "", digits: 0 },
    { key: "mb_per_s", label: "delivered", unit: "MB/s", digits: 1 },
    LOST,
    { key: "out_of_order", label: "out of order", unit: "", digits: 0 },
    { key: "p99_ms", label: "p99", unit: "ms", digits: 1 },
    { key: "max_gap_ms", label: "longest gap", unit: "ms", digits: 0 },
    { key: "stalled_drop_s", label: "", unit: "s", digits: 2, format: formatDrop },
    { key: "cpu_ms_per_mb", label: "server CPU/MB", unit: "ms", digits: 2 },
    { key: "rss_growth_mib", label: "server RSS growth", unit: "MiB", digits: 1 },
    { key: "gen_cpu_ms_per_mb", label: "load generator CPU/MB", unit: "ms", digits: 2 },
  ],
  // A fresh server per run, so its RSS growth is this run's alone.
  freshServerPerRun: true,
  warmup: false,
  runs: 3,
  clients: (sizes) => sizes.stalled.readers + 1,
  target: {
    text: `0 lost, in order, stalled reader dropped, longest gap <= ${MAX_GAP_TARGET_MS} ms`,
    check: (ours) =>
      ours.lost === 0 && ours.out_of_order === 0 && ours.stalled_dropped === 1 &&
      ours.max_gap_ms <= MAX_GAP_TARGET_MS,
  },
  async run(server, sizes) {
    const s = sizes.stalled;
    const tracker = new Tracker({ receivers: s.readers, senders: s.senders, messages: s.messages });
    const readers = await connectMany(server.endpoint, s.readers, {
      concurrency: sizes.concurrency,
      tracker,
    });
    let stalled: BenchClient | undefined;
    try {
      // Logs in after the readers, reads the login reply and then nothing, ever.
      stalled = await BenchClient.connect(server.endpoint, s.readers, { stallAfterLogin: true });
      const templates = readers.slice(0, s.senders).map((client) =>
        new MessageTemplate(client.index, s.bytes)
      );
      await quiesce(server, sizes);
      const { hostname, port } = server.endpoint;
      const watch = new ServerWatch({
        pid: server.pid,
        serverPort: port,
        clientPort: (stalled.conn.localAddr as Deno.NetAddr).port,
        ipv6: hostname.includes(":"),
        intervalMs: WATCH_INTERVAL_MS,
      });
      await watch.begin();
      const cpu0 = await cpuOf(server);
      const gen0 = await cpuSeconds(Deno.pid);
      const start = performance.now();
      watch.run(start);
      // No window: each sender writes as fast as its socket takes the bytes, so the server's
      // flow control (and TCP) is all that paces it.
      let failures = 0;
      let sent = false;
      const sending = Promise.all(
        templates.map((template, i) =>
          sendBurst(readers[i], template, { count: s.messages, tracker }).catch(() => failures++)
        ),
      ).then(() => sent = true);
      await tracker.settle(sizes.stallMs);
      // Deliveries stopped while senders are still held back: the readers still connected and
      // still missing deliveries have been waiting since their last one.
      const openGap = sent
        ? 0
        : tracker.openGapMs(performance.now(), start, (i) => !readers[i].ended);
      const cpu = await cpuOf(server) - cpu0;
      const genCpu = await cpuSeconds(Deno.pid) - gen0;
      const seen = await watch.stop();
      const notes = problems(tracker, readers);
      // A server that stopped reading from a sender for good would hold its write forever.
      if (!await within(sending, sizes.stallMs)) {
        notes.push(
          `senders still blocked ${2 * sizes.stallMs / 1000} s after the last delivery: closed`,
        );
        await closeAll(readers);
        await sending;
      }
      if (failures > 0) {
        notes.push(`${failures} of ${s.senders} senders could not send all their messages`);
      }
      if (seen.error) notes.push(`sampling the server stopped early: ${seen.error}`);
      notes.push(
        `up to ${formatKib(seen.kernelQueued)} KiB queued in the kernel for the stalled reader`,
      );
      const elapsedS = tracker.received > 0 ? (tracker.lastDelivery - start) / 1000 : NaN;
      const mb = tracker.bytes / 1e6;
      const dropS = seen.closedAfterMs / 1000;
      return {
        metrics: {
          deliveries_per_s: tracker.received / elapsedS,
          mb_per_s: mb / elapsedS,
          lost: tracker.expected - tracker.received,
          out_of_order: tracker.outOfOrder,
          p99_ms: percentile(tracker.latencies(), 0.99),
          max_gap_ms: Math.max(tracker.maxGapMs, openGap),
          stalled_drop_s: dropS,
          stalled_dropped: Number.isNaN(dropS) ? NaN : dropS === Infinity ? 0 : 1,
          cpu_ms_per_mb: cpu * 1000 / mb,
          rss_growth_mib: seen.rssGrowth / 1024 ** 2,
          gen_cpu_ms_per_mb: genCpu * 1000 / mb,
        },
        notes,
      };
    } finally {
      await closeAll([...readers, stalled]);
    }
  },
};

/** Scenario 7's target: acked (stored) messages per second. */
const ACKED_TARGET = 50_000;

/** Size of the server's history database (`chat.db` and its WAL), MiB; NaN without one. */
async function databaseMib(server: ServerHandle): Promise<number> {
  if (server.dataDir === undefined) return NaN;
  let bytes = 0;
  for (const name of ["chat.db", "chat.db-wal"]) {
    try {
      bytes += (await Deno.stat(`${server.dataDir}/${name}`)).size;
    } catch (error) {
      if (name === "chat.db") {
        throw new Error(`No history database in ${server.dataDir}`, { cause: error });
      }
    }
  }
  return bytes / 1024 ** 2;
}

const storedAcks: Scenario = {
  id: 7,
  title: "Stored acks",
  describe: ({ acks: s }) =>
    `${s.senders} clients with ids each send ${s.messages} messages of ${s.bytes} B with a ref, ` +
    `at most ${s.window} unacked, and read each other's broadcasts; ours only (the reference ` +
    `has no acks)`,
  metrics: [
    { key: "acked_per_s", label: "acked/s", unit: "", digits: 0 },
    { key: "p50_ms", label: "ack p50", unit: "ms", digits: 2 },
    { key: "p99_ms", label: "ack p99", unit: "ms", digits: 2 },
    { key: "unacked", label: "unacked", unit: "", digits: 0 },
    { key: "deliveries_per_s", label: "deliveries/s", unit: "", digits: 0 },
    LOST,
    { key: "cpu_us_per_message", label: "server CPU/message", unit: "µs", digits: 2 },
    { key: "cpu_pct", label: "server CPU", unit: "%", digits: 0 },
    { key: "gen_cpu_pct", label: "load generator CPU", unit: "%", digits: 0 },
    { key: "db_mib", label: "chat.db", unit: "MiB", digits: 1 },
    { key: "rss_mib", label: "server RSS after", unit: "MiB", digits: 0 },
  ],
  freshServerPerRun: false,
  warmup: true,
  v2Only: true,
  runs: 3,
  clients: (sizes) => sizes.acks.senders,
  target: {
    text: `acked/s >= ${ACKED_TARGET.toLocaleString("en-US")}, 0 unacked, 0 lost`,
    check: (ours) => ours.acked_per_s >= ACKED_TARGET && ours.unacked === 0 && ours.lost === 0,
  },
  async run(server, sizes) {
    const s = sizes.acks;
    const tracker = new Tracker({ receivers: s.senders, senders: s.senders, messages: s.messages });
    const acks = new AckTracker({ senders: s.senders, messages: s.messages });
    const clients = await connectMany(server.endpoint, s.senders, {
      concurrency: sizes.concurrency,
      tracker,
      auth: { features: ["ids"] },
      onFrame: ackFrames(acks),
    });
    try {
      const templates = clients.map((client) =>
        new MessageTemplate(client.index, s.bytes, { ref: true })
      );
      await quiesce(server, sizes);
      const cpu0 = await cpuOf(server);
      const gen0 = await cpuSeconds(Deno.pid);
      const start = performance.now();
      const sending = Promise.all(
        templates.map((template, i) =>
          sendWindowed(clients[i], template, { count: s.messages, window: s.window, acks })
        ),
      );
      await acks.settle(sizes.stallMs);
      acks.release();
      await sending;
      await tracker.settle(sizes.stallMs);
      const cpu = await cpuOf(server) - cpu0;
      const genCpu = await cpuSeconds(Deno.pid) - gen0;
      const end = Math.max(acks.lastAck, tracker.lastDelivery);
      const seconds = (end - start) / 1000;
      const latencies = acks.latencies();
      const notes = problems(tracker, clients);
      if (acks.unexpected > 0) notes.push(`${acks.unexpected} unexpected or repeated acks`);
      if (acks.outOfOrder > 0) notes.push(`${acks.outOfOrder} acks out of order`);
      return {
        metrics: {
          acked_per_s: acks.received / ((acks.lastAck - start) / 1000),
          p50_ms: percentile(latencies, 0.5),
          p99_ms: percentile(latencies, 0.99),
          unacked: acks.expected - acks.received,
          deliveries_per_s: tracker.received / ((tracker.lastDelivery - start) / 1000),
          lost: tracker.expected - tracker.received,
          cpu_us_per_message: cpu * 1e6 / acks.received,
          cpu_pct: cpu * 100 / seconds,
          gen_cpu_pct: genCpu * 100 / seconds,
          db_mib: await databaseMib(server),
          rss_mib: server.pid === undefined ? NaN : await rssBytes(server.pid) / 1024 ** 2,
        },
        notes,
      };
    } finally {
      await closeAll(clients);
    }
  },
};

/** Scenario 8's target: every replay done within this long of the first connect. */
const JOIN_TARGET_S = 2;
/** Unacked messages the pre-filling client of scenario 8 may have. */
const PREFILL_WINDOW = 200;

const historyJoin: Scenario = {
  id: 8,
  title: "History join",
  describe: ({ join: s }) =>
    `${s.prefill} messages of ${s.bytes} B stored, then ${s.clients} clients connect at once ` +
    `and log in with history ${s.replay}; ours only (the reference has no history)`,
  metrics: [
    { key: "done_s", label: "all replays done", unit: "s", digits: 3 },
    { key: "done_max_s", label: "slowest run", unit: "s", digits: 3, over: "max" },
    { key: "client_p50_s", label: "median client", unit: "s", digits: 3 },
    { key: "logins_s", label: "all logged in", unit: "s", digits: 3 },
    { key: "incomplete", label: "incomplete replays", unit: "", digits: 0 },
    { key: "cpu_ms", label: "server CPU", unit: "ms", digits: 0 },
    { key: "gen_cpu_ms", label: "load generator CPU", unit: "ms", digits: 0 },
  ],
  freshServerPerRun: false,
  warmup: true,
  v2Only: true,
  runs: 5,
  clients: (sizes) => sizes.join.clients,
  target: {
    text: `every replay done within ${JOIN_TARGET_S} s (median of runs), all complete`,
    check: (ours) => ours.done_s <= JOIN_TARGET_S && ours.incomplete === 0,
  },
  async run(server, sizes) {
    const s = sizes.join;
    const notes: string[] = [];
    // The last `prefill` messages of the room are this run's: nobody else posts.
    const acks = new AckTracker({ senders: 1, messages: s.prefill });
    const [filler] = await connectMany(server.endpoint, 1, {
      concurrency: 1,
      auth: { features: ["ids"] },
      onFrame: ackFrames(acks),
    });
    try {
      const template = new MessageTemplate(0, s.bytes, { ref: true });
      await sendWindowed(filler, template, { count: s.prefill, window: PREFILL_WINDOW, acks });
      await acks.settle(sizes.stallMs);
    } finally {
      acks.release();
      await filler.close();
    }
    if (acks.received < s.prefill) {
      notes.push(`pre-fill: only ${acks.received} of ${s.prefill} messages acked`);
    }
    const replays = new ReplayTracker({ clients: s.clients, messages: s.replay, sender: 0 });
    await quiesce(server, sizes);
    const cpu0 = await cpuOf(server);
    const gen0 = await cpuSeconds(Deno.pid);
    const start = performance.now();
    // All at once: one login in flight per client.
    const clients = await connectMany(server.endpoint, s.clients, {
      concurrency: s.clients,
      auth: { features: ["history"], history: s.replay },
      onFrame: replays.handler,
    });
    try {
      const loggedIn = performance.now();
      await replays.settle(sizes.stallMs);
      const cpu = await cpuOf(server) - cpu0;
      const genCpu = await cpuSeconds(Deno.pid) - gen0;
      const ends = [...replays.endTimes()].filter((at) => !Number.isNaN(at))
        .map((at) => (at - start) / 1000).sort((a, b) => a - b);
      const missing = s.clients - replays.ended;
      const done = missing > 0 ? NaN : ends[ends.length - 1];
      if (missing > 0) notes.push(`${missing} clients got no history_end`);
      const incomplete = replays.incomplete();
      if (incomplete > 0) {
        notes.push(
          `${incomplete} clients did not get exactly ${s.replay} replayed messages in order ` +
            `and history_end with count ${s.replay}`,
        );
      }
      if (replays.other > 0) {
        notes.push(`${replays.other} unexpected frames, e.g. ${replays.firstOther}`);
      }
      return {
        metrics: {
          done_s: done,
          done_max_s: done,
          client_p50_s: percentile(Float64Array.from(ends), 0.5),
          logins_s: (loggedIn - start) / 1000,
          incomplete,
          cpu_ms: cpu * 1000,
          gen_cpu_ms: genCpu * 1000,
        },
        notes,
      };
    } finally {
      await closeAll(clients);
    }
  },
};

/**
 * Whether client `index` of `clients` is one of the `ws` WebSocket clients: they are spread
 * evenly among the TLS clients (every other one for 500 of 1000), so that the senders (the first
 * clients) are of both kinds and the room's member order, in which the server writes a
 * broadcast, favours neither kind.
 */
export function isWebClient(index: number, clients: number, ws: number): boolean {
  return Math.floor((index + 1) * ws / clients) > Math.floor(index * ws / clients);
}

/** A figure that is a ratio, shown as `label 0.97x`. */
function ratioMetric(key: string, label: string): MetricSpec {
  return {
    key,
    label,
    unit: "x",
    digits: 2,
    format: (value) => `${label} ${Number.isFinite(value) ? value.toFixed(2) : "n/a"}x`,
  };
}

/** Which phase of scenario 9 goes first in its next run (they alternate, as servers do). */
let webMixedFirst = true;

const webAndTls: Scenario = {
  id: 9,
  title: "WebSocket and TLS clients in one room",
  describe: ({ web: s }) =>
    `${s.ws} WebSocket clients (web port, /ws) among ${s.tls} TLS clients, ${s.senders} ` +
    `senders of both kinds x ${s.messages} messages of ${s.bytes} B (${s.rounds} bursts per ` +
    `run), then the same with ${s.ws + s.tls} TLS clients only, in the same run (alternating ` +
    `which goes first); ours only (the reference has no web port)`,
  metrics: [
    { key: "ws_deliveries_per_s", label: "WS deliveries/s", unit: "", digits: 0 },
    { key: "tls_deliveries_per_s", label: "TLS (next to WS) deliveries/s", unit: "", digits: 0 },
    ratioMetric("ws_vs_tls", "WS/TLS"),
    { key: "ws_p99_ms", label: "WS p99", unit: "ms", digits: 2 },
    { key: "tls_p99_ms", label: "TLS (next to WS) p99", unit: "ms", digits: 2 },
    { key: "deliveries_per_s", label: "mixed room deliveries/s", unit: "", digits: 0 },
    { key: "tls_only_deliveries_per_s", label: "TLS-only room deliveries/s", unit: "", digits: 0 },
    ratioMetric("mixed_vs_tls_only", "mixed/TLS-only"),
    { key: "p99_ms", label: "mixed p99", unit: "ms", digits: 2 },
    { key: "tls_only_p99_ms", label: "TLS-only p99", unit: "ms", digits: 2 },
    { key: "cpu_us_per_delivery", label: "server CPU/delivery mixed", unit: "µs", digits: 2 },
    {
      key: "tls_only_cpu_us_per_delivery",
      label: "server CPU/delivery TLS-only",
      unit: "µs",
      digits: 2,
    },
    ratioMetric("cpu_mixed_vs_tls_only", "server CPU/delivery mixed/TLS-only"),
    {
      key: "ws_cpu_us_per_delivery",
      label: "server CPU/WS delivery (est.)",
      unit: "µs",
      digits: 2,
    },
    {
      key: "gen_cpu_us_per_delivery",
      label: "load generator CPU/delivery mixed",
      unit: "µs",
      digits: 2,
    },
    {
      key: "tls_only_gen_cpu_us_per_delivery",
      label: "load generator CPU/delivery TLS-only",
      unit: "µs",
      digits: 2,
    },
    { key: "cpu_pct", label: "server CPU mixed", unit: "%", digits: 0 },
    { key: "tls_only_cpu_pct", label: "server CPU TLS-only", unit: "%", digits: 0 },
    { key: "gen_cpu_pct", label: "load generator CPU mixed", unit: "%", digits: 0 },
    { key: "tls_only_gen_cpu_pct", label: "load generator CPU TLS-only", unit: "%", digits: 0 },
    LOST,
  ],
  freshServerPerRun: false,
  warmup: true,
  web: true,
  runs: 5,
  clients: (sizes) => sizes.web.ws + sizes.web.tls,
  async run(server, sizes) {
    const s = sizes.web;
    const clients = s.ws + s.tls;
    const spec = { clients, senders: s.senders, messages: s.messages, bytes: s.bytes };
    const phases = [
      { name: "mixed", web: (index: number) => isWebClient(index, clients, s.ws) },
      { name: "TLS-only", web: undefined },
    ];
    if (!webMixedFirst) phases.reverse();
    webMixedFirst = !webMixedFirst;
    const results: Record<string, FanOutResult> = {};
    for (const phase of phases) {
      results[phase.name] = await fanOut(
        server,
        { ...spec, rounds: s.rounds, web: phase.web },
        sizes,
      );
    }
    const mixed = results["mixed"];
    const only = results["TLS-only"];
    const tls = mixed.tracker.group(0);
    const ws = mixed.tracker.group(1);
    const [wsLatencies, tlsLatencies] = [ws.latencies(), tls.latencies()];
    const [mixedLatencies, onlyLatencies] = [mixed.tracker.latencies(), only.tracker.latencies()];
    const wsRate = ws.received / (mixed.groupElapsedMs[1] / 1000);
    const tlsRate = tls.received / (mixed.groupElapsedMs[0] / 1000);
    const mixedRate = mixed.tracker.received / (mixed.elapsedMs / 1000);
    const cpuMixed = mixed.cpu * 1e6 / mixed.tracker.received;
    const cpuOnly = only.cpu * 1e6 / only.tracker.received;
    // If a TLS delivery costs in the mixed room what it costs in the TLS-only one, the rest of
    // the mixed room's CPU is the WebSocket deliveries'.
    const wsShare = ws.received / mixed.tracker.received;
    const wsCpu = (cpuMixed - (1 - wsShare) * cpuOnly) / wsShare;
    const onlyRate = only.tracker.received / (only.elapsedMs / 1000);
    const notes = [
      ...mixed.notes.map((note) => `mixed: ${note}`),
      ...only.notes.map((note) => `TLS-only: ${note}`),
    ];
    if (ws.received < ws.expected) {
      notes.push(`mixed: ${ws.expected - ws.received} deliveries to WebSocket clients lost`);
    }
    return {
      metrics: {
        ws_deliveries_per_s: wsRate,
        tls_deliveries_per_s: tlsRate,
        ws_vs_tls: wsRate / tlsRate,
        ws_p50_ms: percentile(wsLatencies, 0.5),
        ws_p99_ms: percentile(wsLatencies, 0.99),
        tls_p50_ms: percentile(tlsLatencies, 0.5),
        tls_p99_ms: percentile(tlsLatencies, 0.99),
        deliveries_per_s: mixedRate,
        tls_only_deliveries_per_s: onlyRate,
        mixed_vs_tls_only: mixedRate / onlyRate,
        p50_ms: percentile(mixedLatencies, 0.5),
        p99_ms: percentile(mixedLatencies, 0.99),
        tls_only_p50_ms: percentile(onlyLatencies, 0.5),
        tls_only_p99_ms: percentile(onlyLatencies, 0.99),
        cpu_us_per_delivery: cpuMixed,
        tls_only_cpu_us_per_delivery: cpuOnly,
        cpu_mixed_vs_tls_only: cpuMixed / cpuOnly,
        ws_cpu_us_per_delivery: wsCpu,
        gen_cpu_us_per_delivery: mixed.genCpu * 1e6 / mixed.tracker.received,
        tls_only_gen_cpu_us_per_delivery: only.genCpu * 1e6 / only.tracker.received,
        gen_cpu_pct: mixed.genCpu * 100 / (mixed.wallMs / 1000),
        tls_only_gen_cpu_pct: only.genCpu * 100 / (only.wallMs / 1000),
        cpu_pct: mixed.cpu * 100 / (mixed.wallMs / 1000),
        tls_only_cpu_pct: only.cpu * 100 / (only.wallMs / 1000),
        lost: mixed.tracker.expected - mixed.tracker.received +
          only.tracker.expected - only.tracker.received,
      },
      notes,
    };
  },
};

/** Scenario 10's targets: cross-node p99 at the paced load, and two-node/single deliveries/s. */
const CLUSTER_P99_TARGET_MS = 25;
const CLUSTER_RATIO_TARGET = 0.7;
/** A phase in which the load generator used this much of one core may be limited by it. */
const GEN_SATURATED_PCT = 90;
/** Shortest phase whose CPU share is told (CPU time comes in 10 ms clock ticks). */
const MIN_CPU_WINDOW_MS = 500;

/**
 * Which node of a two-node cluster client `index` is on (0 or 1): every other client, so that
 * the senders (the first clients) are split evenly too.
 */
export function nodeOf(index: number): 0 | 1 {
  return (index % 2) as 0 | 1;
}

/** Group 1: a cross-node delivery (sender and receiver on different nodes); group 0: same node. */
function crossNode(receiver: number, sender: number): 0 | 1 {
  return nodeOf(receiver) === nodeOf(sender) ? 0 : 1;
}

/** Offered deliveries per second of scenario 10's paced load. */
function offeredPerS(s: Sizes["cluster"]): number {
  return s.senders * s.rate * (s.clients - 1);
}

/** Which configuration of scenario 10 goes first in its next run (they alternate). */
let clusterFirst = true;

/** `value` formatted as a whole number with separators. */
function whole(value: number): string {
  return Math.round(value).toLocaleString("en-US");
}

const cluster: Scenario = {
  id: 10,
  title: "Two-node cluster",
  describe: ({ cluster: s }) =>
    `${s.clients} clients split evenly over 2 nodes of one room on a private Redis, ` +
    `${s.senders} senders (half on each node) at ${s.rate} messages/s each for ${s.seconds} s ` +
    `(${whole(offeredPerS(s))} deliveries/s offered); then ${s.flood.clients} clients split ` +
    `the same way, ${s.flood.senders} senders x ${s.flood.messages} messages as fast as flow ` +
    `control allows (${s.flood.rounds} bursts per run); both against a single node with the ` +
    `same load in the same run, each in two halves run two-node, single, single, two-node ` +
    `(mirrored in the next run); messages of ${s.bytes} B; ours only`,
  metrics: [
    { key: "cross_p99_ms", label: "paced cross-node p99", unit: "ms", digits: 2 },
    { key: "cross_p50_ms", label: "paced cross-node p50", unit: "ms", digits: 2 },
    { key: "same_p99_ms", label: "paced same-node p99", unit: "ms", digits: 2 },
    { key: "same_p50_ms", label: "paced same-node p50", unit: "ms", digits: 2 },
    { key: "single_p99_ms", label: "paced single-node p99", unit: "ms", digits: 2 },
    { key: "single_p50_ms", label: "paced single-node p50", unit: "ms", digits: 2 },
    { key: "cross_per_s", label: "paced cross-node deliveries/s", unit: "", digits: 0 },
    { key: "paced_per_s", label: "paced two-node deliveries/s", unit: "", digits: 0 },
    { key: "paced_lost", label: "paced two-node lost", unit: "", digits: 0 },
    { key: "paced_node1_cpu_us", label: "paced CPU/delivery node 1", unit: "µs", digits: 2 },
    { key: "paced_node2_cpu_us", label: "node 2", unit: "µs", digits: 2 },
    { key: "paced_single_cpu_us", label: "single node", unit: "µs", digits: 2 },
    { key: "paced_node1_cpu_pct", label: "paced CPU node 1", unit: "%", digits: 0 },
    { key: "paced_node2_cpu_pct", label: "node 2", unit: "%", digits: 0 },
    { key: "paced_single_cpu_pct", label: "single node", unit: "%", digits: 0 },
    { key: "paced_redis_cpu_pct", label: "paced Redis CPU", unit: "%", digits: 1 },
    { key: "paced_redis_us_per_msg", label: "paced Redis CPU/message", unit: "µs", digits: 1 },
    {
      key: "idle_redis_cpu_pct",
      label: "Redis CPU during the single-node run (cluster idle)",
      unit: "%",
      digits: 1,
    },
    { key: "paced_gen_cpu_pct", label: "paced load generator CPU two-node", unit: "%", digits: 0 },
    { key: "paced_single_gen_cpu_pct", label: "single", unit: "%", digits: 0 },
    { key: "deliveries_per_s", label: "flood two-node deliveries/s", unit: "", digits: 0 },
    { key: "single_deliveries_per_s", label: "single-node deliveries/s", unit: "", digits: 0 },
    ratioMetric("two_vs_single", "two-node/single"),
    { key: "p99_ms", label: "flood two-node p99", unit: "ms", digits: 2 },
    { key: "single_flood_p99_ms", label: "single-node p99", unit: "ms", digits: 2 },
    { key: "node1_cpu_us", label: "flood CPU/delivery node 1", unit: "µs", digits: 2 },
    { key: "node2_cpu_us", label: "node 2", unit: "µs", digits: 2 },
    { key: "single_cpu_us", label: "single node", unit: "µs", digits: 2 },
    {
      key: "cluster_cpu_us",
      label: "flood CPU/delivery two nodes + Redis",
      unit: "µs",
      digits: 2,
    },
    ratioMetric("cpu_cluster_vs_single", "(two nodes + Redis)/single"),
    { key: "node1_cpu_pct", label: "flood CPU node 1", unit: "%", digits: 0 },
    { key: "node2_cpu_pct", label: "node 2", unit: "%", digits: 0 },
    { key: "single_cpu_pct", label: "single node", unit: "%", digits: 0 },
    { key: "redis_cpu_pct", label: "flood Redis CPU", unit: "%", digits: 0 },
    { key: "redis_us_per_msg", label: "flood Redis CPU/message", unit: "µs", digits: 1 },
    { key: "gen_cpu_pct", label: "flood load generator CPU two-node", unit: "%", digits: 0 },
    { key: "single_gen_cpu_pct", label: "single", unit: "%", digits: 0 },
    {
      key: "gen_cpu_us",
      label: "flood load generator CPU/delivery two-node",
      unit: "µs",
      digits: 2,
    },
    { key: "single_gen_cpu_us", label: "single", unit: "µs", digits: 2 },
    { key: "total_cpu_pct", label: "flood all processes two-node", unit: "%", digits: 0 },
    { key: "single_total_cpu_pct", label: "single", unit: "%", digits: 0 },
    LOST,
  ],
  freshServerPerRun: false,
  warmup: true,
  cluster: true,
  // Each run takes about 14 s (two configurations, each 4 s paced and a flood, in halves).
  runs: 3,
  clients: (sizes) => Math.max(sizes.cluster.clients, sizes.cluster.flood.clients),
  target: {
    text: `paced cross-node p99 <= ${CLUSTER_P99_TARGET_MS} ms, flood two-node deliveries/s ` +
      `>= ${CLUSTER_RATIO_TARGET}x the single node, 0 lost`,
    check: (ours) =>
      ours.cross_p99_ms <= CLUSTER_P99_TARGET_MS && ours.two_vs_single >= CLUSTER_RATIO_TARGET &&
      ours.lost === 0,
  },
  async run(server, sizes) {
    const pair = server.cluster;
    if (!pair || pair.nodes.length !== 2) {
      throw new Error("Scenario 10 needs a two-node cluster beside the server");
    }
    const s = sizes.cluster;
    const redis = [pair.redis.pid];
    const two = { name: "two-node", servers: pair.nodes, place: nodeOf, group: crossNode };
    const one = { name: "single", servers: [server], place: undefined, group: undefined };
    // Each measurement in two halves, ABBA: a drift of the (shared) machine's load hits both
    // configurations alike. The next run starts with the other one.
    const order = clusterFirst ? [two, one, one, two] : [one, two, two, one];
    clusterFirst = !clusterFirst;
    const pacedHalf = {
      clients: s.clients,
      senders: s.senders,
      messages: Math.round(s.rate * s.seconds / 2),
      rate: s.rate,
      bytes: s.bytes,
    };
    const floodHalf = {
      ...s.flood,
      rounds: Math.max(1, Math.round(s.flood.rounds / 2)),
      bytes: s.bytes,
    };
    const halves = {
      paced: { "two-node": [], single: [] },
      flood: { "two-node": [], single: [] },
    } as Record<
      "paced" | "flood",
      Record<string, FanOutResult[]>
    >;
    for (const [phase, spec] of [["paced", pacedHalf], ["flood", floodHalf]] as const) {
      for (const { name, servers, place, group } of order) {
        halves[phase][name].push(await fanOut(servers, { ...spec, place, group }, sizes, redis));
      }
    }
    const notes: string[] = [];
    const runs: Record<string, Record<string, Combined>> = {};
    for (const phase of ["paced", "flood"] as const) {
      runs[phase] = {};
      for (const name of ["two-node", "single"]) {
        const clients = phase === "paced" ? s.clients : s.flood.clients;
        const combined = runs[phase][name] = combine(halves[phase][name], clients);
        notes.push(...combined.notes.map((note) => `${phase} ${name}: ${note}`));
        const genPct = combined.genCpu * 100 / (combined.wallMs / 1000);
        if (genPct >= GEN_SATURATED_PCT && combined.wallMs >= MIN_CPU_WINDOW_MS) {
          notes.push(
            `${phase} ${name}: the load generator used ${Math.round(genPct)} % of one core: ` +
              `it may be the limit`,
          );
        }
      }
    }
    const pct = (cpu: number, run: Combined) => cpu * 100 / (run.wallMs / 1000);
    const perS = (run: Combined) => run.received / (run.elapsedMs / 1000);
    const lost = (run: Combined) => run.expected - run.received;
    const pacedTwo = runs.paced["two-node"];
    const pacedOne = runs.paced["single"];
    const [same, cross] = pacedTwo.groups;
    const pacedMessages = s.senders * pacedHalf.messages * 2;
    const floodTwo = runs.flood["two-node"];
    const floodOne = runs.flood["single"];
    const floodMessages = s.flood.senders * s.flood.messages * floodHalf.rounds * 2;
    const twoRate = perS(floodTwo);
    const oneRate = perS(floodOne);
    const clusterCpuUs = (floodTwo.cpu + floodTwo.alsoCpu[0]) * 1e6 / floodTwo.received;
    const singleCpuUs = floodOne.cpu * 1e6 / floodOne.received;
    return {
      metrics: {
        cross_p50_ms: percentile(cross.latencies, 0.5),
        cross_p99_ms: percentile(cross.latencies, 0.99),
        same_p50_ms: percentile(same.latencies, 0.5),
        same_p99_ms: percentile(same.latencies, 0.99),
        single_p50_ms: percentile(pacedOne.latencies, 0.5),
        single_p99_ms: percentile(pacedOne.latencies, 0.99),
        cross_per_s: cross.received / (pacedTwo.elapsedMs / 1000),
        paced_per_s: perS(pacedTwo),
        paced_single_per_s: perS(pacedOne),
        paced_lost: lost(pacedTwo),
        paced_single_lost: lost(pacedOne),
        paced_node1_cpu_us: pacedTwo.cpus[0] * 1e6 / pacedTwo.deliveredOn[0],
        paced_node2_cpu_us: pacedTwo.cpus[1] * 1e6 / pacedTwo.deliveredOn[1],
        paced_single_cpu_us: pacedOne.cpu * 1e6 / pacedOne.received,
        paced_node1_cpu_pct: pct(pacedTwo.cpus[0], pacedTwo),
        paced_node2_cpu_pct: pct(pacedTwo.cpus[1], pacedTwo),
        paced_single_cpu_pct: pct(pacedOne.cpu, pacedOne),
        paced_redis_cpu_pct: pct(pacedTwo.alsoCpu[0], pacedTwo),
        paced_redis_us_per_msg: pacedTwo.alsoCpu[0] * 1e6 / pacedMessages,
        idle_redis_cpu_pct: pct(pacedOne.alsoCpu[0], pacedOne),
        paced_gen_cpu_pct: pct(pacedTwo.genCpu, pacedTwo),
        paced_single_gen_cpu_pct: pct(pacedOne.genCpu, pacedOne),
        deliveries_per_s: twoRate,
        single_deliveries_per_s: oneRate,
        two_vs_single: twoRate / oneRate,
        p50_ms: percentile(floodTwo.latencies, 0.5),
        p99_ms: percentile(floodTwo.latencies, 0.99),
        single_flood_p99_ms: percentile(floodOne.latencies, 0.99),
        node1_cpu_us: floodTwo.cpus[0] * 1e6 / floodTwo.deliveredOn[0],
        node2_cpu_us: floodTwo.cpus[1] * 1e6 / floodTwo.deliveredOn[1],
        single_cpu_us: singleCpuUs,
        cluster_cpu_us: clusterCpuUs,
        cpu_cluster_vs_single: clusterCpuUs / singleCpuUs,
        node1_cpu_pct: pct(floodTwo.cpus[0], floodTwo),
        node2_cpu_pct: pct(floodTwo.cpus[1], floodTwo),
        single_cpu_pct: pct(floodOne.cpu, floodOne),
        redis_cpu_pct: pct(floodTwo.alsoCpu[0], floodTwo),
        redis_us_per_msg: floodTwo.alsoCpu[0] * 1e6 / floodMessages,
        single_redis_cpu_pct: pct(floodOne.alsoCpu[0], floodOne),
        gen_cpu_pct: pct(floodTwo.genCpu, floodTwo),
        single_gen_cpu_pct: pct(floodOne.genCpu, floodOne),
        gen_cpu_us: floodTwo.genCpu * 1e6 / floodTwo.received,
        single_gen_cpu_us: floodOne.genCpu * 1e6 / floodOne.received,
        total_cpu_pct: pct(floodTwo.cpu + floodTwo.alsoCpu[0] + floodTwo.genCpu, floodTwo),
        single_total_cpu_pct: pct(floodOne.cpu + floodOne.genCpu, floodOne),
        lost: lost(pacedTwo) + lost(pacedOne) + lost(floodTwo) + lost(floodOne),
      },
      notes,
    };
  },
};

/** Several {@link fanOut}s of one configuration of scenario 10, taken together. */
interface Combined {
  expected: number;
  received: number;
  /** Summed over the parts, as are the CPU times and `wallMs`. */
  elapsedMs: number;
  wallMs: number;
  cpu: number;
  cpus: number[];
  alsoCpu: number[];
  genCpu: number;
  /** All the parts' latencies, sorted. */
  latencies: Float64Array;
  /** Groups 0 and 1 of the parts' trackers (all zero without groups). */
  groups: { received: number; latencies: Float64Array }[];
  /** Deliveries to the clients of node 0 and of node 1 (by {@link nodeOf}). */
  deliveredOn: [number, number];
  notes: string[];
}

function sorted(arrays: Float64Array[]): Float64Array {
  const all = new Float64Array(arrays.reduce((sum, a) => sum + a.length, 0));
  let at = 0;
  for (const array of arrays) {
    all.set(array, at);
    at += array.length;
  }
  return all.sort();
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

/** Takes `parts` (each with `clients` clients) together. */
function combine(parts: FanOutResult[], clients: number): Combined {
  const grouped = parts[0].tracker.hasGroups;
  const groups = ([0, 1] as const).map((group) => {
    if (!grouped) return { received: 0, latencies: new Float64Array(0) };
    const figures = parts.map((part) => part.tracker.group(group));
    return {
      received: sum(figures.map((f) => f.received)),
      latencies: sorted(figures.map((f) => f.latencies())),
    };
  });
  const deliveredOn: [number, number] = [0, 0];
  for (const part of parts) {
    for (let i = 0; i < clients; i++) deliveredOn[nodeOf(i)] += part.tracker.receivedBy(i);
  }
  const servers = parts[0].cpus.length;
  const also = parts[0].alsoCpu.length;
  return {
    expected: sum(parts.map((part) => part.tracker.expected)),
    received: sum(parts.map((part) => part.tracker.received)),
    elapsedMs: sum(parts.map((part) => part.elapsedMs)),
    wallMs: sum(parts.map((part) => part.wallMs)),
    cpu: sum(parts.map((part) => part.cpu)),
    cpus: Array.from({ length: servers }, (_, i) => sum(parts.map((part) => part.cpus[i]))),
    alsoCpu: Array.from({ length: also }, (_, i) => sum(parts.map((part) => part.alsoCpu[i]))),
    genCpu: sum(parts.map((part) => part.genCpu)),
    latencies: sorted(parts.map((part) => part.tracker.latencies())),
    groups,
    deliveredOn,
    notes: [...new Set(parts.flatMap((part) => part.notes))],
  };
}

/** Every scenario, by id. */
export const SCENARIOS: readonly Scenario[] = [
  burst,
  steady,
  connections,
  memory,
  large,
  stalledReader,
  storedAcks,
  historyJoin,
  webAndTls,
  cluster,
];
