/**
 * The messages of the protocol: validation of what clients send (`auth`, `message`) and the
 * encoding of what the server sends, byte for byte as the seed did where the seed defined it.
 *
 * @module
 */
import { type ErrorCode, ProtocolError } from "./errors.ts";
import { encodeFrame, encodeJsonFrame } from "./frames.ts";

/** Longest `sender` name, in characters (code points). */
export const MAX_SENDER_CHARS = 64;
/** `sender` used when a message carries none. */
export const DEFAULT_SENDER = "anon";

/** Any JSON object received from a peer. */
export type JsonObject = Record<string, unknown>;

/** A chat message accepted from a client, after validation. */
export interface ChatMessage {
  content: string;
  sender: string;
}

const DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
// deno-lint-ignore no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;

/** The seed's exact reply to a good password. */
export const AUTH_OK_FRAME: Uint8Array = encodeJsonFrame(
  '{"success":true,"type":"auth_result"}',
);
/** The seed's exact reply to a wrong password. */
export const AUTH_FAILED_FRAME: Uint8Array = encodeJsonFrame(
  '{"error":"Invalid password","success":false,"type":"auth_result"}',
);

/**
 * Encodes an `error` frame; `ref` (for clients that asked for ids) names the message it is about.
 */
export function encodeError(code: ErrorCode, message: string, ref?: string): Uint8Array {
  return encodeFrame(
    ref === undefined ? { type: "error", code, error: message } : {
      type: "error",
      code,
      error: message,
      ref,
    },
  );
}

/**
 * Encodes a broadcast exactly as the seed did (keys in sorted order). Called once per accepted
 * message; the same bytes are queued to every recipient.
 */
export function encodeBroadcast(message: ChatMessage, senderIp: string): Uint8Array {
  return encodeJsonFrame(broadcastJson(message, senderIp));
}

/**
 * The JSON text of a seed broadcast: byte for byte what `JSON.stringify` gives for the object
 * with these keys in this order, written directly (one string, no object) because it is built
 * for every message.
 */
export function broadcastJson(message: ChatMessage, senderIp: string): string {
  return `{"content":${JSON.stringify(message.content)},"sender":${
    JSON.stringify(message.sender)
  },"sender_ip":${JSON.stringify(senderIp)},"type":"message"}`;
}

/**
 * Decodes a frame body into a JSON object.
 *
 * @throws {ProtocolError} `invalid_json` for bad UTF-8 or JSON, `not_an_object` otherwise.
 */
