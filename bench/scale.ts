/**
 * The scale scenarios (11 to 14): ten thousand clients on one small machine, held by several
 * load-agent processes (`fleet.ts`, `agent.ts`) so that the load generator is not the limit, and
 * measured beside the Node.js reference where it can run them.
 *
 * - 11, idle: 10,000 logged-in idle clients: RSS per client against the `node:tls` transport
 *   floor, and connections per second against the reference.
 * - 12, growth: clients added in steps (1,000, 2,500, 5,000, 10,000); at each, 10 senders send
 *   1 message/s for 10 s (100,000 deliveries/s offered at 10,000): RSS, latency, loss and CPU
 *   per delivery at each step, and a plot of them (`--plot`, `docs/growth.svg` by default).
 *   Then one sender alone on the largest room: at the full load every server here is
 *   saturated, and its CPU per delivery is its share of the cores; one fan-out at a time shows
 *   what a delivery costs.
 * - 13, half WebSocket: 12's last step on our server with every other client a browser's
 *   WebSocket (asking for ids, presence and 50 messages of history, as the web client does).
 * - 14, churn: 500 clients/s logging in and leaving for 60 s while 100 clients chat at 1
 *   message/s each: no delivery lost, file descriptors and RSS back where they were.
 *
 * @module
 */
import { type JsonObject } from "../src/protocol/mod.ts";
import { benchNow } from "./load.ts";
import { Fleet, type FleetDeliveries, histogramPercentile } from "./fleet.ts";
import { median } from "./report.ts";
import {
  delay,
  LOST,
  type Metrics,
  type MetricSpec,
  quiesce,
  type RunResult,
  type Scenario,
  type Sizes,
} from "./scenarios.ts";
import { cpuSeconds, FLOOR_NAMES, openFiles, rssBytes, type ServerHandle } from "./servers.ts";

/** What the web client asks for when it logs in (`web/link.js`). */
export const BROWSER_AUTH: JsonObject = {
  name: "bench-web",
  features: ["ids", "presence", "history"],
  history: 50,
};

/** Idle RSS per client, at most this many times the `node:tls` floor's (the issue's target). */
const FLOOR_RATIO_TARGET = 1.1;
/** p99 delivery latency target at 10,000 clients, ms. */
const P99_TARGET_MS = 50;
/** A load agent whose event loop was this late (ms) was a limit of the run, not only the server. */
const AGENT_LAG_LIMIT_MS = 100;
/** A load agent above this share of a core was saturated. */
const AGENT_CPU_LIMIT = 0.9;
/** Largest RSS growth (MiB) from mid-churn to its end that is a plateau, not a leak. */
const CHURN_PLATEAU_MIB = 5;
/** How long the server is left alone after the churn before RSS and descriptors are read. */
const CHURN_SETTLE_MS = 3000;

const KIB: MetricSpec = { key: "kib_per_client", label: "RSS/client", unit: "KiB", digits: 1 };
const CONN: MetricSpec = { key: "conn_per_s", label: "connect", unit: "conn/s", digits: 0 };
const TALK: MetricSpec[] = [
  { key: "p99_ms", label: "p99", unit: "ms", digits: 1 },
  { key: "p50_ms", label: "p50", unit: "ms", digits: 2 },
  { key: "max_ms", label: "max", unit: "ms", digits: 1 },
  LOST,
  { key: "cpu_us_per_delivery", label: "CPU/delivery", unit: "µs", digits: 2 },
  { key: "deliveries_per_s", label: "delivered", unit: "/s", digits: 0 },
  { key: "gen_cores", label: "load agents", unit: "cores", digits: 2 },
  { key: "server_cores", label: "server", unit: "cores", digits: 2 },
];

/**
 * Scenario 12's figures of one sender at the last step: a fan-out at a time, which no server
 * falls behind on, so its CPU per delivery is what a write costs, not how much of the machine a
 * saturated server took (at the full load, every server here is saturated: its CPU per delivery
 * is then its share of the cores divided by the deliveries).
 */
