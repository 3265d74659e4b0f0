/**
 * The chat server benchmark: a load generator of Deno TLS clients that speak the protocol, run
 * against the project's server (started here with the permissions of `deno task start`,
 * `--rate 0 --max-per-ip 0` and a large `--max-clients`, every other limit at its default; with
 * history on, in SQLite, in a fresh temporary data dir per start) and, side by side in the same
 * run, the Node.js reference server from `../shared/reference/`. The memory scenario also
 * measures two transport floors (`floor_server.ts`: idle TLS connections on `node:tls` and on
 * `Deno.listenTls`, in Deno). Scenarios 7 (stored acks) and 8 (history join) use version 2 of
 * the protocol, scenario 9 (WebSocket and TLS clients in one room) our server's web port, and
 * scenario 10 (two-node cluster) two of our servers on a private `redis-server` next to a
 * single one: only our server runs them.
 *
 * ```sh
 * deno task bench                          # all ten scenarios, 3 or 5 runs each, ours vs reference
 * deno task bench --scenarios 1,3 --runs 5
 * deno task bench --quick --json           # seconds-long smoke run, JSON on stdout
 * CHAT_SERVER_PASSWORD=... deno task bench --target 127.0.0.1:4000 --ca certs/cert.pem --pid 1234
 * # which runs:
 * deno run --no-prompt --allow-net --allow-read --allow-write --allow-run --allow-env bench/bench.ts
 * ```
 *
 * The report (stdout) is a Markdown table with the median of every figure, then scenario 4's
 * figures for every server it measured (the floors included); progress goes to stderr.
 * Scenario 4 holds 5000 connections open on each side: `ulimit -n` must be above about 5200
 * (the bench scales the scenario down, with a note, if it is not).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ensureCertificates } from "../src/server/certs.ts";
import {
  externalServer,
  FLOOR_NAMES,
  nodeVersion,
  openFileLimit,
  openFiles,
  readProc,
  redisVersion,
  REFERENCE_PATH,
  type ServerHandle,
  startCluster,
  startFloor,
  startOurs,
  startReference,
  stopAll,
  withCluster,
} from "./servers.ts";
import {
  FULL_SIZES,
  QUICK_SIZES,
  type RunResult,
  type Scenario,
  SCENARIOS,
  type Sizes,
} from "./scenarios.ts";

/** Every scenario: the ten of `scenarios.ts`, then the scale scenarios 11 to 14 of `scale.ts`. */
const ALL_SCENARIOS: readonly Scenario[] = [...SCENARIOS, ...SCALE_SCENARIOS];
import { SCALE_SCENARIOS } from "./scale.ts";
import {
  formatMetrics,
  medians,
  renderDetails,
  renderNotes,
  renderTable,
  type ScenarioReport,
} from "./report.ts";

