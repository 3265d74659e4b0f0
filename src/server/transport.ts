/**
 * The seam between a session and its connection: the session takes frame bodies from a
 * {@link Transport} and hands it encoded frames, and never knows whether they travel as
 * length-prefixed frames on a TLS stream ({@link StreamTransport}) or as WebSocket messages
 * (`src/web/websocket.ts`). Every limit, error code and state of a session is therefore the same
 * for both kinds of client.
 *
 * @module
 */
import type { TLSSocket } from "node:tls";
import { FrameDecoder } from "../protocol/mod.ts";
import { startReading, stopReading } from "./backpressure.ts";
import { hasDirectWrites, writeDirect } from "./direct_write.ts";
import type { FrameWriter } from "./outbox.ts";

/** What a transport tells the session it carries. */
export interface TransportHandler {
  /** Bytes arrived: frames may be ready for {@link Transport.next}. */
  onReceived(): void;
  /** The peer finished sending (frames already received are still handled). */
  onEnded(): void;
  /** The connection failed; `onClosed` follows. */
  onError(error: Error): void;
  /** The connection is closed and released. Called once. */
  onClosed(): void;
}

/**
 * One client connection as a session sees it. `write` takes frames as the outbox queues them:
 * one or more complete length-prefixed frames back to back (see `src/protocol/frames.ts`); a
 * transport that carries messages rather than a byte stream converts them.
 */
export interface Transport extends FrameWriter {
  /**
   * The next complete frame body received, or `null` until more arrives.
   *
   * @throws {ProtocolError} for a frame the protocol refuses (too large, empty, not text); the
   * transport then keeps throwing it.
   */
  next(): Uint8Array | null;
  /** Whether part of a frame has arrived and the rest has not. */
  readonly partial: boolean;
  /** Stops reading from the peer, so that its writes back up to it (TCP backpressure). */
  pause(): void;
  /** Reads from the peer again after {@link Transport.pause}. */
  resume(): void;
  /** Closes in good order after what was written (the caller drains its outbox first). */
  end(): void;
  /** Closes at once. Idempotent. */
  destroy(): void;
  /** Starts delivering events to `handler`. Called once, by the session. */
  attach(handler: TransportHandler): void;
}

/** Where a socket keeps its transport, for the listeners every transport shares. */
const TRANSPORT = Symbol("transport");

/** A socket with its transport attached. */
type TransportSocket = TLSSocket & { [TRANSPORT]: SocketTransport };

/**
 * What every transport on a `node:tls` socket shares: the socket's events, reading stopped and
 * restarted at the TCP level, and closing. Its socket listeners are shared by every connection
 * (an idle connection's memory matters at ten thousand of them); a subclass decodes what arrives
 * ({@link SocketTransport.received}) and encodes what it writes.
 */
export abstract class SocketTransport implements Transport {
  /** The connection's socket, its handshake completed. */
  protected readonly socket: TLSSocket;
  #handler: TransportHandler | null = null;

  constructor(socket: TLSSocket) {
    this.socket = socket;
  }

  /** Whom the socket's events go to (set by {@link SocketTransport.attach}). */
  protected get handler(): TransportHandler {
    return this.#handler!;
  }

  attach(handler: TransportHandler): void {
    this.#handler = handler;
    const socket = this.socket as TransportSocket;
    socket[TRANSPORT] = this;
    socket.on("data", SocketTransport.#onData);
    socket.on("end", SocketTransport.#onEnd);
    socket.on("error", SocketTransport.#onError);
    socket.on("close", SocketTransport.#onClose);
  }

  static #onData(this: TransportSocket, chunk: Uint8Array): void {
    this[TRANSPORT].received(chunk);
  }

  static #onEnd(this: TransportSocket): void {
    this[TRANSPORT].#handler!.onEnded();
  }

  static #onError(this: TransportSocket, error: Error): void {
    this[TRANSPORT].#handler!.onError(error);
  }

  static #onClose(this: TransportSocket): void {
    this[TRANSPORT].#handler!.onClosed();
  }

  /** Takes a chunk from the socket and tells the handler what it completed. */
  protected abstract received(chunk: Uint8Array): void;

  abstract next(): Uint8Array | null;
  abstract get partial(): boolean;
  abstract write(data: Uint8Array, done: (error?: Error | null) => void): void;

  pause(): void {
    stopReading(this.socket);
  }

  resume(): void {
    startReading(this.socket);
  }

  end(): void {
    const socket = this.socket;
    // Once the last frames are in the kernel, close (it sends them, then FIN): waiting for the
    // peer to close its side would keep a socket for nothing, and let its writes go unread.
    if (!socket.destroyed) socket.end(() => socket.destroy());
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** The TLS protocol's transport: frames are a 4-byte length and a JSON body on the stream. */
export class StreamTransport extends SocketTransport {
  #decoder: FrameDecoder;
  /** Whether writes go to the TLS handle directly, below `node:stream` (`direct_write.ts`). */
  #direct: boolean;

  /** @param socket a `node:tls` socket whose handshake has completed */
  constructor(socket: TLSSocket, options: { maxFrame: number }) {
    super(socket);
    this.#decoder = new FrameDecoder({ maxFrame: options.maxFrame });
    this.#direct = hasDirectWrites(socket);
  }

  protected received(chunk: Uint8Array): void {
    this.#decoder.feed(chunk);
    this.handler.onReceived();
  }

  next(): Uint8Array | null {
    return this.#decoder.next();
  }

  get partial(): boolean {
    return this.#decoder.buffered > 0;
  }

  write(data: Uint8Array, done: (error?: Error | null) => void): void {
    // The outbox is the only writer, one write at a time, and the session ends the socket only
    // once it has drained: what writing to the handle directly asks for.
    if (this.#direct) writeDirect(this.socket, data, done);
    else this.socket.write(data, done);
  }
}
