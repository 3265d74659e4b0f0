/**
 * Member lists: encoded once per member, sent in one frame while they fit (byte for byte as
 * before parts existed) and in parts of at most `MEMBERS_PART_BYTES` when they do not.
 */
import assert from "node:assert/strict";
import {
  encodeWelcomeList,
  encodeWhoList,
  MemberList,
  MEMBERS_PART_BYTES,
} from "../src/room/members.ts";
import {
  encodeFrame,
  HEADER_SIZE,
  type JsonObject,
  type MemberInfo,
  memberJson,
} from "../src/protocol/mod.ts";
import { ChatLink } from "../src/client/link.ts";
import { ChatView } from "../src/client/view.ts";
import { MAX_LIST_MEMBERS, MemberParts, Pacer, parseWelcome } from "../src/client/v2.ts";
import {
  MAX_LIST_MEMBERS as WEB_MAX_LIST_MEMBERS,
  MemberParts as WebMemberParts,
} from "../web/members.js";
import {
  concatBytes,
  delay,
  type Frame,
  PASSWORD,
  startServer,
  testCerts,
  TestClient,
  waitFor,
} from "./_helpers.ts";
import { hasRedis, TestRedis } from "./_redis.ts";

/** 64 characters of 4 bytes each in UTF-8, unique per `n`. */
export function longName(n: number): string {
  const digits = [...String(n).padStart(6, "0")].map((d) => String.fromCodePoint(0x1d7ce + +d));
  return "\u{1F600}".repeat(64 - digits.length) + digits.join("");
}

function member(id: number, name = `user ${id}`): MemberInfo {
  return { id, name, ip: "203.0.113.7", since: 1_700_000_000_000 + id };
}

/** The frame's body, parsed, after checking its length prefix. */
function body(frame: Uint8Array): JsonObject {
  const length = new DataView(frame.buffer, frame.byteOffset).getUint32(0);
  assert.equal(length, frame.length - HEADER_SIZE);
  return JSON.parse(new TextDecoder().decode(frame.subarray(HEADER_SIZE)));
}

function text(frame: Uint8Array): string {
  return new TextDecoder().decode(frame.subarray(HEADER_SIZE));
}

/** Reassembles the members of a list's frames, checking the parts rule on the way. */
function reassemble(frames: Uint8Array[], first: "welcome" | "who"): JsonObject[] {
  const members: JsonObject[] = [];
  frames.forEach((frame, i) => {
    assert.ok(frame.length - HEADER_SIZE <= MEMBERS_PART_BYTES, `part ${i}: ${frame.length}`);
    const value = body(frame);
    members.push(...value.members as JsonObject[]);
    const last = i === frames.length - 1;
    if (i === 0 && first === "welcome") {
      assert.equal(value.type, "welcome");
      assert.equal(value.members_more, frames.length > 1 ? true : undefined);
    } else {
      assert.equal(value.type, "who");
      assert.equal(value.more, frames.length === 1 ? undefined : !last);
    }
  });
  return members;
}

const WELCOME = {
  type: "welcome",
  server: "chat-server/2.0.0",
  limits: { max_frame: 65536, rate: 20, burst: 50 },
  features: ["presence"],
  member: memberJson(member(1)),
};

Deno.test("a member list that fits is one frame, byte for byte JSON.stringify's", () => {
  const list = new MemberList();
  const members = [
    member(1, "alice"),
    member(2, 'quote " and \\ and \u2028 and é'),
    member(3, "\u{1F600}".repeat(64)),
  ];
  for (const m of members) list.add(m);
  assert.equal(list.add(member(2)), false, "an id is in the list once");
  const who = encodeWhoList([list]);
  assert.equal(who.length, 1);
  assert.equal(text(who[0]), JSON.stringify({ type: "who", members: members.map(memberJson) }));
  const welcome = encodeWelcomeList(WELCOME, [list]);
  assert.equal(welcome.length, 1);
  assert.equal(
    text(welcome[0]),
    JSON.stringify({ ...WELCOME, members: members.map(memberJson) }),
  );
  // Empty lists, and lists split over several MemberLists (a cluster's local and remote ones).
  assert.equal(text(encodeWhoList([new MemberList()])[0]), '{"type":"who","members":[]}');
  const remote = new MemberList();
  remote.add(member(9));
  assert.equal(
    text(encodeWhoList([new MemberList(), list, remote])[0]),
    JSON.stringify({ type: "who", members: [...members, member(9)].map(memberJson) }),
  );
});

