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
