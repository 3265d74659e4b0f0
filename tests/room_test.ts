/**
 * Version 2 of the protocol over real TLS: features asked for in the auth frame, `welcome`, ids
 * and acks, `ref` de-duplication, presence, history replay and paging, and a failing store; and
 * that a seed client beside version-2 clients still sees exactly the seed's bytes.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { join } from "node:path";
import { sqliteStore } from "../src/room/store.ts";
import { encodeFrame } from "../src/protocol/mod.ts";
import { concatBytes, delay, type Frame, PASSWORD, startServer, TestClient } from "./_helpers.ts";

const ALL = ["ids", "presence", "history"];

interface V2Login {
  name?: string;
  features?: unknown;
  history?: unknown;
  after?: unknown;
}

/** Logs in with version-2 fields; returns the client, its `welcome` and the frames after it. */
async function v2(
  port: number,
  login: V2Login = {},
): Promise<{ client: TestClient; welcome: Frame }> {
  const client = await TestClient.connect(port);
  await client.send({ type: "auth", password: PASSWORD, features: ALL, ...login });
  const reply = await client.recv();
  assert.deepEqual(reply, { success: true, type: "auth_result" });
  const welcome = await client.recv();
  assert.equal(welcome.type, "welcome");
  return { client, welcome };
}

/** Takes frames until one of `type` arrives; returns it and those before it. */
async function until(
  client: TestClient,
  type: string,
  timeoutMs = 5000,
): Promise<{ frame: Frame; before: Frame[] }> {
  const before: Frame[] = [];
  while (true) {
    const frame = await client.recv(timeoutMs);
    if (frame.type === type) return { frame, before };
    before.push(frame);
  }
}

/** Frames that arrive within `ms` (none expected, usually). */
async function drain(client: TestClient, ms = 200): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let frame = await client.tryRecv(ms); frame; frame = await client.tryRecv(ms)) {
    frames.push(frame);
  }
  return frames;
}

/** Posts `count` messages with refs `prefix-i` and waits for all their acks. */
async function postAcked(client: TestClient, count: number, prefix: string): Promise<Frame[]> {
  for (let i = 0; i < count; i++) {
    await client.send({ type: "message", content: `${prefix} ${i}`, ref: `${prefix}-${i}` });
  }
  const acks: Frame[] = [];
  while (acks.length < count) {
    const frame = await client.recv();
    if (frame.type === "ack") acks.push(frame);
  }
  return acks;
}

Deno.test("a seed client beside version-2 clients gets exactly the seed's bytes", async () => {
  await using server = await startServer();
  const { client: seed, reply } = await TestClient.login(server.port);
  await using _seed = seed;
  assert.equal(JSON.stringify(reply), '{"success":true,"type":"auth_result"}');
  const { client: alice } = await v2(server.port, { name: "alice" });
  await using _alice = alice;
  await alice.send({ type: "message", content: "hi", ref: "r1" });
  const broadcast = await seed.recv();
  assert.equal(
    JSON.stringify(broadcast),
    '{"content":"hi","sender":"alice","sender_ip":"127.0.0.1","type":"message"}',
  );
  await seed.send({ type: "message", content: "from seed" });
  const toAlice = await until(alice, "message");
  assert.equal(toAlice.frame.content, "from seed");
  assert.equal(toAlice.frame.sender, "anon");
  assert.equal(typeof toAlice.frame.id, "number");
  // The seed client saw nothing else: no welcome, no joined/left, no ack.
  const { client: late } = await v2(server.port);
  await late.close();
  assert.deepEqual(await drain(seed, 300), []);
});

