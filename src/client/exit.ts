/**
 * Exit codes of the chat client and the error that carries one.
 *
 * @module
 */

/** Normal end: `/quit`, Ctrl-D, Ctrl-C in the chat, or stdin ended in scripted mode. */
export const EXIT_OK = 0;
/** Usage or configuration error (bad flag, bad fingerprint, no password and no terminal). */
export const EXIT_USAGE = 1;
/** The connection failed (cannot connect, TLS or login failed for a reason other than below). */
export const EXIT_CONNECT = 2;
/** The server certificate does not match the pinned fingerprint; the password was not sent. */
export const EXIT_FINGERPRINT = 3;
/** The server refused the password, or locked this address out. */
export const EXIT_AUTH = 4;
/**
 * Scripted mode with a version 2 server: some messages were not confirmed (acked) by the server
 * in time, or it refused them, so they may not have reached anyone.
 */
export const EXIT_UNCONFIRMED = 5;
/** Interrupted (Ctrl-C) at the password prompt, before connecting. */
export const EXIT_INTERRUPTED = 130;

/** An error that ends the client with a given exit code; its message is shown to the user. */
export class ClientError extends Error {
  /** Process exit code for this error. */
  readonly exitCode: number;
  /** Whether trying again later may succeed (used by reconnects). */
  readonly retryable: boolean;
  constructor(exitCode: number, message: string, options: { retryable?: boolean } = {}) {
    super(message);
    this.name = "ClientError";
    this.exitCode = exitCode;
    this.retryable = options.retryable ?? false;
  }
}
