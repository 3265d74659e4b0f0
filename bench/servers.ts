/**
 * The servers under test: the project's `main.ts`, the Node.js reference and the transport floors
 * of `floor_server.ts`, each started as a subprocess on a free port, plus readers for a process's
 * CPU time and resident memory from `/proc`.
 *
 * @module
 */
import type { FloorTransport } from "./floor_server.ts";
import type { Endpoint } from "./load.ts";

/** Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux). */
const CLOCK_TICKS = 100;
/** Output kept from a server, for error messages. */
const OUTPUT_TAIL = 16 * 1024;
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 5_000;

/** The repository root (where `deno.json` is). */
export const REPO_ROOT = new URL("..", import.meta.url).pathname;
/** The transport floor server. */
export const FLOOR_PATH = new URL("./floor_server.ts", import.meta.url).pathname;
/** Default location of the reference server: `../shared/reference/` from the repository. */
export const REFERENCE_PATH =
  new URL("../../shared/reference/ref-node-server.mjs", import.meta.url).pathname;

/** A server the load generator can target. */
export interface ServerHandle extends AsyncDisposable {
  /** Column name in the report. */
  name: string;
  endpoint: Endpoint;
  /** Process id, if known: needed for CPU and memory figures. */
  pid?: number;
  /** A transport floor: its clients only complete the TLS handshake and never log in. */
  transportOnly?: boolean;
  /** The server's temporary data dir (`--data-dir`), if it keeps history there. */
  dataDir?: string;
  /**
   * A cluster of the same server started beside it, for a scenario that compares the two (see
   * {@link withCluster}); stopped with it.
   */
  cluster?: ClusterHandle;
  /** Stops the server if the bench started it; waits for it to exit. */
  stop(): Promise<void>;
}

/**
 * Reads files under `/proc` through `cat` (concatenated, in one process): Deno lets only
 * `--allow-all` read `/proc` itself, and the bench task runs with `--allow-run` instead.
 */
