/**
 * A few seconds of the soak (`tests/soak.ts`) inside `deno task test`: an in-process server,
 * honest clients chatting, and one wave of every kind of abuse at the same time.
 *
 * Tune it with `SOAK_TEST_SEED`, `SOAK_TEST_SECONDS` and `SOAK_TEST_HONEST`.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Limits } from "../src/config.ts";
import { DEFAULT_LIMITS } from "../src/config.ts";
import { formatReport, runSoak, type SoakReport } from "./soak.ts";
import { startServer, testCerts } from "./helpers.ts";

const SEED = Number(Deno.env.get("SOAK_TEST_SEED") ?? 20261125);
const SECONDS = Number(Deno.env.get("SOAK_TEST_SECONDS") ?? 6);
const HONEST = Number(Deno.env.get("SOAK_TEST_HONEST") ?? 40);

const LIMITS: Limits = {
  ...DEFAULT_LIMITS,
  // Every test client comes from 127.0.0.x: the per-IP cap would refuse the honest load.
  maxPerIp: 0,
  handshakeTimeoutMs: 1000,
  authTimeoutMs: 1500,
};

Deno.test("ChatServer loses no honest message while every kind of abuse runs at once", async (t) => {
  const { cert } = await testCerts();
  await using srv = await startServer({ limits: LIMITS });
  console.log(`soak seed ${SEED} (repeat with SOAK_TEST_SEED=${SEED})`);
  const report: SoakReport = await runSoak({
    endpoint: { port: srv.port, cert },
    sample: () => Promise.resolve({ rss: null, fds: null }),
    alive: () => true,
    stats: () => srv.server.stats(),
  }, {
    durationMs: SECONDS * 1000,
    waveMs: SECONDS * 1000,
    honest: HONEST,
    rate: 4,
    seed: SEED,
    intensity: 0.3,
    // Enough flood in one wave to push a non-reader past the kernel buffers (~4 MiB on
    // loopback) and its 1 MiB send queue.
    flood: { rate: 18, bytes: 48 * 1024 },
    mix: { "non-reader": 2, flooder: 2, churn: 1 },
    limits: LIMITS,
    settleMs: 5000,
  });
  console.log(formatReport(report));
  const stats = report.stats!;

  await t.step("honest clients receive every message exactly once and in order", () => {
    assert.ok(report.honest.sent > HONEST * SECONDS, "the honest load ran");
    assert.equal(report.honest.received, report.honest.expected);
    assert.equal(report.honest.missing, 0);
    assert.equal(report.honest.duplicates, 0);
    assert.equal(report.honest.outOfOrder, 0);
    assert.deepEqual(report.honest.errors, {});
    assert.deepEqual(report.honest.lost, {});
  });

  await t.step("accept keeps working during and after the abuse", () => {
    assert.ok(report.canary.ok > 0);
    assert.equal(report.canary.failed, 0);
    assert.ok(report.accept.ok, report.accept.detail);
  });

  await t.step("the server answers each abuse with its error code and drops non-readers", () => {
    for (
      const code of [
        "empty_frame",
        "frame_too_large",
        "invalid_json",
        "not_an_object",
        "auth_required",
        "auth_timeout",
        "invalid_message",
        "unknown_type",
        "already_authenticated",
        "rate_limited",
        "locked_out",
      ]
    ) {
      assert.ok((stats.errors as Record<string, number>)[code] > 0, `no ${code} counted`);
    }
    assert.ok(stats.handshakeFailures > 0, "garbage bytes should fail handshakes");
    assert.ok(stats.handshakeTimeouts > 0, "silent TCP connections should time out");
    assert.ok(stats.authFailures > 0, "wrong passwords should be counted");
    const dropped = stats.stalledReaders + stats.writeTimeouts;
    assert.ok(dropped >= 2, `only ${dropped} non-readers dropped`);
  });

  await t.step("connections come back to the honest clients once the abusers leave", () => {
    assert.equal(stats.clients, HONEST, `clients: ${stats.clients}`);
    assert.equal(stats.connections, HONEST, `connections: ${stats.connections}`);
  });

  await t.step("every abuse gets the outcome the protocol requires", () => {
    const unexpected = Object.entries(report.abuse.kinds)
      .flatMap(([kind, tally]) =>
        Object.keys(tally.outcomes).filter((o) => o.startsWith("UNEXPECTED")).map((o) =>
          `${kind}: ${o}`
        )
      );
    assert.deepEqual(unexpected, []);
  });
});
