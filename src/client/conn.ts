/**
 * One client connection to the chat server: TLS through `node:tls` (so the peer certificate can be
 * read), fingerprint check, then login. The password is written only after the certificate
 * matched the pin (when one is given). A login that asks for version 2 features also waits
 * briefly for the server's `welcome`, which tells a version 2 server from an older one.
 *
 * @module
 */

import tls from "node:tls";
import { isIP } from "node:net";
import {
  CLIENT_MAX_FRAME,
  decodeBody,
  encodeFrame,
  ERRORS,
  FrameDecoder,
  isErrorCode,
  type JsonObject,
} from "../protocol/mod.ts";
import { ClientError, EXIT_AUTH, EXIT_CONNECT, EXIT_FINGERPRINT } from "./exit.ts";
import { fingerprintOfDer, formatFingerprint } from "../common/fingerprint.ts";
import { formatError, sanitize } from "./format.ts";
import { type Hello, parseWelcome, type Welcome } from "./v2.ts";

/** Default time allowed for TCP connect, TLS handshake and login together, milliseconds. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** Idle time before TCP keepalive probes start, milliseconds. */
const KEEPALIVE_MS = 30_000;
/** Time a graceful close may take before the socket is destroyed, milliseconds. */
const END_TIMEOUT_MS = 2_000;
/**
 * How long after a successful login to wait for `welcome` before taking the server for one
 * without version 2, milliseconds. A version 2 server sends it right after `auth_result`; an
 * older one sends nothing, so this is the delay a login to an older server pays.
 */
export const WELCOME_WAIT_MS = 1_000;

/** Options of {@link connect}. */
export interface ConnectOptions {
  host: string;
  port: number;
  password: string;
  /** Expected fingerprint (normalised hex); without it any certificate is accepted. */
  pin?: string;
  /** Limit for connect + handshake + login, milliseconds. */
  timeoutMs?: number;
  /** Called with the certificate's fingerprint after the handshake, before the pin check. */
  onFingerprint?: (fingerprint: string) => void;
  /** Aborts the attempt (the promise then rejects with a retryable `EXIT_CONNECT` error). */
  signal?: AbortSignal;
  /** Version 2 fields added to the auth frame; without them the login is the seed's. */
  hello?: Hello;
  /** See {@link WELCOME_WAIT_MS}. */
  welcomeWaitMs?: number;
}

/** What a {@link Connection} reports once logged in. */
export interface ConnectionHandlers {
  /** Every frame received, in order, starting with the `auth_result` that logged in. */
  onFrame(frame: JsonObject): void;
  /** The connection is gone; `reason` says why in plain words. */
  onClose(reason: string): void;
}

/** A logged-in connection. Frames are held back until {@link Connection.listen} is called. */
export class Connection {
  /** Fingerprint of the server certificate (lowercase hex). */
  fingerprint = "";
  /** The server's `welcome`: set once one came (a version 2 server); none from older servers. */
  welcome?: Welcome;
  #socket: tls.TLSSocket;
  #decoder = new FrameDecoder({ maxFrame: CLIENT_MAX_FRAME });
  #inbox: JsonObject[] = [];
  #handlers?: ConnectionHandlers;
  #wake?: () => void;
  #error?: Error;
  #closed = false;
  /** The server announced it is closing this connection (an error with a closing code). */
  #closing = false;
  #whenClosed: Promise<void>;

  constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    socket.on("data", (chunk: Uint8Array) => this.#onData(chunk));
    socket.on("error", (error: Error) => this.#error ??= error);
    this.#whenClosed = new Promise((resolve) => {
      socket.on("close", () => {
        this.#closed = true;
        this.#wakeUp();
        this.#handlers?.onClose(this.closeReason);
        resolve();
      });
    });
  }

  /** Whether the socket has closed, or the server announced that it is closing it. */
  get closed(): boolean {
    return this.#closed || this.#closing;
  }

  /** Why the connection failed or closed, in plain words. */
  get closeReason(): string {
    return this.#error ? this.#error.message : "the server closed the connection";
  }

  /** Starts delivering frames (first the ones held back) and the close notice. */
  listen(handlers: ConnectionHandlers): void {
    this.#handlers = handlers;
    for (const frame of this.#inbox.splice(0)) handlers.onFrame(frame);
    if (this.#closed) handlers.onClose(this.closeReason);
  }

  /** Sends one frame; resolves once it is handed to the operating system. */
  send(frame: JsonObject): Promise<void> {
    if (this.closed || this.#socket.destroyed) {
      return Promise.reject(new Error("Cannot send: not connected"));
    }
    return new Promise((resolve, reject) => {
      this.#socket.write(encodeFrame(frame), (error) => error ? reject(error) : resolve());
    });
  }

  /** Ends the connection gracefully (pending writes go first); destroys it if that stalls. */
  async end(): Promise<void> {
    if (!this.#closed) {
      this.#socket.end();
      const timer = setTimeout(() => this.#socket.destroy(), END_TIMEOUT_MS);
      await this.#whenClosed;
      clearTimeout(timer);
    }
  }

  /** Closes the connection at once and waits until it is closed. */
  async destroy(error?: Error): Promise<void> {
    if (error) this.#error ??= error;
    this.#socket.destroy();
    await this.#whenClosed;
  }

  /** Waits for the TLS handshake. */
  handshake(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(this.#error ?? new Error("connection closed"));
      this.#socket.once("secureConnect", resolve);
      this.#socket.once("close", () => reject(this.#error ?? new Error("connection closed")));
    });
  }

  /** The DER bytes of the server certificate, if it sent one. */
  peerCertificate(): Uint8Array | undefined {
    const raw = this.#socket.getPeerCertificate()?.raw;
    return raw && raw.length > 0 ? raw : undefined;
  }

  /**
   * Returns frame number `seen` received before {@link listen} (kept for delivery), or
   * `undefined` once closed or after `timeoutMs`.
   */
  async nextFrame(seen: number, timeoutMs = Infinity): Promise<JsonObject | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.#inbox.length <= seen) {
      const left = deadline - Date.now();
      if (this.#closed || left <= 0) return undefined;
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        if (Number.isFinite(left)) timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
    return this.#inbox[seen];
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #onData(chunk: Uint8Array): void {
    let frames: JsonObject[];
    try {
      frames = this.#decoder.push(chunk).map(decodeBody);
    } catch (error) {
      this.#error ??= new Error(`the server sent a bad frame: ${(error as Error).message}`);
      this.#socket.destroy();
      return;
    }
    for (const frame of frames) {
      if (frame.type === "error" && isErrorCode(frame.code) && ERRORS[frame.code].closes) {
        this.#closing = true;
      }
      if (this.#handlers) this.#handlers.onFrame(frame);
      else this.#inbox.push(frame);
    }
    this.#wakeUp();
  }
}

/**
 * Connects, checks the certificate against `options.pin`, and logs in.
 *
 * @throws {ClientError} `EXIT_FINGERPRINT` on a pin mismatch (nothing was sent), `EXIT_AUTH` if
 * the password is refused or the address locked out, `EXIT_CONNECT` otherwise (`retryable` when
 * trying later may help).
 */
export async function connect(options: ConnectOptions): Promise<Connection> {
  const { host, port } = options;
  const where = `${host}:${port}`;
  const timeoutMs = options.timeoutMs ?? CONNECT_TIMEOUT_MS;
  const socket = tls.connect({
    host,
    port,
    rejectUnauthorized: false,
    servername: isIP(host) ? undefined : host,
  });
  // Notice a silently vanished server (cable pulled, NAT timeout) so the link can reconnect.
  socket.setKeepAlive(true, KEEPALIVE_MS);
  const conn = new Connection(socket);
  const timer = setTimeout(
    () => conn.destroy(new Error(`timed out after ${timeoutMs / 1000} s`)),
    timeoutMs,
  );
  const abort = () => conn.destroy(new Error("cancelled"));
  options.signal?.addEventListener("abort", abort, { once: true });
  if (options.signal?.aborted) abort();
  try {
    try {
      await conn.handshake();
    } catch (error) {
      throw new ClientError(
        EXIT_CONNECT,
        `Cannot connect to ${where}: ${(error as Error).message}`,
        {
          retryable: true,
        },
      );
    }
    await checkPin(conn, options);
    await conn.send({ type: "auth", password: options.password, ...options.hello })
      .catch(() => {});
    const seen = await login(conn, where);
    if (options.hello?.features) {
      // Whatever comes next (or nothing, from an older server) is left for delivery.
      const next = await conn.nextFrame(seen + 1, options.welcomeWaitMs ?? WELCOME_WAIT_MS);
      if (next) conn.welcome = parseWelcome(next);
    }
    return conn;
  } catch (error) {
    await conn.destroy();
    throw error;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", abort);
  }
}

async function checkPin(conn: Connection, options: ConnectOptions): Promise<void> {
  const der = conn.peerCertificate();
  if (!der) {
    throw new ClientError(
      options.pin ? EXIT_FINGERPRINT : EXIT_CONNECT,
      "Server sent no certificate; the password was not sent",
    );
  }
  conn.fingerprint = await fingerprintOfDer(der);
  options.onFingerprint?.(conn.fingerprint);
  if (options.pin && options.pin !== conn.fingerprint) {
    throw new ClientError(
      EXIT_FINGERPRINT,
      [
        "Server certificate fingerprint does not match the pinned one; the password was not sent",
        `  expected: ${formatFingerprint(options.pin)}`,
        `  actual:   ${formatFingerprint(conn.fingerprint)}`,
        "If the server's certificate was replaced on purpose, pin the new fingerprint from its",
        "server_fingerprint.txt; otherwise someone may be intercepting the connection.",
      ].join("\n"),
    );
  }
}

/** Waits for the login's answer; returns the index of the `auth_result` that accepted it. */
async function login(conn: Connection, where: string): Promise<number> {
  for (let seen = 0;; seen++) {
    const frame = await conn.nextFrame(seen);
    if (!frame) {
      throw new ClientError(
        EXIT_CONNECT,
        `Cannot log in to ${where}: ${conn.closeReason} before answering the login`,
        { retryable: true },
      );
    }
    if (frame.type === "auth_result") {
      if (frame.success === true) return seen;
      const reason = typeof frame.error === "string" ? ` (${sanitize(frame.error)})` : "";
      throw new ClientError(EXIT_AUTH, `Password refused by the server${reason}`);
    }
    if (frame.type === "error") {
      if (frame.code === "locked_out") {
        throw new ClientError(EXIT_AUTH, `Cannot log in: ${formatError(frame)}`, {
          retryable: true,
        });
      }
      throw new ClientError(EXIT_CONNECT, `Cannot log in to ${where}: ${formatError(frame)}`, {
        retryable: true,
      });
    }
    // Anything else before the auth result is ignored, as seed clients do.
  }
}
