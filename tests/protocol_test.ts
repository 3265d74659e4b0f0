import assert from "node:assert/strict";
import {
  AUTH_FAILED_FRAME,
  AUTH_OK_FRAME,
  decodeBody,
  encodeBroadcast,
  encodeFrame,
  FrameDecoder,
  parseAuth,
  parseChat,
  ProtocolError,
} from "../src/protocol/mod.ts";
import { FrameReader } from "./_frame_reader.ts";
import { chunkInput, concatBytes } from "./_helpers.ts";

const text = new TextDecoder();

function header(length: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, length);
  return bytes;
}

async function readAll(reader: FrameReader): Promise<string[]> {
  const out: string[] = [];
  for (let body = await reader.read(); body !== null; body = await reader.read()) {
    out.push(text.decode(body));
  }
  return out;
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ProtocolError, `expected ProtocolError, got ${error}`);
    return error.code;
  }
  assert.fail("expected a ProtocolError");
}

async function asyncCodeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ProtocolError, `expected ProtocolError, got ${error}`);
    return error.code;
  }
  assert.fail("expected a ProtocolError");
}

Deno.test("encodeFrame writes a big-endian length then UTF-8 JSON", () => {
  const frame = encodeFrame({ a: "é" });
  assert.deepEqual([...frame.subarray(0, 4)], [0, 0, 0, 10]);
  assert.equal(text.decode(frame.subarray(4)), '{"a":"é"}');
});

Deno.test("auth replies and broadcasts are the seed's exact bytes", () => {
  assert.equal(text.decode(AUTH_OK_FRAME.subarray(4)), '{"success":true,"type":"auth_result"}');
  assert.equal(
    text.decode(AUTH_FAILED_FRAME.subarray(4)),
    '{"error":"Invalid password","success":false,"type":"auth_result"}',
  );
  assert.equal(
    text.decode(encodeBroadcast({ content: "foo", sender: "anon" }, "192.168.1.100").subarray(4)),
    '{"content":"foo","sender":"anon","sender_ip":"192.168.1.100","type":"message"}',
  );
});

for (const mode of ["source", "stream"] as const) {
  Deno.test(`FrameReader (${mode}) returns frames split across reads`, async () => {
    const frame = encodeFrame({ type: "message", content: "hello" });
    const chunks = [...frame].map((byte) => new Uint8Array([byte]));
    const reader = new FrameReader(chunkInput(mode, chunks));
    assert.deepEqual(await readAll(reader), ['{"type":"message","content":"hello"}']);
  });

  Deno.test(`FrameReader (${mode}) returns several frames coalesced in one read`, async () => {
    const frames = Array.from({ length: 50 }, (_, i) => encodeFrame({ i }));
    const reader = new FrameReader(chunkInput(mode, [concatBytes(frames)]));
    assert.deepEqual(await readAll(reader), frames.map((_, i) => `{"i":${i}}`));
  });

  Deno.test(`FrameReader (${mode}) accepts a body of exactly max_frame and rejects one more`, async (t) => {
    await t.step("exactly max", async () => {
      const body = new Uint8Array(65536).fill(0x20);
      body[0] = 0x7b; // "{"
      body[65535] = 0x7d;
      const reader = new FrameReader(chunkInput(mode, [header(65536), body]), { maxFrame: 65536 });
      const got = await reader.read();
      assert.equal(got?.length, 65536);
      assert.equal(await reader.read(), null);
    });
    await t.step("max + 1 is rejected from the header alone", async () => {
      // Only the header is available: the reader must not wait for (or allocate) the body.
      const reader = new FrameReader(chunkInput(mode, [header(65537)]), { maxFrame: 65536 });
      assert.equal(await asyncCodeOf(reader.read()), "frame_too_large");
    });
  });

  Deno.test(`FrameReader (${mode}) rejects every bad length prefix`, async (t) => {
    for (
      const [length, code] of [[0, "empty_frame"], [65537, "frame_too_large"], [
        2 ** 31,
        "frame_too_large",
      ], [2 ** 32 - 1, "frame_too_large"]] as const
    ) {
      await t.step(`length ${length}`, async () => {
        const reader = new FrameReader(chunkInput(mode, [header(length)]));
        assert.equal(await asyncCodeOf(reader.read()), code);
      });
    }
    await t.step("a bad length after a good frame", async () => {
      const reader = new FrameReader(chunkInput(mode, [concatBytes([encodeFrame({}), header(0)])]));
      assert.equal(text.decode((await reader.read())!), "{}");
      assert.equal(await asyncCodeOf(reader.read()), "empty_frame");
    });
  });

  Deno.test(`FrameReader (${mode}) reports a stream that ends inside a frame`, async () => {
    const reader = new FrameReader(chunkInput(mode, [header(10), new Uint8Array(3)]));
    await assert.rejects(reader.read(), Deno.errors.UnexpectedEof);
    const partialHeader = new FrameReader(chunkInput(mode, [new Uint8Array(2)]));
    await assert.rejects(partialHeader.read(), Deno.errors.UnexpectedEof);
  });
}

