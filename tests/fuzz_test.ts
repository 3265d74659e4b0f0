/**
 * Fuzzes the frame decoders and the message validators with random and mutated inputs from a
 * fixed seed. Every input must yield frames and valid messages, or a `ProtocolError` with a code
 * of the right stage, and nothing else; both decoders must agree with a reference decoder.
 *
 * Reproduce a failure with the seed and case number it prints:
 * `FUZZ_SEED=<seed> FUZZ_CASE=<n> deno test -A tests/fuzz_test.ts`.
 * `FUZZ_ITERATIONS` changes the number of inputs (default 100000).
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  CLIENT_MAX_FRAME,
  decodeBody,
  encodeBroadcast,
  encodeError,
  FrameDecoder,
  type JsonObject,
  MAX_SENDER_CHARS,
  parseAuth,
  parseChat,
  ProtocolError,
} from "../src/protocol/mod.ts";
import { FrameReader } from "./_frame_reader.ts";
import { Rng } from "./_soak_common.ts";
import { chunkInput, concatBytes, lengthPrefix, PASSWORD } from "./_helpers.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 0x5eed2026);
const ITERATIONS = Number(Deno.env.get("FUZZ_ITERATIONS") ?? 100_000);
const ONLY = Deno.env.get("FUZZ_CASE");
/** One input in this many also goes through the stream-based `FrameReader`. */
const READER_EVERY = 8;

const ENCODER = new TextEncoder();
const FRAME_CODES = new Set(["empty_frame", "frame_too_large"]);
const BODY_CODES = new Set(["invalid_json", "not_an_object"]);
const AUTH_CODES = new Set(["auth_required"]);
const CHAT_CODES = new Set(["already_authenticated", "unknown_type", "invalid_message"]);
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

// ---------------------------------------------------------------------------------------------
// Inputs

const STRINGS = [
  "",
  "a",
  "anon",
  "auth",
  "message",
  "error",
  "__proto__",
  "constructor",
  PASSWORD,
  "é",
  "😀",
  "中文",
  "\n",
  "\u0000",
  "\u001f",
  "\u007f",
  "\u0085",
  "\ud800",
  "\udc00",
  "\ufeff",
  "a".repeat(MAX_SENDER_CHARS),
  "a".repeat(MAX_SENDER_CHARS + 1),
  "😀".repeat(MAX_SENDER_CHARS),
  "😀".repeat(MAX_SENDER_CHARS + 1),
  "é".repeat(MAX_SENDER_CHARS + 1),
];
const KEYS = ["type", "password", "content", "sender", "sender_ip", "username", "__proto__", "x"];
const TYPES = ["auth", "message", "Message", "AUTH", "error", "auth_result", "", "message "];
const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xbf, 0xc0, 0xc3, 0xed, 0xf4, 0xf5, 0xff];
const JSON_TOKENS = ['"', "\\", "{", "}", "[", "]", ":", ",", "null", "true", "1e999", "-0"];

function genString(rng: Rng): string {
  switch (rng.int(0, 4)) {
    case 0:
      return rng.pick(STRINGS);
    case 1:
      return String.fromCharCode(
        ...Array.from({ length: rng.int(0, 12) }, () => rng.int(0, 0xffff)),
      );
    case 2:
      return rng.pick(STRINGS).repeat(rng.chance(0.9) ? rng.int(1, 4) : rng.int(5, 80));
    case 3:
      return Array.from({ length: rng.int(1, 4) }, () => rng.pick(STRINGS)).join("");
    default:
      return "x".repeat(rng.chance(0.9) ? rng.pick([1, 63, 64, 65]) : rng.pick([1000, 10_240]));
  }
}

function genValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(0, depth > 3 ? 4 : 7)) {
    case 0:
      return null;
    case 1:
      return rng.chance(0.5);
    case 2:
      return rng.pick([0, -1, 1.5, 2 ** 53, -0, 1e308]);
    case 3:
    case 4:
      return genString(rng);
    case 5:
      return Array.from({ length: rng.int(0, 3) }, () => genValue(rng, depth + 1));
    default: {
      const object: Record<string, unknown> = {};
      for (let i = rng.int(0, 4); i > 0; i--) {
        setOwn(object, rng.chance(0.7) ? rng.pick(KEYS) : genString(rng), genValue(rng, depth + 1));
      }
      return object;
    }
  }
}

