/**
 * History through the real command line: an acked message survives `kill -9` of the server and
 * a restart, ids keep increasing, a corrupt database stops the start with a clear error, and a
 * run without write permission keeps history in memory after one warning.
 */
import assert from "node:assert/strict";
import { PASSWORD, spawnServer, testCerts, TestClient } from "./_helpers.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function tempSetup(): Promise<{ dir: string; args: string[] }> {
  const { dir: certs } = await testCerts();
  const dir = await Deno.makeTempDir({ prefix: "chat-history-" });
  await Deno.mkdir(`${dir}/certs`);
  await Deno.copyFile(`${certs}/cert.pem`, `${dir}/certs/cert.pem`);
  await Deno.copyFile(`${certs}/key.pem`, `${dir}/certs/key.pem`);
  await Deno.writeTextFile(`${dir}/password`, PASSWORD);
  return {
    dir,
    args: [
      "--port",
      "0",
      "--cert-dir",
      `${dir}/certs`,
      "--password-file",
      `${dir}/password`,
      "--data-dir",
      `${dir}/data`,
      "--rate",
      "0",
    ],
  };
}

async function login(port: number, extra: Record<string, unknown>): Promise<TestClient> {
  const client = await TestClient.connect(port);
  await client.send({ type: "auth", password: PASSWORD, features: ["ids", "history"], ...extra });
  assert.equal((await client.recv()).success, true);
  assert.equal((await client.recv()).type, "welcome");
  return client;
}

