/**
 * The cluster (`--redis`): two or three `main.ts` processes on one private `redis-server`, and
 * clients on real TLS sockets. Everything PROTOCOL.md's "Cluster (Redis)" promises, end to end.
 */
import assert from "node:assert/strict";
import {
  delay,
  type Frame,
  PASSWORD,
  type SpawnedServer,
  spawnServer,
  testCerts,
  TestClient,
  waitFor,
} from "./_helpers.ts";
import { hasRedis, TestRedis } from "./_redis.ts";
import { WsClient } from "./_ws.ts";
import { encodeFrame } from "../src/protocol/mod.ts";

const ignore = !hasRedis();
if (ignore) {
  console.warn("cluster tests skipped: redis-server is not installed (apt install redis-server)");
}

let certFiles: Promise<{ cert: string; key: string }> | undefined;

/** The test pair as files (written once per test process). */
function pairFiles(): Promise<{ cert: string; key: string }> {
  return certFiles ??= (async () => {
    const { cert, key } = await testCerts();
    const dir = await Deno.makeTempDir({ prefix: "chat-cluster-certs-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    await Deno.writeTextFile(`${dir}/cert.pem`, cert);
    await Deno.writeTextFile(`${dir}/key.pem`, key, { mode: 0o600 });
    return { cert: `${dir}/cert.pem`, key: `${dir}/key.pem` };
  })();
}

/** A node of the cluster on `redis`. */
async function node(redis: TestRedis, extra: string[] = []): Promise<SpawnedServer> {
  const { cert, key } = await pairFiles();
  return await spawnServer(
    ["--port=0", "--cert", cert, "--key", key, "--redis", redis.url, ...extra],
    { env: { CHAT_SERVER_PASSWORD: PASSWORD } },
  );
}

/** Waits until the node's log says it joined the cluster. */
async function joined(server: SpawnedServer): Promise<void> {
  assert.ok(
    await waitFor(() => /Cluster node \d+ on Redis/.test(server.output()), 10_000),
    server.output(),
  );
}

/** Two nodes on `redis` (with `extra` arguments each) that have joined the cluster. */
async function twoNodes(
  redis: TestRedis,
  extra: [string[], string[]] = [[], []],
): Promise<[SpawnedServer, SpawnedServer] & AsyncDisposable> {
  const started = await Promise.allSettled([node(redis, extra[0]), node(redis, extra[1])]);
  const nodes = started.flatMap((result) => result.status === "fulfilled" ? [result.value] : []);
  const dispose = () => Promise.all(nodes.map((n) => n[Symbol.asyncDispose]())).then(() => {});
  const failed = started.find((result) => result.status === "rejected");
  if (failed) {
    await dispose();
    throw (failed as PromiseRejectedResult).reason;
  }
  await Promise.all(nodes.map(joined));
  return Object.assign(nodes as [SpawnedServer, SpawnedServer], {
    [Symbol.asyncDispose]: dispose,
  });
}

/** Logs in with version-2 features; returns the client and its welcome. */
async function login(
  port: number,
  name: string,
  features: string[] = ["ids", "presence", "history"],
  extra: Record<string, unknown> = {},
): Promise<{ client: TestClient; welcome: Frame }> {
  const client = await TestClient.connect(port);
  await client.send({ type: "auth", password: PASSWORD, name, features, history: 0, ...extra });
  assert.deepEqual(await client.recv(), { success: true, type: "auth_result" });
  const welcome = await client.recv();
  assert.deepEqual(welcome.type, "welcome");
  return { client, welcome };
}

/** The next frame of `type`, skipping others. */
async function next(client: TestClient, type: string, timeoutMs = 5000): Promise<Frame> {
  const deadline = Date.now() + timeoutMs;
  while (true) {
    const frame = await client.recv(Math.max(1, deadline - Date.now()));
    if (frame.type === type) return frame;
  }
}

/** Skips frames until `history_end`; returns the replayed messages. */
async function replayOf(client: TestClient): Promise<Frame[]> {
  const messages: Frame[] = [];
  while (true) {
    const frame = await client.recv();
    if (frame.type === "history_end") return messages;
    if (frame.type === "message") messages.push(frame);
  }
}

/** Sends until one is acked (the cluster may still be connecting); returns the ack. */
async function sendAcked(client: TestClient, content: string, ref: string): Promise<Frame> {
  for (let attempt = 0; attempt < 100; attempt++) {
    await client.send({ type: "message", content, ref });
    const frame = await client.recv();
    if (frame.type === "ack") return frame;
    assert.deepEqual(frame.code, "unavailable", JSON.stringify(frame));
    await delay(100);
  }
  throw new Error("never acked");
}

Deno.test({
  name: "cluster: messages cross nodes both ways, with one order of ids and the seed's bytes",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using nodes = await twoNodes(redis);
    const [a, b] = nodes;
    const { client: alice } = await login(a.port, "alice", ["ids"]);
    await using _alice = alice;
    const { client: bob } = await login(b.port, "bob", ["ids"]);
    await using _bob = bob;
    await using seed = (await TestClient.login(b.port)).client;

    const ack = await sendAcked(alice, "hello from A", "r-a1");
    const atBob = await next(bob, "message");
    assert.deepEqual(atBob.content, "hello from A");
    assert.deepEqual(atBob.sender, "alice");
    assert.deepEqual(atBob.id, ack.id);
    assert.deepEqual(atBob.ts, ack.ts);
    // A seed client on the other node sees exactly the seed's bytes.
    const raw = await seed.recv();
    assert.deepEqual(raw, {
      content: "hello from A",
      sender: "alice",
      sender_ip: "127.0.0.1",
      type: "message",
    });
    assert.deepEqual(Object.keys(raw), ["content", "sender", "sender_ip", "type"]);

    const back = await sendAcked(bob, "and back from B", "r-b1");
    const atAlice = await next(alice, "message");
    assert.deepEqual(atAlice.content, "and back from B");
    assert.deepEqual(atAlice.id, back.id);
    assert.ok((back.id as number) > (ack.id as number));
    assert.deepEqual((await seed.recv()).content, "and back from B");

    // Interleaved senders on both nodes: every recipient sees one strictly increasing order.
    const { client: carol } = await login(a.port, "carol", ["ids"]);
    await using _carol = carol;
    const { client: dave } = await login(b.port, "dave", ["ids"]);
    await using _dave = dave;
    const sends: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) {
      sends.push(alice.send({ type: "message", content: `a${i}`, ref: `ia${i}` }));
      sends.push(bob.send({ type: "message", content: `b${i}`, ref: `ib${i}` }));
    }
    await Promise.all(sends);
    for (const watcher of [carol, dave]) {
      const ids: number[] = [];
      const contents: string[] = [];
      while (ids.length < 100) {
        const frame = await next(watcher, "message");
        ids.push(frame.id as number);
        contents.push(frame.content as string);
      }
      for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], `ids ${ids}`);
      // Each sender's messages in the order sent.
      assert.deepEqual(
        contents.filter((c) => c[0] === "a"),
        Array.from({ length: 50 }, (_, i) => `a${i}`),
      );
      assert.deepEqual(
        contents.filter((c) => c[0] === "b"),
        Array.from({ length: 50 }, (_, i) => `b${i}`),
      );
    }
    // Both watchers saw the same ids for the same messages.
  },
});