/** Something shaped like a client frame, with each field right, wrong or missing. */
function genMessage(rng: Rng): Record<string, unknown> {
  const field = (good: () => unknown) =>
    rng.chance(0.6) ? good() : rng.chance(0.5) ? genValue(rng) : undefined;
  const message: Record<string, unknown> = {
    type: field(() => rng.chance(0.7) ? rng.pick(["message", "auth"]) : rng.pick(TYPES)),
    password: field(() => genString(rng)),
    content: field(() => genString(rng)),
    sender: field(() => genString(rng)),
  };
  if (rng.chance(0.2)) setOwn(message, rng.pick(KEYS), genValue(rng));
  return message;
}

/** Sets an own property, even `__proto__` (which plain assignment would treat specially). */
function setOwn(object: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(object, key, {
    value,
    enumerable: true,
    writable: true,
    configurable: true,
  });
}

function genBodyText(rng: Rng): string {
  const value = rng.chance(0.8) ? genMessage(rng) : genValue(rng);
  let text = JSON.stringify(value, null, rng.chance(0.1) ? 2 : undefined) ?? "null";
  if (rng.chance(0.05)) text = `\ufeff${text}`;
  if (rng.chance(0.05)) text = text.replace("{", '{"type":"auth","type":"message",');
  if (rng.chance(0.05)) text += rng.pick(JSON_TOKENS);
  return text;
}

/** A well-formed or broken stream of frames. */
function genStream(rng: Rng, maxFrame: number): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let i = rng.int(1, 3); i > 0; i--) {
    const body = ENCODER.encode(genBodyText(rng));
    parts.push(lengthPrefix(body.length), body);
  }
  let bytes = concatBytes(parts);
  for (let i = rng.int(0, 4); i > 0; i--) bytes = mutate(rng, bytes, maxFrame);
  return bytes;
}

function mutate(rng: Rng, input: Uint8Array, maxFrame: number): Uint8Array {
  const bytes = input.slice();
  const at = rng.int(0, Math.max(0, bytes.length - 1));
  switch (rng.int(0, 8)) {
    case 0:
      if (bytes.length > 0) bytes[at] ^= 1 << rng.int(0, 7);
      return bytes;
    case 1:
      if (bytes.length > 0) bytes[at] = rng.pick(INTERESTING_BYTES);
      return bytes;
    case 2:
      return concatBytes([bytes.subarray(0, at), rng.bytes(rng.int(1, 8)), bytes.subarray(at)]);
    case 3:
      return concatBytes([bytes.subarray(0, at), bytes.subarray(at + rng.int(1, 16))]);
    case 4:
      return bytes.subarray(0, rng.int(0, bytes.length));
    case 5: {
      const end = Math.min(bytes.length, at + rng.int(1, 64));
      return concatBytes([bytes.subarray(0, end), bytes.subarray(at, end), bytes.subarray(end)]);
    }
    case 6: {
      // Rewrite a length prefix, at the start or anywhere.
      const length = rng.pick([0, 1, 3, maxFrame, maxFrame + 1, 0xffffffff, 0x80000000, at]);
      const where = rng.chance(0.6) ? 0 : at;
      const out = bytes.length >= where + 4 ? bytes : concatBytes([bytes, new Uint8Array(4)]);
      out.set(lengthPrefix(length), where);
      return out;
    }
    case 7: {
      const token = ENCODER.encode(rng.pick(JSON_TOKENS));
      return concatBytes([bytes.subarray(0, at), token, bytes.subarray(at)]);
    }
    default:
      return concatBytes([bytes, rng.bytes(rng.int(1, 32))]);
  }
}

function genInput(rng: Rng, maxFrame: number): Uint8Array {
  switch (rng.int(0, 5)) {
    case 0:
      return rng.bytes(rng.chance(0.9) ? rng.int(0, 64) : rng.int(0, 4096));
    case 1: {
      const body = rng.bytes(rng.int(0, 64));
      return concatBytes([lengthPrefix(rng.chance(0.8) ? body.length : rng.int(0, 128)), body]);
    }
    default:
      return genStream(rng, maxFrame);
  }
}

