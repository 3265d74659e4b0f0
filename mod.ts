/**
 * A TLS group-chat server, embeddable: {@link ChatServer} listens, authenticates clients against
 * a shared password (kept only as a SHA-256 digest) and broadcasts every message to every other
 * logged-in client, with the limits, flow control and error codes of the protocol. The wire
 * format (length-prefixed JSON frames) is exported too, for clients and tools.
 *
 * Run it from the command line with `deno task start` (see the README); import this module to
 * run it inside another program or test.
 *
 * @example Run a server on a free port and stop it
 * ```ts
 * import { ChatServer, ensureCertificates } from "./mod.ts";
 *
 * const pair = await ensureCertificates({ certDir: "certs", host: "127.0.0.1" });
 * await using server = new ChatServer({
 *   cert: pair.certPem,
 *   key: pair.keyPem,
 *   password: "s3cret",
 *   port: 0,
 * });
 * const { port } = await server.listen();
 * console.log(`listening on ${port}`);
 * // `await using` closes it at the end of the scope; or call `await server.close()`.
 * ```
 *
 * @example Keep the room's history in SQLite, as `deno task start` does
 * ```ts
 * import { ChatServer, ensureCertificates, openStore } from "./mod.ts";
 *
 * const pair = await ensureCertificates({ certDir: "certs", host: "127.0.0.1" });
 * const { store, warning } = openStore({ dataDir: "data", keep: 100_000 });
 * if (warning) console.warn(warning); // no write permission: history in memory only
 * const server = new ChatServer({
 *   cert: pair.certPem,
 *   key: pair.keyPem,
 *   password: "s3cret",
 *   history: store,
 * });
 * await server.listen();
 * // ... later: the server first, then the store it used.
 * await server.close();
 * store.close();
 * ```
 *
 * @example Reload the certificate and password without dropping anyone, and serve metrics
 * ```ts
 * import { ChatServer, ensureCertificates, MetricsServer } from "./mod.ts";
 *
 * const pair = await ensureCertificates({ certDir: "certs", host: "127.0.0.1" });
 * await using server = new ChatServer({ cert: pair.certPem, key: pair.keyPem, password: "s3cret" });
 * await server.listen();
 * // Prometheus text at http://127.0.0.1:9464/metrics; /healthz is 503 once close() begins.
 * await using metrics = new MetricsServer(server, { port: 9464 });
 * await metrics.listen();
 * // Later (main.ts does this on SIGHUP): new connections get the new pair and password; the
 * // connected clients stay. A pair that does not match throws and changes nothing.
 * const renewed = await ensureCertificates({ certDir: "certs-next", host: "127.0.0.1" });
 * const { certificateChanged, fingerprint } = await server.reload({
 *   cert: renewed.certPem,
 *   key: renewed.keyPem,
 *   password: "n3w s3cret",
 * });
 * console.log(certificateChanged, fingerprint);
 * ```
 *
 * @example Join a cluster: every server with the same Redis serves one room
 * ```ts
 * import { ChatServer, ensureCertificates } from "./mod.ts";
 *
 * const pair = await ensureCertificates({ certDir: "certs", host: "127.0.0.1" });
 * await using server = new ChatServer({
 *   cert: pair.certPem,
 *   key: pair.keyPem,
 *   password: "s3cret",
 *   port: 0,
 *   redis: { url: "redis://127.0.0.1:6379" }, // history, presence and lockout live there
 * });
 * await server.listen(); // serves at once; messages are refused with `unavailable` until Redis answers
 * console.log(server.stats().cluster); // { node, redisUp, nodes, remoteMembers }
 * ```
 *
 * @example Encode and decode frames
 * ```ts
 * import { decodeBody, encodeFrame, FrameDecoder } from "./mod.ts";
 *
 * const decoder = new FrameDecoder({ maxFrame: 65536 });
 * decoder.feed(encodeFrame({ type: "auth", password: "s3cret" }));
 * const body = decoder.next(); // the JSON bytes of the first complete frame
 * if (body) console.log(decodeBody(body).type); // "auth"
 * ```
 *
 * @module
 */
export {
  ChatServer,
  type ChatServerOptions,
  type ConnectionStates,
  type ReloadOptions,
  type ReloadResult,
  type ServerSnapshot,
} from "./src/server/server.ts";
export { MetricsServer, type MetricsServerOptions } from "./src/server/metrics.ts";
export type { ClusterStatus } from "./src/room/room.ts";
export type { ServerStats } from "./src/server/stats.ts";
export { type Asset, loadAssets, WEB_DIR } from "./src/web/gateway.ts";
export {
  type HistoryStore,
  memoryStore,
  type OpenedStore,
  openStore,
  type OpenStoreOptions,
  type RefRecord,
  sqliteStore,
  type StoredMessage,
  StoreError,
  StoreOpenError,
} from "./src/room/store.ts";
export { DEFAULT_LIMITS, type Limits } from "./src/server/config.ts";
export {
  CertError,
  type CertOptions,
  type CertPair,
  ensureCertificates,
  fingerprintOf,
} from "./src/server/certs.ts";
export { PasswordVerifier } from "./src/server/password.ts";
export { formatFingerprint } from "./src/common/fingerprint.ts";
export {
  CLIENT_MAX_FRAME,
  decodeBody,
  DEFAULT_MAX_FRAME,
  encodeFrame,
  type ErrorCode,
  type ErrorInfo,
  ERRORS,
  FrameDecoder,
  HEADER_SIZE,
  isErrorCode,
  type JsonObject,
  ProtocolError,
} from "./src/protocol/mod.ts";