Deno.test({
  name: "cluster: presence and who span the nodes; quit and shutdown reach the others",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using nodes = await twoNodes(redis);
    const [a, b] = nodes;
    const { client: alice, welcome: wa } = await login(a.port, "alice", ["presence"]);
    await using _alice = alice;
    const self = wa.member as Frame;
    const { client: bob, welcome: wb } = await login(b.port, "bob", ["presence"]);
    await using _bob = bob;
    const bobMember = wb.member as Frame;
    assert.ok(bobMember.id !== self.id, "member ids are unique across nodes");
    // Alice hears of Bob on the other node.
    const seen = await next(alice, "joined");
    assert.deepEqual(seen.member, bobMember);
    // Bob's welcome may predate Alice's join reaching B; `who` is certain once it has.
    let members: Frame[] = [];
    for (let i = 0; i < 50; i++) {
      await bob.send({ type: "who" });
      members = (await next(bob, "who")).members as Frame[];
      if (members.length === 2) break;
      await delay(100);
    }
    assert.deepEqual(members.map((m) => m.name).sort(), ["alice", "bob"]);
    await alice.send({ type: "who" });
    assert.deepEqual(((await next(alice, "who")).members as Frame[]).map((m) => m.name).sort(), [
      "alice",
      "bob",
    ]);

    // A quit on A is a `left` with `quit` on B.
    const { client: carol, welcome: wc } = await login(a.port, "carol", []);
    assert.deepEqual((await next(bob, "joined")).member, wc.member);
    await carol.close();
    const left = await next(bob, "left");
    assert.deepEqual(left.member, wc.member);
    assert.deepEqual(left.reason, "quit");

    // Node A stops: its members leave with `shutdown` on B.
    a.child.kill("SIGTERM");
    assert.deepEqual((await a.exited()).code, 0);
    const gone = await next(bob, "left", 10_000);
    assert.deepEqual(gone.member, self);
    assert.deepEqual(gone.reason, "shutdown");
  },
});