const ONE_SENDER: MetricSpec[] = [
  { key: "one_p99_ms", label: "1 sender: p99", unit: "ms", digits: 1 },
  { key: "one_p50_ms", label: "p50", unit: "ms", digits: 1 },
  { key: "one_lost", label: "lost", unit: "", digits: 0 },
  { key: "one_cpu_us", label: "CPU/delivery", unit: "µs", digits: 2 },
];

function rss(server: ServerHandle): Promise<number> {
  return server.pid === undefined ? Promise.resolve(NaN) : rssBytes(server.pid);
}

function cpu(server: ServerHandle): Promise<number> {
  return server.pid === undefined ? Promise.resolve(NaN) : cpuSeconds(server.pid);
}

function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

/** Starts the load agents for `server`, runs `body`, and stops them whatever happens. */
async function withFleet<T>(
  server: ServerHandle,
  sizes: Sizes,
  body: (fleet: Fleet) => Promise<T>,
): Promise<T> {
  const fleet = await Fleet.start(sizes.scale.agents, server.endpoint);
  try {
    return await body(fleet);
  } finally {
    await fleet.stop();
  }
}

/** Whether WebSocket clients go to this server (ours, started with its web port). */
function webOf(server: ServerHandle): "none" | "odd" {
  return server.endpoint.webPort !== undefined ? "odd" : "none";
}

/** Opens `count` clients from `first`; a failure is a note, and the count of those that failed. */
async function open(
  fleet: Fleet,
  first: number,
  count: number,
  sizes: Sizes,
  web: "none" | "odd",
  notes: string[],
  login = true,
): Promise<{ ms: number; failed: number }> {
  const result = await fleet.connect(first, count, {
    concurrency: sizes.scale.concurrency,
    web,
    webAuth: web === "odd" ? BROWSER_AUTH : undefined,
    login,
  });
  if (result.failed > 0) {
    notes.push(`${result.failed} of ${count} clients could not log in (${result.firstError})`);
  }
  return result;
}

/** Notes on what the load agents saw go wrong, and whether they were a limit. */
function deliveryNotes(d: FleetDeliveries, agentCores: number[], wallS: number): string[] {
  const notes: string[] = [];
  if (d.ended > 0) notes.push(`${d.ended} clients were disconnected (${d.endReason})`);
  if (d.outOfOrder > 0) notes.push(`${d.outOfOrder} deliveries out of order`);
  if (d.other > 0) notes.push(`${d.other} unexpected frames, e.g. ${d.firstOther}`);
  const busiest = Math.max(...agentCores) / wallS;
  if (busiest > AGENT_CPU_LIMIT || d.loopLagMs > AGENT_LAG_LIMIT_MS) {
    notes.push(
      `the load generator saturated (busiest agent ${(busiest * 100).toFixed(0)} % of a core, ` +
        `event loop up to ${d.loopLagMs.toFixed(0)} ms late): latency includes its own delay`,
    );
  }
  return notes;
}

/**
 * One talking window on the clients already open: `senders` x `rate` messages/s for
 * `seconds` to all `clients`; the figures of {@link TALK}.
 */
