/**
 * Shared test fixtures: a certificate pair made once per test process, an in-process server on
 * port 0, a protocol-speaking TLS test client, and a spawned `main.ts`.
 *
 * @module
 */
import { ensureCertificates } from "../src/server/certs.ts";
import type { Limits } from "../src/server/config.ts";
import { CLIENT_MAX_FRAME, encodeFrame, type JsonObject } from "../src/protocol/mod.ts";
import { type ByteSource, FrameReader } from "./_frame_reader.ts";
import { ChatServer, type ChatServerOptions } from "../src/server/server.ts";

/** The password every test server uses. */
export const PASSWORD = "correct horse battery staple";

/** A certificate pair for tests. */
export interface TestCerts {
  dir: string;
  cert: string;
  key: string;
  fingerprint: string;
}

let certs: Promise<TestCerts> | undefined;

/** A self-signed pair made once per test process, in a temp dir removed when the process ends. */
export function testCerts(): Promise<TestCerts> {
  certs ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "chat-test-certs-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const pair = await ensureCertificates({ certDir: dir, host: "127.0.0.1" });
    return { dir, cert: pair.certPem, key: pair.keyPem, fingerprint: pair.fingerprint };
  })();
  return certs;
}

/** A running in-process server that closes itself on dispose. */
export interface TestServer extends AsyncDisposable {
  server: ChatServer;
  port: number;
}

/** Starts a `ChatServer` on 127.0.0.1 port 0 with {@link PASSWORD}. */
export async function startServer(
  options: { limits?: Partial<Limits> } & Partial<ChatServerOptions> = {},
): Promise<TestServer> {
  const { cert, key } = await testCerts();
  const server = new ChatServer({
    hostname: "127.0.0.1",
    port: 0,
    cert,
    key,
    password: PASSWORD,
    ...options,
  });
  const { port } = await server.listen();
  return { server, port, [Symbol.asyncDispose]: () => server.close() };
}

/** A frame the test client received: a parsed object. */
export type Frame = JsonObject;

/** A TLS client that speaks the protocol and collects incoming frames in the background. */
export class TestClient implements AsyncDisposable {
  readonly conn: Deno.TlsConn;
  #frames: Frame[] = [];
  #waiters: (() => void)[] = [];
  #closed = false;
  #pump: Promise<void>;
  /** Why the stream ended (`eof` or an error name), once it has. */
  endReason: string | null = null;

  private constructor(conn: Deno.TlsConn) {
    this.conn = conn;
    this.#pump = this.#run();
  }

  /** Connects (and completes the TLS handshake); `cert`: the one to trust (default the test pair's). */
  static async connect(
    port: number,
    options: { hostname?: string; cert?: string } = {},
  ): Promise<TestClient> {
    const cert = options.cert ?? (await testCerts()).cert;
    const conn = await Deno.connectTls({
      hostname: options.hostname ?? "127.0.0.1",
      port,
      caCerts: [cert],
    });
    await conn.handshake();
    return new TestClient(conn);
  }

  /** Connects and logs in; asserts nothing, returns the auth reply. */
  static async login(
    port: number,
    password = PASSWORD,
    options: { hostname?: string; cert?: string } = {},
  ): Promise<{ client: TestClient; reply: Frame }> {
    const client = await TestClient.connect(port, options);
    await client.send({ type: "auth", password });
    return { client, reply: await client.recv() };
  }

  /** Whether the server closed the connection. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Frames received and not yet taken. */
  get pending(): number {
    return this.#frames.length;
  }

  /** Sends one value as a frame. */
  send(value: unknown): Promise<void> {
    return this.sendRaw(encodeFrame(value));
  }

  /** Sends raw bytes. */
  async sendRaw(bytes: Uint8Array): Promise<void> {
    let offset = 0;
    while (offset < bytes.length) offset += await this.conn.write(bytes.subarray(offset));
  }

  /** Takes the next frame, waiting up to `timeoutMs`; throws on timeout or if the stream ended. */
  async recv(timeoutMs = 5000): Promise<Frame> {
    const frame = await this.tryRecv(timeoutMs);
    if (frame === null) {
      throw new Error(
        this.#closed ? `Connection ended (${this.endReason})` : "Timed out waiting for a frame",
      );
    }
    return frame;
  }