function splits(rng: Rng, bytes: Uint8Array): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    const size = rng.chance(0.3) ? 1 : rng.int(1, Math.max(1, bytes.length));
    chunks.push(bytes.slice(offset, offset + size));
    offset += size;
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// Oracles

/** What a byte stream decodes to. */
interface Decoded {
  frames: Uint8Array[];
  /** The `ProtocolError` code that stopped decoding, if any. */
  error: string | null;
  /** Bytes left over after the last whole frame (when no error). */
  pending: number;
}

/** The reference decoder: the framing rule of PROTOCOL.md, written as plainly as possible. */
function referenceDecode(bytes: Uint8Array, maxFrame: number): Decoded {
  const frames: Uint8Array[] = [];
  let offset = 0;
  while (bytes.length - offset >= 4) {
    const n = ((bytes[offset] << 24) >>> 0) + (bytes[offset + 1] << 16) +
      (bytes[offset + 2] << 8) + bytes[offset + 3];
    if (n === 0) return { frames, error: "empty_frame", pending: 0 };
    if (n > maxFrame) return { frames, error: "frame_too_large", pending: 0 };
    if (bytes.length - offset - 4 < n) break;
    frames.push(bytes.subarray(offset + 4, offset + 4 + n));
    offset += 4 + n;
  }
  return { frames, error: null, pending: bytes.length - offset };
}

function hex(bytes: Uint8Array): string {
  return bytes.toHex();
}

/** Error messages already checked for size (most repeat). */
const CHECKED_MESSAGES = new Set<string>();

/** Checks that `error` is a ProtocolError with an `allowed` code and a small message. */
function protocolCode(error: unknown, allowed: Set<string>, stage: string): string {
  if (!(error instanceof ProtocolError)) {
    throw new Error(`${stage} threw ${(error as Error)?.name}: ${(error as Error)?.message}`);
  }
  assert.ok(allowed.has(error.code), `${stage} gave code ${error.code}`);
  if (!CHECKED_MESSAGES.has(error.message)) {
    assert.ok(error.message.length > 0 && error.message.length <= 300, `${stage} message size`);
    assert.ok(encodeError(error.code, error.message).length < 512, `${stage} error frame size`);
    CHECKED_MESSAGES.add(error.message);
  }
  return error.code;
}

function pushDecode(chunks: Uint8Array[], maxFrame: number): Decoded {
  const decoder = new FrameDecoder({ maxFrame });
  const frames: Uint8Array[] = [];
  // A final empty push surfaces an error the decoder may hold back until its frames are taken.
  for (const chunk of [...chunks, new Uint8Array(0)]) {
    try {
      frames.push(...decoder.push(chunk));
    } catch (error) {
      return { frames, error: protocolCode(error, FRAME_CODES, "FrameDecoder"), pending: 0 };
    }
  }
  return { frames, error: null, pending: decoder.buffered };
}

/**
 * The server's path: chunks fed as they arrive, frames taken one at a time with `next()` and kept
 * as the views it returns (no copy), so a later chunk that overwrote an earlier body would show.
 */
function nextDecode(chunks: Uint8Array[], maxFrame: number): Decoded {
  const decoder = new FrameDecoder({ maxFrame });
  const frames: Uint8Array[] = [];
  try {
    for (const chunk of chunks) {
      decoder.feed(chunk.slice()); // the caller's chunk is the decoder's from here on
      for (let body = decoder.next(); body !== null; body = decoder.next()) frames.push(body);
    }
  } catch (error) {
    return { frames, error: protocolCode(error, FRAME_CODES, "FrameDecoder.next"), pending: 0 };
  }
  return { frames, error: null, pending: decoder.buffered };
}

async function readerDecode(chunks: Uint8Array[], maxFrame: number): Promise<Decoded> {
  // The clients' and tests' path: read() calls on a connection.
  const reader = new FrameReader(chunkInput("source", chunks), { maxFrame });
  const frames: Uint8Array[] = [];
  try {
    while (true) {
      const frame = await reader.read();
      if (frame === null) return { frames, error: null, pending: 0 };
      frames.push(frame.slice());
    }
  } catch (error) {
    if (error instanceof Deno.errors.UnexpectedEof) {
      return { frames, error: null, pending: 1 };
    }
    return { frames, error: protocolCode(error, FRAME_CODES, "FrameReader"), pending: 0 };
  }
}

