/**
 * Smoke runs of the benchmark (`bench/bench.ts --quick`), so it cannot rot: every scenario
 * completes and reports sane figures. Never asserts timing: the bench itself measures speed.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { PASSWORD, startServer, testCerts } from "./_helpers.ts";
import { hasRedis } from "./_redis.ts";

const BENCH = new URL("../bench/bench.ts", import.meta.url).pathname;
const PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-run",
  "--allow-env",
];

/** The parts of `bench.ts --json` the test reads. */
interface BenchJson {
  notes: string[];
  scenarios: { id: number; medians: Record<string, Record<string, number>> }[];
}

async function runBench(args: string[], env?: Record<string, string>): Promise<BenchJson> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...PERMISSIONS, BENCH, "--quick", "--json", ...args],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `bench failed:\n${stderr}`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

function scenario(report: BenchJson, id: number): Record<string, Record<string, number>> {
  const found = report.scenarios.find((s) => s.id === id);
  assert.ok(found, `scenario ${id} missing from the report`);
  return found.medians;
}

/** Checks the figures every server must report, whatever the machine's speed. */
function assertSane(report: BenchJson, server: string, measured: boolean): void {
  const burst = scenario(report, 1)[server];
  assert.equal(burst.lost, 0);
  assert.ok(burst.deliveries_per_s > 0);
  assert.ok(burst.p50_ms >= 0 && burst.p99_ms >= burst.p50_ms);
  const steady = scenario(report, 2)[server];
  assert.equal(steady.lost, 0);
  assert.ok(steady.max_ms >= steady.p99_ms);
  assert.ok(scenario(report, 3)[server].conn_per_s > 0);
  assert.ok(Number.isFinite(scenario(report, 4)[server].kib_per_client) === measured);
  const large = scenario(report, 5)[server];
  assert.equal(large.lost, 0);
  assert.ok(large.mb_per_s > 0);
  assert.ok(Number.isFinite(burst.cpu_us_per_delivery) === measured);
  // Lost deliveries (even all of them, from a server that drops readers which fall behind) are
  // the server's to answer for in the report's target, not the bench's.
  const stalled = scenario(report, 6)[server];
  assert.ok(stalled.lost >= 0 && stalled.max_gap_ms >= 0);
  assert.equal(stalled.out_of_order, 0);
  assert.ok(Number.isFinite(stalled.rss_growth_mib) === measured);
  assert.ok(
    stalled.stalled_dropped === 0 || stalled.stalled_dropped === 1,
    "the bench tells whether the server dropped the stalled reader",
  );
}

/**
 * Checks the version 2 scenarios (7: stored acks, 8: history join), which only our server runs:
 * with history on (a `chat.db` in the bench's data dir), every message acked and delivered, every
 * joining client's replay complete.
 */
function assertSaneV2(report: BenchJson): void {
  const acks = scenario(report, 7);
  assert.deepEqual(Object.keys(acks), ["ours"], "scenario 7 runs on our server only");
  assert.equal(acks.ours.unacked, 0);
  assert.equal(acks.ours.lost, 0);
  assert.ok(acks.ours.acked_per_s > 0);
  assert.ok(acks.ours.deliveries_per_s > 0);
  assert.ok(acks.ours.p50_ms >= 0 && acks.ours.p99_ms >= acks.ours.p50_ms);
  assert.ok(acks.ours.db_mib > 0, "the server keeps its history in SQLite (chat.db)");
  const join = scenario(report, 8);
  assert.deepEqual(Object.keys(join), ["ours"], "scenario 8 runs on our server only");
  assert.equal(join.ours.incomplete, 0);
  assert.ok(join.ours.done_s > 0 && join.ours.done_max_s >= join.ours.done_s);
  assert.ok(join.ours.logins_s > 0 && join.ours.client_p50_s <= join.ours.done_s);
}

/**
 * Checks scenario 9 (WebSocket and TLS clients in one room), which only our server runs (on its
 * web port): every delivery to both kinds of client, and the TLS-only comparison in the same run.
 */
function assertSaneWeb(report: BenchJson): void {
  const web = scenario(report, 9);
  assert.deepEqual(Object.keys(web), ["ours"], "scenario 9 runs on our server only");
  const ours = web.ours;
  assert.equal(ours.lost, 0);
  assert.ok(ours.ws_deliveries_per_s > 0, "WebSocket clients got deliveries");
  assert.ok(ours.tls_deliveries_per_s > 0, "TLS clients next to them got deliveries");
  assert.ok(ours.tls_only_deliveries_per_s > 0, "the TLS-only room got deliveries");
  assert.ok(ours.ws_p50_ms >= 0 && ours.ws_p99_ms >= ours.ws_p50_ms);
  assert.ok(ours.tls_p50_ms >= 0 && ours.tls_p99_ms >= ours.tls_p50_ms);
  assert.ok(ours.tls_only_p99_ms >= ours.tls_only_p50_ms);
  assert.ok(Number.isFinite(ours.cpu_us_per_delivery));
}

/**
 * Checks scenario 10 (a two-node cluster on a private Redis against a single node), which only
 * our server runs, and only where `redis-server` is installed (else a note says it was not run):
 * every delivery on both configurations, cross-node deliveries timed apart, every process's CPU.
 */