export function decodeBody(body: Uint8Array): JsonObject {
  let value: unknown;
  try {
    value = JSON.parse(DECODER.decode(body));
  } catch {
    throw new ProtocolError("invalid_json", "Cannot parse frame: body is not valid UTF-8 JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ProtocolError("not_an_object", "Cannot accept frame: body is not a JSON object");
  }
  return value as JsonObject;
}

/** Features a client may ask for in its auth frame (protocol version 2), in canonical order. */
export const FEATURES = ["ids", "presence", "history"] as const;
/** One version-2 feature. */
export type Feature = typeof FEATURES[number];
/** Bit of {@link AuthRequest.features}: message frames carry `id` and `ts`; `ref`s are acked. */
export const WANTS_IDS = 1;
/** Bit of {@link AuthRequest.features}: `joined` / `left` frames and `who`. */
export const WANTS_PRESENCE = 2;
/** Bit of {@link AuthRequest.features}: a replay after `welcome`, and `history` requests. */
export const WANTS_HISTORY = 4;
const FEATURE_BITS: Record<Feature, number> = {
  ids: WANTS_IDS,
  presence: WANTS_PRESENCE,
  history: WANTS_HISTORY | WANTS_IDS,
};

/** Messages replayed after login when the auth frame asks for history without a count. */
export const DEFAULT_REPLAY = 50;
/** Most messages one replay holds (the auth frame's `history`, or the messages `after` an id). */
export const MAX_REPLAY = 1000;
/** Messages in one `history` page when the request gives no `limit`. */
export const DEFAULT_PAGE = 50;
/** Most messages in one `history` page. */
export const MAX_PAGE = 200;
/** Longest message `ref`, in characters. */
export const MAX_REF_CHARS = 64;

/** What a client's auth frame asks for. */
export interface AuthRequest {
  password: string;
  /** Display name: the default `sender` of its messages and its name in presence. */
  name: string;
  /**
   * Bits of the features granted ({@link WANTS_IDS}, {@link WANTS_PRESENCE},
   * {@link WANTS_HISTORY}), or `null` when the frame has no `features` field: a seed client,
   * which gets exactly the seed's frames and no `welcome`.
   */
  features: number | null;
  /** Messages to replay after login (history feature), clamped to {@link MAX_REPLAY}. */
  history: number;
  /** Replay the messages after this id instead of the last `history` ones. */
  after: number | undefined;
  /** Bad optional fields that were ignored, one sentence each (each sent as `invalid_message`). */
  problems: string[];
}

/** The names of the features in `bits`, in canonical order (for the `welcome` frame). */
export function featureNames(bits: number): Feature[] {
  return FEATURES.filter((name) => (bits & FEATURE_BITS[name]) === FEATURE_BITS[name]);
}

/**
 * Validates the first frame of a connection. Bad optional fields (`name`, `features`,
 * `history`, `after`) never refuse the login: they are ignored (or clamped) and reported in
 * {@link AuthRequest.problems}; unknown fields (the seed's `username`) are ignored.
 *
 * @throws {ProtocolError} `auth_required` unless it is `{"type":"auth","password":"<string>"}`.
 */
export function parseAuth(message: JsonObject): AuthRequest {
  if (message.type !== "auth") {
    throw new ProtocolError("auth_required", "Cannot continue: the first frame must be auth");
  }
  if (typeof message.password !== "string") {
    throw new ProtocolError("auth_required", "Cannot authenticate: password must be a string");
  }
  const problems: string[] = [];
  let name = DEFAULT_SENDER;
  if (message.name !== undefined) {
    const problem = nameProblem(message.name);
    if (problem) problems.push(`Cannot use that name: ${problem}; you are "${DEFAULT_SENDER}"`);
    else name = wellFormed(message.name as string);
  }
  let features: number | null = null;
  if (message.features !== undefined) {
    features = 0;
    if (Array.isArray(message.features)) {
      for (const feature of message.features) {
        if (typeof feature === "string" && Object.hasOwn(FEATURE_BITS, feature)) {
          features |= FEATURE_BITS[feature as Feature];
        }
      }
    } else {
      problems.push("Cannot read features: it must be an array of strings");
    }
  }
  let history = DEFAULT_REPLAY;
  if (message.history !== undefined) {
    if (isCount(message.history)) history = Math.min(message.history, MAX_REPLAY);
    else problems.push("Cannot use history: it must be a non-negative integer");
  }
  let after: number | undefined;
  if (message.after !== undefined && message.after !== null) {
    if (isCount(message.after)) after = message.after;
    else problems.push("Cannot use after: it must be a message id (a non-negative integer)");
  }
  return { password: message.password, name, features, history, after, problems };
}

/** A chat message accepted from a client, with its optional `ref`. */
export interface ChatPost extends ChatMessage {
  /** The client's id for this message, echoed in its ack; resending it is not a duplicate. */
  ref?: string;
}

/** A request of a logged-in client. */
export type ChatRequest =
  | ({ type: "message" } & ChatPost)
  | { type: "who" }
  | { type: "history"; before?: number; after?: number; limit: number };

/**
 * Validates a frame received after login, for a client granted the feature bits `features`.
 * `who` needs presence and `history` needs history: without them they are unknown types, as
 * for a seed client.
 *
 * @param defaultSender the `sender` of a message without one: the client's name
 * @throws {ProtocolError} `already_authenticated`, `unknown_type` or `invalid_message` (with the
 * message's `ref` when it had a valid one).
 */
export function parseRequest(
  message: JsonObject,
  features: number,
  defaultSender: string = DEFAULT_SENDER,
): ChatRequest {
  const type = message.type;
  if (type === "message") {
    return { type, ...parseChat(message, defaultSender, (features & WANTS_IDS) !== 0) };
  }
  if (type === "who" && (features & WANTS_PRESENCE) !== 0) return { type };
  if (type === "history" && (features & WANTS_HISTORY) !== 0) return parseHistory(message);
  return parseChat(message) as never; // throws the right error for any other type
}

function parseHistory(message: JsonObject): ChatRequest {
  const { before, after } = message;
  let limit = DEFAULT_PAGE;
  if (message.limit !== undefined) {
    if (!isCount(message.limit)) {
      throw new ProtocolError(
        "invalid_message",
        "Cannot page history: limit must be a non-negative integer",
      );
    }
    limit = Math.min(message.limit, MAX_PAGE);
  }
  if (before !== undefined && after !== undefined) {
    throw new ProtocolError(
      "invalid_message",
      "Cannot page history: give before or after, not both",
    );
  }
  for (const [field, value] of [["before", before], ["after", after]] as const) {
    if (value !== undefined && !isCount(value)) {
      throw new ProtocolError(
        "invalid_message",
        `Cannot page history: ${field} must be a message id (a non-negative integer)`,
      );
    }
  }
  return {
    type: "history",
    limit,
    ...(before !== undefined ? { before: before as number } : {}),
    ...(after !== undefined ? { after: after as number } : {}),
  };
}

/**
 * Validates a `message` frame and returns the chat message it carries.
 *
 * Text that is not well-formed UTF-16 (a lone surrogate, which JSON allows) is stored and sent
 * with U+FFFD in its place, so live delivery, history and `ref` matching agree.
 *
 * @param defaultSender the `sender` of a message without one
 * @param withRef whether to read `ref` (clients that asked for ids); others' `ref` is ignored,
 * as any unknown field of a seed client is
 * @throws {ProtocolError} `already_authenticated`, `unknown_type` or `invalid_message`.
 */
export function parseChat(
  message: JsonObject,
  defaultSender: string = DEFAULT_SENDER,
  withRef = false,
): ChatPost {
  const type = message.type;
  if (type !== "message") {
    if (type === "auth") {
      throw new ProtocolError("already_authenticated", "Cannot authenticate: already logged in");
    }
    throw new ProtocolError(
      "unknown_type",
      typeof type === "string"
        ? `Cannot handle frame: unknown type ${JSON.stringify(type.slice(0, 32))}`
        : "Cannot handle frame: type must be a string",
    );
  }
  const rawRef = withRef && message.ref !== null ? message.ref : undefined;
  const ref = typeof rawRef === "string" && rawRef.length > 0 &&
      countChars(rawRef, MAX_REF_CHARS + 1) <= MAX_REF_CHARS
    ? rawRef
    : undefined;
  const invalid = (text: string) => new ProtocolError("invalid_message", text, ref);
  if (rawRef !== undefined && ref === undefined) {
    throw invalid(`Cannot send message: ref must be a string of 1 to ${MAX_REF_CHARS} characters`);
  }
  const content = message.content;
  if (typeof content !== "string" || content.length === 0) {
    throw invalid("Cannot send message: content must be a non-empty string");
  }
  const sender = message.sender ?? defaultSender;
  const problem = nameProblem(sender);
  if (problem) throw invalid(`Cannot send message: sender ${problem}`);
  const post: ChatPost = { content: wellFormed(content), sender: wellFormed(sender as string) };
  if (ref !== undefined) post.ref = wellFormed(ref);
  return post;
}

/** `text`, with U+FFFD for any lone surrogate (checked first: almost all text is well formed). */
function wellFormed(text: string): string {
  return text.isWellFormed() ? text : text.toWellFormed();
}

/** Why `name` is not a valid `sender` / display name, or `undefined` if it is. */
function nameProblem(name: unknown): string | undefined {
  if (typeof name !== "string") return "must be a string";
  if (name.length === 0 || countChars(name, MAX_SENDER_CHARS + 1) > MAX_SENDER_CHARS) {
    return `must be 1 to ${MAX_SENDER_CHARS} characters`;
  }
  if (CONTROL_CHARS.test(name)) return "has control characters";
  return undefined;
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/**
 * Counts code points of `text`, stopping at `stop`: the result is `>= stop` exactly when `text` has
 * at least `stop` code points (below that it may be its UTF-16 length instead).
 */
function countChars(text: string, stop: number): number {
  // A code point is one or two UTF-16 units: a string of fewer units than `stop` has fewer code
  // points than `stop` too, and that is all the callers ask. (The usual case: no counting.)
  if (text.length < stop) return text.length;
  let count = 0;
  for (const _ of text) {
    if (++count >= stop) break;
  }
  return count;
}

/** A message as the room accepted it (version 2: with its id and acceptance time). */
export interface RoomMessage {
  id: number;
  /** Acceptance time, ms since the epoch. */
  ts: number;
  content: string;
  sender: string;
  senderIp: string;
}

/** A member of the room, as presence frames show it. */
export interface MemberInfo {
  /** Connection id, unique in the room. */
  id: number;
  name: string;
  ip: string;
  /** Login time, ms since the epoch. */
  since: number;
}

/** Why a member left: closed by the client, by the server, the server stopping, its node lost. */
export type LeaveReason = "quit" | "dropped" | "shutdown" | "node_lost";

/**
 * Encodes a message for a client that asked for ids: the seed's fields plus `id` and `ts`
 * (ISO-8601 UTC with milliseconds), and `replay: true` when it comes from history.
 */
export function encodeMessage(message: RoomMessage, replay = false): Uint8Array {
  return encodeJsonFrame(messageJson(message, replay));
}

/** The JSON text of {@link encodeMessage}'s frame (written directly, as {@link broadcastJson}). */
export function messageJson(message: RoomMessage, replay = false): string {
  return `{"content":${JSON.stringify(message.content)},"id":${message.id},${
    replay ? '"replay":true,' : ""
  }"sender":${JSON.stringify(message.sender)},"sender_ip":${
    JSON.stringify(message.senderIp)
  },"ts":"${isoTime(message.ts)}","type":"message"}`;
}

/** Encodes the `ack` of an accepted (and stored) message to its sender. */
export function encodeAck(ref: string, id: number, ts: number): Uint8Array {
  return encodeJsonFrame(
    `{"type":"ack","ref":${JSON.stringify(ref)},"id":${id},"ts":"${isoTime(ts)}"}`,
  );
}

let lastTime = NaN;
let lastIso = "";

/**
 * `ts` as ISO-8601 UTC with milliseconds. The messages of one batch share their time, so the
 * last one is remembered: formatting a date costs more than the rest of a small frame.
 */
export function isoTime(ts: number): string {
  if (ts !== lastTime) {
    lastIso = new Date(ts).toISOString();
    lastTime = ts;
  }
  return lastIso;
}

/** The JSON form of a member in presence frames. */
export function memberJson(member: MemberInfo): JsonObject {
  return {
    id: member.id,
    name: member.name,
    ip: member.ip,
    since: new Date(member.since).toISOString(),
  };
}

/** Encodes `joined`. */
export function encodeJoined(member: MemberInfo): Uint8Array {
  return encodeFrame({ type: "joined", member: memberJson(member) });
}

/** Encodes `left`. */
export function encodeLeft(member: MemberInfo, reason: LeaveReason): Uint8Array {
  return encodeFrame({ type: "left", member: memberJson(member), reason });
}

/** Encodes the answer to `who`. */
export function encodeWho(members: Iterable<MemberInfo>): Uint8Array {
  return encodeFrame({ type: "who", members: Array.from(members, memberJson) });
}

/** Encodes the end of a replay or of a history page. */
export function encodeHistoryEnd(count: number, more: boolean): Uint8Array {
  return encodeFrame({ type: "history_end", count, more });
}
