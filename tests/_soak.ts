/**
 * The soak: the real server (`main.ts` in a subprocess, with its per-IP cap on) under honest load
 * and waves of abuse at the same time, with a report of what the honest clients got, the server's
 * memory and file descriptors, the errors by code, each abuse's outcome, and whether accept still
 * works at the end.
 *
 * Every party connects from loopback addresses of its own (see `soak_common.ts`): the honest
 * clients share a few addresses, each well under `--max-per-ip`; the abusers have theirs, and the
 * over-cap burst deliberately goes past the cap on its own address. Flow control may delay honest
 * deliveries (a stalled reader holds the room for about a second before it is dropped), so the
 * honest check waits for the backlog as long as deliveries keep arriving, and counts as lost only
 * what never comes.
 *
 * ```sh
 * deno task soak                       # 120 s, 100 honest clients
 * deno task soak --duration 60 --seed 7
 * deno task soak --help
 * # which runs:
 * deno run --no-prompt --allow-net --allow-read --allow-write --allow-run --allow-env tests/_soak.ts
 * ```
 *
 * Exit code 0 when no honest delivery was lost and a fresh client can still log in and chat at
 * the end; 1 otherwise (and, with `--strict`, also on any unexpected abuse outcome); 2 on bad
 * flags. `tests/soak_test.ts` runs a few seconds of the same against an in-process server.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DEFAULT_LIMITS, type Limits } from "../src/server/config.ts";
import type { ServerSnapshot } from "../src/server/server.ts";
import { ABUSE_KINDS, type AbuseKind, AbuseTally, runWave } from "./_abuse.ts";
import { HonestLoad, type HonestResult } from "./_honest_load.ts";
import {
  type CanaryResult,
  checkAccept,
  type Endpoint,
  honestPerAddress,
  Rng,
  runCanary,
  sleep,
} from "./_soak_common.ts";
import { PASSWORD, spawnServer, testCerts } from "./_helpers.ts";

/** What to run. */
export interface SoakOptions {
  /** Time the abuse waves run for. */
  durationMs: number;
  /** Honest clients. */
  honest: number;
  /**
   * Honest clients per source address (default: half of `--max-per-ip`, at most 25), so the
   * honest load fits under the per-IP cap.
   */
  honestPerAddress?: number;
  /** Messages per second per honest client. */
  rate: number;
  seed: number;
  /** Length of one abuse wave; a short pause follows each. */
  waveMs: number;
  /** Scales how many abusers of each kind a wave launches. */
  intensity: number;
  /** Exact per-wave counts for some kinds (not scaled by `intensity`). */
  mix?: Partial<Record<AbuseKind, number>>;
  /** Flooders: messages per second each and content bytes per message. */
  flood: { rate: number; bytes: number };
  /** The limits the server runs with (abusers judge outcomes by them). */
  limits: Limits;
  /** Longest wait, after the abuse, for sockets and memory to come back down. */
  settleMs: number;
  /**
   * How long the honest clients may go without any delivery while their backlog drains, before
   * what is still owed counts as lost (flow control delays deliveries, it never drops them).
   */
  drainStallMs?: number;
  /** Progress lines go here. */
  log?: (line: string) => void;
}

/** How far above its honest-load level RSS may stay and still count as back near the start. */
export function rssSlack(rss: number): number {
  return Math.max(32 * 1048576, rss / 2);
}

/** One resource sample of the server. */
export interface Sample {
  /** Resident set size, bytes (null if unknown). */
  rss: number | null;
  /** Open file descriptors (null if unknown). */
  fds: number | null;
}

/** The server under test, seen from outside. */
export interface SoakTarget {
  endpoint: Endpoint;
  sample(): Promise<Sample>;
  /** Whether the server is still running. */
  alive(): boolean;
  /** In-process servers expose their counters. */
  stats?(): ServerSnapshot;
}

/** Everything the soak measured. */
export interface SoakReport {
  options: Omit<SoakOptions, "log">;
  elapsedMs: number;
  waves: number;
  honest: HonestResult;
  drained: boolean;
  /** How long the honest backlog took to arrive after the last honest send. */
  drainMs: number;
  abuse: AbuseTally;
  canary: CanaryResult;
  rss: { start: number | null; honest: number | null; peak: number | null; end: number | null };
  fds: { start: number | null; honest: number | null; peak: number | null; end: number | null };
  /** Whether RSS came back near its level with only the honest clients online. */
  rssBack: boolean;
  /** How long the settling after the abuse took. */
  settleMs: number;
  accept: { ok: boolean; detail: string };
  alive: boolean;
  stats?: ServerSnapshot;
  /** Reasons the soak failed; empty when it passed. */
  failures: string[];
}