  /** Takes the next frame, or `null` if none comes within `timeoutMs` or the stream ended. */
  async tryRecv(timeoutMs = 5000): Promise<Frame | null> {
    if (this.#frames.length === 0 && !this.#closed) await this.#wait(timeoutMs);
    return this.#frames.shift() ?? null;
  }

  /** Waits until the server closes the connection; returns whether it did within `timeoutMs`. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#closed && Date.now() < deadline) await this.#wait(deadline - Date.now());
    return this.#closed;
  }

  /** Closes the connection and waits for the reader to stop. Idempotent. */
  async close(): Promise<void> {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
    await this.#pump;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #wait(timeoutMs: number): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    const timer = setTimeout(resolve, Math.max(0, timeoutMs));
    this.#waiters.push(resolve);
    return promise.finally(() => {
      clearTimeout(timer);
      this.#waiters = this.#waiters.filter((waiter) => waiter !== resolve);
    });
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  async #run(): Promise<void> {
    const reader = new FrameReader(this.conn.readable, { maxFrame: CLIENT_MAX_FRAME });
    try {
      while (true) {
        const body = await reader.read();
        if (body === null) {
          this.endReason = "eof";
          break;
        }
        this.#frames.push(JSON.parse(new TextDecoder().decode(body)));
        this.#wake();
      }
    } catch (error) {
      this.endReason = (error as Error).name;
    } finally {
      this.#closed = true;
      this.#wake();
    }
  }
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 10 ms until it holds or `timeoutMs` passes; returns its last result. */
export async function waitFor(check: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await delay(10);
  }
  return true;
}

/** The bytes of `parts`, one after the other. */
export function concatBytes(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Encodes a 4-byte big-endian length prefix. */
export function lengthPrefix(length: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, length);
  return bytes;
}

/** A spawned `main.ts` whose output is collected; killed and awaited on dispose. */
export interface SpawnedServer extends AsyncDisposable {
  child: Deno.ChildProcess;
  /** The port from the "server started" line. */
  port: number;
  /** The web port from the "web client at" line (0 when the web client is off). */
  webPort: number;
  /** Everything printed so far on stdout and stderr. */
  output(): string;
  /** Waits for the process to exit; returns its status and full output. */
  exited(): Promise<{ code: number; output: string }>;
}

const MAIN = new URL("../main.ts", import.meta.url).pathname;

let scratchDataDir: string | undefined;

/**
 * `args` for main.ts with `--data-dir` pointing into a temp dir (removed when the test process
 * ends) unless they name one, so spawned servers never write history into the checkout.
 */
export function withDataDir(args: string[]): string[] {
  if (args.some((arg) => arg === "--data-dir" || arg.startsWith("--data-dir="))) return args;
  if (!scratchDataDir) {
    const dir = Deno.makeTempDirSync({ prefix: "chat-test-data-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    scratchDataDir = `${dir}/data`;
  }
  return [...args, "--data-dir", scratchDataDir];
}

/**
 * `args` with `--web-port off` unless they set a web port: spawned servers would otherwise all
 * want the default port 4443.
 */
export function withWebPort(args: string[]): string[] {
  if (args.some((arg) => arg === "--web-port" || arg.startsWith("--web-port="))) return args;
  return [...args, "--web-port", "off"];
}

/**
 * Reads `streams` (a child's piped stdout and stderr) to their end, handing each decoded piece of
 * text to `append` as it arrives; resolves when all of them have ended.
 */
export function pipeText(
  streams: ReadableStream<Uint8Array>[],
  append: (text: string) => void,
): Promise<void> {
  return Promise.all(streams.map(async (stream) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) append(decoder.decode(chunk, { stream: true }));
  })).then(() => {});
}

/**
 * Spawns `deno run main.ts ARGS` and waits for its "server started" line.
 *
 * @param args arguments after `main.ts`
 * @param options `env` extra environment; `permissions` replace the default `-A`
 */
export async function spawnServer(
  args: string[],
  options: { env?: Record<string, string>; permissions?: string[]; timeoutMs?: number } = {},
): Promise<SpawnedServer> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      ...(options.permissions ?? ["-A"]),
      MAIN,
      ...withDataDir(withWebPort(args)),
    ],
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const collecting = pipeText([child.stdout, child.stderr], (piece) => text += piece);
  const status = child.status;
  const exited = async () => {
    const { code } = await status;
    await collecting;
    return { code, output: text };
  };
  const started = /server started on port -> (\d+) and ip -> /;
  const web = /web client at https:\/\/\S+:(\d+)\//;
  const webOff = withWebPort(args).some((arg, i, all) =>
    arg === "off" && all[i - 1] === "--web-port"
  );
  const ready = () => started.test(text) && (webOff || web.test(text));
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  let done = false;
  status.then(() => done = true);
  while (!ready() && !done && Date.now() < deadline) await delay(20);
  const match = ready() ? started.exec(text) : null;
  const spawned: SpawnedServer = {
    child,
    port: match ? Number(match[1]) : 0,
    webPort: Number(web.exec(text)?.[1] ?? 0),
    output: () => text,
    exited,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // Already exited.
      }
      await exited();
    },
  };
  if (!match) {
    await spawned[Symbol.asyncDispose]();
    throw new Error(`Server did not start:\n${text}`);
  }
  return spawned;
}

