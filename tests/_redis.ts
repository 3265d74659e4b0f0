/**
 * A private `redis-server` for one test: on a free loopback port, in a temp dir, with an
 * append-only file synced on every write (so a restart keeps what was acked). Stopped, killed
 * and restarted by the test; removed on dispose.
 */
import { delay, pipeText } from "./_helpers.ts";

export const REDIS_SERVER = "redis-server";

/** Whether `redis-server` runs here (`.ci/run` installs Debian's when it is missing). */
export function hasRedis(): boolean {
  try {
    return new Deno.Command(REDIS_SERVER, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** A running (or stopped) private Redis. */
export class TestRedis implements AsyncDisposable {
  readonly port: number;
  readonly dir: string;
  #child: Deno.ChildProcess | null = null;
  #done: Promise<void> = Promise.resolve();
  #output = "";
  #extra: string[];

  private constructor(port: number, dir: string, extra: string[]) {
    this.port = port;
    this.dir = dir;
    this.#extra = extra;
  }

  /** Starts a fresh Redis (`extra`: more redis-server arguments) and waits until it is ready. */
  static async start(extra: string[] = []): Promise<TestRedis> {
    const dir = await Deno.makeTempDir({ prefix: "chat-redis-" });
    const redis = new TestRedis(freePort(), dir, extra);
    await redis.restart();
    return redis;
  }

  /** `redis://127.0.0.1:PORT`. */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** Whether it is running. */
  get running(): boolean {
    return this.#child !== null;
  }

  /** What it printed. */
  get output(): string {
    return this.#output;
  }

  /** Starts it again on the same port and dir (its data is kept). */
  async restart(): Promise<void> {
    if (this.#child) throw new Error("Redis is running");
    const child = new Deno.Command(REDIS_SERVER, {
      args: [
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--dir",
        this.dir,
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--daemonize",
        "no",
        ...this.#extra,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    const collecting = pipeText([child.stdout, child.stderr], (text) => this.#output += text);
    this.#done = Promise.all([child.status, collecting]).then(() => {});
    const deadline = Date.now() + 10_000;
    while (!/Ready to accept connections/.test(this.#output)) {
      if (Date.now() > deadline) throw new Error(`redis-server did not start:\n${this.#output}`);
      await delay(20);
    }
  }

  /** Stops it: `SIGKILL` (a crash) or `SIGTERM` (a clean stop). */
  async stop(signal: "SIGKILL" | "SIGTERM" = "SIGKILL"): Promise<void> {
    const child = this.#child;
    if (!child) return;
    try {
      child.kill(signal);
    } catch {
      // Already exited.
    }
    await this.#done;
    this.#child = null;
  }

  /** Runs `redis-cli -p PORT ARGS` and returns its output. */
  async cli(...args: string[]): Promise<string> {
    const { stdout } = await new Deno.Command("redis-cli", {
      args: ["-p", String(this.port), ...args],
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(stdout).trim();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