async function talk(
  server: ServerHandle,
  fleet: Fleet,
  clients: number,
  sizes: Sizes,
  notes: string[],
  senders = sizes.scale.senders,
): Promise<Metrics> {
  const { rate, seconds, bytes } = sizes.scale;
  const count = Math.max(1, Math.round(rate * seconds));
  await quiesce(server, sizes);
  await fleet.track(clients, senders, count);
  const before = await Promise.all([cpu(server), fleet.cpuSeconds()]);
  const wallStart = performance.now();
  const startMs = benchNow() + 100;
  const sent = await fleet.send(senders, { rate, count, startMs, bytes });
  const deliveries = await fleet.settle(sizes.stallMs);
  const after = await Promise.all([cpu(server), fleet.cpuSeconds()]);
  const wallS = (performance.now() - wallStart) / 1000;
  const agentCores = after[1].map((value, i) => value - before[1][i]);
  notes.push(...deliveryNotes(deliveries, agentCores, wallS));
  if (sent.late > 0) notes.push(`${sent.late} messages left more than half an interval late`);
  return {
    p50_ms: histogramPercentile(deliveries.histogram, 0.5),
    p99_ms: histogramPercentile(deliveries.histogram, 0.99),
    max_ms: histogramPercentile(deliveries.histogram, 1),
    lost: deliveries.lost,
    cpu_us_per_delivery: (after[0] - before[0]) / Math.max(1, deliveries.received) * 1e6,
    deliveries_per_s: deliveries.received / seconds,
    gen_cores: sum(agentCores) / wallS,
    server_cores: (after[0] - before[0]) / wallS,
    feature_frames: deliveries.featureFrames,
  };
}

/** Idle memory and connection rate of `count` clients on a fresh server. */
async function idle(
  server: ServerHandle,
  fleet: Fleet,
  count: number,
  sizes: Sizes,
  web: "none" | "odd",
  notes: string[],
): Promise<Metrics> {
  await quiesce(server, sizes);
  const base = await rss(server);
  const cpuBefore = await cpu(server);
  const agentsBefore = await fleet.cpuSeconds();
  const opened = await open(fleet, 0, count, sizes, web, notes, !server.transportOnly);
  const cpuAfter = await cpu(server);
  const agentsUsed = sum(await fleet.cpuSeconds()) - sum(agentsBefore);
  await delay(1000);
  await quiesce(server, sizes);
  const loaded = await rss(server);
  return {
    kib_per_client: (loaded - base) / 1024 / Math.max(1, count - opened.failed),
    conn_per_s: (count - opened.failed) / (opened.ms / 1000),
    server_ms_per_conn: (cpuAfter - cpuBefore) / count * 1000,
    connect_server_cores: (cpuAfter - cpuBefore) / (opened.ms / 1000),
    connect_gen_cores: agentsUsed / (opened.ms / 1000),
    base_mib: base / 1024 ** 2,
    loaded_mib: loaded / 1024 ** 2,
  };
}

const idleScale: Scenario = {
  id: 11,
  title: "Ten thousand idle",
  describe: ({ scale }) =>
    `${scale.clients} clients logged in (TLS handshake only on the transport floors) by ` +
    `${scale.agents} load agents, ${scale.concurrency} at a time, then idle`,
  metrics: [
    KIB,
    CONN,
    { key: "server_ms_per_conn", label: "server CPU/conn", unit: "ms", digits: 2 },
    { key: "loaded_mib", label: "RSS loaded", unit: "MiB", digits: 1 },
  ],
  freshServerPerRun: true,
  warmup: false,
  floors: true,
  runs: 3,
  clients: (sizes) => sizes.scale.clients,
  target: {
    text: `RSS/client <= ${FLOOR_RATIO_TARGET}x the node:tls floor's, connect >= 1.0x the ` +
      `reference's`,
    check: (ours, reference, all) => {
      const floor = all[FLOOR_NAMES.node]?.kib_per_client;
      if (!Number.isFinite(ours.kib_per_client) || !(floor > 0)) return null;
      const memory = ours.kib_per_client <= FLOOR_RATIO_TARGET * floor;
      if (!reference) return memory ? null : false;
      return memory && ours.conn_per_s >= reference.conn_per_s;
    },
  },
  async run(server, sizes): Promise<RunResult> {
    const notes: string[] = [];
    const metrics = await withFleet(
      server,
      sizes,
      (fleet) => idle(server, fleet, sizes.scale.clients, sizes, "none", notes),
    );
    return { metrics, notes };
  },
};