Deno.test({
  name:
    "cluster: history said on A is replayed and paged on B; a ref acked on A is not sent twice from B",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using nodes = await twoNodes(redis);
    const [a, b] = nodes;
    const { client: alice } = await login(a.port, "alice", ["ids"]);
    await using _alice = alice;
    const acks: Frame[] = [];
    for (let i = 0; i < 30; i++) acks.push(await sendAcked(alice, `m${i}`, `h${i}`));

    const bob = await TestClient.connect(b.port);
    await using _bob = bob;
    await bob.send({
      type: "auth",
      password: PASSWORD,
      name: "bob",
      features: ["history"],
      history: 10,
    });
    await next(bob, "welcome");
    const replay = await replayOf(bob);
    assert.deepEqual(
      replay.map((m) => m.content),
      Array.from({ length: 10 }, (_, i) => `m${20 + i}`),
    );
    assert.deepEqual(replay.map((m) => m.id), acks.slice(20).map((a) => a.id));
    assert.ok(replay.every((m) => m.replay === true && m.sender === "alice"));

    // Page back from the oldest replayed message.
    await bob.send({ type: "history", before: replay[0].id, limit: 15 });
    const page: Frame[] = [];
    let end: Frame;
    while ((end = await bob.recv()).type !== "history_end") page.push(end);
    assert.deepEqual(page.map((m) => m.content), Array.from({ length: 15 }, (_, i) => `m${5 + i}`));
    assert.deepEqual(end.more, true);

    // `after` on login: everything after an id, said on the other node.
    const carol = await TestClient.connect(b.port);
    await using _carol = carol;
    await carol.send({
      type: "auth",
      password: PASSWORD,
      features: ["history"],
      after: acks[26].id,
    });
    await next(carol, "welcome");
    assert.deepEqual((await replayOf(carol)).map((m) => m.content), ["m27", "m28", "m29"]);

    // The same ref resent on B: the original ack, and nobody gets it twice.
    const { client: dave } = await login(b.port, "dave", ["ids"]);
    await using _dave = dave;
    await dave.send({ type: "message", content: "m5 again", ref: "h5" });
    const dup = await next(dave, "ack");
    assert.deepEqual(dup, { type: "ack", ref: "h5", id: acks[5].id, ts: acks[5].ts });
    await dave.send({ type: "message", content: "fresh", ref: "fresh-1" });
    await next(dave, "ack");
    // Alice gets only the fresh one.
    const atAlice = await next(alice, "message");
    assert.deepEqual(atAlice.content, "fresh");
    assert.deepEqual(await alice.tryRecv(300), null);
  },
});

Deno.test({
  name: "cluster: failed logins on A lock the address out on B",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    const lockout = ["--max-auth-failures", "5", "--lockout", "60"];
    await using nodes = await twoNodes(redis, [lockout, lockout]);
    const [a, b] = nodes;
    for (let i = 0; i < 5; i++) {
      const { client, reply } = await TestClient.login(a.port, "wrong password");
      assert.deepEqual(reply.success, false);
      await client.close();
    }
    const { client, reply } = await TestClient.login(b.port, PASSWORD);
    await using _client = client;
    assert.deepEqual(reply.code, "locked_out");
    assert.ok(await client.waitClosed());
  },
});