const USAGE = `Usage: deno task bench [options]

  --scenarios LIST     scenarios to run, e.g. 1,2,5 (default 1 to 14)
  --runs N             measured runs per scenario and server; the report shows medians
                       (default 5 for the short scenarios 1, 5, 8 and 9, 3 for the others)
  --quick              seconds-long sizes and 1 run, no warm-up (the smoke test)
  --target HOST:PORT   measure a server that is already running instead of starting ours
  --ca FILE            certificate the clients trust for --target (default certs/cert.pem)
  --pid PID            process id of the --target server, for its CPU and memory figures
  --target-web-port P  the --target server's web port (its /ws WebSocket), for scenario 9
  --reference FILE     the Node.js reference server (default ../shared/reference/ref-node-server.mjs)
  --no-reference       do not run the reference server
  --baseline DIR       also run DIR/main.ts, a checkout of an earlier version of this project,
                       as "before" (started as its own deno task start runs it)
  --concurrency N      logins in flight at once (default 100)
  --cpu-prof DIR       run our servers (not --baseline's) under deno run --cpu-prof: each
                       writes a V8 CPU profile into DIR when it stops (progress says which
                       process id is which server)
  --json               print the results as JSON instead of the Markdown table
  --scale-steps LIST   client counts of scenario 12's steps (default 1000,2500,5000,10000); the
                       largest is also the client count of scenarios 11 and 13
  --agents N           load-agent processes of scenarios 11 to 14 (default 4)
  --churn-seconds N    how long scenario 14 churns (default 60)
  --plot FILE          where scenario 12 writes its growth plot (SVG; default docs/growth.svg
                       for a full run, none with --quick; "none" for none)
  -h, --help           show this help

--target takes the password from CHAT_SERVER_PASSWORD; it measures no transport floors, and
scenario 6 tells when the server dropped the stalled reader only for a server on this host.
Scenarios 7 (stored acks) and 8 (history join) need version 2 of the protocol: they run on our
server (or the --target) only, not on the reference or the --baseline. Scenario 9 (500 WebSocket
and 500 TLS clients in one room, against 1000 TLS clients in the same run) needs the web port of
the server the bench starts, or --target-web-port: it runs on ours (or such a --target) only, not
on the reference or the --baseline. Scenario 10 (a two-node cluster against a single node, in the
same run) starts its own private redis-server (from PATH; skipped with a note without one) and
three of our servers: it runs on ours only, never with --target. Scenarios 11 to 14 hold up to
10,000 clients in several load-agent processes (bench/agent.ts); Deno (and Node.js) raise
their soft ulimit -n to the hard limit themselves, so only the hard limit matters: with too low
a one the bench lowers the client counts, with a note. Scenario 13 (half of
10,000 clients on WebSockets) runs on ours only; 14 (churn) puts WebSocket clients on ours and
TLS clients only on the reference.`;

/** How long closed clients may take to give their sockets back before the next run. */
const RELEASE_TIMEOUT_MS = 15_000;

/** Password of the servers the bench starts itself. */
const BENCH_PASSWORD = "bench-password";
/** File descriptors the bench needs beside its clients'. */
const SPARE_FILES = 200;
/** `--max-clients` of our server in the bench. */
const MAX_CLIENTS = 20_000;

/** What the command line asked for. */
interface BenchOptions {
  scenarios: Scenario[];
  /** `--runs`, or undefined for each scenario's own count. */
  runs?: number;
  quick: boolean;
  sizes: Sizes;
  target?: { hostname: string; port: number; ca: string; pid?: number; webPort?: number };
  reference: string | null;
  /** `--cpu-prof DIR`: where our servers write their CPU profiles. */
  cpuProf?: string;
  /** A checkout of an earlier version, run beside ours as "before". */
  baseline?: string;
  json: boolean;
  /** Where scenario 12 writes its growth plot (SVG), or null for nowhere. */
  plot: string | null;
}

/** Where scenario 12's plot goes unless `--plot` says otherwise (full sizes only). */
const DEFAULT_PLOT = new URL("../docs/growth.svg", import.meta.url).pathname;

/** Thrown for a bad command line; printed without a stack. */
class UsageError extends Error {}

function positiveInt(name: string, raw: string): number {
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) {
    throw new UsageError(`Invalid --${name} ${JSON.stringify(raw)}: expected a positive integer`);
  }
  return value;
}