Deno.test("a member list too large for one frame goes in parts that reassemble in order", () => {
  const list = new MemberList();
  const members: MemberInfo[] = [];
  for (let id = 1; id <= 3300; id++) {
    members.push(member(id, longName(id)));
    list.add(members[id - 1]);
  }
  const expected = members.map(memberJson);
  const whole = JSON.stringify({ type: "who", members: expected });
  assert.ok(new TextEncoder().encode(whole).length > 1024 * 1024, "more than a client accepts");
  const who = encodeWhoList([list]);
  assert.ok(who.length >= 4, `${who.length} parts`);
  assert.deepEqual(reassemble(who, "who"), expected);
  const welcome = encodeWelcomeList(WELCOME, [list]);
  assert.deepEqual(reassemble(welcome, "welcome"), expected);
  const first = body(welcome[0]);
  assert.deepEqual(first.member, WELCOME.member);
  assert.equal(first.server, WELCOME.server);
  // The parts after the first are the same frames (the same memory) for every client.
  assert.equal(encodeWhoList([list])[1], who[1]);
  assert.equal(welcome[1], who[1]);
});

Deno.test("member lists stay in joining order and nearly full parts through joins and leaves", () => {
  const list = new MemberList();
  const present = new Map<number, MemberInfo>();
  let next = 0;
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let round = 0; round < 40; round++) {
    for (let i = 0; i < 300; i++) {
      const m = member(++next, random() < 0.5 ? longName(next) : `u${next}`);
      present.set(m.id, m);
      list.add(m);
      // Joins after a list was built extend the buckets' bytes in place.
      if (i % 100 === 99) {
        assert.deepEqual(
          reassemble(encodeWhoList([list]), "who"),
          [...present.values()].map(memberJson),
        );
      }
    }
    for (const id of [...present.keys()]) {
      if (random() < 0.45) {
        present.delete(id);
        assert.equal(list.delete(id), true);
      }
    }
    assert.equal(list.delete(-1), false);
    assert.equal(list.size, present.size);
    const expected = [...present.values()].map(memberJson);
    const frames = encodeWhoList([list]);
    assert.deepEqual(reassemble(frames, "who"), expected);
    // Neighbouring parts never fit in one: the parts are about half full at worst.
    const bytes = new TextEncoder().encode(JSON.stringify(expected)).length;
    const bound = frames.length === 1 ? 1 : 2 * Math.ceil(bytes / (MEMBERS_PART_BYTES - 4096)) + 1;
    assert.ok(frames.length <= bound, `${frames.length} parts for ${bytes} bytes`);
  }
});

// ---- clients ----

const A = { id: 1, name: "a", ip: "10.0.0.1", since: "2026-01-01T00:00:00.000Z" };
const B = { id: 2, name: "b", ip: "10.0.0.2", since: "2026-01-01T00:00:00.000Z" };
const C = { id: 3, name: "c", ip: "10.0.0.3", since: "2026-01-01T00:00:00.000Z" };
const welcomeOf = (members: unknown, more?: boolean) => ({
  type: "welcome",
  features: ["presence"],
  member: A,
  members,
  ...(more === undefined ? {} : { members_more: more }),
});
const whoOf = (members: unknown, more?: boolean) => ({
  type: "who",
  members,
  ...(more === undefined ? {} : { more }),
});

/**
 * Frames, and the list each completes (ids; `null`: none), as both clients (terminal and web)
 * must assemble them.
 */
const ASSEMBLY: [Frame, number[] | null][] = [
  [welcomeOf([A, B]), [1, 2]], // a whole list, as before parts existed
  [welcomeOf([A], true), null], // the first part...
  [{ type: "joined", member: C }, null], // (not a list frame)
  [whoOf([B], true), null],
  [whoOf([C], false), [1, 2, 3]], // ...completed by the last
  [whoOf([C, B]), [3, 2]], // a `who` answered in one frame
  [whoOf([A], true), null],
  [whoOf("junk", true), null], // a malformed part adds nothing
  [whoOf([B, { id: "x" }, null], false), [1, 2]], // malformed members are skipped
  [whoOf([A], true), null],
  [whoOf([B]), [2]], // a whole list cuts an unfinished one short
  [whoOf([C], false), [3]], // an end without a start is a list of its own
  [welcomeOf([A], true), null],
  [welcomeOf([B], true), null], // a new login starts afresh
  [whoOf([C], false), [2, 3]],
  [welcomeOf(undefined), null], // a welcome without presence
  [{ type: "who" }, []],
];