/**
 * The growth figures' keys at step `i` (0-based): clients, RSS MiB after the talk window and
 * before it (idle), p99 ms, CPU µs/delivery.
 */
function stepKeys(
  i: number,
): { clients: string; rss: string; idleRss: string; p99: string; cpu: string } {
  return {
    clients: `step${i + 1}_clients`,
    rss: `step${i + 1}_rss_mib`,
    idleRss: `step${i + 1}_idle_rss_mib`,
    p99: `step${i + 1}_p99_ms`,
    cpu: `step${i + 1}_cpu_us`,
  };
}

const growth: Scenario = {
  id: 12,
  title: "Growth to ten thousand talking",
  describe: ({ scale }) =>
    `clients added in steps of ${scale.steps.join(", ")} by ${scale.agents} load agents; at ` +
    `each, ${scale.senders} senders x ${scale.rate} msg/s x ${scale.seconds} s ` +
    `(${(scale.senders * scale.rate * (scale.steps.at(-1)! - 1)).toLocaleString("en-US")} ` +
    `deliveries/s offered at the last); figures of the last step`,
  metrics: [...TALK, { key: "loaded_mib", label: "RSS", unit: "MiB", digits: 1 }, ...ONE_SENDER],
  freshServerPerRun: true,
  warmup: false,
  floors: true,
  runs: 3,
  clients: (sizes) => sizes.scale.steps.at(-1)!,
  target: {
    text: `p99 <= ${P99_TARGET_MS} ms, 0 lost, CPU/delivery <= 1.0x the reference's`,
    check: (ours, reference) => {
      const fast = ours.p99_ms <= P99_TARGET_MS && ours.lost === 0;
      if (!reference || !Number.isFinite(ours.cpu_us_per_delivery)) return fast ? null : false;
      return fast && ours.cpu_us_per_delivery <= reference.cpu_us_per_delivery;
    },
  },
  async run(server, sizes): Promise<RunResult> {
    const notes: string[] = [];
    const metrics: Metrics = {};
    await withFleet(server, sizes, async (fleet) => {
      let open_ = 0;
      for (const [i, step] of sizes.scale.steps.entries()) {
        await open(fleet, open_, step - open_, sizes, "none", notes, !server.transportOnly);
        open_ = step;
        await quiesce(server, sizes);
        const idleRss = await rss(server);
        const figures = await talk(server, fleet, step, sizes, notes);
        await quiesce(server, sizes);
        const keys = stepKeys(i);
        metrics[keys.clients] = step;
        metrics[keys.rss] = await rss(server) / 1024 ** 2;
        metrics[keys.idleRss] = idleRss / 1024 ** 2;
        metrics[keys.p99] = figures.p99_ms;
        metrics[keys.cpu] = figures.cpu_us_per_delivery;
        Object.assign(metrics, figures);
        metrics.loaded_mib = metrics[keys.rss];
      }
      // One sender on the largest room (see ONE_SENDER).
      const oneNotes: string[] = [];
      const one = await talk(server, fleet, open_, sizes, oneNotes, 1);
      notes.push(...oneNotes.map((note) => `1 sender: ${note}`));
      metrics.one_p99_ms = one.p99_ms;
      metrics.one_p50_ms = one.p50_ms;
      metrics.one_lost = one.lost;
      metrics.one_cpu_us = one.cpu_us_per_delivery;
    });
    return { metrics, notes: [...new Set(notes)] };
  },
  report: (all, sizes, plot) => growthReport(all, sizes, plot),
};