/** Runs honest load and abuse waves against `target` and measures the outcome. */
export async function runSoak(target: SoakTarget, options: SoakOptions): Promise<SoakReport> {
  const log = options.log ?? (() => {});
  const rng = new Rng(options.seed);
  const started = performance.now();
  const first = await target.sample();
  const peak = { ...first };
  const track = (sample: Sample) => {
    if (sample.rss !== null) peak.rss = Math.max(peak.rss ?? 0, sample.rss);
    if (sample.fds !== null) peak.fds = Math.max(peak.fds ?? 0, sample.fds);
    return sample;
  };

  log(`logging in ${options.honest} honest clients`);
  await using honest = await HonestLoad.start(target.endpoint, {
    clients: options.honest,
    rate: options.rate,
    rng: rng.fork(),
    perAddress: options.honestPerAddress ?? honestPerAddress(options.limits.maxPerIp),
  });
  const withHonest = track(await target.sample());
  const sampling = new AbortController();
  const sampler = (async () => {
    while (!sampling.signal.aborted) {
      track(await target.sample());
      await sleep(200, sampling.signal);
    }
  })();
  const canaryStop = new AbortController();
  const canary = runCanary(target.endpoint, { intervalMs: 500, signal: canaryStop.signal });
  const tally = new AbuseTally();
  honest.startChatting();
  let waves = 0;
  let canaryResult: CanaryResult;
  try {
    const abuseStarted = performance.now();
    while (performance.now() - abuseStarted < options.durationMs && target.alive()) {
      const waveMs = Math.min(options.waveMs, options.durationMs);
      await runWave(
        {
          endpoint: target.endpoint,
          limits: options.limits,
          tally,
          rng: rng.fork(),
          flood: options.flood,
          roomBytes: () => honest.roomBytes(),
        },
        { waveMs, mix: options.mix, intensity: options.intensity },
      );
      waves++;
      const r = honest.result();
      const now = track(await target.sample());
      log(
        `wave ${waves} done at ${
          secs(performance.now() - started)
        }: honest ${r.received}/${r.expected}` +
          ` delivered, RSS ${mb(now.rss)} (peak ${mb(peak.rss)}), fds ${now.fds ?? "n/a"},` +
          ` unexpected abuse outcomes ${tally.unexpected}`,
      );
      await sleep(500);
    }
    log("abuse over; honest clients keep chatting for 2 s, then stop and drain");
    await sleep(2000);
  } finally {
    await honest.stopChatting();
    canaryStop.abort();
    canaryResult = await canary;
  }
  const drainStarted = performance.now();
  const drained = await honest.drain({ stallMs: options.drainStallMs ?? 15_000, maxMs: 120_000 });
  const drainMs = Math.round(performance.now() - drainStarted);
  const honestResult = honest.result();

  // Abusers are gone and honest clients are idle: give the server time to let go of sockets and
  // memory (V8 shrinks its heap only after a few idle seconds).
  sampling.abort();
  await sampler;
  const settleStarted = performance.now();
  const rssLimit = withHonest.rss === null ? null : withHonest.rss + rssSlack(withHonest.rss);
  const settled = (sample: Sample) =>
    (withHonest.fds === null || sample.fds === null || sample.fds <= withHonest.fds) &&
    (rssLimit === null || sample.rss === null || sample.rss <= rssLimit) &&
    (!target.stats || target.stats().sockets <= options.honest);
  let end = await target.sample();
  while (!settled(end) && performance.now() - settleStarted < options.settleMs) {
    await sleep(1000);
    end = await target.sample();
  }
  const settleMs = Math.round(performance.now() - settleStarted);
  const stats = target.stats?.();
  const accept = await checkAccept(target.endpoint);

  const failures: string[] = [];
  if (!target.alive()) failures.push("the server died");
  if (honestResult.received !== honestResult.expected || honestResult.missing > 0) {
    failures.push(
      `honest deliveries lost: ${honestResult.received} received of ${honestResult.expected}`,
    );
  }
  if (honestResult.duplicates > 0) failures.push(`${honestResult.duplicates} duplicate deliveries`);
  if (honestResult.outOfOrder > 0) {
    failures.push(`${honestResult.outOfOrder} out-of-order deliveries`);
  }
  if (Object.keys(honestResult.lost).length > 0) {
    failures.push(`honest clients disconnected: ${JSON.stringify(honestResult.lost)}`);
  }
  if (Object.keys(honestResult.errors).length > 0) {
    failures.push(`honest clients got errors: ${JSON.stringify(honestResult.errors)}`);
  }
  if (!accept.ok) failures.push(`accept is broken at the end: ${accept.detail}`);
  if (canaryResult.failed > 0) {
    failures.push(
      `${canaryResult.failed} canary logins failed: ${JSON.stringify(canaryResult.reasons)}`,
    );
  }
  if (stats && stats.sockets !== options.honest) {
    failures.push(
      `the server holds ${stats.sockets} sockets after the abusers left, not the ${options.honest} honest ones`,
    );
  }
  if (withHonest.fds !== null && end.fds !== null && end.fds > withHonest.fds) {
    failures.push(`${end.fds - withHonest.fds} sockets still open after the abusers left`);
  }
  const rssBack = rssLimit === null || end.rss === null || end.rss <= rssLimit;

  return {
    options: { ...options, log: undefined } as Omit<SoakOptions, "log">,
    elapsedMs: Math.round(performance.now() - started),
    waves,
    honest: honestResult,
    drained,
    drainMs,
    abuse: tally,
    canary: canaryResult,
    rss: { start: first.rss, honest: withHonest.rss, peak: peak.rss, end: end.rss },
    fds: { start: first.fds, honest: withHonest.fds, peak: peak.fds, end: end.fds },
    rssBack,
    settleMs,
    accept,
    alive: target.alive(),
    stats,
    failures,
  };
}