Deno.test("welcome lists the granted features, the member, the server and its limits", async () => {
  await using server = await startServer({ limits: { rate: 7, burst: 9 } });
  const { client: alice, welcome } = await v2(server.port, {
    name: "alice",
    features: ["presence", "bogus", 3],
  });
  await using _alice = alice;
  assert.deepEqual(welcome.features, ["presence"]);
  assert.deepEqual(welcome.limits, { max_frame: 65536, rate: 7, burst: 9 });
  assert.match(String(welcome.server), /^chat-server\/\d+\.\d+\.\d+$/);
  const member = welcome.member as Frame;
  assert.equal(member.name, "alice");
  assert.equal(member.ip, "127.0.0.1");
  assert.ok(!Number.isNaN(Date.parse(String(member.since))));
  assert.deepEqual(welcome.members, [member]);
  // history implies ids; an empty list asks for nothing but still gets a welcome.
  const { client: bob, welcome: bobWelcome } = await v2(server.port, { features: ["history"] });
  await using _bob = bob;
  assert.deepEqual(bobWelcome.features, ["ids", "history"]);
  assert.equal(bobWelcome.members, undefined);
  assert.deepEqual((await bob.recv()).type, "history_end");
  const { client: carol, welcome: carolWelcome } = await v2(server.port, { features: [] });
  await using _carol = carol;
  assert.deepEqual(carolWelcome.features, []);
  assert.equal((carolWelcome.member as Frame).name, "anon");
});

Deno.test("bad auth fields are reported after welcome and never close the connection", async () => {
  await using server = await startServer();
  const { client } = await v2(server.port, {
    name: "x".repeat(65),
    history: -1,
    after: "5",
  });
  await using _client = client;
  const errors = [await client.recv(), await client.recv(), await client.recv()];
  assert.deepEqual(errors.map((e) => e.code), [
    "invalid_message",
    "invalid_message",
    "invalid_message",
  ]);
  assert.equal((await client.recv()).type, "history_end");
  await client.send({ type: "who" });
  const who = await client.recv();
  assert.equal(who.type, "who");
  assert.equal((who.members as Frame[])[0].name, "anon");
  assert.ok(!client.closed);
});