Deno.test("FrameDecoder decodes pushed chunks and rejects bad lengths early", () => {
  const decoder = new FrameDecoder({ maxFrame: 100 });
  const frames = concatBytes([encodeFrame({ a: 1 }), encodeFrame({ b: 2 })]);
  assert.deepEqual(decoder.push(frames.subarray(0, 5)), []);
  assert.deepEqual(decoder.push(frames.subarray(5)).map((f) => text.decode(f)), [
    '{"a":1}',
    '{"b":2}',
  ]);
  assert.equal(decoder.buffered, 0);
  assert.equal(codeOf(() => decoder.push(header(101))), "frame_too_large");
  assert.equal(codeOf(() => new FrameDecoder().push(header(0))), "empty_frame");
});

Deno.test("decodeBody rejects bad UTF-8, bad JSON and non-objects", () => {
  const utf8 = new TextEncoder();
  assert.equal(codeOf(() => decodeBody(new Uint8Array([0x7b, 0xff, 0x7d]))), "invalid_json");
  assert.equal(codeOf(() => decodeBody(utf8.encode("{nope"))), "invalid_json");
  for (const value of ["[]", "1", '"s"', "null", "true"]) {
    assert.equal(codeOf(() => decodeBody(utf8.encode(value))), "not_an_object");
  }
  assert.deepEqual(decodeBody(utf8.encode('{"type":"x"}')), { type: "x" });
});

Deno.test("parseAuth takes only a well-formed auth and ignores extra fields", () => {
  assert.equal(parseAuth({ type: "auth", password: "p", username: "seed" }).password, "p");
  assert.equal(codeOf(() => parseAuth({ type: "message", content: "x" })), "auth_required");
  assert.equal(codeOf(() => parseAuth({ type: "auth" })), "auth_required");
  assert.equal(codeOf(() => parseAuth({ type: "auth", password: 5 })), "auth_required");
});

Deno.test("parseChat validates content and sender", () => {
  assert.deepEqual(parseChat({ type: "message", content: "a\nb" }), {
    content: "a\nb",
    sender: "anon",
  });
  assert.deepEqual(parseChat({ type: "message", content: "x", sender: "ünï 😀" }), {
    content: "x",
    sender: "ünï 😀",
  });
  assert.equal(
    parseChat({ type: "message", content: "x", sender: "😀".repeat(64) }).sender.length,
    128,
  );
  const bad = [
    {},
    { content: "" },
    { content: 5 },
    { content: "x", sender: 5 },
    { content: "x", sender: "" },
    { content: "x", sender: "a".repeat(65) },
    { content: "x", sender: "😀".repeat(65) },
    { content: "x", sender: "a\nb" },
    { content: "x", sender: "a\u0000" },
    { content: "x", sender: "a".repeat(10_000) },
  ];
  for (const fields of bad) {
    assert.equal(codeOf(() => parseChat({ type: "message", ...fields })), "invalid_message");
  }
  assert.equal(codeOf(() => parseChat({ type: "auth", password: "x" })), "already_authenticated");
  assert.equal(codeOf(() => parseChat({ type: "ping" })), "unknown_type");
  assert.equal(codeOf(() => parseChat({ type: 7 })), "unknown_type");
  assert.equal(codeOf(() => parseChat({})), "unknown_type");
});