const halfWeb: Scenario = {
  id: 13,
  title: "Ten thousand, half WebSocket",
  describe: ({ scale }) =>
    `${scale.clients} clients, every other one a browser's WebSocket (ids, presence, 50 of ` +
    `history), logged in by ${scale.agents} load agents; idle, then ${scale.senders} senders x ` +
    `${scale.rate} msg/s x ${scale.seconds} s`,
  metrics: [KIB, CONN, ...TALK],
  freshServerPerRun: true,
  warmup: false,
  web: true,
  runs: 3,
  clients: (sizes) => sizes.scale.clients,
  target: {
    text: `p99 <= ${P99_TARGET_MS} ms, 0 lost`,
    check: (ours) => ours.p99_ms <= P99_TARGET_MS && ours.lost === 0,
  },
  async run(server, sizes): Promise<RunResult> {
    const notes: string[] = [];
    const count = sizes.scale.clients;
    const metrics = await withFleet(server, sizes, async (fleet) => ({
      ...await idle(server, fleet, count, sizes, webOf(server), notes),
      ...await talk(server, fleet, count, sizes, notes),
    }));
    return { metrics, notes: [...new Set(notes)] };
  },
};

/** Samples the server's RSS every second until `until` settles; the samples, bytes. */
async function sampleRss(server: ServerHandle, until: Promise<unknown>): Promise<number[]> {
  const samples: number[] = [];
  let done = false;
  until.finally(() => done = true).catch(() => {});
  while (!done) {
    samples.push(await rss(server));
    await Promise.race([delay(1000), until.catch(() => {})]);
  }
  return samples;
}

const churn: Scenario = {
  id: 14,
  title: "Churn",
  describe: ({ scale: { churn } }) =>
    `${churn.rate} clients/s log in and leave for ${churn.seconds} s while ${churn.steady} ` +
    `clients send ${churn.chatRate} msg/s each (on ours every other client is a browser's ` +
    `WebSocket)`,
  metrics: [
    LOST,
    { key: "p99_ms", label: "steady p99", unit: "ms", digits: 1 },
    { key: "churn_per_s", label: "churned", unit: "/s", digits: 0 },
    { key: "churn_failed", label: "failed", unit: "", digits: 0 },
    { key: "fd_growth", label: "fd growth", unit: "", digits: 0 },
    { key: "rss_before_mib", label: "RSS before", unit: "MiB", digits: 1 },
    { key: "rss_peak_mib", label: "peak", unit: "MiB", digits: 1 },
    { key: "rss_after_mib", label: "after", unit: "MiB", digits: 1 },
    { key: "rss_mid_mib", label: "mid-churn", unit: "MiB", digits: 1 },
    { key: "rss_end_mib", label: "end of churn", unit: "MiB", digits: 1 },
  ],
  freshServerPerRun: true,
  warmup: false,
  webOptional: true,
  runs: 1,
  clients: (sizes) => sizes.scale.churn.steady + sizes.scale.churn.rate * 2,
  target: {
    text: `0 lost, 0 failed, fds back to before, RSS at the end of the churn within ` +
      `${CHURN_PLATEAU_MIB} MiB of mid-churn (a plateau, not a leak)`,
    check: (ours) =>
      ours.lost === 0 && ours.churn_failed === 0 && ours.fd_growth <= 0 &&
      ours.rss_end_mib - ours.rss_mid_mib <= CHURN_PLATEAU_MIB,
  },
  async run(server, sizes): Promise<RunResult> {
    const notes: string[] = [];
    const spec = sizes.scale.churn;
    const web = webOf(server);
    const metrics = await withFleet(server, sizes, async (fleet) => {
      await open(fleet, 0, spec.steady, sizes, web, notes);
      await delay(500);
      await quiesce(server, sizes);
      const rssBefore = await rss(server);
      const fdsBefore = server.pid === undefined ? NaN : await openFiles(server.pid);
      const count = Math.max(1, Math.round(spec.chatRate * spec.seconds));
      await fleet.track(spec.steady, spec.steady, count);
      const agentsBefore = await fleet.cpuSeconds();
      const wallStart = performance.now();
      const startMs = benchNow() + 100;
      const sending = fleet.send(spec.steady, {
        rate: spec.chatRate,
        count,
        startMs,
        bytes: sizes.scale.bytes,
      });
      const churning = fleet.churn(spec.steady, {
        rate: spec.rate,
        seconds: spec.seconds,
        inFlight: Math.max(50, spec.rate * 2),
        web,
        webAuth: web === "odd" ? BROWSER_AUTH : undefined,
      });
      const samples = sampleRss(server, churning);
      const [churned] = await Promise.all([churning, sending]);
      const rssSamples = await samples;
      const deliveries = await fleet.settle(sizes.stallMs);
      const agentCores = (await fleet.cpuSeconds()).map((cpu, i) => cpu - agentsBefore[i]);
      const wallS = (performance.now() - wallStart) / 1000;
      notes.push(...deliveryNotes(deliveries, agentCores, wallS));
      if (churned.failed > 0) {
        notes.push(`${churned.failed} churning clients failed (${churned.firstError})`);
      }
      if (churned.skipped > 0) {
        notes.push(`${churned.skipped} churning clients were not started (too many in flight)`);
      }
      await delay(CHURN_SETTLE_MS);
      await quiesce(server, sizes);
      const rssAfter = await rss(server);
      const fdsAfter = server.pid === undefined ? NaN : await openFiles(server.pid);
      // RSS while churning, around the middle and over the last tenth (medians of the 1 s
      // samples): a leak keeps growing through the second half; the allocators' high-water
      // mark stays level.
      const n = rssSamples.length;
      const mid = median(rssSamples.slice(Math.floor(n * 0.45), Math.ceil(n * 0.55)));
      const end = median(rssSamples.slice(Math.floor(n * 0.9)));
      return {
        lost: deliveries.lost,
        p99_ms: histogramPercentile(deliveries.histogram, 0.99),
        churn_per_s: churned.opened / spec.seconds,
        churn_failed: churned.failed,
        login_p99_ms: histogramPercentile(churned.histogram, 0.99),
        gen_cores: sum(agentCores) / wallS,
        fd_growth: fdsAfter - fdsBefore,
        rss_before_mib: rssBefore / 1024 ** 2,
        rss_peak_mib: Math.max(...rssSamples, rssAfter) / 1024 ** 2,
        rss_after_mib: rssAfter / 1024 ** 2,
        rss_mid_mib: mid / 1024 ** 2,
        rss_end_mib: end / 1024 ** 2,
      };
    });
    return { metrics, notes: [...new Set(notes)] };
  },
};