/** How one body fared: which stage refused it with which code, or what it was accepted as. */
type Verdict = { stage: "body" | "auth" | "chat"; code: string } | {
  stage: "accepted";
  as: string;
};

const DECODER = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Runs a body through the validators the server uses, checking each result. */
function validate(body: Uint8Array, maxFrame: number): Verdict[] {
  let object: JsonObject;
  try {
    object = decodeBody(body);
  } catch (error) {
    return [{ stage: "body", code: protocolCode(error, BODY_CODES, "decodeBody") }];
  }
  assert.ok(
    typeof object === "object" && object !== null && !Array.isArray(object),
    "decodeBody returned a non-object",
  );
  const verdicts: Verdict[] = [];
  try {
    const request = parseAuth(object);
    assert.equal(typeof request.password, "string");
    assert.equal(typeof request.name, "string");
    assert.ok(request.history >= 0 && request.history <= 1000);
    assert.equal(object.type, "auth");
    verdicts.push({ stage: "accepted", as: "auth" });
  } catch (error) {
    verdicts.push({ stage: "auth", code: protocolCode(error, AUTH_CODES, "parseAuth") });
  }
  try {
    const message = parseChat(object);
    checkMessage(object, message, body.length, maxFrame);
    verdicts.push({ stage: "accepted", as: "message" });
  } catch (error) {
    if (error instanceof assert.AssertionError) throw error;
    verdicts.push({ stage: "chat", code: protocolCode(error, CHAT_CODES, "parseChat") });
  }
  return verdicts;
}

/** An accepted chat message must be exactly what PROTOCOL.md allows, and re-encode faithfully. */
function checkMessage(
  object: JsonObject,
  message: { content: string; sender: string },
  bodyLength: number,
  maxFrame: number,
): void {
  assert.equal(object.type, "message");
  assert.equal(typeof message.content, "string");
  assert.ok(message.content.length > 0, "empty content accepted");
  assert.equal(message.content, (object.content as string).toWellFormed());
  const chars = [...message.sender].length;
  assert.ok(chars >= 1 && chars <= MAX_SENDER_CHARS, `sender of ${chars} characters accepted`);
  assert.ok(!CONTROL.test(message.sender), "sender with control characters accepted");
  assert.equal(message.sender, ((object.sender ?? "anon") as string).toWellFormed());
  const frame = encodeBroadcast(message, "255.255.255.255");
  const length = new DataView(frame.buffer, frame.byteOffset).getUint32(0);
  assert.equal(length, frame.length - 4);
  const echoed = JSON.parse(DECODER.decode(frame.subarray(4)));
  assert.ok(
    echoed.content === message.content && echoed.sender === message.sender &&
      echoed.sender_ip === "255.255.255.255" && echoed.type === "message" &&
      Object.keys(echoed).length === 4,
    "broadcast does not carry the message faithfully",
  );
  // A broadcast may exceed max_frame, but only by the fields the server adds.
  assert.ok(
    length <= bodyLength + 96,
    `broadcast of ${length} bytes from a ${bodyLength}-byte body`,
  );
  assert.ok(length <= maxFrame + 96 && length <= CLIENT_MAX_FRAME);
}