export async function readProc(...paths: string[]): Promise<string> {
  const out = await new Deno.Command("cat", {
    args: paths,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `Cannot read ${paths.join(", ")}: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/** Server CPU time (user + system, all threads) in seconds, from `/proc/<pid>/stat`. */
export async function cpuSeconds(pid: number): Promise<number> {
  return statCpuSeconds(await readProc(`/proc/${pid}/stat`));
}

/**
 * The CPU time of several processes, read at one instant (one `cat` of their `/proc/<pid>/stat`
 * files); NaN for an undefined pid.
 */
export async function cpuSecondsOf(pids: readonly (number | undefined)[]): Promise<number[]> {
  const known = pids.filter((pid): pid is number => pid !== undefined);
  const lines = known.length === 0
    ? []
    : (await readProc(...known.map((pid) => `/proc/${pid}/stat`))).split("\n");
  let next = 0;
  return pids.map((pid) => pid === undefined ? NaN : statCpuSeconds(lines[next++]));
}

/** utime + stime of one `/proc/<pid>/stat` line, in seconds. */
function statCpuSeconds(stat: string): number {
  // Fields after the command name, which is in parentheses and may contain spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/** Resident set size in bytes, from `VmRSS` in `/proc/<pid>/status`. */
export async function rssBytes(pid: number): Promise<number> {
  return statusBytes(await readProc(`/proc/${pid}/status`), "VmRSS");
}

/**
 * A size field (`VmRSS`, `VmHWM`, ...) of a `/proc/<pid>/status` text, in bytes.
 *
 * @throws {Error} if the field is missing
 */
export function statusBytes(status: string, field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+)\\s+kB$`, "m").exec(status);
  if (!match) throw new Error(`No ${field} in the process status`);
  return Number(match[1]) * 1024;
}

/** Open file descriptors of process `pid`, from `/proc/<pid>/fd` (listed by `ls`). */
export async function openFiles(pid: number): Promise<number> {
  const out = await new Deno.Command("ls", {
    args: ["-U", `/proc/${pid}/fd`],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  if (!out.success) return NaN;
  return new TextDecoder().decode(out.stdout).split("\n").filter((line) => line !== "").length;
}

/** The soft limit on open files of this process (as its child `cat` inherits it). */
export async function openFileLimit(): Promise<number> {
  try {
    const limits = await readProc("/proc/self/limits");
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
    if (match) return match[1] === "unlimited" ? Infinity : Number(match[1]);
  } catch {
    // Not Linux: assume enough.
  }
  return Infinity;
}

/** A port that was free a moment ago on `hostname`. */
export function freePort(hostname = "127.0.0.1"): number {
  const listener = Deno.listen({ hostname, port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Whether `node` runs, and its version. */
export async function nodeVersion(): Promise<string | null> {
  try {
    const out = await new Deno.Command("node", {
      args: ["--version"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

/** Servers (and Redis) started and not yet stopped, for {@link stopAll}. */
const running = new Set<{ stop(): Promise<void> }>();

/** Stops every server the bench started (on Ctrl-C or SIGTERM). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((server) => server.stop()));
}

/** What {@link spawnServer} needs. */
interface SpawnOptions {
  name: string;
  command: string;
  args: string[];
  port: number;
  /** The web port, if the server serves one: waited for too, and put in the endpoint. */
  webPort?: number;
  caCert: string;
  password: string;
  /** Runs once the process has exited (e.g. removes its temporary data dir). */
  cleanup?: () => Promise<void>;
  /** See {@link ServerHandle.dataDir}. */
  dataDir?: string;
  /** The server is ready only once its output matches this too (e.g. a log line). */
  ready?: RegExp;
}

/** A child process's status and the tail of its output, collected in the background. */
interface Watched {
  /** The last OUTPUT_TAIL characters of stdout and stderr. */
  output(): string;
  /** Whether it has exited. */
  exited(): boolean;
  status: Promise<Deno.CommandStatus>;
  /** Resolves once both streams have ended. */
  collecting: Promise<unknown>;
}

function watch(child: Deno.ChildProcess): Watched {
  let output = "";
  let exited = false;
  const decoder = new TextDecoder();
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      output = (output + decoder.decode(chunk, { stream: true })).slice(-OUTPUT_TAIL);
    }
  };
  return {
    output: () => output,
    exited: () => exited,
    status: child.status.then((status) => {
      exited = true;
      return status;
    }),
    collecting: Promise.all([collect(child.stdout), collect(child.stderr)]),
  };
}

/** Starts a server process and waits until its port accepts TCP connections. */
async function spawnServer(options: SpawnOptions): Promise<ServerHandle> {
  const child = new Deno.Command(options.command, {
    args: options.args,
    cwd: REPO_ROOT,
    env: { CHAT_SERVER_PASSWORD: options.password },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const { output, exited, status, collecting } = watch(child);
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      if (!exited()) child.kill("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<void>((resolve) => timer = setTimeout(resolve, STOP_TIMEOUT_MS));
      await Promise.race([status, late]);
      clearTimeout(timer);
      if (!exited()) child.kill("SIGKILL");
      await status;
      await collecting;
      await options.cleanup?.();
      running.delete(handle);
    })();
    return stopping;
  };
  const handle: ServerHandle = {
    name: options.name,
    pid: child.pid,
    endpoint: {
      hostname: "127.0.0.1",
      port: options.port,
      caCert: options.caCert,
      password: options.password,
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
  if (options.dataDir !== undefined) handle.dataDir = options.dataDir;
  if (options.webPort !== undefined) handle.endpoint.webPort = options.webPort;
  running.add(handle);
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!exited() && Date.now() < deadline) {
    if (
      (options.ready === undefined || options.ready.test(output())) &&
      await accepts(options.port) &&
      (options.webPort === undefined || await accepts(options.webPort))
    ) return handle;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await stop();
  const what = options.ready ? ` (or its log never matched ${options.ready})` : "";
  throw new Error(
    `${options.name} server did not start on port ${options.port}${what}:\n${
      output().slice(-2000)
    }`,
  );
}

async function accepts(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/** Options shared by the two server starters. */
export interface StartOptions {
  /** Holds `cert.pem` and `key.pem`. */
  certDir: string;
  caCert: string;
  password: string;
}

/** The `deno run` flags of a start task, and which of its directories were replaced. */
export interface TaskFlags {
  flags: string[];
  /** The directory names of the task's `--allow-read=`/`--allow-write=` lists that were mapped. */
  mapped: Set<string>;
}

/**
 * The `deno run` flags of `deno task start` in `configPath` (a deno.json), with the directories
 * of its permission lists replaced as `dirs` says (e.g. `certs` by the bench's cert dir, `data`
 * by a fresh data dir): the bench runs the server exactly as that task does.
 */
export async function startTaskFlags(
  configPath: string,
  dirs: Record<string, string>,
): Promise<TaskFlags> {
  const config = JSON.parse(await Deno.readTextFile(configPath));
  const task: string = config.tasks?.start ?? "";
  const words = task.split(/\s+/);
  const run = words.indexOf("run");
  const main = words.findIndex((word) => word.endsWith("main.ts"));
  if (words[0] !== "deno" || run !== 1 || main < run) {
    throw new Error(`Cannot read the start task of ${configPath}: ${JSON.stringify(task)}`);
  }
  const mapped = new Set<string>();
  const flags = words.slice(run + 1, main).map((flag) =>
    flag.replace(
      /=(.*)$/,
      (_, list: string) =>
        "=" + list.split(",").map((item) => {
          if (!Object.hasOwn(dirs, item)) return item;
          mapped.add(item);
          return dirs[item];
        }).join(","),
    )
  );
  return { flags, mapped };
}

/**
 * Whether the `main.ts` of the checkout at `root` knows the flag `--name` (e.g. `web-port`, the
 * web client's port, or `redis`).
 */
async function knowsFlag(root: string, name: string): Promise<boolean> {
  try {
    return (await Deno.readTextFile(`${root}/src/server/config.ts`)).includes(`"${name}"`);
  } catch {
    return false;
  }
}

/** The info line a cluster node logs once it has joined (`src/room/cluster.ts`). */
const JOINED_LINE = /Cluster node \d+ on Redis at /;

/**
 * Starts the project's server with the limits the bench needs relaxed (`--rate 0
 * --max-per-ip 0 --max-clients 20000`) and everything else at its default, with exactly the
 * flags of `deno task start` (its cert dir being the bench's). The web client's port is off
 * (`--web-port off`, so that no two servers reach for the default 4443), unless `web` asks for
 * it: then it is a free port (`--web-port P`, in `endpoint.webPort`), found as `--port` is.
 * (Not `--web-port 0`: its port is told only by an info line of the log, and the bench runs the
 * server at `--log-level warning`, since info logs every connection and login.) A checkout from
 * before the web port gets neither flag. Where that task grants the data
 * dir `data` (history on, in SQLite, as by default), each start gets a fresh temporary data dir
 * (granted in its place and passed as `--data-dir`), removed once the server has stopped. With
 * `checkout`, starts that checkout of the project instead (an earlier version, for before/after
 * figures), as its own `deno task start` runs it (a version whose task has no `data` gets no
 * data dir). With `redis`, the server is a node of the cluster of that Redis (`--redis URL`) and
 * is ready only once it has logged that it joined (an info line: `logLevel` must let it through);
 * without, a checkout that knows `--redis` gets `--redis off`, so that a `REDIS_URL` in the
 * bench's environment cannot make it one. `logLevel` is `warning` unless given. With `cpuProf`,
 * the server runs under `deno run --cpu-prof --cpu-prof-dir=DIR` and writes a V8 CPU profile
 * (`*.cpuprofile`) into that directory when it stops.
 */
export async function startOurs(
  options: StartOptions & {
    maxClients: number;
    checkout?: string;
    name?: string;
    web?: boolean;
    redis?: string;
    logLevel?: "info" | "warning";
    cpuProf?: string;
  },
): Promise<ServerHandle> {
  const port = freePort();
  const root = (options.checkout ?? REPO_ROOT).replace(/\/$/, "");
  const hasWeb = await knowsFlag(root, "web-port");
  const hasRedis = await knowsFlag(root, "redis");
  if (options.redis !== undefined && !hasRedis) throw new Error(`${root}/main.ts has no --redis`);
  const logLevel = options.logLevel ?? "warning";
  if (options.redis !== undefined && logLevel !== "info") {
    throw new Error("A cluster node must log at info: the bench waits for its join line");
  }
  const redis = !hasRedis ? [] : ["--redis", options.redis ?? "off"];
  if (options.web && !hasWeb) throw new Error(`${root}/main.ts has no --web-port`);
  let webPort: number | undefined;
  if (options.web) {
    do webPort = freePort(); while (webPort === port);
  }
  const web = !hasWeb ? [] : ["--web-port", webPort === undefined ? "off" : String(webPort)];
  const config = `${root}/deno.json`;
  const dataDir = await Deno.makeTempDir({ prefix: "chat-bench-data-" });
  const removeData = () => Deno.remove(dataDir, { recursive: true }).catch(() => {});
  let task: TaskFlags;
  try {
    task = await startTaskFlags(config, { certs: options.certDir, data: dataDir });
  } catch (error) {
    await removeData();
    throw error;
  }
  const history = task.mapped.has("data") ? ["--data-dir", dataDir] : [];
  if (history.length === 0) await removeData();
  return spawnServer({
    name: options.name ?? "ours",
    command: Deno.execPath(),
    args: [
      "run",
      "--config",
      config,
      ...(options.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${options.cpuProf}`] : []),
      ...task.flags,
      `${root}/main.ts`,
      "--port",
      String(port),
      "--cert-dir",
      options.certDir,
      ...history,
      "--rate",
      "0",
      "--max-per-ip",
      "0",
      "--max-clients",
      String(options.maxClients),
      "--log-level",
      logLevel,
      ...web,
      ...redis,
    ],
    port,
    webPort,
    ready: options.redis !== undefined ? JOINED_LINE : undefined,
    caCert: options.caCert,
    password: options.password,
    cleanup: history.length > 0 ? removeData : undefined,
    dataDir: history.length > 0 ? dataDir : undefined,
  });
}

/** Starts `node ref-node-server.mjs PORT CERT_DIR`. */
export function startReference(options: StartOptions & { script: string }): Promise<ServerHandle> {
  const port = freePort();
  return spawnServer({
    name: "reference",
    command: "node",
    args: [options.script, String(port), options.certDir],
    port,
    caCert: options.caCert,
    password: options.password,
  });
}

/** Column names of the transport floors, by transport. */
export const FLOOR_NAMES: Record<FloorTransport, string> = {
  node: "node:tls floor",
  deno: "Deno.listenTls floor",
};

/**
 * Starts a transport floor (`floor_server.ts`) in Deno: a TLS server that completes handshakes
 * and holds the connections idle, with the permissions it needs (net, and reading the certs).
 */
export async function startFloor(
  options: StartOptions & { transport: FloorTransport },
): Promise<ServerHandle> {
  const port = freePort();
  // The same runtime as ours: the V8 flags of `deno task start` (its GC sizing) apply here too.
  const v8 = (await startTaskFlags(`${REPO_ROOT}deno.json`, { certs: options.certDir })).flags
    .filter((flag) => flag.startsWith("--v8-flags="));
  const handle = await spawnServer({
    name: FLOOR_NAMES[options.transport],
    command: Deno.execPath(),
    args: [
      "run",
      "--no-prompt",
      ...v8,
      "--allow-net",
      `--allow-read=${options.certDir}`,
      FLOOR_PATH,
      "--transport",
      options.transport,
      "--port",
      String(port),
      "--cert-dir",
      options.certDir,
    ],
    port,
    caCert: options.caCert,
    password: options.password,
  });
  handle.transportOnly = true;
  return handle;
}

/** A server the bench did not start (`--target`): never stopped, measured only if `pid` given. */
export function externalServer(endpoint: Endpoint, pid?: number): ServerHandle {
  const stop = () => Promise.resolve();
  return { name: "target", endpoint, pid, stop, [Symbol.asyncDispose]: stop };
}

/** A private `redis-server` started by {@link startRedis}. */
export interface RedisHandle {
  /** `redis://127.0.0.1:PORT`. */
  url: string;
  /** The `redis-server` process (for its CPU time). */
  pid: number;
  /** Its version, e.g. `7.0.15`. */
  version: string;
  /** Stops it and removes its directory; waits for both. Idempotent. */
  stop(): Promise<void>;
}

/** The `redis-server` the bench runs. */
const REDIS_SERVER = "redis-server";
const REDIS_START_TIMEOUT_MS = 10_000;

/** The version of `redis-server` on PATH (e.g. `7.0.15`), or null if there is none. */
export async function redisVersion(): Promise<string | null> {
  try {
    const out = await new Deno.Command(REDIS_SERVER, {
      args: ["--version"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!out.success) return null;
    return /v=(\S+)/.exec(new TextDecoder().decode(out.stdout))?.[1] ?? "unknown";
  } catch {
    return null;
  }
}

/**
 * Keeps `redis-server` (its arguments after the script's) running while its standard input is
 * open, then stops it and removes the directory `$REDIS_BENCH_DIR`: Redis and its directory go
 * away when the bench closes the pipe, and also when the bench dies without closing it.
 */
const REDIS_WRAPPER = `${REDIS_SERVER} "$@" &
pid=$!
echo "redis-pid $pid"
read _ || true
kill "$pid" 2>/dev/null
wait "$pid"
rm -rf "$REDIS_BENCH_DIR"`;

/**
 * Starts a private `redis-server` for the bench on a free loopback port, in a fresh temporary
 * directory, with no persistence (`--save '' --appendonly no`), and waits until it accepts
 * connections. It runs under a small `sh` wrapper that stops it and removes its directory once
 * the bench closes the wrapper's standard input (or exits, however it exits).
 */
export async function startRedis(): Promise<RedisHandle> {
  const version = await redisVersion();
  if (version === null) throw new Error(`${REDIS_SERVER} is not on PATH`);
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "chat-bench-redis-" });
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      REDIS_WRAPPER,
      "sh",
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--dir",
      dir,
      "--save",
      "",
      "--appendonly",
      "no",
      "--daemonize",
      "no",
    ],
    env: { REDIS_BENCH_DIR: dir },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdin = child.stdin.getWriter();
  const { output, exited, status, collecting } = watch(child);
  let pid = NaN;
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      // Closing the pipe is the wrapper's signal; it kills Redis and removes the directory.
      await stdin.close().catch(() => {});
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<void>((resolve) => timer = setTimeout(resolve, STOP_TIMEOUT_MS));
      await Promise.race([status, late]);
      clearTimeout(timer);
      if (!exited()) {
        child.kill("SIGKILL");
        if (Number.isInteger(pid)) {
          try {
            Deno.kill(pid, "SIGKILL");
          } catch {
            // Already gone.
          }
        }
      }
      await status;
      await collecting;
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      running.delete(handle);
    })();
    return stopping;
  };
  const handle = { stop };
  running.add(handle);
  const deadline = Date.now() + REDIS_START_TIMEOUT_MS;
  while (!exited() && Date.now() < deadline) {
    pid = Number(/^redis-pid (\d+)$/m.exec(output())?.[1] ?? NaN);
    if (Number.isInteger(pid) && /Ready to accept connections/.test(output())) {
      return { url: `redis://127.0.0.1:${port}`, pid, version, stop };
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await stop();
  throw new Error(`${REDIS_SERVER} did not start on port ${port}:\n${output().slice(-2000)}`);
}

/** Two (or more) of our servers serving one room through a private Redis. */
export interface ClusterHandle {
  /** The nodes, in the order they were asked for (named `node 1`, `node 2`, ...). */
  nodes: ServerHandle[];
  redis: RedisHandle;
  /** Stops the nodes, then Redis. */
  stop(): Promise<void>;
}

/**
 * Starts a private Redis ({@link startRedis}) and `nodes` of our servers with `--redis` on it
 * (as {@link startOurs} starts them, at `--log-level info`), and waits until each has logged
 * that it joined the cluster. If anything fails, stops what it started.
 */
export async function startCluster(
  options: StartOptions & { maxClients: number; nodes: number; cpuProf?: string },
): Promise<ClusterHandle> {
  const redis = await startRedis();
  const started = await Promise.allSettled(
    Array.from({ length: options.nodes }, (_, i) =>
      startOurs({
        ...options,
        name: `node ${i + 1}`,
        redis: redis.url,
        logLevel: "info",
      })),
  );
  const nodes = started.flatMap((result) => result.status === "fulfilled" ? [result.value] : []);
  const stop = async () => {
    await Promise.all(nodes.map((node) => node.stop()));
    await redis.stop();
  };
  const failed = started.find((result) => result.status === "rejected");
  if (failed) {
    await stop();
    throw (failed as PromiseRejectedResult).reason;
  }
  return { nodes, redis, stop };
}

/**
 * Starts a cluster ({@link startCluster}) beside `server` and returns `server` with it as
 * {@link ServerHandle.cluster}, stopped along with it; if the cluster cannot start, stops
 * `server` and throws.
 */
export async function withCluster(
  server: ServerHandle,
  start: () => Promise<ClusterHandle>,
): Promise<ServerHandle> {
  let cluster: ClusterHandle;
  try {
    cluster = await start();
  } catch (error) {
    await server.stop();
    throw error;
  }
  const stopServer = server.stop;
  const stop = async () => {
    await Promise.all([stopServer(), cluster.stop()]);
  };
  return { ...server, cluster, stop, [Symbol.asyncDispose]: stop };
}