Deno.test("every acked message survives kill -9 and a restart, in order, and ids keep increasing", async () => {
  const { dir, args } = await tempSetup();
  try {
    const acked = new Map<number, string>(); // id -> ref
    {
      await using server = await spawnServer(args);
      const client = await login(server.port, { history: 0 });
      assert.equal((await client.recv()).type, "history_end");
      let sent = 0;
      // Stream messages in bursts and kill the server while acks are still arriving.
      const streaming = (async () => {
        try {
          while (true) {
            const burst = [];
            for (let i = 0; i < 50; i++, sent++) {
              burst.push(client.send({ type: "message", content: `m${sent}`, ref: `r${sent}` }));
            }
            await Promise.all(burst);
            await new Promise((resolve) => setTimeout(resolve, 2));
          }
        } catch {
          // The server died under us.
        }
      })();
      while (acked.size < 2000) {
        const frame = await client.recv();
        if (frame.type === "ack") acked.set(frame.id as number, frame.ref as string);
      }
      server.child.kill("SIGKILL");
      // Acks that were already on their way still count: they were sent after the commit.
      for (let frame = await client.tryRecv(500); frame; frame = await client.tryRecv(500)) {
        if (frame.type === "ack") acked.set(frame.id as number, frame.ref as string);
      }
      await client.close();
      await streaming;
      assert.ok(sent > acked.size, "the kill came while messages were still unacked");
    }
    await using again = await spawnServer(args);
    const maxAcked = Math.max(...acked.keys());
    const reader = await login(again.port, { after: 0 });
    const stored = new Map<number, string>();
    let lastId = 0;
    let more = true;
    while (more) {
      const frame = await reader.recv();
      if (frame.type === "message") {
        assert.ok((frame.id as number) > lastId, "replayed in id order");
        lastId = frame.id as number;
        stored.set(lastId, frame.content as string);
      } else if (frame.type === "history_end") {
        more = frame.more as boolean;
        if (more) await reader.send({ type: "history", after: lastId, limit: 200 });
      }
    }
    for (const [id, ref] of acked) {
      assert.equal(stored.get(id), `m${ref.slice(1)}`, `acked message ${id} (${ref}) is stored`);
    }
    await reader.send({ type: "message", content: "after restart", ref: "new" });
    const ack = await reader.recv();
    assert.equal(ack.type, "ack");
    assert.ok((ack.id as number) > Math.max(maxAcked, lastId), "ids keep increasing");
    // A ref acked before the crash is still known: resending it is not a new message.
    const [oldId, oldRef] = [...acked][0];
    await reader.send({ type: "message", content: "dup", ref: oldRef });
    const dup = await reader.recv();
    assert.equal(dup.id, oldId);
    await reader.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts refuses to start on a corrupt history database, naming it, with exit 1", async () => {
  const { dir, args } = await tempSetup();
  try {
    await Deno.mkdir(`${dir}/data`);
    await Deno.writeFile(`${dir}/data/chat.db`, crypto.getRandomValues(new Uint8Array(8192)));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "-A", MAIN, ...args],
      stdin: "null",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    assert.match(stderr, /error: .*chat\.db/);
    assert.doesNotMatch(stderr, /server started/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("without write permission to the data dir, history is kept in memory after one warning", async () => {
  const { dir, args } = await tempSetup();
  try {
    await using server = await spawnServer(args, {
      permissions: ["--allow-net", "--allow-read"],
    });
    const warnings = server.output().match(/history is kept in memory/gi) ?? [];
    assert.equal(warnings.length, 1, server.output());
    assert.match(server.output(), new RegExp(`--allow-write=${dir}/data`));
    const writer = await login(server.port, { history: 0 });
    await writer.recv(); // history_end
    await writer.send({ type: "message", content: "kept in memory", ref: "m" });
    assert.equal((await writer.recv()).type, "ack");
    const reader = await login(server.port, { history: 5 });
    assert.equal((await reader.recv()).content, "kept in memory");
    await writer.close();
    await reader.close();
    await assert.rejects(Deno.stat(`${dir}/data`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A free TCP port on 127.0.0.1 (bound, then released), for a server restarted on one port. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

Deno.test("the project's client across a server kill -9 and restart: nothing lost, nothing twice", async () => {
  const { dir, args } = await tempSetup();
  const { fingerprint } = await testCerts();
  const port = freePort();
  const serverArgs = args.map((arg, i) => args[i - 1] === "--port" ? String(port) : arg);
  let server = await spawnServer(serverArgs);
  const client = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-net",
      "--allow-read",
      "--allow-env",
      new URL("../src/client/main.ts", import.meta.url).pathname,
      "--port",
      String(port),
      "--fingerprint",
      fingerprint,
      "--name",
      "bot",
      "--history",
      "0",
    ],
    env: { CHAT_SERVER_PASSWORD: PASSWORD, NO_COLOR: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdin = client.stdin.getWriter();
  const output = Promise.all([client.stdout, client.stderr].map(async (stream) => {
    let text = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) text += chunk;
    return text;
  }));
  const seen: string[] = [];
  let lastId = 0;
  const watch = async (watcher: TestClient, until: () => boolean, quietMs = 10_000) => {
    while (!until()) {
      const frame = await watcher.tryRecv(quietMs);
      if (frame === null) break;
      if (frame.type === "message") {
        seen.push(frame.content as string);
        lastId = frame.id as number;
      }
    }
  };
  try {
    let watcher = await login(port, { history: 0 });
    assert.equal((await watcher.recv()).type, "history_end");
    const line = (i: number) => `line ${i}`;
    for (let i = 0; i < 40; i++) await stdin.write(new TextEncoder().encode(`${line(i)}\n`));
    await watch(watcher, () => seen.length >= 20);
    await server.child.kill("SIGKILL");
    await server[Symbol.asyncDispose]();
    await watch(watcher, () => false, 300); // whatever was still on its way
    await watcher.close();
    for (let i = 40; i < 60; i++) await stdin.write(new TextEncoder().encode(`${line(i)}\n`));
    server = await spawnServer(serverArgs);
    try {
      watcher = await login(port, { after: lastId });
      for (let i = 60; i < 80; i++) await stdin.write(new TextEncoder().encode(`${line(i)}\n`));
      await stdin.close();
      await watch(watcher, () => new Set(seen).size >= 80);
      const { code } = await client.status;
      const [out, err] = await output;
      assert.equal(code, 0, `client exit code\n${out}\n${err}`);
      await watch(watcher, () => false, 300);
      await watcher.close();
    } finally {
      await server[Symbol.asyncDispose]();
    }
    const counts = new Map<string, number>();
    for (const content of seen) counts.set(content, (counts.get(content) ?? 0) + 1);
    const missing = Array.from({ length: 80 }, (_, i) => line(i)).filter((l) => !counts.has(l));
    const twice = [...counts].filter(([, n]) => n > 1).map(([l]) => l);
    assert.deepEqual(missing, [], "every line arrived");
    assert.deepEqual(twice, [], "no line arrived twice");
  } finally {
    try {
      client.kill("SIGKILL");
    } catch {
      // Exited.
    }
    await client.status;
    await output;
    await server[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true });
  }
});