/** Asserts that a decoder's result is exactly the reference decoder's. */
function sameDecoding(actual: Decoded, expected: Decoded, what: string): void {
  const same = actual.error === expected.error && actual.pending === expected.pending &&
    actual.frames.length === expected.frames.length &&
    actual.frames.every((frame, i) => equalBytes(frame, expected.frames[i]));
  if (!same) {
    const show = (d: Decoded) => ({ ...d, frames: d.frames.map(hex) });
    assert.deepEqual(show(actual), show(expected), `${what} disagrees with the reference`);
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// The tests

Deno.test("FrameDecoder returns the frames that precede a bad length prefix in one chunk", () => {
  const good = new TextEncoder().encode('{"type":"message","content":"hi"}');
  const chunk = new Uint8Array([...lengthPrefix(good.length), ...good, ...lengthPrefix(0)]);
  const decoder = new FrameDecoder();
  const frames: Uint8Array[] = [];
  let code: string | undefined;
  try {
    frames.push(...decoder.push(chunk));
    decoder.push(new Uint8Array(0));
  } catch (error) {
    code = (error as ProtocolError).code;
  }
  // The same bytes in two chunks yield the frame, then the error: one chunk must not differ.
  assert.deepEqual(frames.map(hex), [hex(good)], "the whole frame before the bad prefix was lost");
  assert.equal(code, "empty_frame");
});

function caseRng(index: number): Rng {
  return new Rng((SEED ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
}

async function runCase(index: number, counts: Record<string, number>): Promise<void> {
  const rng = caseRng(index);
  const maxFrame = rng.chance(0.7) ? 65536 : rng.pick([1, 16, 64, 1024]);
  const input = genInput(rng, maxFrame);
  try {
    const expected = referenceDecode(input, maxFrame);
    const chunks = splits(rng, input);
    sameDecoding(pushDecode([input], maxFrame), expected, "FrameDecoder (one chunk)");
    sameDecoding(pushDecode(chunks, maxFrame), expected, "FrameDecoder (split)");
    sameDecoding(nextDecode(chunks, maxFrame), expected, "FrameDecoder.next (split, views)");
    if (index % READER_EVERY === 0) {
      const streamed = await readerDecode(chunks, maxFrame);
      sameDecoding(
        { ...streamed, pending: streamed.pending > 0 ? 1 : 0 },
        { ...expected, pending: expected.pending > 0 ? 1 : 0, error: expected.error },
        "FrameReader",
      );
      counts.reader++;
    }
    counts[expected.error ?? (expected.pending > 0 ? "truncated" : "clean")] =
      (counts[expected.error ?? (expected.pending > 0 ? "truncated" : "clean")] ?? 0) + 1;
    // Every frame body, and some raw inputs as if they were bodies, through the validators.
    const bodies: Uint8Array[] = [...expected.frames];
    if (input.length > 0 && index % 4 === 1) bodies.push(input);
    for (const body of bodies) {
      for (const verdict of validate(body, maxFrame)) {
        const key = "code" in verdict ? verdict.code : `accepted ${verdict.as}`;
        counts[key] = (counts[key] ?? 0) + 1;
      }
    }
  } catch (error) {
    const shown = input.length > 512 ? `${hex(input.subarray(0, 512))}...` : hex(input);
    throw new Error(
      `Fuzz case ${index} failed (FUZZ_SEED=${SEED} FUZZ_CASE=${index}, max frame ${maxFrame}, ` +
        `${input.length} bytes: ${shown}): ${(error as Error).message}`,
      { cause: error },
    );
  }
}

Deno.test("protocol decoders yield a valid message or a ProtocolError for any input", async () => {
  const indices = ONLY === undefined
    ? Array.from({ length: ITERATIONS }, (_, i) => i)
    : [Number(ONLY)];
  console.log(
    `fuzz seed ${SEED} (0x${SEED.toString(16)}), ${indices.length} inputs; reproduce one with ` +
      `FUZZ_SEED=${SEED} FUZZ_CASE=<n>`,
  );
  const counts: Record<string, number> = { reader: 0 };
  const started = performance.now();
  // Most inputs end in a ProtocolError; capturing a stack for each would dominate the run time.
  // A single reproduced case (FUZZ_CASE) keeps full stacks.
  const stackTraceLimit = Error.stackTraceLimit;
  if (ONLY === undefined) Error.stackTraceLimit = 0;
  try {
    for (const index of indices) await runCase(index, counts);
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
  console.log(`done in ${Math.round(performance.now() - started)} ms:`, counts);
  if (ONLY === undefined && ITERATIONS >= 10_000) {
    // The generators must reach every outcome, or the fuzz proves little.
    for (
      const outcome of [
        "clean",
        "truncated",
        "empty_frame",
        "frame_too_large",
        "invalid_json",
        "not_an_object",
        "auth_required",
        "unknown_type",
        "invalid_message",
        "already_authenticated",
        "accepted auth",
        "accepted message",
      ]
    ) {
      assert.ok((counts[outcome] ?? 0) > 0, `no input reached ${outcome}`);
    }
  }
});
