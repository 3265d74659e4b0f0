/**
 * What one fan-out costs on this machine below any chat server: one write of a 120-byte frame to
 * each of N loopback connections, every round waiting for all writes to complete, then 100 ms of
 * rest. Prints the medians over the rounds: CPU per write (user and system) and the fan-out's wall
 * time.
 *
 *   node bench/fanout_floor.mjs tcp 10000              # plain TCP, Node.js: the kernel's share
 *   deno run -A bench/fanout_floor.mjs tcp 10000       # plain TCP, Deno's node:net
 *   deno run -A bench/fanout_floor.mjs tls 10000       # node:tls, socket.write()
 *   deno run -A bench/fanout_floor.mjs tls-direct 10000  # node:tls, src/server/direct_write.ts
 *
 * The clients are two child processes of the same runtime that read and discard everything. Not
 * part of `deno task bench`: BENCHMARKS.md ("What mattered") quotes its figures, and says why the
 * p99 target of scenario 12 cannot be met on this machine.
 *
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import { spawn } from "node:child_process";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";

const MODES = ["tcp", "tls", "tls-direct"];
const mode = process.argv[2] ?? "tcp";
const count = Number(process.argv[3] ?? 10_000);
const rounds = Number(process.argv[4] ?? 30);
if (!MODES.includes(mode) || !(count > 0) || !(rounds > 0)) {
  console.error(`usage: fanout_floor.mjs ${MODES.join("|")} [connections] [rounds]`);
  process.exit(2);
}
const isDeno = typeof globalThis.Deno !== "undefined";
if (mode === "tls-direct" && !isDeno) {
  console.error("tls-direct needs Deno (it writes to Deno's TLS handle)");
  process.exit(2);
}

const frame = new Uint8Array(120).fill(0x41);
const sockets = [];
let secure = null;
if (mode !== "tcp") {
  const dir = mkdtempSync(join(tmpdir(), "fanout-floor-"));
  execFileSync("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "1",
    "-subj",
    "/CN=127.0.0.1",
    "-keyout",
    join(dir, "key.pem"),
    "-out",
    join(dir, "cert.pem"),
  ], { stdio: "ignore" });
  secure = {
    cert: readFileSync(join(dir, "cert.pem")),
    key: readFileSync(join(dir, "key.pem")),
  };
  rmSync(dir, { recursive: true });
}
const writeDirect = mode === "tls-direct"
  ? (await import("../src/server/direct_write.ts")).writeDirect
  : null;

function accepted(socket) {
  socket.setNoDelay(true);
  socket.on("error", () => {});
  socket.on("data", () => {});
  sockets.push(socket);
  if (sockets.length === count) measure();
}
const server = secure
  ? tls.createServer(secure).on("secureConnection", accepted)
  : net.createServer(accepted);
server.listen(0, "127.0.0.1", () => {
  const port = server.address().port;
  // Each client process opens its half, 50 connections at a time, and reads until stdin ends.
  const client = `
    const net = require("node:net"), tls = require("node:tls");
    const total = Number(process.argv.at(-1)); let started = 0;
    function next() {
      if (started >= total) return;
      started++;
      const s = ${secure ? "tls" : "net"}.connect({ port: ${port}, host: "127.0.0.1",
        rejectUnauthorized: false }, next);
      s.on("data", () => {}); s.on("error", () => {});
    }
    for (let i = 0; i < 50; i++) next();
    process.stdin.on("end", () => process.exit(0)); process.stdin.resume();`;
  for (let i = 0; i < 2; i++) {
    const share = String(i === 0 ? Math.ceil(count / 2) : Math.floor(count / 2));
    const args = isDeno ? ["eval", "--ext=cjs", client, share] : ["-e", client, share];
    const child = spawn(process.execPath, args, { stdio: ["pipe", "inherit", "inherit"] });
    children.push(child);
  }
});
const children = [];

function fanOut() {
  return new Promise((resolve) => {
    let pending = sockets.length;
    const done = () => {
      if (--pending === 0) resolve();
    };
    if (writeDirect) { for (const socket of sockets) writeDirect(socket, frame, done); }
    else for (const socket of sockets) socket.write(frame, done);
  });
}

async function measure() {
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const results = [];
  for (let round = 0; round < rounds; round++) {
    const cpu = process.cpuUsage();
    const start = performance.now();
    await fanOut();
    const used = process.cpuUsage(cpu);
    results.push({
      cpu: (used.user + used.system) / count,
      user: used.user / count,
      system: used.system / count,
      ms: performance.now() - start,
    });
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const median = (key) => results.map((r) => r[key]).sort((a, b) => a - b)[rounds >> 1];
  const m = {
    cpu: median("cpu"),
    user: median("user"),
    system: median("system"),
    ms: median("ms"),
  };
  const runtime = isDeno ? `deno ${Deno.version.deno}` : `node ${process.version}`;
  console.log(
    `${mode} on ${runtime}, ${count} connections, median of ${rounds} rounds: ` +
      `CPU ${m.cpu.toFixed(2)} µs/write (user ${m.user.toFixed(2)}, system ${
        m.system.toFixed(2)
      }), one fan-out ${m.ms.toFixed(1)} ms`,
  );
  for (const child of children) child.stdin.end();
  for (const socket of sockets) socket.destroy();
  server.close();
}