Deno.test("the client library assembles member lists from their parts, defensively", () => {
  const parts = new MemberParts();
  for (const [i, [frame, ids]] of ASSEMBLY.entries()) {
    const done = parts.add(frame);
    assert.deepEqual(done?.members.map((member) => member.id) ?? null, ids, `frame ${i}`);
  }
  const welcome = parts.add(welcomeOf([A], true));
  assert.equal(welcome, undefined);
  assert.equal(parts.pending, "welcome");
  assert.equal(parts.add(whoOf([B], false))?.answers, "welcome");
  parts.add(whoOf([A], true));
  assert.equal(parts.pending, "who");
  parts.reset(); // a new connection
  assert.deepEqual(parts.add(whoOf([B], false))?.members, [{ id: 2, name: "b", ip: "10.0.0.2" }]);
  assert.equal(parseWelcome(welcomeOf([A], true))?.membersMore, true);
  assert.equal(parseWelcome(welcomeOf([A]))?.membersMore, false);
  // A server that never ends a list fills it no further than MAX_LIST_MEMBERS.
  const endless = new MemberParts();
  const many = Array.from({ length: 1000 }, (_, i) => ({ ...A, id: i }));
  for (let i = 0; i < MAX_LIST_MEMBERS / 1000 + 5; i++) endless.add(whoOf(many, true));
  assert.equal(endless.add(whoOf(many, false))?.members.length, MAX_LIST_MEMBERS);
  // A member with a name far over the protocol's 64 characters is malformed, not kept.
  const huge = { id: 9, name: "x".repeat(100_000), ip: "10.0.0.9" };
  assert.deepEqual(
    new MemberParts().add(whoOf([A, huge], false))?.members.map((member) => member.id),
    [1],
  );
});

Deno.test("the web client assembles member lists from their parts, defensively", () => {
  const parts = new WebMemberParts();
  for (const [i, [frame, ids]] of ASSEMBLY.entries()) {
    const done = parts.add(frame) as { id?: unknown }[] | undefined;
    const got = done?.flatMap((member) => typeof member?.id === "number" ? [member.id] : []);
    assert.deepEqual(got ?? null, ids, `frame ${i}`);
  }
  parts.add(welcomeOf([A], true));
  assert.equal(parts.pending, true);
  parts.reset();
  assert.equal(parts.pending, false);
  assert.equal(parts.add(null), undefined);
  assert.equal(WEB_MAX_LIST_MEMBERS, MAX_LIST_MEMBERS);
  // Parts keep no member whose name is far over 64 characters (memory of a hostile list).
  const huge = { id: 9, name: "x".repeat(100_000), ip: "10.0.0.9" };
  parts.add(whoOf([A, huge], true));
  const done = parts.add(whoOf([B], false)) as { id?: unknown }[] | undefined;
  assert.deepEqual(done?.map((member) => member.id), [1, 2]);
});

Deno.test("the client's pacer pays for a who answered in parts", () => {
  let now = 0;
  const pacer = new Pacer({ rate: 20, burst: 50 }, () => now);
  assert.equal(pacer.take(), 0);
  pacer.charge(30); // 24 left, 30 taken: 6 owed
  assert.equal(
    pacer.take(),
    Math.ceil(7 * 1000 / 18),
    "waits until the debt is paid and a token is back",
  );
  now += 389;
  assert.equal(pacer.take(), 0);
  // Parts nobody asked for put it at most a minute in debt (18 tokens/s here).
  pacer.charge(1_000_000);
  assert.ok(pacer.take() <= 61_000, "a minute of debt at most");
  const unlimited = new Pacer({ rate: 0, burst: 0 }, () => now);
  unlimited.charge(1000);
  assert.equal(unlimited.take(), 0);
});

// ---- over TLS ----

