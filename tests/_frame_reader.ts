/**
 * A pull-style frame reader for tests and load generators: `await reader.read()` returns the next
 * frame body from a byte stream (a `ReadableStream`, e.g. `Deno.TlsConn.readable`) or from a
 * `read()`-style source (a `Deno.Conn`). It is a thin loop over the product's own
 * {@link FrameDecoder}, so tests exercise the same decoder as the server.
 *
 * @module
 */
import { DEFAULT_MAX_FRAME, FrameDecoder } from "../src/protocol/mod.ts";

const NO_BYTES = new Uint8Array(0);

/** Reads bytes into a buffer and resolves with the count, or `null` at the end (as `Deno.Conn`). */
export interface ByteSource {
  read(buffer: Uint8Array): Promise<number | null>;
}

/** Frame bodies from a byte stream, one `read()` at a time. */
export class FrameReader {
  #decoder: FrameDecoder;
  #frames: Uint8Array[] = [];
  #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  #source: ByteSource | null = null;
  #buffer = new Uint8Array(16 * 1024);

  constructor(
    source: ReadableStream<Uint8Array> | ByteSource,
    options: { maxFrame?: number } = {},
  ) {
    if (source instanceof ReadableStream) this.#reader = source.getReader();
    else this.#source = source;
    this.#decoder = new FrameDecoder({ maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME });
  }

  /**
   * Returns the next frame body (a copy), or `null` once the stream ends cleanly between frames.
   *
   * @throws {ProtocolError} on a bad length prefix.
   * @throws {Deno.errors.UnexpectedEof} if the stream ends inside a frame.
   */
  async read(): Promise<Uint8Array | null> {
    while (this.#frames.length === 0) {
      // A bad length prefix that followed good frames in one chunk is reported here.
      this.#decoder.push(NO_BYTES);
      const chunk = await this.#pull();
      if (chunk === null) {
        const pending = this.#decoder.buffered;
        if (pending === 0) return null;
        throw new Deno.errors.UnexpectedEof(
          `Connection closed inside a frame (${pending} bytes pending)`,
        );
      }
      this.#frames.push(...this.#decoder.push(chunk));
    }
    return this.#frames.shift()!;
  }

  async #pull(): Promise<Uint8Array | null> {
    if (this.#reader) {
      const { value, done } = await this.#reader.read();
      return done ? null : value;
    }
    const count = await this.#source!.read(this.#buffer);
    return count === null ? null : this.#buffer.subarray(0, count);
  }

  /** Cancels the underlying stream and releases the reader. Safe to call more than once. */
  async cancel(): Promise<void> {
    try {
      await this.#reader?.cancel();
    } catch {
      // The stream may already be closed or errored.
    }
  }
}
