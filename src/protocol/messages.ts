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

/** Encodes an `error` frame. */
export function encodeError(code: ErrorCode, message: string): Uint8Array {
  return encodeFrame({ type: "error", code, error: message });
}

/**
 * Encodes a broadcast exactly as the seed did (keys in sorted order). Called once per accepted
 * message; the same bytes are queued to every recipient.
 */
export function encodeBroadcast(message: ChatMessage, senderIp: string): Uint8Array {
  return encodeFrame({
    content: message.content,
    sender: message.sender,
    sender_ip: senderIp,
    type: "message",
  });
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

/**
 * Validates the first frame of a connection and returns the password it carries.
 *
 * @throws {ProtocolError} `auth_required` unless it is `{"type":"auth","password":"<string>"}`.
 */
export function parseAuth(message: JsonObject): string {
  if (message.type !== "auth") {
    throw new ProtocolError("auth_required", "Cannot continue: the first frame must be auth");
  }
  if (typeof message.password !== "string") {
    throw new ProtocolError("auth_required", "Cannot authenticate: password must be a string");
  }
  return message.password;
}

/**
 * Validates a frame received after login and returns the chat message it carries.
 *
 * @throws {ProtocolError} `already_authenticated`, `unknown_type` or `invalid_message`.
 */
export function parseChat(message: JsonObject): ChatMessage {
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
  const content = message.content;
  if (typeof content !== "string" || content.length === 0) {
    throw new ProtocolError(
      "invalid_message",
      "Cannot send message: content must be a non-empty string",
    );
  }
  const sender = message.sender ?? DEFAULT_SENDER;
  if (typeof sender !== "string") {
    throw new ProtocolError("invalid_message", "Cannot send message: sender must be a string");
  }
  if (sender.length === 0 || countChars(sender, MAX_SENDER_CHARS + 1) > MAX_SENDER_CHARS) {
    throw new ProtocolError(
      "invalid_message",
      `Cannot send message: sender must be 1 to ${MAX_SENDER_CHARS} characters`,
    );
  }
  if (CONTROL_CHARS.test(sender)) {
    throw new ProtocolError(
      "invalid_message",
      "Cannot send message: sender has control characters",
    );
  }
  return { content, sender };
}

/** Counts code points of `text`, stopping early once `stop` is reached. */
function countChars(text: string, stop: number): number {
  if (text.length <= MAX_SENDER_CHARS) return text.length <= stop ? [...text].length : stop;
  let count = 0;
  for (const _ of text) {
    if (++count >= stop) break;
  }
  return count;
}