/** Logs in `count` clients without features, named by `name(i)`, `batch` at a time. */
async function fill(
  port: number,
  count: number,
  name: (i: number) => string,
  batch = 100,
): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  for (let from = 0; from < count; from += batch) {
    const logins = [];
    for (let i = from; i < Math.min(count, from + batch); i++) {
      logins.push((async () => {
        const client = await TestClient.connect(port);
        await client.send({ type: "auth", password: PASSWORD, name: name(i) });
        assert.equal((await client.recv(20_000)).success, true);
        return client;
      })());
    }
    clients.push(...await Promise.all(logins));
  }
  return clients;
}

/** Logs in with presence; returns the client and its welcome. */
async function presence(
  port: number,
  name: string,
): Promise<{ client: TestClient; welcome: Frame }> {
  const client = await TestClient.connect(port);
  await client.send({ type: "auth", password: PASSWORD, name, features: ["presence"] });
  assert.deepEqual(await client.recv(), { success: true, type: "auth_result" });
  const welcome = await client.recv();
  assert.equal(welcome.type, "welcome");
  return { client, welcome };
}

/** UTF-8 size of a received frame's body (the server's JSON, which JSON.stringify gives back). */
function size(frame: Frame): number {
  return new TextEncoder().encode(JSON.stringify(frame)).length;
}

/**
 * Takes the rest of a member list whose first frame is `first` (a welcome, or a `who`): every
 * part must come next, back to back, each at most MEMBERS_PART_BYTES. Returns the members.
 */
async function listOf(client: TestClient, first: Frame, timeoutMs = 20_000): Promise<Frame[]> {
  const members = [...first.members as Frame[]];
  assert.ok(size(first) <= MEMBERS_PART_BYTES, `first frame: ${size(first)} bytes`);
  let more = first.type === "welcome" ? first.members_more === true : first.more === true;
  while (more) {
    const part = await client.recv(timeoutMs);
    assert.equal(part.type, "who", "a frame came between the parts of a list");
    assert.ok(size(part) <= MEMBERS_PART_BYTES, `part: ${size(part)} bytes`);
    members.push(...part.members as Frame[]);
    assert.equal(typeof part.more, "boolean");
    more = part.more === true;
  }
  return members;
}

Deno.test("a member list of more than 1 MiB comes in parts that reassemble to who is logged in, to TLS clients and the client library", async () => {
  await using server = await startServer({ limits: { maxPerIp: 0 } });
  const { client: observer, welcome: observed } = await presence(server.port, "observer");
  await using _observer = observer;
  const fillers = await fill(server.port, 3200, longName);
  try {
    // What the room holds, in order, as the observer learnt it from `joined` frames.
    const expected = [observed.member as Frame];
    while (expected.length <= 3200) {
      const joined = await observer.recv(20_000);
      assert.equal(joined.type, "joined");
      expected.push(joined.member as Frame);
    }
    const { client: reader, welcome } = await presence(server.port, "reader");
    await using _reader = reader;
    expected.push(welcome.member as Frame);
    assert.ok(
      size({ type: "who", members: expected }) > 1024 * 1024,
      "the whole list would pass the 1 MiB a client accepts",
    );
    assert.equal(welcome.members_more, true);
    assert.deepEqual(welcome.member, expected[3201]);
    assert.deepEqual(await listOf(reader, welcome), expected);
    // `who`, twice in one write: two lists, each whole and back to back.
    await reader.sendRaw(concatBytes([encodeFrame({ type: "who" }), encodeFrame({ type: "who" })]));
    for (let i = 0; i < 2; i++) {
      const first = await reader.recv();
      assert.equal(first.type, "who");
      assert.equal(first.more, true);
      assert.deepEqual(await listOf(reader, first), expected);
    }
    assert.equal(await reader.tryRecv(200), null);
    assert.equal((await observer.recv()).type, "joined"); // the reader

    // The client library: the list at login, then /who, each once complete.
    const notes: string[] = [];
    const view = new ChatView({ chat: () => {}, note: (line) => notes.push(line) }, {
      history: 0,
      commands: true,
      send: (frame) => link.request(frame),
    });
    const link = new ChatLink({
      host: "127.0.0.1",
      port: server.port,
      password: PASSWORD,
      hello: { name: "library", features: ["presence"] },
    }, {
      onFrame: (frame) => view.onFrame(frame),
      onStatus: () => {},
    });
    try {
      await link.start();
      const second = expected[1].name;
      const here = `* ${expected.length + 1} here: observer (127.0.0.1), ${second} (127.0.0.1)`;
      assert.ok(await waitFor(() => notes.length === 1, 20_000), notes.join("\n").slice(0, 200));
      assert.ok(notes[0].startsWith(here), notes[0].slice(0, 200));
      assert.ok(notes[0].endsWith("reader (127.0.0.1), library (127.0.0.1, you)"));
      view.requestWho();
      assert.ok(await waitFor(() => notes.length === 2, 20_000));
      assert.equal(notes[1], notes[0]);
    } finally {
      await link.close();
    }
  } finally {
    await Promise.all(fillers.map((client) => client.close()));
  }
});