/** One server's growth: at each step, its clients, RSS (MiB) and p99 (ms). */
interface Series {
  name: string;
  points: { clients: number; rss: number; idleRss: number; p99: number; cpu: number }[];
}

function seriesOf(all: Record<string, Metrics>, sizes: Sizes): Series[] {
  return Object.entries(all).map(([name, metrics]) => ({
    name,
    points: sizes.scale.steps.map((_, i) => {
      const keys = stepKeys(i);
      return {
        clients: metrics[keys.clients],
        rss: metrics[keys.rss],
        idleRss: metrics[keys.idleRss],
        p99: metrics[keys.p99],
        cpu: metrics[keys.cpu],
      };
    }).filter((point) => Number.isFinite(point.clients)),
  }));
}

/** The growth table (Markdown), and the plot written to `plot` if set. */
async function growthReport(
  all: Record<string, Metrics>,
  sizes: Sizes,
  plot: string | null,
): Promise<string> {
  const series = seriesOf(all, sizes);
  const lines = [
    "Scenario 12, growth (medians at each step):",
    "",
    `| clients | ${
      series.map((s) => `${s.name} RSS MiB idle | after talking | p99 ms | CPU µs/delivery`)
        .join(" | ")
    } |`,
    `|---|${series.map(() => "---|---|---|---").join("|")}|`,
  ];
  for (const [i, step] of sizes.scale.steps.entries()) {
    const cells = series.map((s) => {
      const point = s.points[i];
      return point
        ? `${point.idleRss.toFixed(1)} | ${point.rss.toFixed(1)} | ${point.p99.toFixed(1)} | ` +
          point.cpu.toFixed(2)
        : "n/a | n/a | n/a | n/a";
    });
    lines.push(`| ${step.toLocaleString("en-US")} | ${cells.join(" | ")} |`);
  }
  if (plot) {
    await Deno.writeTextFile(plot, growthSvg(series));
    lines.push("", `Plot written to ${plot}.`);
  }
  return lines.join("\n");
}