Deno.test({
  name: "cluster: a node killed with SIGKILL: its members leave with node_lost within 15 s",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using a = await node(redis);
    await using b = await node(redis);
    await using c = await node(redis);
    await Promise.all([joined(a), joined(b), joined(c)]);
    const { client: bob } = await login(b.port, "bob", ["presence"]);
    await using _bob = bob;
    const { client: carol } = await login(c.port, "carol", ["presence"]);
    await using _carol = carol;
    const { client: alice, welcome } = await login(a.port, "alice", ["presence"]);
    await using _alice = alice;
    await next(bob, "joined");
    await next(carol, "joined");
    a.child.kill("SIGKILL");
    const killed = Date.now();
    for (const watcher of [bob, carol]) {
      const left = await next(watcher, "left", 15_000 - (Date.now() - killed));
      assert.deepEqual(left.member, welcome.member);
      assert.deepEqual(left.reason, "node_lost");
    }
    assert.ok(Date.now() - killed < 15_000);
    // The survivors still chat.
    await bob.send({ type: "who" });
    assert.deepEqual(((await next(bob, "who")).members as Frame[]).map((m) => m.name).sort(), [
      "bob",
      "carol",
    ]);
  },
});

Deno.test({
  name:
    "cluster: Redis down means unavailable (nobody dropped); back within 5 s, nothing acked lost",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using nodes = await twoNodes(redis);
    const [a, b] = nodes;
    const { client: alice } = await login(a.port, "alice", ["ids"]);
    await using _alice = alice;
    const { client: bob } = await login(b.port, "bob", ["ids"]);
    await using _bob = bob;
    await using seed = (await TestClient.login(b.port)).client;
    const before = await sendAcked(alice, "before", "d-1");
    assert.deepEqual((await next(bob, "message")).id, before.id);
    await seed.recv();

    await redis.stop("SIGKILL");
    const down = Date.now();
    let refused: Frame | null = null;
    for (let i = 0; Date.now() - down < 5000; i++) {
      await alice.send({ type: "message", content: "while down", ref: `down-${i}` });
      const frame = await alice.recv();
      if (frame.type === "error") {
        refused = frame;
        break;
      }
      await delay(200);
    }
    assert.ok(refused, "refused within 5 s");
    assert.deepEqual(refused.code, "unavailable");
    await delay(1500);
    assert.ok(!alice.closed && !bob.closed && !seed.closed, "nobody was dropped");

    await redis.restart();
    const back = Date.now();
    // The client resends what was refused, with its ref, until it is acked.
    const ack = await sendAcked(alice, "after", "d-after");
    assert.ok(Date.now() - back < 5000, `acked ${Date.now() - back} ms after Redis came back`);
    const got = await next(bob, "message", 5000);
    assert.deepEqual(got.content, "after");
    assert.deepEqual(got.id, ack.id);
    assert.ok((ack.id as number) > (before.id as number));
    assert.deepEqual((await seed.recv()).content, "after");
    // What was acked before the outage is still in history.
    const carol = await TestClient.connect(b.port);
    await using _carol = carol;
    await carol.send({ type: "auth", password: PASSWORD, features: ["history"], history: 10 });
    await next(carol, "welcome");
    const contents = (await replayOf(carol)).map((m) => m.content);
    assert.ok(contents.includes("before") && contents.includes("after"), String(contents));
  },
});

Deno.test({
  name: "cluster: a node started while Redis is unreachable serves, refuses messages, then joins",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await redis.stop();
    await using a = await node(redis);
    assert.ok(await waitFor(() => /unreachable/.test(a.output()), 5000), a.output());
    const { client: alice } = await login(a.port, "alice", ["ids"]);
    await using _alice = alice;
    await alice.send({ type: "message", content: "x", ref: "s-1" });
    assert.deepEqual((await alice.recv()).code, "unavailable");
    await redis.restart();
    const back = Date.now();
    await sendAcked(alice, "now", "s-2");
    assert.ok(Date.now() - back < 5000);
    await joined(a);
  },
});

Deno.test({
  name: "cluster: --redis is checked at start",
  ignore,
  async fn() {
    for (
      const [args, message] of [
        [["--redis", "http://localhost"], /redis:\/\/ or rediss:\/\//],
        [["--redis", "not a url"], /Invalid --redis/],
        [["--redis", "redis://:p%zz@127.0.0.1:6379"], /not URL-encoded/],
        [["--redis", "redis://127.0.0.1:6379/notanumber"], /numeric db/],
        [["--redis-prefix", "x:"], /--redis-prefix needs --redis/],
      ] as const
    ) {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname, ...args],
        env: { CHAT_SERVER_PASSWORD: PASSWORD },
        stdout: "piped",
        stderr: "piped",
      });
      const { code, stderr } = await child.output();
      assert.deepEqual(code, 1);
      assert.match(new TextDecoder().decode(stderr), message);
    }
  },
});