function assertSaneCluster(report: BenchJson): void {
  if (!hasRedis()) {
    assert.ok(!report.scenarios.some((s) => s.id === 10), "no scenario 10 without redis-server");
    assert.ok(
      report.notes.some((note) => note.includes("scenario 10 (two-node cluster) is not run")),
    );
    return;
  }
  const cluster = scenario(report, 10);
  assert.deepEqual(Object.keys(cluster), ["ours"], "scenario 10 runs on our server only");
  const ours = cluster.ours;
  assert.equal(ours.lost, 0);
  assert.equal(ours.paced_lost, 0);
  assert.ok(ours.cross_per_s > 0, "cross-node deliveries were made");
  assert.ok(ours.cross_p50_ms >= 0 && ours.cross_p99_ms >= ours.cross_p50_ms);
  assert.ok(ours.same_p50_ms >= 0 && ours.same_p99_ms >= ours.same_p50_ms);
  assert.ok(ours.single_p50_ms >= 0 && ours.single_p99_ms >= ours.single_p50_ms);
  assert.ok(ours.deliveries_per_s > 0 && ours.single_deliveries_per_s > 0);
  assert.ok(ours.two_vs_single > 0);
  for (const key of ["paced_node1_cpu_pct", "paced_node2_cpu_pct", "paced_redis_cpu_pct"]) {
    assert.ok(Number.isFinite(ours[key]), `${key} measured`);
  }
}

/**
 * Checks the scale scenarios (11 to 14, held by several load-agent processes): idle memory and
 * connection rate beside the transport floors, the growth steps and their plot, the half-WebSocket
 * room (whose browsers get their presence frames), and the churn.
 */
async function assertSaneScale(report: BenchJson, plot: string, withReference: boolean) {
  const idle = scenario(report, 11);
  for (const name of ["ours", "node:tls floor", "Deno.listenTls floor"]) {
    assert.ok(Number.isFinite(idle[name]?.kib_per_client), `${name} idle memory measured`);
    assert.ok(idle[name].conn_per_s > 0, `${name} connection rate measured`);
  }
  const growth = scenario(report, 12);
  const servers = withReference ? ["ours", "reference"] : ["ours"];
  for (const name of [...servers, "node:tls floor", "Deno.listenTls floor"]) {
    const figures = growth[name];
    assert.equal(figures.lost, 0, `${name} lost nothing while growing`);
    assert.ok(figures.p50_ms >= 0 && figures.p99_ms >= figures.p50_ms);
    assert.ok(Number.isFinite(figures.cpu_us_per_delivery) && figures.gen_cores > 0);
    assert.ok(figures.step1_clients < figures.step2_clients, "two growth steps");
    assert.ok(figures.step2_rss_mib > 0 && figures.step2_p99_ms >= 0);
    // (CPU figures may be 0 at these sizes: /proc counts in steps of 10 ms.)
    assert.ok(figures.server_cores >= 0, `${name}'s CPU while talking`);
    assert.equal(figures.one_lost, 0, `${name} lost nothing with one sender`);
    assert.ok(figures.one_p99_ms >= figures.one_p50_ms && figures.one_cpu_us >= 0);
  }
  const svg = await Deno.readTextFile(plot);
  assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /<polyline /);
  assert.match(svg, />ours</);
  const half = scenario(report, 13);
  assert.deepEqual(Object.keys(half), ["ours"], "scenario 13 runs on our server only");
  assert.equal(half.ours.lost, 0);
  assert.ok(half.ours.kib_per_client > 0 && half.ours.conn_per_s > 0);
  assert.ok(half.ours.feature_frames > 0, "the browsers got their presence frames");
  const churn = scenario(report, 14);
  for (const name of servers) {
    assert.equal(churn[name].lost, 0, `${name}: the steady clients lost nothing`);
    assert.ok(churn[name].churn_per_s > 0);
    assert.equal(churn[name].churn_failed, 0);
    assert.ok(Number.isFinite(churn[name].fd_growth) && churn[name].rss_after_mib > 0);
  }
}

Deno.test("bench --quick measures our server (and the reference, if present) in every scenario", async () => {
  const plot = await Deno.makeTempFile({ prefix: "chat-growth-", suffix: ".svg" });
  const report = await runBench(["--plot", plot]);
  assertSane(report, "ours", true);
  assertSaneV2(report);
  assertSaneWeb(report);
  assertSaneCluster(report);
  for (const floor of ["node:tls floor", "Deno.listenTls floor"]) {
    assert.ok(Number.isFinite(scenario(report, 4)[floor]?.kib_per_client), `${floor} measured`);
  }
  if (report.scenarios[0].medians.reference) {
    assertSane(report, "reference", true);
    // The reference has no limits: it keeps the stalled reader and buffers for it.
    const stalled = scenario(report, 6).reference;
    assert.equal(stalled.lost, 0);
    assert.ok(stalled.deliveries_per_s > 0);
    assert.equal(stalled.stalled_dropped, 0);
  } else assert.ok(report.notes.some((note) => note.includes("no reference column")));
  try {
    await assertSaneScale(report, plot, report.scenarios[0].medians.reference !== undefined);
  } finally {
    await Deno.remove(plot);
  }
});

Deno.test("bench --target measures a running server with its default limits", async () => {
  // Default limits: the quick sizes stay inside the per-IP cap and the rate limit's burst.
  await using srv = await startServer();
  const { dir } = await testCerts();
  const report = await runBench(
    ["--target", `127.0.0.1:${srv.port}`, "--ca", join(dir, "cert.pem"), "--scenarios", "1,2"],
    { CHAT_SERVER_PASSWORD: PASSWORD },
  );
  const burst = scenario(report, 1).target;
  assert.equal(burst.lost, 0);
  assert.ok(burst.deliveries_per_s > 0);
  assert.ok(Number.isNaN(burst.cpu_us_per_delivery ?? NaN), "no --pid: no CPU figure");
  assert.equal(scenario(report, 2).target.lost, 0);
  assert.equal(srv.server.stats().errors.rate_limited ?? 0, 0);
});