function parseOptions(args: string[]): BenchOptions | null {
  const { values } = parseArgs({
    args,
    options: {
      scenarios: { type: "string" },
      runs: { type: "string" },
      quick: { type: "boolean", default: false },
      target: { type: "string" },
      ca: { type: "string" },
      pid: { type: "string" },
      "target-web-port": { type: "string" },
      reference: { type: "string" },
      "no-reference": { type: "boolean", default: false },
      "cpu-prof": { type: "string" },
      baseline: { type: "string" },
      concurrency: { type: "string" },
      json: { type: "boolean", default: false },
      plot: { type: "string" },
      "scale-steps": { type: "string" },
      agents: { type: "string" },
      "churn-seconds": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return null;
  const all = ALL_SCENARIOS.map((s) => s.id);
  const ids = values.scenarios?.split(",").map((id) => id.trim()) ?? all.map(String);
  const scenarios = ids.map((id) => {
    const scenario = ALL_SCENARIOS.find((s) => String(s.id) === id);
    if (!scenario) {
      throw new UsageError(
        `Unknown scenario ${JSON.stringify(id)}: expected ${all[0]} to ${all[all.length - 1]}`,
      );
    }
    return scenario;
  });
  const quick = values.quick;
  const sizes: Sizes = structuredClone(quick ? QUICK_SIZES : FULL_SIZES);
  if (values.concurrency) sizes.concurrency = positiveInt("concurrency", values.concurrency);
  if (values["scale-steps"]) {
    const steps = values["scale-steps"].split(",").map((step) => positiveInt("scale-steps", step));
    sizes.scale.steps = steps.sort((a, b) => a - b);
    sizes.scale.clients = steps[steps.length - 1];
  }
  if (values.agents) sizes.scale.agents = positiveInt("agents", values.agents);
  if (values["churn-seconds"]) {
    sizes.scale.churn.seconds = positiveInt("churn-seconds", values["churn-seconds"]);
  }
  let target: BenchOptions["target"];
  if (values.target) {
    const match = /^(.+):(\d+)$/.exec(values.target);
    if (!match) throw new UsageError(`Invalid --target ${values.target}: expected HOST:PORT`);
    target = {
      hostname: match[1].replace(/^\[(.*)\]$/, "$1"),
      port: Number(match[2]),
      ca: values.ca ?? "certs/cert.pem",
      pid: values.pid ? positiveInt("pid", values.pid) : undefined,
      webPort: values["target-web-port"]
        ? positiveInt("target-web-port", values["target-web-port"])
        : undefined,
    };
  }
  return {
    scenarios,
    runs: values.runs ? positiveInt("runs", values.runs) : quick ? 1 : undefined,
    quick,
    sizes,
    target,
    reference: values["no-reference"] || target ? null : values.reference ?? REFERENCE_PATH,
    baseline: target ? undefined : values.baseline,
    cpuProf: values["cpu-prof"],
    json: values.json,
    // The growth plot goes into the docs only from a full run.
    plot: values.plot === "none" ? null : values.plot ?? (quick ? null : DEFAULT_PLOT),
  };
}

function progress(line: string): void {
  console.error(line);
}

/** Starts (or, for `--target`, wraps) the servers one scenario needs. */
interface ServerKind {
  name: string;
  /** Whether it speaks version 2 of the protocol (ids and acks, history). */
  v2: boolean;
  /** Whether it can serve the web client's WebSocket (`--web-port`) for {@link Scenario.web}. */
  web: boolean;
  /** Whether it can start with a cluster beside it, for {@link Scenario.cluster}. */
  cluster: boolean;
  /**
   * Starts it; with `web`, with its web port on (in `endpoint.webPort`); with `cluster`, with a
   * two-node cluster of the same server beside it (in `cluster`).
   */
  start(options?: { web?: boolean; cluster?: boolean }): Promise<ServerHandle>;
}

/** Lowers the client counts to what `ulimit -n` allows; returns the notes to print. */
async function fitFileLimit(sizes: Sizes, scenarios: Scenario[]): Promise<string[]> {
  const limit = await openFileLimit();
  const notes: string[] = [];
  for (const scenario of scenarios) {
    const want = scenario.clients(sizes);
    if (want + SPARE_FILES <= limit) continue;
    const fit = Math.max(1, limit - SPARE_FILES);
    if (scenario.id === 3) sizes.connect.clients = fit;
    else if (scenario.id === 4) sizes.idle.clients = fit;
    else if (SCALE_SCENARIOS.includes(scenario)) {
      const scale = sizes.scale;
      scale.clients = Math.min(scale.clients, fit);
      const steps = scale.steps.filter((step) => step < fit);
      scale.steps = [...steps, fit];
      scale.churn.steady = Math.min(scale.churn.steady, fit);
    } else continue;
    notes.push(
      `ulimit -n is ${limit}: scenario ${scenario.id} uses ${fit} clients instead of ${want} ` +
        `(Deno raises the soft limit to the hard one itself: raise the hard limit, e.g. \`ulimit -Hn\` as root or \`LimitNOFILE=\`)`,
    );
  }
  return notes;
}

/** The machine, for the report. */
async function machine(): Promise<string> {
  let cpu = "unknown CPU";
  let memory = "";
  try {
    const info = await readProc("/proc/cpuinfo");
    cpu = /^model name\s*:\s*(.+)$/m.exec(info)?.[1] ?? cpu;
    const mem = /^MemTotal:\s+(\d+) kB/m.exec(await readProc("/proc/meminfo"));
    if (mem) memory = `, ${Math.round(Number(mem[1]) / 1024 ** 2)} GiB RAM`;
  } catch {
    // Not Linux.
  }
  return `${navigator.hardwareConcurrency} x ${cpu}${memory}, ${Deno.build.os} ${Deno.build.arch}`;
}

/**
 * Waits until this process holds no more than `baseline` (+ a few) file descriptors: a closed
 * TLS client gives its socket back only once the close handshake is over, and 5000 of them
 * left over would push the next run past `ulimit -n`.
 */
async function released(baseline: number): Promise<void> {
  const deadline = Date.now() + RELEASE_TIMEOUT_MS;
  while (Date.now() < deadline && await openFiles(Deno.pid) > baseline + SPARE_FILES / 4) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function runScenario(
  scenario: Scenario,
  all: { kinds: ServerKind[]; floors: ServerKind[] },
  options: BenchOptions,
): Promise<ScenarioReport | null> {
  const { sizes } = options;
  const able = all.kinds.filter((kind) =>
    (!scenario.v2Only || kind.v2) && (!scenario.web || kind.web) &&
    (!scenario.cluster || kind.cluster)
  );
  // No server can run it (a note says why): no row.
  if (able.length === 0) return null;
  const start = (kind: ServerKind) =>
    kind.start({
      web: (scenario.web || (scenario.webOptional && kind.web)) ?? false,
      cluster: scenario.cluster ?? false,
    });
  const kinds = scenario.floors ? [...able, ...all.floors] : able;
  const count = options.runs ?? scenario.runs;
  const runs: Record<string, RunResult[]> = Object.fromEntries(kinds.map((k) => [k.name, []]));
  progress(`\n[${scenario.id}] ${scenario.title}: ${scenario.describe(sizes)}`);
  const baseline = await openFiles(Deno.pid);
  const record = async (name: string, run: number, result: RunResult) => {
    await released(baseline);
    runs[name].push(result);
    const notes = result.notes.length > 0 ? ` (${result.notes.join("; ")})` : "";
    progress(`  ${name} run ${run}: ${formatMetrics(scenario, result.metrics)}${notes}`);
  };
  // Alternate which server goes first, so neither always runs on a warmer machine.
  const order = (run: number) => run % 2 === 0 ? kinds : [...kinds].reverse();
  if (scenario.freshServerPerRun) {
    for (let run = 1; run <= count; run++) {
      for (const kind of order(run)) {
        await using server = await start(kind);
        await record(kind.name, run, await scenario.run(server, sizes));
      }
    }
    return { scenario, runs };
  }
  const servers: ServerHandle[] = [];
  try {
    for (const kind of kinds) servers.push(await start(kind));
    const byName = new Map(servers.map((server) => [server.name, server]));
    if (scenario.warmup && !options.quick) {
      for (const server of servers) {
        await scenario.run(server, sizes);
        await released(baseline);
      }
    }
    for (let run = 1; run <= count; run++) {
      for (const kind of order(run)) {
        await record(kind.name, run, await scenario.run(byName.get(kind.name)!, sizes));
      }
    }
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
  }
  return { scenario, runs };
}

/** Runs the bench; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  let options: BenchOptions | null;
  try {
    options = parseOptions(args);
  } catch (error) {
    if (!(error instanceof UsageError) && !(error instanceof TypeError)) throw error;
    console.error(`error: ${error.message}\nRun with --help to see the options.`);
    return 2;
  }
  if (options === null) {
    console.log(USAGE);
    return 0;
  }
  const notes = await fitFileLimit(options.sizes, options.scenarios);
  const kinds: ServerKind[] = [];
  const floors: ServerKind[] = [];
  let certDir: string | null = null;
  // Interrupted: stop the servers and remove the certificates before exiting.
  const onSignal = async () => {
    await stopAll();
    if (certDir) await Deno.remove(certDir, { recursive: true }).catch(() => {});
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let primary = "ours";
  let referenceName: string | undefined;
  try {
    if (options.target) {
      const target = options.target;
      const password = Deno.env.get("CHAT_SERVER_PASSWORD");
      if (!password) {
        console.error("error: --target needs the server's password in CHAT_SERVER_PASSWORD");
        return 2;
      }
      const caCert = await Deno.readTextFile(target.ca);
      const server = externalServer(
        { hostname: target.hostname, port: target.port, caCert, password, webPort: target.webPort },
        target.pid,
      );
      primary = server.name;
      const web = target.webPort !== undefined;
      kinds.push({
        name: server.name,
        v2: true,
        web,
        cluster: false,
        start: () => Promise.resolve(server),
      });
      if (target.pid === undefined) notes.push("no --pid: CPU and memory figures are n/a");
      if (options.scenarios.some((s) => s.floors)) {
        notes.push("--target: the transport floors are not measured");
      }
      if (!web && options.scenarios.some((s) => s.web)) {
        notes.push("--target without --target-web-port: scenario 9 is not run");
      }
      if (options.scenarios.some((s) => s.cluster)) {
        notes.push(
          "--target: scenario 10 is not run (it starts its own Redis and three of our servers)",
        );
      }
    } else {
      certDir = await Deno.makeTempDir({ prefix: "chat-bench-" });
      const pair = await ensureCertificates({ certDir, host: "127.0.0.1" });
      const common = { certDir, caCert: pair.certPem, password: BENCH_PASSWORD };
      if (options.cpuProf) await Deno.mkdir(options.cpuProf, { recursive: true });
      const cpuProf = options.cpuProf ? await Deno.realPath(options.cpuProf) : undefined;
      if (cpuProf) notes.push(`our servers ran under --cpu-prof (profiles in ${cpuProf})`);
      /**
       * Tells which process is which server (and so which profile, with `--cpu-prof`), for a
       * cluster always (to attach e.g. `perf record -p` to its nodes).
       */
      const profiled = (server: ServerHandle) => {
        if (!cpuProf && !server.cluster) return server;
        const nodes = server.cluster?.nodes ?? [];
        const pids = [server, ...nodes].map((s) => `${s.name} pid ${s.pid}`);
        if (server.cluster) {
          pids.push(`Redis pid ${server.cluster.redis.pid} (${server.cluster.redis.url})`);
        }
        progress(`  processes: ${pids.join(", ")}`);
        return server;
      };
      const redis = options.scenarios.some((s) => s.cluster) ? await redisVersion() : null;
      if (options.scenarios.some((s) => s.cluster)) {
        notes.push(
          redis
            ? `scenario 10: redis-server ${redis}, private to the bench (--save '' ` +
              `--appendonly no), on a free loopback port`
            : "redis-server is not on PATH: scenario 10 (two-node cluster) is not run",
        );
      }
      kinds.push({
        name: "ours",
        v2: true,
        web: true,
        cluster: redis !== null,
        start: async (opts) => {
          const base = { ...common, maxClients: MAX_CLIENTS, cpuProf };
          if (!opts?.cluster) return profiled(await startOurs({ ...base, web: opts?.web }));
          // The single node logs as the cluster's nodes must (at info: the bench waits for their
          // join line), so the two configurations differ only in the cluster.
          const single = await startOurs({ ...base, logLevel: "info" });
          return profiled(await withCluster(single, () => startCluster({ ...base, nodes: 2 })));
        },
      });
      if (options.baseline) {
        const checkout = options.baseline;
        if (!await exists(`${checkout}/main.ts`)) {
          console.error(`error: --baseline ${checkout}: no main.ts there`);
          return 2;
        }
        kinds.push({
          name: "before",
          v2: false,
          web: false,
          cluster: false,
          start: () => startOurs({ ...common, maxClients: MAX_CLIENTS, checkout, name: "before" }),
        });
        notes.push(`before: ${checkout}/main.ts, started as its own deno task start runs it`);
      }
      for (const transport of ["node", "deno"] as const) {
        floors.push({
          name: FLOOR_NAMES[transport],
          v2: false,
          web: false,
          cluster: false,
          start: () => startFloor({ ...common, transport }),
        });
      }
      const script = options.reference;
      const node = script ? await nodeVersion() : null;
      if (script && node && await exists(script)) {
        referenceName = "reference";
        kinds.push({
          name: referenceName,
          v2: false,
          web: false,
          cluster: false,
          start: () => startReference({ ...common, script }),
        });
        notes.push(`reference: ${script} on node ${node}`);
      } else if (script) {
        notes.push(
          node
            ? `reference server not found at ${script}: no reference column`
            : "node is not on PATH: no reference column",
        );
      }
    }
    for (const note of notes) progress(`note: ${note}`);
    const started = new Date();
    const reports: ScenarioReport[] = [];
    for (const scenario of options.scenarios) {
      const report = await runScenario(scenario, { kinds, floors }, options);
      if (report) reports.push(report);
      else progress(`\n[${scenario.id}] ${scenario.title}: not run (see the notes)`);
    }
    const servers = { primary, reference: referenceName, quick: options.quick };
    const extras: string[] = [];
    for (const { scenario, runs } of reports) {
      if (!scenario.report) continue;
      const all = Object.fromEntries(
        Object.entries(runs).map(([name, results]) => [name, medians(results, scenario.metrics)]),
      );
      extras.push(await scenario.report(all, options.sizes, options.plot));
    }
    if (options.json) {
      console.log(JSON.stringify(
        {
          date: started.toISOString(),
          machine: await machine(),
          deno: Deno.version.deno,
          quick: options.quick,
          sizes: options.sizes,
          notes,
          extras,
          scenarios: reports.map(({ scenario, runs }) => ({
            id: scenario.id,
            title: scenario.title,
            description: scenario.describe(options.sizes),
            medians: Object.fromEntries(
              Object.entries(runs).map((
                [name, results],
              ) => [name, medians(results, scenario.metrics)]),
            ),
            runs,
          })),
        },
        null,
        2,
      ));
    } else {
      console.log(`\nDate: ${started.toISOString()}`);
      console.log(`Machine: ${await machine()}; deno ${Deno.version.deno}`);
      if (options.quick) console.log("Quick sizes: a smoke run, not a measurement");
      console.log();
      console.log(renderTable(reports, options.sizes, servers));
      for (const details of renderDetails(reports, servers)) console.log(`\n${details}`);
      for (const extra of extras) console.log(`\n${extra}`);
      const all = [...notes.map((note) => `- ${note}`), ...renderNotes(reports)];
      if (all.length > 0) console.log(`\nNotes:\n${all.join("\n")}`);
    }
    return 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    if (certDir) await Deno.remove(certDir, { recursive: true });
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