Deno.test({
  name: "cluster: a Redis with a password or an ACL user; the credentials never reach the log",
  ignore,
  async fn() {
    await using redis = await TestRedis.start(["--requirepass", "redis-secret-1"]);
    await redis.cli(
      "-a",
      "redis-secret-1",
      "ACL",
      "SETUSER",
      "chat",
      "on",
      ">redis-secret-2",
      "~chat:*",
      "+@all",
      "-@dangerous",
    );
    const { cert, key } = await pairFiles();
    const start = (url: string) =>
      spawnServer(["--port=0", "--cert", cert, "--key", key, "--redis", url], {
        env: { CHAT_SERVER_PASSWORD: PASSWORD },
      });
    await using a = await start(`redis://:redis-secret-1@127.0.0.1:${redis.port}`);
    await using b = await start(`redis://chat:redis-secret-2@127.0.0.1:${redis.port}`);
    await joined(a);
    await joined(b);
    const { client: alice } = await login(a.port, "alice", ["ids"]);
    await using _alice = alice;
    const { client: bob } = await login(b.port, "bob", ["ids"]);
    await using _bob = bob;
    await sendAcked(bob, "through an ACL user", "acl-1");
    assert.equal((await next(alice, "message")).content, "through an ACL user");
    // A wrong password: the node serves, refuses messages, and says why without the secret.
    await using c = await start(`redis://:wrong-secret-3@127.0.0.1:${redis.port}`);
    assert.ok(await waitFor(() => /unreachable/.test(c.output()), 5000), c.output());
    for (const node of [a, b, c]) {
      assert.doesNotMatch(node.output(), /redis-secret|wrong-secret/);
    }
  },
});

/** A logged-in seed client that never reads another byte after its auth frame. */
async function stalledClient(port: number): Promise<Deno.TlsConn> {
  const { cert } = await testCerts();
  const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [cert] });
  await conn.write(encodeFrame({ type: "auth", password: PASSWORD }));
  return conn;
}

Deno.test({
  name:
    "cluster: a reader on B that never reads is dropped while A floods; B's TLS and WebSocket readers get everything; B's metrics",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using nodes = await twoNodes(redis, [
      ["--rate", "0"],
      ["--rate", "0", "--web-port", "0", "--metrics-port", "0"],
    ]);
    const [a, b] = nodes;
    const { client: reader } = await login(b.port, "reader", ["ids"]);
    await using _reader = reader;
    await using ws = await WsClient.login(b.webPort, {
      password: PASSWORD,
      name: "browser",
      features: ["ids"],
    });
    assert.equal((await ws.recv()).type, "auth_result");
    assert.equal((await ws.recv()).type, "welcome");
    using stalled = await stalledClient(b.port);
    await using sender = (await TestClient.login(a.port)).client;
    // Everyone is a member on B before the flood starts.
    await delay(300);

    const count = 300;
    const body = "x".repeat(60_000);
    const sending = (async () => {
      for (let i = 0; i < count; i++) {
        await sender.send({ type: "message", content: `${i}:${body}` });
      }
    })();
    const expect = async (recv: () => Promise<Frame>) => {
      for (let i = 0; i < count; i++) {
        let frame = await recv();
        while (frame.type !== "message") frame = await recv();
        assert.equal((frame.content as string).slice(0, String(i).length + 1), `${i}:`);
      }
    };
    await Promise.all([
      sending,
      expect(() => reader.recv(20_000)),
      expect(() => ws.recv(20_000)),
    ]);
    // The stalled reader was dropped (the stream waited for it about a second).
    const buffer = new Uint8Array(1 << 20);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) =>
      timer = setTimeout(resolve, 10_000, "timeout")
    );
    let closed = false;
    while (true) {
      const read = stalled.read(buffer).catch(() => null);
      const n = await Promise.race([read, timeout]);
      if (n === "timeout") {
        stalled.close();
        await read;
        break;
      }
      if (n === null) {
        closed = true;
        break;
      }
    }
    clearTimeout(timer);
    assert.ok(closed, "the stalled reader on B was never disconnected");

    const url = /metrics at (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(b.output())![1];
    const metrics = await (await fetch(url)).text();
    assert.match(metrics, /^chat_redis_up 1$/m);
    assert.match(metrics, /^chat_cluster_nodes 2$/m);
    assert.match(metrics, /^chat_cluster_remote_members \d+$/m);
    assert.match(metrics, /^chat_clients_dropped_total\{reason="stalled_reader"\} 1$/m);
    // Delivered on B: to the reader, the browser, and what the stalled reader got queued.
    const deliveries = Number(/^chat_deliveries_total (\d+)$/m.exec(metrics)![1]);
    assert.ok(deliveries >= 2 * count, String(deliveries));
  },
});

