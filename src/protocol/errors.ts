/**
 * The protocol's error codes: one table that says, for each code, whether the server closes the
 * connection after sending it and what a person should be told. The server, the web client and
 * the terminal client all read this table, so a new code is added in one place.
 *
 * @module
 */

/** What the protocol says about one error code. */
export interface ErrorInfo {
  /** Whether the server closes the connection after sending this error. */
  readonly closes: boolean;
  /** A plain sentence for a person, shown by the clients before the server's own words. */
  readonly plain: string;
}

/**
 * Every error code that goes on the wire in `{"type":"error","code":…,"error":…}` frames.
 *
 * @example Does the server hang up after this error?
 * ```ts
 * import { ERRORS } from "./errors.ts";
 *
 * console.log(ERRORS.rate_limited.closes); // false: the message was dropped, the link stays
 * console.log(ERRORS.auth_timeout.closes); // true
 * ```
 */
export const ERRORS = {
  frame_too_large: { closes: true, plain: "The server refused a frame as too large" },
  empty_frame: { closes: true, plain: "The server refused an empty frame" },
  invalid_json: { closes: true, plain: "The server could not read what this client sent" },
  not_an_object: { closes: true, plain: "The server could not read what this client sent" },
  auth_required: { closes: true, plain: "The server expected a login first" },
  auth_timeout: { closes: true, plain: "Login took too long and the server gave up" },
  locked_out: {
    closes: true,
    plain: "Too many failed logins from this address; the server locked it out for a while",
  },
  server_full: { closes: true, plain: "The server is full; try again later" },
  too_many_connections: { closes: true, plain: "Too many connections from this address" },
  already_authenticated: { closes: false, plain: "Already logged in" },
  unknown_type: { closes: false, plain: "The server does not know that kind of request" },
  invalid_message: { closes: false, plain: "The server did not accept that message" },
  rate_limited: { closes: false, plain: "Message dropped: you are sending too fast" },
  shutting_down: { closes: true, plain: "The server is shutting down" },
  unavailable: {
    closes: false,
    plain: "The server cannot take messages right now; they will be resent",
  },
} as const satisfies Record<string, ErrorInfo>;

/** Error codes that go on the wire in `error` frames. */
export type ErrorCode = keyof typeof ERRORS;

/** Whether `code` is one of the protocol's error codes (a peer may send anything). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === "string" && Object.hasOwn(ERRORS, code);
}

/** A protocol violation (or refusal) that is reported to the peer as an `error` frame. */
export class ProtocolError extends Error {
  /** The wire code. */
  readonly code: ErrorCode;
  /** The `ref` of the message the error is about, if it had one. */
  readonly ref: string | undefined;

  /** An error with wire code `code` and the sentence sent to the peer. */
  constructor(code: ErrorCode, message: string, ref?: string) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
    this.ref = ref;
  }

  /** Whether the server closes the connection after reporting this error. */
  get closes(): boolean {
    return ERRORS[this.code].closes;
  }
}