/** Whether `command args` runs and succeeds here (used to skip tests that need a system tool). */
export function commandAvailable(command: string, args: string[]): boolean {
  try {
    return new Deno.Command(command, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

/**
 * Chunks fed to a `FrameReader` in both of its modes: `"source"` is a `read()`-style source like a
 * `Deno.Conn`, `"stream"` a `ReadableStream` of the chunks. Each read returns at most the rest of
 * the current chunk, so the splits are exactly the given ones.
 */
export function chunkInput(
  mode: "source" | "stream",
  chunks: Uint8Array[],
): ReadableStream<Uint8Array> | ByteSource {
  const queue = chunks.map((chunk) => chunk.slice());
  if (mode === "stream") {
    return new ReadableStream({
      pull(controller) {
        const chunk = queue.shift();
        if (chunk === undefined) controller.close();
        else controller.enqueue(chunk);
      },
    });
  }
  const take = (into: Uint8Array): number | null => {
    const chunk = queue.shift();
    if (chunk === undefined) return null;
    const n = Math.min(into.byteLength, chunk.length);
    into.set(chunk.subarray(0, n));
    if (n < chunk.length) queue.unshift(chunk.subarray(n));
    return n;
  };
  return { read: (buffer) => Promise.resolve(take(buffer)) };
}

/** A copy of the project (config, lock file, sources) in a temp dir, removed on dispose. */
export interface ProjectCopy extends AsyncDisposable {
  /** The copy's root: run `deno task` here. */
  dir: string;
}

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * Copies what `deno task start` and `deno task client` run (`deno.json`, `deno.lock`, `main.ts`,
 * `mod.ts`, `src/`, `web/`) into a temp dir, with the test certificate pair in its `certs/` (so nothing
 * runs openssl), so tests can run the README's commands as written without writing into the
 * checkout.
 */
export async function projectCopy(options: { certs?: boolean } = {}): Promise<ProjectCopy> {
  const dir = await Deno.makeTempDir({ prefix: "chat-project-" });
  const copyTree = async (from: string, to: string) => {
    await Deno.mkdir(to, { recursive: true });
    for await (const entry of Deno.readDir(from)) {
      if (entry.isDirectory) await copyTree(`${from}/${entry.name}`, `${to}/${entry.name}`);
      else if (entry.isFile) await Deno.copyFile(`${from}/${entry.name}`, `${to}/${entry.name}`);
    }
  };
  for (const file of ["deno.json", "deno.lock", "main.ts", "mod.ts"]) {
    await Deno.copyFile(`${ROOT}${file}`, `${dir}/${file}`);
  }
  await copyTree(`${ROOT}src`, `${dir}/src`);
  await copyTree(`${ROOT}web`, `${dir}/web`);
  if (options.certs ?? true) {
    const pair = await testCerts();
    await Deno.mkdir(`${dir}/certs`);
    await Deno.copyFile(`${pair.dir}/cert.pem`, `${dir}/certs/cert.pem`);
    await Deno.copyFile(`${pair.dir}/key.pem`, `${dir}/certs/key.pem`);
  }
  return { dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}