// ---- a cluster room of 20,000 (members of a node that exists only in Redis) ----

/** The Redis protocol's form of one command. */
function command(...args: string[]): string {
  const encoder = new TextEncoder();
  return `*${args.length}\r\n${
    args.map((arg) => `$${encoder.encode(arg).length}\r\n${arg}\r\n`).join("")
  }`;
}

/** A TLS client logged in with presence that never reads a byte; `then` more frames. */
async function nonReader(port: number, ...then: unknown[]): Promise<Deno.TlsConn> {
  const { cert } = await testCerts();
  const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [cert] });
  const auth = { type: "auth", password: PASSWORD, name: "sleeper", features: ["presence"] };
  await conn.write(concatBytes([auth, ...then].map((frame) => encodeFrame(frame))));
  return conn;
}

Deno.test({
  name:
    "20,000 members with 64-character names: a reader gets the whole list, a non-reader is dropped, holding nobody, a who loop is bounded",
  ignore: !hasRedis(),
  async fn() {
    await using redis = await TestRedis.start();
    // A live node (its heartbeat key outlives the test) whose members are all in Redis.
    const node = 2_000_000;
    const seeded = new Map<number, string>();
    let input = command("SADD", "chat:nodes", String(node)) +
      command("SET", `chat:node:${node}`, "1", "PX", "300000");
    for (let n = 1; n <= 20_000; n++) {
      const id = node * 2 ** 32 + n;
      seeded.set(id, longName(n));
      const json = JSON.stringify({ id, name: longName(n), ip: "198.51.100.7", since: n, node });
      input += command("HSET", `chat:members:${node}`, String(id), json);
    }
    const cli = new Deno.Command("redis-cli", {
      args: ["-p", String(redis.port), "--pipe"],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const writer = cli.stdin.getWriter();
    await writer.write(new TextEncoder().encode(input));
    await writer.close();
    assert.equal((await cli.status).success, true);

    await using server = await startServer({
      redis: { url: redis.url },
      limits: { rate: 2, burst: 50, writeTimeoutMs: 3000 },
    });
    const loaded = await waitFor(
      () => server.server.stats().cluster?.remoteMembers === 20_000,
      20_000,
    );
    assert.ok(loaded, `${server.server.stats().cluster?.remoteMembers} remote members`);

    // A reader gets all 20,001 in parts of at most 256 KiB.
    const { client: reader, welcome } = await presence(server.port, "reader");
    await using _reader = reader;
    const members = await listOf(reader, welcome);
    assert.equal(members.length, 20_001);
    assert.deepEqual(members[0], welcome.member, "this node's members come first");
    assert.deepEqual(
      new Map(members.slice(1).map((member) => [member.id as number, member.name as string])),
      seeded,
    );
    const list = size({ type: "who", members });
    assert.ok(list > 6_000_000, `${list} bytes`);

    // A client that never reads: its list waits in its queue (and the kernel's buffers) but
    // holds nobody back; the room goes on, and the client is dropped under the usual rules.
    const sleeper = await nonReader(server.port);
    const joined = await reader.recv();
    assert.equal(joined.type, "joined");
    const { client: sender } = await TestClient.login(server.port);
    await using _sender = sender;
    assert.equal((await reader.recv()).type, "joined");
    for (let i = 0; i < 5; i++) await sender.send({ type: "message", content: `hello ${i}` });
    for (let i = 0; i < 5; i++) assert.equal((await reader.recv()).content, `hello ${i}`);
    let stats = server.server.stats();
    assert.equal(stats.holders, 0, "a queued member list holds the room");
    assert.equal(stats.senderPauses, 0);
    assert.ok(stats.queuedBytes > 1024 * 1024, `${stats.queuedBytes} bytes queued`);
    const left = await reader.recv(10_000);
    assert.deepEqual(left, { type: "left", member: joined.member, reason: "dropped" });
    stats = server.server.stats();
    assert.equal(stats.writeTimeouts + stats.stalledReaders, 1);
    sleeper.close();

    // `who` in a loop from a client that does not read: one list is queued at a time, and
    // nothing more is read from it meanwhile.
    const looper = await nonReader(server.port, ...Array(20).fill({ type: "who" }));
    assert.equal((await reader.recv()).type, "joined");
    await delay(500);
    stats = server.server.stats();
    assert.ok(stats.queuedBytes < list + 1024 * 1024, `${stats.queuedBytes} bytes queued`);
    looper.close();
    assert.equal((await reader.recv(10_000)).type, "left");

    // `who` in a loop from a client that reads: each list whole; an answer in N parts costs N
    // tokens (--rate 2, --burst 50: two answers of 27 parts, then rate_limited).
    const { client: asker, welcome: hello } = await presence(server.port, "asker");
    await using _asker = asker;
    assert.equal((await listOf(asker, hello)).length, 20_003);
    assert.equal((await reader.recv()).type, "joined");
    await asker.sendRaw(concatBytes(Array.from({ length: 5 }, () => encodeFrame({ type: "who" }))));
    for (let i = 0; i < 2; i++) {
      const first = await asker.recv(10_000);
      assert.equal(first.type, "who", JSON.stringify(first).slice(0, 100));
      assert.equal(first.more, true);
      assert.equal((await listOf(asker, first)).length, 20_003);
    }
    assert.equal((await asker.recv()).code, "rate_limited");
    assert.equal(await asker.tryRecv(300), null);

    // A client that reads, but slowly (2 MB/s), and asks `who` every 1.5 s (within its rate)
    // keeps a 7 MB list queued ahead of the room's frames while a sender posts 60 KB messages
    // at 20/s: its queue fills and holds the room, and its lists' progress must not count as
    // relieving it. It is dropped as a stalled reader, and the room goes on. (Before the room's
    // frames were timed apart: 72 of 194 messages reached a fast reader in 10 s, a 3.9 s gap,
    // and the slow client stayed.) On a second node with the default rate and burst.
    await using node2 = await startServer({ redis: { url: redis.url }, limits: { maxPerIp: 0 } });
    assert.ok(await waitFor(() => (node2.server.stats().cluster?.remoteMembers ?? 0) >= 20_000));
    const { client: fast } = await TestClient.login(node2.port);
    await using _fast = fast;
    const { client: poster } = await TestClient.login(node2.port);
    await using _poster = poster;
    const slow = await nonReader(node2.port);
    let stop = false;
    const slowReads = (async () => {
      const chunk = new Uint8Array(32 * 1024);
      const start = Date.now();
      let bytes = 0;
      let whoAt = 0;
      try {
        let n: number | null;
        while (!stop && (n = await slow.read(chunk)) !== null) {
          bytes += n;
          await delay(start + bytes / 2_000_000 * 1000 - Date.now());
          if (Date.now() - whoAt > 1500) {
            whoAt = Date.now();
            await slow.write(encodeFrame({ type: "who" }));
          }
        }
      } catch {
        // Dropped: the server closed it.
      }
    })();
    await delay(300);
    const content = "x".repeat(60_000);
    const runMs = 5000;
    const t0 = Date.now();
    let sent = 0;
    const posting = (async () => {
      while (Date.now() - t0 < runMs) {
        await poster.send({ type: "message", content });
        sent++;
        await delay(50);
      }
    })();
    let got = 0;
    let maxGap = 0;
    let last = Date.now();
    while (Date.now() - t0 < runMs + 1000) {
      const frame = await fast.tryRecv(200);
      if (frame?.type !== "message") continue;
      got++;
      maxGap = Math.max(maxGap, Date.now() - last);
      last = Date.now();
    }
    await posting;
    stop = true;
    slow.close();
    await slowReads;
    assert.equal(node2.server.stats().stalledReaders, 1, "the slow client was dropped");
    assert.equal(got, sent, `${got} of ${sent} messages reached the fast reader`);
    assert.ok(maxGap < 2500, `the room waited ${maxGap} ms`);
  },
});
