/**
 * The server's counters: what it accepted, refused, delivered and dropped. One object per server,
 * updated by the listener and its sessions, read by `ChatServer.snapshot()`.
 *
 * @module
 */
import type { ErrorCode } from "../protocol/mod.ts";

/** Counters shared by all sessions of a server. */
export interface ServerStats {
  /** TCP connections accepted (refused ones included). */
  accepted: number;
  /** Connections refused over a cap (`server_full`, `too_many_connections`, closed at once). */
  rejected: number;
  /** TLS handshakes that failed (bad client hello, wrong version, peer gone). */
  handshakeFailures: number;
  /** TLS handshakes closed for not finishing within `--handshake-timeout`. */
  handshakeTimeouts: number;
  /** Successful logins. */
  authenticated: number;
  /** Wrong passwords. */
  authFailures: number;
  /** Addresses locked out for too many wrong passwords (one per lockout begun). */
  lockouts: number;
  /** Messages accepted, stored and broadcast. */
  messages: number;
  /** Frames queued to recipients for accepted messages. */
  deliveries: number;
  /** Messages refused with `unavailable` because the history store failed. */
  refusedMessages: number;
  /** History store failures (a failed batch or read). */
  storeErrors: number;
  /** Clients dropped for holding the room back without reading (flow control). */
  stalledReaders: number;
  /** Clients dropped for accepting nothing for `--write-timeout`. */
  writeTimeouts: number;
  /** Times a sender was paused because a recipient's queue was full. */
  senderPauses: number;
  /** `error` frames sent, by code. */
  errors: Partial<Record<ErrorCode, number>>;
}