const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df"];

/** An SVG with two charts side by side: RSS and p99 latency against the number of clients. */
export function growthSvg(series: readonly Series[]): string {
  const width = 860;
  const height = 380;
  const charts = [
    { title: "Server RSS after talking (MiB)", value: (p: Series["points"][number]) => p.rss },
    { title: "p99 delivery latency (ms)", value: (p: Series["points"][number]) => p.p99 },
  ];
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
  ];
  const maxClients = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p.clients)));
  charts.forEach((chart, c) => {
    const left = 60 + c * (width / 2);
    const top = 40;
    const w = width / 2 - 90;
    const h = height - 120;
    const values = series.flatMap((s) => s.points.map(chart.value)).filter(Number.isFinite);
    const maxValue = niceCeiling(Math.max(1e-9, ...values));
    const x = (clients: number) => left + clients / maxClients * w;
    const y = (value: number) => top + h - value / maxValue * h;
    parts.push(
      `<text x="${left + w / 2}" y="${top - 16}" text-anchor="middle" font-weight="bold">` +
        `${chart.title}</text>`,
      `<line x1="${left}" y1="${top + h}" x2="${left + w}" y2="${top + h}" stroke="#333"/>`,
      `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + h}" stroke="#333"/>`,
    );
    for (let i = 0; i <= 4; i++) {
      const value = maxValue * i / 4;
      parts.push(
        `<line x1="${left}" y1="${y(value)}" x2="${left + w}" y2="${y(value)}" ` +
          `stroke="#ddd"/>`,
        `<text x="${left - 6}" y="${y(value) + 4}" text-anchor="end">${tick(value)}</text>`,
      );
    }
    const steps = [...new Set(series.flatMap((s) => s.points.map((p) => p.clients)))];
    for (const clients of steps) {
      parts.push(
        `<text x="${x(clients)}" y="${top + h + 16}" text-anchor="middle">` +
          `${clients.toLocaleString("en-US")}</text>`,
      );
    }
    parts.push(
      `<text x="${left + w / 2}" y="${top + h + 32}" text-anchor="middle">clients</text>`,
    );
    series.forEach((s, k) => {
      const color = COLORS[k % COLORS.length];
      const points = s.points.filter((p) => Number.isFinite(chart.value(p)));
      const path = points.map((p) => `${x(p.clients).toFixed(1)},${y(chart.value(p)).toFixed(1)}`);
      if (path.length > 1) {
        parts.push(
          `<polyline points="${path.join(" ")}" fill="none" stroke="${color}" ` +
            `stroke-width="2"/>`,
        );
      }
      for (const point of path) {
        const [px, py] = point.split(",");
        parts.push(`<circle cx="${px}" cy="${py}" r="3.5" fill="${color}"/>`);
      }
    });
  });
  series.forEach((s, k) => {
    const lx = 60 + k * 160;
    const ly = height - 14;
    parts.push(
      `<rect x="${lx}" y="${ly - 10}" width="14" height="4" fill="${COLORS[k % COLORS.length]}"/>`,
      `<text x="${lx + 20}" y="${ly - 4}">${escapeXml(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

/** The smallest of 1, 2, 2.5, 5 x 10^k at or above `value`. */
function niceCeiling(value: number): number {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function tick(value: number): string {
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The scale scenarios, by id. */
export const SCALE_SCENARIOS: readonly Scenario[] = [idleScale, growth, halfWeb, churn];