function secs(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function mb(bytes: number | null): string {
  return bytes === null ? "n/a" : `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** The report as text. */
export function formatReport(report: SoakReport, extra: string[] = []): string {
  const o = report.options;
  const h = report.honest;
  const lines: string[] = [];
  const rule = "=".repeat(78);
  lines.push(rule, "SOAK REPORT", rule);
  lines.push(
    `seed ${o.seed}; ${report.waves} waves of ${secs(o.waveMs)} over ${secs(o.durationMs)}` +
      ` (total ${secs(report.elapsedMs)}); intensity ${o.intensity}`,
  );
  lines.push(
    `server limits: max-frame ${o.limits.maxFrame}, handshake-timeout ${
      secs(o.limits.handshakeTimeoutMs)
    },` +
      ` auth-timeout ${secs(o.limits.authTimeoutMs)}, max-per-ip ${o.limits.maxPerIp}` +
      `${o.limits.maxPerIp === 0 ? " (unlimited)" : ""}, max-clients ${o.limits.maxClients},`,
    `  rate ${o.limits.rate}/s burst ${o.limits.burst}, max-send-queue ${o.limits.maxSendQueue},` +
      ` write-timeout ${secs(o.limits.writeTimeoutMs)},` +
      ` max-auth-failures ${o.limits.maxAuthFailures} per ${secs(o.limits.lockoutMs)}`,
    ...extra,
  );
  lines.push("", "Honest load");
  lines.push(
    `  ${h.clients} clients from ${h.addresses.length} addresses (${addressRange(h.addresses)},` +
      ` ${Math.ceil(h.clients / Math.max(1, h.addresses.length))} per address)` +
      ` at ${o.rate} msg/s each; ${h.sent} messages sent`,
    `  deliveries expected ${h.expected}, received ${h.received}` +
      `${h.received === h.expected ? " (equal)" : " (NOT EQUAL)"}; missing ${h.missing},` +
      ` duplicates ${h.duplicates}, out of order ${h.outOfOrder}`,
    `  delivery delay (send to arrival): mean ${h.meanDelayMs} ms, max ${h.maxDelayMs} ms;` +
      ` backlog ${report.drained ? "delivered" : "NOT delivered"} ${secs(report.drainMs)}` +
      ` after the last send`,
    `  errors sent to honest clients: ${fmtCounts(h.errors)}; disconnected: ${fmtCounts(h.lost)}`,
    `  abuse traffic honest clients received and ignored: ${h.foreignFrames} frames,` +
      ` ${mb(h.foreignBytes)}`,
  );
  lines.push("", "Server resources (RSS / open fds)");
  const r = report.rss;
  const f = report.fds;
  lines.push(
    `  idle start     ${mb(r.start).padStart(10)}  ${String(f.start ?? "n/a").padStart(6)}`,
    `  honest online  ${mb(r.honest).padStart(10)}  ${String(f.honest ?? "n/a").padStart(6)}`,
    `  peak           ${mb(r.peak).padStart(10)}  ${String(f.peak ?? "n/a").padStart(6)}`,
    `  end            ${mb(r.end).padStart(10)}  ${String(f.end ?? "n/a").padStart(6)}` +
      `   (abusers gone, honest clients idle for ${secs(report.settleMs)})`,
    `  RSS back near the honest-load level (within ${
      mb(r.honest === null ? null : rssSlack(r.honest))
    }):` +
      ` ${r.end === null ? "n/a" : report.rssBack ? "yes" : "NO"}`,
  );
  lines.push("", "Abuse (outcome -> runs)");
  for (const kind of ABUSE_KINDS) {
    const tally = report.abuse.kinds[kind];
    if (!tally) continue;
    lines.push(
      `  ${kind.padEnd(14)} ${tally.runs} runs${
        tally.unexpected ? `, ${tally.unexpected} UNEXPECTED` : ""
      }`,
    );
    for (const [outcome, n] of Object.entries(tally.outcomes)) {
      lines.push(`      ${String(n).padStart(6)}  ${outcome}`);
    }
    for (const [what, n] of Object.entries(tally.notes)) {
      lines.push(`      ${String(Math.round(n * 10) / 10).padStart(6)}  (${what})`);
    }
  }
  lines.push(
    `  flood content accepted and broadcast: ${mb(report.abuse.floodBytes)} per recipient`,
    `  connections over the per-IP cap: ${report.abuse.refusedAtOnce} closed at once,` +
      ` ${report.abuse.refusedWithNotice} told too_many_connections`,
  );
  lines.push(
    "",
    `Errors by code (error frames abusers received): ${fmtCounts(report.abuse.codes)}`,
  );
  if (report.stats) {
    const s = report.stats;
    lines.push(
      `Server counters: accepted ${s.accepted}, refused over a cap ${s.rejected}, handshake failures` +
        ` ${s.handshakeFailures}, handshake timeouts ${s.handshakeTimeouts}, logins ${s.authenticated},` +
        ` auth failures ${s.authFailures}, messages ${s.messages}, deliveries ${s.deliveries}`,
      `  flow control: sender pauses ${s.senderPauses}, stalled readers dropped ${s.stalledReaders},` +
        ` write timeouts ${s.writeTimeouts} (dropped in all: ${
          s.stalledReaders + s.writeTimeouts
        })`,
      `  at the end: sockets ${s.sockets}, connections ${s.connections}, clients ${s.clients},` +
        ` refusing ${s.refusing}, holders ${s.holders}, paused senders ${s.pausedSenders}`,
      `Server errors by code: ${fmtCounts(s.errors)}`,
    );
  }
  lines.push(
    "",
    `Canary logins during the abuse: ${report.canary.ok} ok, ${report.canary.failed} failed,` +
      ` slowest ${report.canary.maxMs} ms`,
    `Accept at the end: ${report.accept.ok ? "working" : "BROKEN"} (${report.accept.detail})`,
    `Server alive: ${report.alive ? "yes" : "NO"}`,
    "",
  );
  if (!report.rssBack) {
    lines.push("FINDINGS: RSS did not come back near its level before the abuse (see above)");
  }
  if (report.abuse.limited > 0) {
    lines.push(
      `KNOWN LIMITATIONS: ${report.abuse.limited} abuse runs hit a known limitation (see above)`,
    );
  }
  if (report.abuse.unexpected > 0) {
    lines.push(
      `FINDINGS: ${report.abuse.unexpected} abuse runs had an outcome the protocol forbids (see UNEXPECTED above)`,
    );
  }
  lines.push(report.failures.length === 0 ? "RESULT: PASS (nothing lost)" : "RESULT: FAIL");
  for (const failure of report.failures) lines.push(`  - ${failure}`);
  lines.push(rule);
  return lines.join("\n");
}

/** `127.0.1.1-127.0.1.4` for a run of addresses. */
function addressRange(addresses: string[]): string {
  if (addresses.length <= 1) return addresses[0] ?? "none";
  return `${addresses[0]}-${addresses[addresses.length - 1]}`;
}

function fmtCounts(counts: Record<string, number>): string {
  const entries = Object.entries(counts).sort(([a], [b]) => a.localeCompare(b));
  return entries.length === 0 ? "none" : entries.map(([k, v]) => `${k} ${v}`).join(", ");
}

const USAGE = `Usage: deno task soak [options]

  --duration SECONDS    how long the abuse waves run (default 120)
  --honest N            honest clients (default 100)
  --rate N              messages per second per honest client (default 2)
  --seed N              random seed (default: random, printed)
  --wave SECONDS        length of one abuse wave (default 15)
  --intensity F         scales the abusers per wave (default 1)
  --flood-rate N        messages per second per flooder (default 18)
  --flood-bytes N       content bytes per flood message (default 60000)
  --max-per-ip N        the server's per-IP cap (default 64; 0 = unlimited)
  --write-timeout SECS  the server's --write-timeout (default 10)
  --settle SECONDS      longest wait after the abuse for memory and sockets to settle (default 30)
  --strict              also fail on any unexpected abuse outcome
  --json FILE           also write the report as JSON to FILE
  -h, --help            show this help`;

/**
 * Reads /proc for a process: VmRSS and the number of open fds. Deno lets only `--allow-all` read
 * another process's /proc entries, so a shell does it (the soak task has `--allow-run`).
 */
async function procSample(pid: number): Promise<Sample> {
  try {
    const { stdout, success } = await new Deno.Command("sh", {
      args: ["-c", `grep VmRSS /proc/${pid}/status && ls /proc/${pid}/fd | wc -l`],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    const text = new TextDecoder().decode(stdout);
    const kb = /VmRSS:\s+(\d+) kB\s+(\d+)/.exec(text);
    if (!success || !kb) return { rss: null, fds: null };
    return { rss: Number(kb[1]) * 1024, fds: Number(kb[2]) };
  } catch {
    return { rss: null, fds: null };
  }
}

/** Server log messages worth counting in the report. */
const LOG_EVENTS: [string, RegExp][] = [
  ["stalled readers dropped", /^Dropping client .*stalled reader/],
  ["write timeouts", /^Dropping client .*accepted nothing for/],
  ["failed logins", /^Failed login/],
  ["lockouts", /locked out/],
  ["logins", /logged in$/],
];

/** Counts the server's JSON log lines by level and picks out the ones that matter. */
function summarizeLog(
  output: string,
): { levels: Record<string, number>; events: Record<string, number>; errors: string[] } {
  const levels: Record<string, number> = {};
  const events: Record<string, number> = {};
  const errors: string[] = [];
  for (const line of output.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const record = JSON.parse(line);
      levels[record.level] = (levels[record.level] ?? 0) + 1;
      if (record.level === "ERROR" || record.level === "FATAL") errors.push(record.message);
      const message = String(record.message);
      for (const [event, pattern] of LOG_EVENTS) {
        if (pattern.test(message)) events[event] = (events[event] ?? 0) + 1;
      }
    } catch {
      // Not a log line.
    }
  }
  return { levels, events, errors };
}

async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        duration: { type: "string", default: "120" },
        honest: { type: "string", default: "100" },
        rate: { type: "string", default: "2" },
        seed: { type: "string" },
        wave: { type: "string", default: "15" },
        intensity: { type: "string", default: "1" },
        "flood-rate": { type: "string", default: "18" },
        "flood-bytes": { type: "string", default: "60000" },
        "max-per-ip": { type: "string", default: "64" },
        "write-timeout": { type: "string", default: "10" },
        settle: { type: "string", default: "30" },
        strict: { type: "boolean", default: false },
        json: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (error) {
    console.error(`error: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const number = (name: keyof typeof values, min: number) => {
    const value = Number(values[name]);
    if (!Number.isFinite(value) || value < min) {
      throw new RangeError(`--${name} must be a number >= ${min}`);
    }
    return value;
  };
  let options: SoakOptions;
  try {
    const limits: Limits = {
      ...DEFAULT_LIMITS,
      handshakeTimeoutMs: 5000,
      authTimeoutMs: 5000,
      maxPerIp: Math.round(number("max-per-ip", 0)),
      writeTimeoutMs: number("write-timeout", 1) * 1000,
    };
    options = {
      durationMs: number("duration", 1) * 1000,
      honest: Math.round(number("honest", 2)),
      rate: number("rate", 0.1),
      seed: values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : number("seed", 0),
      waveMs: number("wave", 1) * 1000,
      intensity: number("intensity", 0),
      flood: { rate: number("flood-rate", 0.1), bytes: Math.round(number("flood-bytes", 1)) },
      limits,
      settleMs: number("settle", 0) * 1000,
      log: (line) => console.log(`[soak] ${line}`),
    };
    if (options.rate >= limits.rate) {
      throw new RangeError(`--rate must stay below the server's ${limits.rate}/s`);
    }
    if (limits.maxPerIp > 0 && limits.maxPerIp < 4) {
      // The canary and the accept check share 127.0.0.1 and hold up to three connections.
      throw new RangeError("--max-per-ip must be 0 or at least 4");
    }
  } catch (error) {
    console.error(`error: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const l = options.limits;
  const serverArgs = [
    "--port",
    "0",
    "--max-frame",
    String(l.maxFrame),
    "--handshake-timeout",
    String(l.handshakeTimeoutMs / 1000),
    "--auth-timeout",
    String(l.authTimeoutMs / 1000),
    "--max-clients",
    String(l.maxClients),
    "--max-per-ip",
    String(l.maxPerIp),
    "--max-send-queue",
    String(l.maxSendQueue),
    "--write-timeout",
    String(l.writeTimeoutMs / 1000),
    "--stall-timeout",
    String(l.stallTimeoutMs / 1000),
    "--rate",
    String(l.rate),
    "--burst",
    String(l.burst),
    "--max-auth-failures",
    String(l.maxAuthFailures),
    "--lockout",
    String(l.lockoutMs / 1000),
    "--log-level",
    "info",
    "--log-format",
    "json",
  ];
  console.log(`[soak] seed ${options.seed} (repeat with --seed ${options.seed})`);
  const certs = await testCerts();
  await using server = await spawnServer(
    ["--cert-dir", certs.dir, ...serverArgs],
    { env: { CHAT_SERVER_PASSWORD: PASSWORD } },
  );
  const pid = server.child.pid;
  let alive = true;
  server.child.status.then(() => alive = false);
  console.log(`[soak] server pid ${pid} on port ${server.port}: main.ts ${serverArgs.join(" ")}`);
  const report = await runSoak({
    endpoint: { port: server.port, cert: certs.cert },
    sample: () => procSample(pid),
    alive: () => alive,
  }, options);

  // Stop it the way an operator would, and see that it goes quietly.
  const stopStarted = performance.now();
  if (alive) server.child.kill("SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const exit = await Promise.race([
    server.exited(),
    new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), 15_000)),
  ]);
  clearTimeout(timer);
  const logSummary = summarizeLog(server.output());
  const extra = [
    `server log lines by level: ${fmtCounts(logSummary.levels)}`,
    `server log events: ${fmtCounts(logSummary.events)}`,
    `server stop on SIGTERM: ${
      exit === null
        ? "did not exit within 15 s"
        : `exit code ${exit.code} after ${secs(performance.now() - stopStarted)}`
    }`,
  ];
  if (exit === null || exit.code !== 0) {
    report.failures.push("the server did not stop cleanly on SIGTERM");
  }
  for (const message of logSummary.errors.slice(0, 5)) extra.push(`  server error log: ${message}`);
  if (logSummary.errors.length > 0) {
    report.failures.push(`${logSummary.errors.length} error-level server log lines`);
  }
  if (values.strict && report.abuse.unexpected > 0) {
    report.failures.push(`${report.abuse.unexpected} unexpected abuse outcomes (--strict)`);
  }
  if (values.strict && !report.rssBack) report.failures.push("RSS did not come back (--strict)");
  console.log(formatReport(report, extra));
  if (values.json) {
    await Deno.writeTextFile(values.json, JSON.stringify({ ...report, extra }, null, 2));
  }
  return report.failures.length === 0 ? 0 : 1;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