Deno.test("ids: messages carry increasing ids and times; refs are acked, a resent ref is not broadcast again", async () => {
  await using server = await startServer();
  const { client: alice } = await v2(server.port, { name: "alice", features: ["ids"] });
  await using _alice = alice;
  const { client: bob } = await v2(server.port, { name: "bob", features: ["ids"] });
  await using _bob = bob;
  const acks = await postAcked(alice, 3, "a");
  assert.deepEqual(acks.map((ack) => ack.ref), ["a-0", "a-1", "a-2"]);
  const ids = acks.map((ack) => ack.id as number);
  assert.ok(ids[0] < ids[1] && ids[1] < ids[2], `ids increase: ${ids}`);
  for (const ack of acks) assert.match(String(ack.ts), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const received = [await bob.recv(), await bob.recv(), await bob.recv()];
  assert.deepEqual(received.map((m) => m.id), ids);
  assert.deepEqual(received.map((m) => m.ts), acks.map((a) => a.ts));
  assert.equal(received[0].sender, "alice", "the name is the default sender");
  assert.equal(received[0].replay, undefined);
  // The sender gets no copy of its own messages, only acks.
  assert.deepEqual(await drain(alice, 200), []);
  // Resending an acked ref, even from another connection: the original ack, no broadcast.
  await alice.send({ type: "message", content: "a 1 again", ref: "a-1" });
  assert.deepEqual(await alice.recv(), acks[1]);
  const { client: alice2 } = await v2(server.port, { name: "alice", features: ["ids"] });
  await using _alice2 = alice2;
  await alice2.send({ type: "message", content: "a 2 again", ref: "a-2" });
  assert.deepEqual(await alice2.recv(), acks[2]);
  // Two posts of one new ref in the same turn: one broadcast, both acked with one id.
  await alice.sendRaw(concatBytes([
    encodeFrame({ type: "message", content: "twice", ref: "t" }),
    encodeFrame({ type: "message", content: "twice", ref: "t" }),
  ]));
  const first = await alice.recv();
  const second = await alice.recv();
  assert.equal(first.type, "ack");
  assert.deepEqual(second, first);
  const live = await bob.recv();
  assert.equal(live.content, "twice");
  assert.deepEqual(await drain(bob, 200), []);
  assert.equal(server.server.stats().messages, 4);
});

Deno.test("a bad ref is refused with invalid_message carrying nothing it cannot echo", async () => {
  await using server = await startServer();
  const { client } = await v2(server.port, { features: ["ids"] });
  await using _client = client;
  await client.send({ type: "message", content: "x", ref: "" });
  const error = await client.recv();
  assert.equal(error.code, "invalid_message");
  assert.equal(error.ref, undefined);
  await client.send({ type: "message", content: 5, ref: "good" });
  const withRef = await client.recv();
  assert.equal(withRef.code, "invalid_message");
  assert.equal(withRef.ref, "good");
  assert.ok(!client.closed);
});

Deno.test("presence: joined, left with its reason, and who; who and history need their features", async () => {
  await using server = await startServer();
  const { client: alice } = await v2(server.port, { name: "alice", features: ["presence"] });
  await using _alice = alice;
  const { client: bob, welcome } = await v2(server.port, { name: "bob", features: ["presence"] });
  const bobMember = welcome.member as Frame;
  const joined = await alice.recv();
  assert.deepEqual(joined, { type: "joined", member: bobMember });
  assert.deepEqual((welcome.members as Frame[]).map((m) => m.name), ["alice", "bob"]);
  await alice.send({ type: "who" });
  const who = await alice.recv();
  assert.deepEqual((who.members as Frame[]).map((m) => m.name), ["alice", "bob"]);
  await bob.close();
  assert.deepEqual(await alice.recv(), { type: "left", member: bobMember, reason: "quit" });
  // A seed client's login and a drop are announced too.
  const { client: seed } = await TestClient.login(server.port);
  const seedJoined = await alice.recv();
  assert.equal(seedJoined.type, "joined");
  assert.equal((seedJoined.member as Frame).name, "anon");
  await seed.sendRaw(new Uint8Array([0, 0, 0, 3, 0x7b, 0x7b, 0x7b])); // invalid JSON: closes
  const left = await until(alice, "left");
  assert.equal(left.frame.reason, "dropped");
  await seed.close();
  // Without the feature, who and history are unknown types, as for a seed client.
  const { client: plain } = await v2(server.port, { features: ["ids"] });
  await using _plain = plain;
  await plain.send({ type: "who" });
  assert.equal((await plain.recv()).code, "unknown_type");
  await plain.send({ type: "history", before: 10 });
  assert.equal((await plain.recv()).code, "unknown_type");
});

Deno.test("history: the replay after welcome, with after, with 0, then paging both ways", async () => {
  await using server = await startServer({ limits: { rate: 0 } });
  const { client: writer } = await v2(server.port, { name: "w", features: ["ids"] });
  await using _writer = writer;
  const acks = await postAcked(writer, 10, "m");
  const ids = acks.map((ack) => ack.id as number);

  const { client: reader } = await v2(server.port, { history: 3 });
  await using _reader = reader;
  const replay = await until(reader, "history_end");
  assert.deepEqual(replay.before.map((m) => m.id), ids.slice(-3));
  assert.ok(replay.before.every((m) => m.replay === true && m.type === "message"));
  assert.equal(replay.before[0].sender_ip, "127.0.0.1");
  assert.deepEqual(replay.frame, { type: "history_end", count: 3, more: true });

  await reader.send({ type: "history", before: ids[7], limit: 4 });
  const back = await until(reader, "history_end");
  assert.deepEqual(back.before.map((m) => m.id), ids.slice(3, 7));
  assert.deepEqual(back.frame, { type: "history_end", count: 4, more: true });
  await reader.send({ type: "history", before: ids[3], limit: 10 });
  const oldest = await until(reader, "history_end");
  assert.deepEqual(oldest.before.map((m) => m.id), ids.slice(0, 3));
  assert.equal(oldest.frame.more, false);
  await reader.send({ type: "history", after: ids[4], limit: 3 });
  const forward = await until(reader, "history_end");
  assert.deepEqual(forward.before.map((m) => m.id), ids.slice(5, 8));
  assert.equal(forward.frame.more, true);
  await reader.send({ type: "history", after: ids[7] });
  const rest = await until(reader, "history_end");
  assert.deepEqual(rest.before.map((m) => m.id), ids.slice(8));
  assert.equal(rest.frame.more, false);
  for (const bad of [{ before: "x" }, { after: -1 }, { limit: 1.5 }, { before: 1, after: 2 }]) {
    await reader.send({ type: "history", ...bad });
    assert.equal((await reader.recv()).code, "invalid_message", JSON.stringify(bad));
  }
  await reader.send({ type: "history", before: ids[9] + 1, limit: 5000 });
  const clamped = await until(reader, "history_end");
  assert.equal(clamped.before.length, 10, "the limit is clamped to 200, not refused");

  const { client: gap } = await v2(server.port, { after: ids[6] });
  await using _gap = gap;
  const filled = await until(gap, "history_end");
  assert.deepEqual(filled.before.map((m) => m.id), ids.slice(7));
  assert.deepEqual(filled.frame, { type: "history_end", count: 3, more: false });

  const { client: none } = await v2(server.port, { history: 0 });
  await using _none = none;
  assert.deepEqual(await none.recv(), { type: "history_end", count: 0, more: true });
  assert.ok(!reader.closed && !gap.closed);
});

Deno.test("no gap and no duplicate between a replay of 1000 messages and live messages sent during it", async () => {
  await using server = await startServer({ limits: { rate: 0 } });
  const { client: writer } = await v2(server.port, { name: "w", features: ["ids"] });
  await using _writer = writer;
  const first = await postAcked(writer, 1000, "old");
  const firstId = first[0].id as number;
  // Keep sending while readers join.
  let sent = 0;
  const sending = (async () => {
    for (; sent < 300; sent++) {
      await writer.send({ type: "message", content: `live ${sent}`, ref: `live-${sent}` });
      if (sent % 20 === 0) await delay(1);
    }
  })();
  const readers: TestClient[] = [];
  for (let i = 0; i < 5; i++) {
    readers.push((await v2(server.port, { history: 1000 })).client);
    await delay(5);
  }
  await sending;
  let acked = 0;
  let lastId = 0;
  while (acked < 300) {
    const frame = await writer.recv();
    if (frame.type === "ack") {
      acked++;
      lastId = frame.id as number;
    }
  }
  for (const reader of readers) {
    const ids: number[] = [];
    let replayEnded = false;
    while (ids.length === 0 || ids[ids.length - 1] < lastId) {
      const frame = await reader.recv();
      if (frame.type === "history_end") replayEnded = true;
      else if (frame.type === "message") {
        assert.equal(frame.replay === true, !replayEnded, "replayed frames come first");
        ids.push(frame.id as number);
      }
    }
    const start = ids[0];
    assert.ok(start >= firstId, "the replay starts inside history");
    assert.deepEqual(ids, Array.from({ length: lastId - start + 1 }, (_, i) => start + i));
    await reader.close();
  }
});

Deno.test("a failing store refuses messages with unavailable, keeps everyone connected, and recovers", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-store-" });
  const store = sqliteStore(join(dir, "chat.db"), 1000);
  try {
    await using server = await startServer({ history: store });
    const { client: alice } = await v2(server.port, { name: "alice", features: ["ids"] });
    await using _alice = alice;
    const { client: bob } = await v2(server.port, { name: "bob", features: ["ids"] });
    await using _bob = bob;
    const before = await postAcked(alice, 1, "ok");
    assert.equal((await bob.recv()).content, "ok 0");
    // Another process (here: another connection) holds the write lock.
    const locker = new DatabaseSync(join(dir, "chat.db"));
    locker.exec("BEGIN IMMEDIATE");
    try {
      await alice.send({ type: "message", content: "refused", ref: "busy-1" });
      const refused = await alice.recv();
      assert.equal(refused.type, "error");
      assert.equal(refused.code, "unavailable");
      assert.equal(refused.ref, "busy-1");
      assert.deepEqual(await drain(bob, 200), [], "a refused message is not broadcast");
    } finally {
      locker.exec("ROLLBACK");
      locker.close();
    }
    const after = await postAcked(alice, 1, "busy");
    assert.equal(after[0].ref, "busy-0");
    assert.ok((after[0].id as number) > (before[0].id as number));
    const live = await bob.recv();
    assert.equal(live.content, "busy 0");
    assert.equal(live.id, (before[0].id as number) + 1, "no id was spent on the refused batch");
    assert.ok(!alice.closed && !bob.closed);
    const stats = server.server.stats();
    assert.equal(stats.refusedMessages, 1);
    assert.ok(stats.storeErrors >= 1);
  } finally {
    store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a replay or page holds at most --max-send-queue bytes, the newest first when reading back", async () => {
  await using server = await startServer({ limits: { rate: 0, maxSendQueue: 65536 } });
  const { client: writer } = await v2(server.port, { features: ["ids"] });
  await using _writer = writer;
  const big = "x".repeat(20_000);
  for (let i = 0; i < 10; i++) {
    await writer.send({ type: "message", content: `${i} ${big}`, ref: `big-${i}` });
  }
  const acks: Frame[] = [];
  while (acks.length < 10) {
    const frame = await writer.recv();
    if (frame.type === "ack") acks.push(frame);
  }
  const ids = acks.map((ack) => ack.id as number);
  const { client: reader } = await v2(server.port, { history: 10 });
  await using _reader = reader;
  const replay = await until(reader, "history_end");
  assert.deepEqual(replay.before.map((m) => m.id), ids.slice(-3), "the newest three fit");
  assert.deepEqual(replay.frame, { type: "history_end", count: 3, more: true });
  await reader.send({ type: "history", after: ids[0], limit: 200 });
  const forward = await until(reader, "history_end");
  assert.deepEqual(forward.before.map((m) => m.id), ids.slice(1, 4), "the oldest three fit");
  assert.equal(forward.frame.more, true);
  // One message larger than the whole budget still goes: a page always makes progress.
  await using tiny = await startServer({ limits: { rate: 0, maxSendQueue: 65536 } });
  const { client: w2 } = await v2(tiny.port, { features: ["ids"] });
  await using _w2 = w2;
  await w2.send({ type: "message", content: "y".repeat(65_000), ref: "huge" });
  assert.equal((await w2.recv()).type, "ack");
  const { client: r2 } = await v2(tiny.port, { history: 5 });
  await using _r2 = r2;
  const one = await until(r2, "history_end");
  assert.equal(one.before.length, 1);
  assert.deepEqual(one.frame, { type: "history_end", count: 1, more: false });
});

Deno.test("a client that asks for history and reads nothing holds back nobody but itself", async () => {
  await using server = await startServer({
    limits: { rate: 0, maxSendQueue: 65536, writeTimeoutMs: 30_000 },
  });
  const { client: writer } = await v2(server.port, { features: ["ids"] });
  await using _writer = writer;
  for (let i = 0; i < 30; i++) {
    await writer.send({ type: "message", content: `${i} ${"z".repeat(2000)}`, ref: `h-${i}` });
  }
  for (let acks = 0; acks < 30;) if ((await writer.recv()).type === "ack") acks++;
  const { client: hog } = await v2(server.port, { features: ["ids", "history"], history: 0 });
  await using _hog = hog;
  const { client: a } = await TestClient.login(server.port);
  await using _a = a;
  const { client: b } = await TestClient.login(server.port);
  await using _b = b;
  // The hog never reads: its own answers pile up in its queue (and its socket).
  for (let i = 0; i < 100; i++) await hog.send({ type: "history", limit: 200 });
  await delay(300);
  const started = performance.now();
  for (let i = 0; i < 20; i++) {
    await a.send({ type: "message", content: `ping ${i}` });
    assert.equal((await b.recv(2000)).content, `ping ${i}`);
  }
  const elapsed = performance.now() - started;
  const stats = server.server.stats();
  assert.equal(stats.holders, 0, "the hog holds nobody");
  assert.equal(stats.stalledReaders, 0);
  assert.ok(elapsed < 2000, `20 round trips took ${elapsed.toFixed(0)} ms`);
});

Deno.test("a seed client's extra fields are ignored, ref included; lone surrogates become U+FFFD everywhere", async () => {
  await using server = await startServer();
  const { client: v2c } = await v2(server.port, { features: ["ids"] });
  await using _v2c = v2c;
  await v2c.send({ type: "message", content: "first", ref: "same" });
  assert.equal((await v2c.recv()).type, "ack");
  const { client: seed } = await TestClient.login(server.port);
  await using _seed = seed;
  await seed.send({ type: "message", content: "seed says", ref: "same" });
  await seed.send({ type: "message", content: "seed again", ref: 7 });
  assert.equal((await v2c.recv()).content, "seed says");
  assert.equal((await v2c.recv()).content, "seed again");
  await seed.send({ type: "message", content: "lone \ud800 surrogate", sender: "a\udc00" });
  const live = await v2c.recv();
  assert.equal(live.content, "lone \ufffd surrogate");
  assert.equal(live.sender, "a\ufffd");
  await v2c.send({ type: "message", content: "null ref is no ref", ref: null });
  assert.equal((await seed.recv()).content, "null ref is no ref");
  const { client: reader } = await v2(server.port, { history: 1 });
  await using _reader = reader;
  await reader.recv(); // the replay of the last message: the null-ref one
  assert.equal((await reader.recv()).type, "history_end");
});

Deno.test("without a store, ids still increase from one server to the next", async () => {
  let last: number;
  {
    await using server = await startServer();
    const { client } = await v2(server.port, { features: ["ids"] });
    await using _client = client;
    last = (await postAcked(client, 2, "a"))[1].id as number;
  }
  await using server = await startServer();
  const { client } = await v2(server.port, { features: ["ids"] });
  await using _client = client;
  const [ack] = await postAcked(client, 1, "b");
  assert.ok((ack.id as number) > last, `${ack.id} > ${last}`);
});

Deno.test("a second store on the same data dir is refused at open, naming the lock", async () => {
  const dir = await Deno.makeTempDir({ prefix: "chat-store-" });
  const first = sqliteStore(join(dir, "chat.db"), 10);
  try {
    assert.throws(() => sqliteStore(join(dir, "chat.db"), 10), /another server is using it/);
  } finally {
    first.close();
  }
  const again = sqliteStore(join(dir, "chat.db"), 10); // released by close
  again.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("600 messages in one chunk: stored in bounded batches, every one acked and delivered in order", async () => {
  await using server = await startServer({ limits: { rate: 0 } });
  const { client: writer } = await v2(server.port, { features: ["ids"] });
  await using _writer = writer;
  const { client: reader } = await v2(server.port, { features: ["ids"] });
  await using _reader = reader;
  await writer.sendRaw(concatBytes(
    Array.from(
      { length: 600 },
      (_, i) => encodeFrame({ type: "message", content: `burst ${i}`, ref: `burst-${i}` }),
    ),
  ));
  const acks: number[] = [];
  while (acks.length < 600) {
    const frame = await writer.recv();
    assert.equal(frame.type, "ack");
    assert.equal(frame.ref, `burst-${acks.length}`);
    acks.push(frame.id as number);
  }
  for (let i = 0; i < 600; i++) {
    const frame = await reader.recv();
    assert.equal(frame.content, `burst ${i}`);
    assert.equal(frame.id, acks[i]);
    if (i > 0) assert.ok(acks[i] > acks[i - 1]);
  }
});
