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
  const stat = await readProc(`/proc/${pid}/stat`);
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

/** Servers started and not yet stopped, for {@link stopAll}. */
const running = new Set<ServerHandle>();

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
  let output = "";
  const decoder = new TextDecoder();
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      output = (output + decoder.decode(chunk, { stream: true })).slice(-OUTPUT_TAIL);
    }
  };
  const collecting = Promise.all([collect(child.stdout), collect(child.stderr)]);
  let exited = false;
  const status = child.status.then((status) => {
    exited = true;
    return status;
  });
  let stopping: Promise<void> | null = null;
  const stop = () => {
    stopping ??= (async () => {
      if (!exited) child.kill("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<void>((resolve) => timer = setTimeout(resolve, STOP_TIMEOUT_MS));
      await Promise.race([status, late]);
      clearTimeout(timer);
      if (!exited) child.kill("SIGKILL");
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
  while (!exited && Date.now() < deadline) {
    if (
      await accepts(options.port) &&
      (options.webPort === undefined || await accepts(options.webPort))
    ) return handle;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await stop();
  throw new Error(
    `${options.name} server did not start on port ${options.port}:\n${output.slice(-2000)}`,
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

/** Whether the `main.ts` of the checkout at `root` knows `--web-port` (the web client's port). */
async function knowsWebPort(root: string): Promise<boolean> {
  try {
    return (await Deno.readTextFile(`${root}/src/server/config.ts`)).includes(`"web-port"`);
  } catch {
    return false;
  }
}

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
 * data dir).
 */
export async function startOurs(
  options: StartOptions & { maxClients: number; checkout?: string; name?: string; web?: boolean },
): Promise<ServerHandle> {
  const port = freePort();
  const root = (options.checkout ?? REPO_ROOT).replace(/\/$/, "");
  const hasWeb = await knowsWebPort(root);
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
      "warning",
      ...web,
    ],
    port,
    webPort,
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
