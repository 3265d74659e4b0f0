/**
 * Watches a server process and one of its connections while a scenario runs, by sampling
 * `/proc/<pid>/status` and `/proc/net/tcp` (one `cat` per sample): the server's peak RSS, and
 * when the server let go of the connection (its side of the socket left `ESTABLISHED` or was
 * orphaned). The client's side cannot tell: a server's FIN waits behind the data a stalled reader
 * never reads.
 *
 * @module
 */
import { readProc, statusBytes } from "./servers.ts";

/** One socket of `/proc/net/tcp` or `/proc/net/tcp6`. */
export interface TcpSocket {
  localPort: number;
  remotePort: number;
  /** Kernel state number: 1 is `ESTABLISHED`. */
  state: number;
  /** Bytes sent and not yet acknowledged, or not yet sent. */
  txQueue: number;
  /** Bytes received and not yet read by the application. */
  rxQueue: number;
  /** Socket inode; 0 once no process holds the socket (orphaned, `TIME_WAIT`). */
  inode: number;
}

const TCP_LINE =
  /^\s*\d+:\s+[0-9A-F]+:([0-9A-F]{4})\s+[0-9A-F]+:([0-9A-F]{4})\s+([0-9A-F]{2})\s+([0-9A-F]{8}):([0-9A-F]{8})\s+\S+\s+\S+\s+\d+\s+\d+\s+(\d+)/gm;
const ESTABLISHED = 1;

/** The sockets listed in a `/proc/net/tcp{,6}` text (other lines are ignored). */
export function parseTcpTable(text: string): TcpSocket[] {
  return [...text.matchAll(TCP_LINE)].map((m) => ({
    localPort: parseInt(m[1], 16),
    remotePort: parseInt(m[2], 16),
    state: parseInt(m[3], 16),
    txQueue: parseInt(m[4], 16),
    rxQueue: parseInt(m[5], 16),
    inode: Number(m[6]),
  }));
}

/** What to watch. */
export interface WatchOptions {
  /** The server process; without it, RSS is not measured. */
  pid?: number;
  /** The server's listening port and the watched client's local port (both on this host). */
  serverPort: number;
  clientPort: number;
  /** Whether the connection is over IPv6 (listed in `/proc/net/tcp6`, not `/proc/net/tcp`). */
  ipv6?: boolean;
  /** Time between samples, ms. */
  intervalMs: number;
}

/** What a {@link ServerWatch} saw. */
export interface WatchResult {
  /** Peak RSS while watching minus RSS at {@link ServerWatch.begin}, bytes; NaN without a pid. */
  rssGrowth: number;
  /**
   * Ms from the `startMs` given to {@link ServerWatch.run} until a sample found that the server
   * had let go of the connection: `Infinity` if it never did, NaN if the socket was not found.
   */
  closedAfterMs: number;
  /**
   * Most bytes seen queued for the connection in the kernel (the server's send queue, orphaned
   * or not, plus the client's receive queue).
   */
  kernelQueued: number;
  /** Why sampling stopped early, if it did. */
  error?: string;
}

/** Samples a server's RSS and one connection's state until stopped. */
export class ServerWatch {
  #options: WatchOptions;
  #paths: string[];
  #baseRss = NaN;
  #baseHwm = NaN;
  #peakRss = NaN;
  #found = false;
  #closedAt = NaN;
  #startMs = NaN;
  #kernelQueued = 0;
  #error: string | undefined;
  #stopped = false;
  #loop: Promise<void> = Promise.resolve();
  #wake: (() => void) | null = null;

  constructor(options: WatchOptions) {
    this.#options = options;
    this.#paths = [
      ...(options.pid === undefined ? [] : [`/proc/${options.pid}/status`]),
      options.ipv6 ? "/proc/net/tcp6" : "/proc/net/tcp",
    ];
  }

  /** Takes the baseline sample: RSS, and whether the connection is there to watch. */
  async begin(): Promise<void> {
    const status = await this.#sample();
    if (status !== null) {
      this.#baseRss = statusBytes(status, "VmRSS");
      this.#baseHwm = statusBytes(status, "VmHWM");
    }
  }

  /** Samples in the background from now on; `startMs` is when the scenario started sending. */
  run(startMs: number): void {
    this.#startMs = startMs;
    this.#loop = (async () => {
      while (!this.#stopped) {
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
          setTimeout(resolve, this.#options.intervalMs);
        });
        if (this.#stopped) break;
        try {
          await this.#sample();
        } catch (error) {
          this.#error = (error as Error).message;
          break;
        }
      }
    })();
  }

  /** Stops sampling, takes a last sample and returns what was seen. */
  async stop(): Promise<WatchResult> {
    this.#stopped = true;
    this.#wake?.();
    await this.#loop;
    let status: string | null = null;
    if (this.#error === undefined) {
      try {
        status = await this.#sample();
      } catch (error) {
        this.#error = (error as Error).message;
      }
    }
    let peak = this.#peakRss;
    // VmHWM is the process's all-time peak: if it rose while watching, it is this run's peak,
    // which samples taken every interval may have missed.
    if (status !== null) {
      const hwm = statusBytes(status, "VmHWM");
      if (hwm > this.#baseHwm) peak = Math.max(peak, hwm);
    }
    return {
      rssGrowth: peak - this.#baseRss,
      closedAfterMs: !this.#found
        ? NaN
        : Number.isNaN(this.#closedAt)
        ? Infinity
        : this.#closedAt - this.#startMs,
      kernelQueued: this.#kernelQueued,
      error: this.#error,
    };
  }

  /** One sample; returns the status text (null without a pid). */
  async #sample(): Promise<string | null> {
    const text = await readProc(...this.#paths);
    const now = performance.now();
    const { pid, serverPort, clientPort } = this.#options;
    let status: string | null = null;
    if (pid !== undefined) {
      status = text;
      const rss = statusBytes(text, "VmRSS");
      if (!(rss <= this.#peakRss)) this.#peakRss = rss;
    }
    const sockets = parseTcpTable(text);
    const server = sockets.find((s) => s.localPort === serverPort && s.remotePort === clientPort);
    const client = sockets.find((s) => s.localPort === clientPort && s.remotePort === serverPort);
    if (Number.isNaN(this.#startMs)) {
      // The baseline: watch only a connection the server holds.
      this.#found = server !== undefined && server.state === ESTABLISHED && server.inode !== 0;
      return status;
    }
    if (!this.#found) return status;
    // Once the server let go, its orphaned side may still hold the data it could not send.
    const queued = (server?.txQueue ?? 0) + (client?.rxQueue ?? 0);
    if (queued > this.#kernelQueued) this.#kernelQueued = queued;
    const held = server !== undefined && server.state === ESTABLISHED && server.inode !== 0;
    if (!held && Number.isNaN(this.#closedAt)) this.#closedAt = now;
    return status;
  }
}