Deno.test({
  name:
    "cluster: Redis back with older data (a rewind): new ids stay above every id given, and are delivered",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using nodes = await twoNodes(redis);
    const [a, b] = nodes;
    const { client: alice } = await login(a.port, "alice", ["ids"]);
    await using _alice = alice;
    const { client: bob } = await login(b.port, "bob", ["ids"]);
    await using _bob = bob;
    const acks: Frame[] = [];
    for (let i = 0; i < 5; i++) {
      acks.push(await sendAcked(alice, `before ${i}`, `rw${i}`));
      await next(bob, "message");
    }
    // What a restore from an older snapshot looks like: the last three messages and the counter
    // as they were before them.
    await redis.cli("XDEL", "chat:messages", ...acks.slice(2).map((a) => `${a.id}-0`));
    await redis.cli("SET", "chat:seq", String(acks[1].id));
    for (let i = 0; i < 3; i++) {
      const ack = await sendAcked(alice, `after ${i}`, `rw-after${i}`);
      assert.ok((ack.id as number) > (acks[4].id as number), `${ack.id} reuses an old id`);
      const got = await next(bob, "message");
      assert.equal(got.content, `after ${i}`);
      assert.equal(got.id, ack.id);
    }
    // History still has what Redis kept, across the jump of the counter.
    const carol = await TestClient.connect(b.port);
    await using _carol = carol;
    await carol.send({ type: "auth", password: PASSWORD, features: ["history"], history: 10 });
    await next(carol, "welcome");
    assert.deepEqual((await replayOf(carol)).map((m) => m.content), [
      "before 0",
      "before 1",
      "after 0",
      "after 1",
      "after 2",
    ]);
    await carol.send({
      type: "history",
      before: (await sendAcked(alice, "x", "rw-x")).id,
      limit: 3,
    });
    const page: Frame[] = [];
    let end: Frame;
    while ((end = await carol.recv()).type !== "history_end") {
      if (end.replay) page.push(end);
    }
    assert.deepEqual(page.map((m) => m.content), ["after 0", "after 1", "after 2"]);
    assert.equal(end.more, true);
  },
});

Deno.test({
  name:
    "cluster: Redis down for longer than a node's lifetime: nobody is announced lost, presence stays whole",
  ignore,
  async fn() {
    await using redis = await TestRedis.start();
    await using nodes = await twoNodes(redis);
    const [a, b] = nodes;
    const { client: alice } = await login(a.port, "alice", ["presence"]);
    await using _alice = alice;
    const { client: bob } = await login(b.port, "bob", ["presence"]);
    await using _bob = bob;
    await next(alice, "joined");
    await redis.stop("SIGKILL");
    await delay(9500); // every node key (8 s) has expired when Redis comes back
    await redis.restart();
    // Both nodes register again; neither may reap the other meanwhile.
    assert.ok(
      await waitFor(() => (a.output().match(/reachable again/g) ?? []).length > 0, 5000),
    );
    await delay(9000); // past the grace after reconnecting: a reap would have happened by now
    for (const [client, names] of [[alice, ["alice", "bob"]], [bob, ["alice", "bob"]]] as const) {
      await client.send({ type: "who" });
      let frame = await client.recv();
      while (frame.type !== "who") {
        assert.notEqual(frame.type, "left", JSON.stringify(frame));
        frame = await client.recv();
      }
      assert.deepEqual((frame.members as Frame[]).map((m) => m.name).sort(), names);
    }
  },
});
