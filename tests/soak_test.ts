/**
 * A few seconds of the soak (`tests/_soak.ts`) inside `deno task test`: an in-process server with
 * its default per-IP cap, honest clients chatting from a few loopback addresses, and one wave of
 * every kind of abuse at the same time (a burst past the per-IP cap, a client that never reads
 * and one that stops reading while flooders fill the room among them).
 *
 * Tune it with `SOAK_TEST_SEED`, `SOAK_TEST_SECONDS` and `SOAK_TEST_HONEST`.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Limits } from "../src/server/config.ts";
import { DEFAULT_LIMITS } from "../src/server/config.ts";
import { formatReport, runSoak, type SoakReport } from "./_soak.ts";
import { startServer, testCerts } from "./_helpers.ts";

const SEED = Number(Deno.env.get("SOAK_TEST_SEED") ?? 20261125);
const SECONDS = Number(Deno.env.get("SOAK_TEST_SECONDS") ?? 6);
const HONEST = Number(Deno.env.get("SOAK_TEST_HONEST") ?? 30);

const LIMITS: Limits = {
  ...DEFAULT_LIMITS,
  // The default per-IP cap (64): honest clients and abusers come from addresses of their own.
  // Short, so the silent abusers are closed within the wave; long enough for a loaded CI machine.
  handshakeTimeoutMs: 2000,
  authTimeoutMs: 3000,
  writeTimeoutMs: 3000,
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
    // Three addresses of 10 honest clients each, all under the per-IP cap of 64.
    honestPerAddress: 10,
    rate: 4,
    seed: SEED,
    intensity: 0.3,
    // Enough flood in one wave to push the non-reader and the stalled reader past the kernel
    // buffers (a few MiB on loopback) and their 1 MiB send queues, well before the wave ends.
    flood: { rate: 18, bytes: 60_000 },
    mix: { "non-reader": 1, "stalled-reader": 1, "over-cap": 1, flooder: 3, churn: 1 },
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

  await t.step("each abuse gets its error code, and stalled readers are dropped", () => {
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
        "too_many_connections",
      ]
    ) {
      assert.ok((stats.errors as Record<string, number>)[code] > 0, `no ${code} counted`);
    }
    // Every error frame an abuser received was counted by the server (rate_limited is counted
    // per dropped frame, but noticed at most once per token period).
    for (const [code, n] of Object.entries(report.abuse.codes)) {
      const counted = (stats.errors as Record<string, number>)[code] ?? 0;
      assert.ok(counted >= n, `${code}: abusers got ${n}, the server counted ${counted}`);
    }
    assert.ok(stats.handshakeFailures > 0, "garbage bytes should fail handshakes");
    assert.ok(stats.handshakeTimeouts > 0, "silent TCP connections should time out");
    assert.ok(stats.authFailures > 0, "wrong passwords should be counted");
    // Refused connections are counted, whether closed at once or after the notice.
    const refused = report.abuse.refusedAtOnce + report.abuse.refusedWithNotice;
    assert.ok(stats.rejected >= refused, `${stats.rejected} refusals counted, ${refused} seen`);
    assert.ok(report.abuse.refusedAtOnce > 0, "no connection over the cap was closed at once");
    assert.ok(report.abuse.refusedWithNotice > 0, "no connection over the cap got the notice");
    // The non-reader and the stalled reader.
    const dropped = stats.stalledReaders + stats.writeTimeouts;
    assert.ok(dropped >= 2, `only ${dropped} stalled readers dropped`);
    assert.ok(
      stats.senderPauses > 0,
      "flow control never paused a sender: the flood was too weak",
    );
  });

  await t.step("sockets come back to the honest clients once the abusers leave", () => {
    assert.equal(stats.clients, HONEST, `clients: ${stats.clients}`);
    assert.equal(stats.connections, HONEST, `connections: ${stats.connections}`);
    assert.equal(stats.sockets, HONEST, `sockets: ${stats.sockets}`);
    assert.equal(stats.refusing, 0, `refusing: ${stats.refusing}`);
    assert.equal(stats.holders, 0, `holders: ${stats.holders}`);
    assert.equal(stats.pausedSenders, 0, `paused senders: ${stats.pausedSenders}`);
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
