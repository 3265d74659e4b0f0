import assert from "node:assert/strict";
import { ConfigError, DEFAULT_LIMITS, parseConfig } from "../src/server/config.ts";

Deno.test("parseConfig uses PROTOCOL.md defaults", () => {
  const config = parseConfig([]);
  assert.equal(config.host, "127.0.0.1");
  assert.equal(config.port, 4000);
  assert.equal(config.certDir, "certs");
  assert.equal(config.logLevel, "info");
  assert.equal(config.logFormat, "text");
  assert.deepEqual(config.limits, {
    maxFrame: 65536,
    handshakeTimeoutMs: 10_000,
    authTimeoutMs: 10_000,
    maxClients: 10_000,
    maxPerIp: 64,
    maxSendQueue: 1_048_576,
    writeTimeoutMs: 10_000,
    stallTimeoutMs: 1000,
    rate: 20,
    burst: 50,
    maxAuthFailures: 5,
    lockoutMs: 60_000,
    historyKeep: 100_000,
  });
  assert.deepEqual(config.limits, DEFAULT_LIMITS);
  assert.equal(config.dataDir, "data");
});

Deno.test("parseConfig: flags win over environment, environment over defaults", () => {
  const env = (name: string) => ({ HOST: "::1", PORT: "4100" } as Record<string, string>)[name];
  assert.equal(parseConfig([], env).host, "::1");
  assert.equal(parseConfig([], env).port, 4100);
  assert.equal(parseConfig(["--port", "0"], env).port, 0);
  assert.equal(parseConfig(["--host", "localhost"], env).host, "localhost");
});

Deno.test("parseConfig reads every limit flag", () => {
  const { limits } = parseConfig([
    "--max-frame=1000",
    "--handshake-timeout=0.5",
    "--auth-timeout=3",
    "--max-clients=7",
    "--max-per-ip=0",
    "--max-send-queue=65536",
    "--write-timeout=2.5",
    "--stall-timeout=3",
    "--rate=0",
    "--burst=9",
    "--max-auth-failures=2",
    "--lockout=30",
    "--history-keep=0",
  ]);
  assert.deepEqual(limits, {
    maxFrame: 1000,
    handshakeTimeoutMs: 500,
    authTimeoutMs: 3000,
    maxClients: 7,
    maxPerIp: 0,
    maxSendQueue: 65536,
    writeTimeoutMs: 2500,
    stallTimeoutMs: 3000,
    rate: 0,
    burst: 9,
    maxAuthFailures: 2,
    lockoutMs: 30_000,
    historyKeep: 0,
  });
  assert.equal(parseConfig(["--data-dir", "/var/lib/chat"]).dataDir, "/var/lib/chat");
});

Deno.test("parseConfig rejects bad values with a message naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [["--port", "70000"], /Invalid port/],
    [["--port", "abc"], /Invalid port/],
    [["--max-frame", "0"], /--max-frame/],
    [["--max-clients", "1.5"], /--max-clients/],
    [["--rate", "-1"], /--rate/],
    [["--history-keep", "-5"], /--history-keep/],
    [["--auth-timeout", "soon"], /--auth-timeout/],
    [["--log-level", "loud"], /--log-level/],
    [["--log-format", "xml"], /--log-format/],
    [["--cert", "a.pem"], /--cert and --key together/],
    [["--write-timeout", "0"], /--write-timeout/],
    [["--max-send-queue", "4096"], /--max-send-queue/],
    // A queue that cannot hold two frames would hold the room back on every large message.
    [["--max-frame", "1048576"], /--max-send-queue 1048576: it must be at least twice --max-frame/],
    [["--max-frame", "40000", "--max-send-queue", "65536"], /at least twice --max-frame/],
    [["--bogus"], /bogus/],
    [["stray"], /stray/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseConfig(args), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, message);
      return true;
    });
  }
});

Deno.test("parseConfig: the metrics port is off by default, on 127.0.0.1 when set", () => {
  const config = parseConfig([]);
  assert.equal(config.metricsPort, null);
  assert.equal(config.metricsHost, "127.0.0.1");
  assert.equal(parseConfig(["--metrics-port", "9464"]).metricsPort, 9464);
  assert.equal(parseConfig(["--metrics-port=0"]).metricsPort, 0);
  assert.equal(parseConfig(["--metrics-port", "off"]).metricsPort, null);
  const remote = parseConfig(["--metrics-port", "9464", "--metrics-host", "10.0.0.5"]);
  assert.equal(remote.metricsHost, "10.0.0.5");
});

Deno.test("parseConfig rejects bad metrics flags with a message naming the flag", () => {
  const cases: [string[], RegExp][] = [
    [["--metrics-port", "70000"], /^Invalid --metrics-port "70000": expected 0 to 65535, or off$/],
    [["--metrics-port", "x"], /^Invalid --metrics-port "x"/],
    [["--metrics-port", "4000"], /^--metrics-port 4000 is the chat port too/],
    [["--metrics-port", "4443"], /^--metrics-port 4443 is the web port too/],
    [["--metrics-port", "9464", "--metrics-host", " "], /^Invalid --metrics-host/],
    [["--metrics-host", "0.0.0.0"], /^--metrics-host needs --metrics-port$/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseConfig(args), (error: Error) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, message, args.join(" "));
      return true;
    });
  }
  // The web port off frees its number for the metrics.
  assert.equal(parseConfig(["--web-port", "off", "--metrics-port", "4443"]).metricsPort, 4443);
});
