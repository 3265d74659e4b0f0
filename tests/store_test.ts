import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import {
  type HistoryStore,
  maxRefs,
  memoryStore,
  openStore,
  sqliteStore,
  type StoredMessage,
  StoreError,
  StoreOpenError,
} from "../src/room/store.ts";

const STORE_MODULE = new URL("../src/room/store.ts", import.meta.url).href;
const canRun = Deno.permissions.querySync({ name: "run" }).state === "granted";
const posix = Deno.build.os !== "windows";

type Clock = { refTtlMs?: number; now?: () => number };
/** Messages are stamped recently, so their refs are within the TTL of the real clock. */
const T0 = Date.now();

function message(id: number, extra: Partial<StoredMessage> = {}): StoredMessage {
  return {
    id,
    ts: T0 + id,
    sender: "alice",
    senderIp: "192.0.2.1",
    content: `#${id}`,
    ...extra,
  };
}

function messages(...ids: number[]): StoredMessage[] {
  return ids.map((id) => message(id));
}

function idsOf(list: readonly StoredMessage[]): number[] {
  return list.map((m) => m.id);
}

async function withTempDir(fn: (dir: string) => void | Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "chat-store-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Both stores, so every behavioural test runs against each. */
const kinds = [
  { name: "memory", make: (_dir: string, keep: number, clock?: Clock) => memoryStore(keep, clock) },
  {
    name: "sqlite",
    make: (dir: string, keep: number, clock?: Clock) => sqliteStore(`${dir}/chat.db`, keep, clock),
  },
];

for (const kind of kinds) {
  const withStore = (keep: number, clock: Clock, fn: (store: HistoryStore) => void) =>
    withTempDir((dir) => {
      const store = kind.make(dir, keep, clock);
      try {
        assert.equal(store.kind, kind.name);
        fn(store);
      } finally {
        store.close();
      }
    });

  Deno.test(`${kind.name} store: append, lastId and count`, () =>
    withStore(100, {}, (store) => {
      assert.equal(store.lastId(), 0);
      assert.equal(store.count(), 0);
      assert.deepEqual(store.before(undefined, 10), []);
      assert.deepEqual(store.after(0, 10), []);
      store.append([]);
      assert.equal(store.lastId(), 0);

      const first = [
        message(1, { ref: "a" }),
        message(2, { content: "héllo ✓ 👋", sender: "bob", senderIp: "2001:db8::1" }),
        message(3, { content: "" }),
      ];
      store.append(first);
      assert.equal(store.lastId(), 3);
      assert.equal(store.count(), 3);
      assert.deepEqual(store.after(0, 10), first); // exactly as given: no ref key when none
      store.append(messages(5, 9)); // ids may skip values
      assert.equal(store.lastId(), 9);
      assert.equal(store.count(), 5);
    }));

  Deno.test(`${kind.name} store: a bad batch is a plain Error and stores nothing`, () =>
    withStore(100, {}, (store) => {
      store.append(messages(1, 2));
      for (const bad of [messages(2), messages(0), messages(3, 3), messages(4, 3), messages(1.5)]) {
        assert.throws(() => store.append(bad), (error) => !(error instanceof StoreError));
      }
      assert.equal(store.lastId(), 2);
      assert.equal(store.count(), 2);
      assert.deepEqual(idsOf(store.after(0, 10)), [1, 2]);
    }));

  Deno.test(`${kind.name} store: before and after page oldest first`, () =>
    withStore(100, {}, (store) => {
      store.append(messages(1, 2, 3, 5, 8, 13, 21));
      assert.deepEqual(idsOf(store.before(undefined, 3)), [8, 13, 21]);
      assert.deepEqual(idsOf(store.before(undefined, 100)), [1, 2, 3, 5, 8, 13, 21]);
      assert.deepEqual(idsOf(store.before(13, 2)), [5, 8]);
      assert.deepEqual(idsOf(store.before(13, 100)), [1, 2, 3, 5, 8]);
      assert.deepEqual(idsOf(store.before(4, 2)), [2, 3]); // an id that is not stored
      assert.deepEqual(idsOf(store.before(100, 2)), [13, 21]);
      assert.deepEqual(idsOf(store.before(2, 5)), [1]);
      assert.deepEqual(store.before(1, 10), []);
      assert.deepEqual(store.before(undefined, 0), []);
      assert.deepEqual(store.before(8, -1), []);
      assert.deepEqual(idsOf(store.after(0, 3)), [1, 2, 3]);
      assert.deepEqual(idsOf(store.after(3, 2)), [5, 8]);
      assert.deepEqual(idsOf(store.after(4, 10)), [5, 8, 13, 21]);
      assert.deepEqual(idsOf(store.after(-5, 1)), [1]);
      assert.deepEqual(store.after(21, 5), []);
      assert.deepEqual(store.after(0, 0), []);
      assert.deepEqual(idsOf(store.after(0, Infinity)), [1, 2, 3, 5, 8, 13, 21]);
      assert.deepEqual(store.after(0, NaN), []);
    }));

  Deno.test(`${kind.name} store: keep prunes the oldest messages`, () =>
    withStore(3, {}, (store) => {
      store.append(messages(1, 2, 3, 4, 5));
      assert.equal(store.count(), 3);
      assert.deepEqual(idsOf(store.before(undefined, 10)), [3, 4, 5]);
      store.append(messages(6));
      assert.deepEqual(idsOf(store.after(0, 10)), [4, 5, 6]);
      store.append(messages(10, 20, 30, 40, 50, 60, 70)); // more than keep in one batch
      assert.equal(store.count(), 3);
      assert.equal(store.lastId(), 70);
      assert.deepEqual(idsOf(store.before(undefined, 10)), [50, 60, 70]);
      assert.deepEqual(idsOf(store.before(60, 10)), [50]);
    }));

  Deno.test(`${kind.name} store: pruning a long history keeps paging right`, () =>
    withStore(1000, {}, (store) => {
      for (let batch = 0; batch < 50; batch++) {
        store.append(Array.from({ length: 100 }, (_, i) => message(batch * 200 + i * 2 + 1)));
      }
      assert.equal(store.count(), 1000);
      assert.equal(store.lastId(), 9999);
      const all = idsOf(store.after(0, Infinity));
      assert.equal(all.length, 1000);
      assert.equal(all[0], 8001);
      assert.deepEqual(idsOf(store.before(8005, 10)), [8001, 8003]);
      assert.deepEqual(idsOf(store.after(9995, 10)), [9997, 9999]);
    }));

  Deno.test(`${kind.name} store: keep 0 stores no message but counts ids and refs`, () =>
    withStore(0, {}, (store) => {
      store.append([message(1, { ref: "a" }), message(2)]);
      assert.equal(store.count(), 0);
      assert.equal(store.lastId(), 2);
      assert.deepEqual(store.before(undefined, 10), []);
      assert.deepEqual(store.after(0, 10), []);
      assert.deepEqual(store.findRef("a"), { id: 1, ts: T0 + 1 });
      assert.throws(() => store.append(messages(2)));
      store.append(messages(3));
      assert.equal(store.lastId(), 3);
    }));

  Deno.test(`${kind.name} store: a ref is found with its original id and ts`, () =>
    withStore(100, {}, (store) => {
      store.append([message(1, { ref: "r1", ts: 111 }), message(2)]);
      store.append([message(3, { ref: "r3", sender: "bob", ts: 333 })]);
      assert.deepEqual(store.findRef("r1"), { id: 1, ts: 111 });
      assert.deepEqual(store.findRef("r3"), { id: 3, ts: 333 }); // room-wide, whoever asks
      assert.equal(store.findRef("nope"), undefined);
      assert.equal(store.findRef(""), undefined);
    }));

  Deno.test(`${kind.name} store: a ref expires after its TTL once its message is gone`, () => {
    let now = 0;
    return withStore(2, { refTtlMs: 1_000, now: () => now }, (store) => {
      store.append([message(1, { ts: 0, ref: "a" }), message(2, { ts: 0, ref: "b" })]);
      now = 60_000;
      assert.deepEqual(store.findRef("a"), { id: 1, ts: 0 }); // message 1 is still kept
      store.append([message(3, { ts: now, ref: "c" })]);
      assert.equal(store.findRef("a"), undefined); // pruned and past the TTL
      assert.deepEqual(store.findRef("b"), { id: 2, ts: 0 });
      store.append(messages(4, 5, 6));
      now += 1_000;
      assert.deepEqual(store.findRef("c"), { id: 3, ts: 60_000 }); // pruned, within the TTL
      now += 1;
      assert.equal(store.findRef("c"), undefined);
      assert.equal(store.findRef("b"), undefined);
      store.append([message(7, { ts: now, ref: "a" })]); // an expired ref may be accepted anew
      assert.deepEqual(store.findRef("a"), { id: 7, ts: now });
    });
  });

  Deno.test(`${kind.name} store: with keep 0 a ref lives for its TTL`, () => {
    let now = 5_000;
    return withStore(0, { refTtlMs: 1_000, now: () => now }, (store) => {
      store.append([message(1, { ts: now, ref: "a" })]);
      now += 1_000;
      assert.deepEqual(store.findRef("a"), { id: 1, ts: 5_000 });
      now += 1;
      assert.equal(store.findRef("a"), undefined);
    });
  });

  Deno.test(`${kind.name} store: close is idempotent and later calls throw`, () =>
    withTempDir((dir) => {
      const store = kind.make(dir, 10);
      store.append(messages(1));
      store.close();
      store.close();
      assert.throws(() => store.append(messages(2)));
      assert.throws(() => store.before(undefined, 1));
    }));
}

Deno.test("memory store: a wrong keep is refused", () => {
  assert.throws(() => memoryStore(-1), /keep/);
  assert.throws(() => memoryStore(1.5), /keep/);
});

Deno.test("sqlite store: reopening keeps messages, lastId, count and refs", () =>
  withTempDir((dir) => {
    const path = `${dir}/chat.db`;
    let store = sqliteStore(path, 5);
    store.append([message(1, { ref: "one" }), ...messages(2, 3, 4)]);
    store.append(messages(6, 7, 8));
    store.close();

    store = sqliteStore(path, 5);
    assert.equal(store.path, path);
    assert.equal(store.lastId(), 8);
    assert.equal(store.count(), 5);
    assert.deepEqual(idsOf(store.before(undefined, 10)), [3, 4, 6, 7, 8]);
    assert.deepEqual(store.after(7, 1), messages(8));
    assert.deepEqual(store.findRef("one"), { id: 1, ts: T0 + 1 }); // within the TTL
    store.close();

    store = sqliteStore(path, 2); // a lower keep prunes at open
    assert.equal(store.count(), 2);
    assert.deepEqual(idsOf(store.after(0, 10)), [7, 8]);
    store.close();

    store = sqliteStore(path, 0); // keep 0 still remembers the counter
    assert.equal(store.count(), 0);
    assert.equal(store.lastId(), 8);
    store.append(messages(9));
    store.close();

    store = sqliteStore(path, 0);
    assert.equal(store.lastId(), 9);
    assert.throws(() => store.append(messages(9)));
    store.close();
  }));

Deno.test("sqlite store: refs survive a restart under the same retention rule", () =>
  withTempDir((dir) => {
    let now = 10_000;
    const clock = { refTtlMs: 1_000, now: () => now };
    const path = `${dir}/chat.db`;
    let store = sqliteStore(path, 1, clock);
    store.append([message(1, { ts: 0, ref: "old" })]); // pruned and expired
    store.append([message(2, { ts: 9_500, ref: "recent" })]); // pruned, within the TTL
    store.append([message(3, { ts: 0, ref: "kept" })]); // expired, but its message is kept
    store.close();

    store = sqliteStore(path, 1, clock);
    try {
      assert.equal(store.findRef("old"), undefined);
      assert.deepEqual(store.findRef("recent"), { id: 2, ts: 9_500 });
      assert.deepEqual(store.findRef("kept"), { id: 3, ts: 0 });
      now = 10_501;
      assert.equal(store.findRef("recent"), undefined);
      assert.deepEqual(store.findRef("kept"), { id: 3, ts: 0 });
    } finally {
      store.close();
    }
  }));

Deno.test({
  name: "sqlite store: created private (dir 0700, files 0600)",
  ignore: !posix,
  fn: () =>
    withTempDir((dir) => {
      const dataDir = `${dir}/nested/data`;
      const { store, warning } = openStore({ dataDir, keep: 10 });
      try {
        assert.equal(warning, undefined);
        assert.equal(store.kind, "sqlite");
        assert.equal(store.path, `${dataDir}/chat.db`);
        store.append(messages(1));
        assert.equal(Deno.statSync(dataDir).mode! & 0o777, 0o700);
        for (const file of ["chat.db", "chat.db-wal", "chat.db-shm"]) {
          assert.equal(Deno.statSync(`${dataDir}/${file}`).mode! & 0o777, 0o600, file);
        }
      } finally {
        store.close();
      }
    }),
});

Deno.test("sqlite store: a corrupt or foreign file is refused at open, naming it", async (t) => {
  const refused = (path: string, pattern: RegExp) => (error: unknown) => {
    assert.ok(error instanceof StoreOpenError, String(error));
    assert.ok(error.message.includes(path), error.message);
    assert.match(error.message, pattern);
    return true;
  };
  await t.step("garbage bytes", () =>
    withTempDir((dir) => {
      const path = `${dir}/chat.db`;
      const garbage = new Uint8Array(8192).map((_, i) => (i * 7919) % 251);
      Deno.writeFileSync(path, garbage);
      assert.throws(() => openStore({ dataDir: dir, keep: 10 }), refused(path, /not a database/));
      assert.deepEqual(Deno.readFileSync(path), garbage); // left as it was, for inspection
    }));
  await t.step("a short text file", () =>
    withTempDir((dir) => {
      Deno.writeTextFileSync(`${dir}/chat.db`, "hello\n");
      assert.throws(() => sqliteStore(`${dir}/chat.db`, 10), refused(`${dir}/chat.db`, /./));
    }));
  await t.step("a newer schema", () =>
    withTempDir((dir) => {
      const path = `${dir}/chat.db`;
      const db = new DatabaseSync(path);
      db.exec("PRAGMA user_version = 2");
      db.close();
      assert.throws(() => sqliteStore(path, 10), refused(path, /newer version/));
    }));
  await t.step("another program's tables", () =>
    withTempDir((dir) => {
      const path = `${dir}/chat.db`;
      const db = new DatabaseSync(path);
      db.exec("CREATE TABLE messages (body TEXT)");
      db.close();
      assert.throws(() => sqliteStore(path, 10), refused(path, /no column named/));
    }));
});

Deno.test("sqlite store: a locked database fails append fast, then recovers", () =>
  withTempDir((dir) => {
    const path = `${dir}/chat.db`;
    const store = sqliteStore(path, 100);
    const other = new DatabaseSync(path);
    try {
      store.append([message(1, { ref: "a" })]);
      other.exec("BEGIN IMMEDIATE");
      const started = performance.now();
      assert.throws(
        () => store.append([message(2, { ref: "b" })]),
        (error) => error instanceof StoreError && /database is locked/.test(error.message),
      );
      const elapsed = performance.now() - started;
      assert.ok(elapsed < 100, `append waited ${elapsed} ms for the lock`);
      assert.equal(store.lastId(), 1);
      assert.equal(store.count(), 1);
      assert.equal(store.findRef("b"), undefined);
      assert.deepEqual(idsOf(store.before(undefined, 10)), [1]); // history is still readable
      other.exec("COMMIT");

      store.append([message(2, { ref: "b" })]);
      assert.equal(store.lastId(), 2);
      assert.deepEqual(store.findRef("b"), { id: 2, ts: T0 + 2 });
    } finally {
      other.close();
      store.close();
    }
  }));

Deno.test("sqlite store: a failure mid-batch stores none of it, then recovers", async (t) => {
  // A trigger added from another connection makes one row of a batch fail, after the rows
  // before it (and their refs) were written in the transaction.
  for (const action of ["ABORT", "ROLLBACK", "FAIL"]) {
    await t.step(`RAISE(${action})`, () =>
      withTempDir((dir) => {
        const path = `${dir}/chat.db`;
        const store = sqliteStore(path, 100);
        const other = new DatabaseSync(path);
        try {
          store.append(messages(1));
          other.exec(
            "CREATE TRIGGER boom BEFORE INSERT ON messages WHEN NEW.content = 'boom' " +
              `BEGIN SELECT RAISE(${action}, 'disk on fire'); END`,
          );
          const batch = [
            message(2, { ref: "b" }),
            message(3, { content: "boom" }),
            message(4, { ref: "d" }),
          ];
          assert.throws(
            () => store.append(batch),
            (error) => error instanceof StoreError && error.message === "disk on fire",
          );
          assert.equal(store.lastId(), 1);
          assert.equal(store.count(), 1);
          assert.equal(store.findRef("b"), undefined);
          assert.deepEqual(idsOf(store.after(0, 10)), [1]);

          other.exec("DROP TRIGGER boom");
          store.append(batch);
          assert.equal(store.lastId(), 4);
          assert.deepEqual(idsOf(store.after(0, 10)), [1, 2, 3, 4]);
          assert.deepEqual(store.findRef("d"), { id: 4, ts: T0 + 4 });
        } finally {
          other.close();
          store.close();
        }
      }));
  }
});

Deno.test("sqlite store: expired refs are deleted from the table", () =>
  withTempDir((dir) => {
    let now = 0;
    const path = `${dir}/chat.db`;
    const store = sqliteStore(path, 1, { refTtlMs: 1_000, now: () => now });
    const other = new DatabaseSync(path);
    // On disk a ref is in its kept message's row, or in the log once its message is pruned.
    const refs = () =>
      other.prepare(
        "SELECT ref FROM (SELECT id, ref FROM refs UNION SELECT id, ref FROM messages " +
          "WHERE ref IS NOT NULL) ORDER BY id",
      ).all().map((r) => r.ref);
    try {
      store.append([message(1, { ts: 0, ref: "a" }), message(2, { ts: 0, ref: "b" })]);
      now = 60_000;
      store.append([message(3, { ts: now, ref: "c" })]);
      assert.deepEqual(refs(), ["c"]); // "b" went with its message, "c" is within the TTL
      now += 500;
      store.append([message(4, { ts: now, ref: "d" })]);
      assert.deepEqual(refs(), ["c", "d"]); // not swept on every append
    } finally {
      other.close();
      store.close();
    }
  }));

Deno.test("openStore without permission to write falls back to memory with one warning", {
  permissions: { read: true, write: false },
}, () => {
  const dataDir = `chat-store-test-${crypto.randomUUID()}`;
  const { store, warning } = openStore({ dataDir, keep: 10 });
  try {
    assert.equal(store.kind, "memory");
    assert.equal(store.path, undefined);
    assert.ok(warning?.includes(`--allow-write=${dataDir}`), warning);
    assert.match(warning!, /in memory/);
    assert.throws(() => Deno.statSync(dataDir), Deno.errors.NotFound);
    // Ids start from the clock, so they still increase after a restart without a file.
    assert.ok(store.lastId() >= Date.now() * 1000 - 60_000_000);
    store.append([message(store.lastId() + 1)]);
    assert.equal(store.count(), 1);
  } finally {
    store.close();
  }
});

/**
 * A child Deno running `code` (with the store imported as `store`) with `permissions`, started
 * through `wrapper` (e.g. `setpriv ...`) if given.
 */
function child(dir: string, code: string, permissions: string[], wrapper: string[] = []) {
  const script = `${dir}/child.ts`;
  Deno.writeTextFileSync(script, `import * as store from "${STORE_MODULE}";\n${code}`);
  const [program, ...args] = [
    ...wrapper,
    Deno.execPath(),
    ...["run", "--no-prompt", "--no-config", ...permissions, script],
  ];
  return new Deno.Command(program, { args, stdin: "null", stdout: "piped", stderr: "piped" });
}

Deno.test({
  name: "openStore in a child: memory with --allow-read only, sqlite with read and write",
  ignore: !canRun,
  fn: () =>
    withTempDir(async (dir) => {
      const dataDir = `${dir}/data`;
      const options = JSON.stringify({ dataDir, keep: 5 });
      const code = `
        const { store: s, warning } = store.openStore(${options});
        s.append([{ id: s.lastId() + 1, ts: 1, sender: "a", senderIp: "::1", content: "hi" }]);
        console.log(JSON.stringify({ kind: s.kind, count: s.count(), warning }));
        s.close();`;
      const run = async (permissions: string[]) => {
        const out = await child(dir, code, permissions).output();
        assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
        return JSON.parse(new TextDecoder().decode(out.stdout));
      };

      const readOnly = await run(["--allow-read"]);
      assert.equal(readOnly.kind, "memory");
      assert.equal(readOnly.count, 1);
      assert.ok(readOnly.warning.includes(`--allow-write=${dataDir}`), readOnly.warning);
      assert.throws(() => Deno.statSync(dataDir), Deno.errors.NotFound);

      const readWrite = await run([`--allow-read=${dir}`, `--allow-write=${dataDir}`]);
      assert.deepEqual(readWrite, { kind: "sqlite", count: 1 });
      assert.ok(Deno.statSync(`${dataDir}/chat.db`).isFile);
    }),
});

/**
 * Whether file modes bind this process: not for root, which then needs `setpriv` to drop the
 * capability that lets it read and write any file.
 */
function modeBypass(dir: string): boolean {
  const probe = `${dir}/probe`;
  Deno.writeTextFileSync(probe, "x", { mode: 0o000 });
  Deno.chmodSync(probe, 0o000);
  try {
    Deno.readTextFileSync(probe);
    return true;
  } catch {
    return false;
  } finally {
    Deno.removeSync(probe);
  }
}

const hasSetpriv = canRun && (() => {
  try {
    return new Deno.Command("setpriv", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "sqlite store: an unreadable or read-only database is refused at open",
  ignore: !canRun || !posix,
  fn: () =>
    withTempDir(async (dir) => {
      const bypass = modeBypass(dir);
      if (bypass && !hasSetpriv) return console.log("Skipped: root without setpriv");
      const path = `${dir}/chat.db`;
      sqliteStore(path, 10).close();
      const code = `
        try {
          store.sqliteStore(${JSON.stringify(path)}, 10).close();
          console.log("opened");
        } catch (error) {
          console.log(error.name + ": " + error.message);
        }`;
      const permissions = [`--allow-read=${dir}`, `--allow-write=${dir}`];
      const wrapper = bypass ? ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] : [];
      const open = async () => {
        const out = await child(dir, code, permissions, wrapper).output();
        assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
        return new TextDecoder().decode(out.stdout).trim();
      };
      Deno.chmodSync(path, 0o000);
      assert.match(await open(), /^StoreOpenError: .*chat\.db.*unable to open database file/);
      Deno.chmodSync(path, 0o400);
      assert.match(await open(), /^StoreOpenError: .*chat\.db.*readonly database/);
      for (const entry of Deno.readDirSync(dir)) { // the -wal/-shm made with the 0400 mode too
        if (entry.name.startsWith("chat.db")) Deno.chmodSync(`${dir}/${entry.name}`, 0o600);
      }
      assert.equal(await open(), "opened");
    }),
});

Deno.test({
  name: "sqlite store: every acked batch survives kill -9 of the writer",
  ignore: !canRun,
  fn: () =>
    withTempDir(async (dir) => {
      const path = `${dir}/chat.db`;
      const code = `
        const s = store.sqliteStore(${JSON.stringify(path)}, 1_000_000);
        for (let id = s.lastId(); ;) {
          const batch = [];
          for (let i = 0; i < 50; i++) {
            id++;
            batch.push({ id, ts: Date.now(), sender: "bot", senderIp: "::1",
              content: "x".repeat(100), ref: "r" + id });
          }
          s.append(batch);
          console.log(id); // the ack: printed only once append has returned
        }`;
      const writer = child(dir, code, [`--allow-read=${dir}`, `--allow-write=${dir}`]).spawn();
      const stderr = new Response(writer.stderr).text();
      let acked = 0;
      let killed = false;
      let pending = "";
      const decoder = new TextDecoder();
      for await (const chunk of writer.stdout) {
        pending += decoder.decode(chunk, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop()!; // a line cut by the kill is not an ack
        for (const line of lines) acked = Math.max(acked, Number(line));
        if (acked >= 20_000 && !killed) {
          writer.kill("SIGKILL"); // mid-stream: it is appending without pause
          killed = true;
        }
      }
      const [status, errors] = await Promise.all([writer.status, stderr]);
      assert.equal(status.signal, "SIGKILL", errors);

      const store = sqliteStore(path, 1_000_000);
      try {
        assert.ok(store.lastId() >= acked, `lastId ${store.lastId()} < acked ${acked}`);
        assert.equal(store.count(), store.lastId());
        const kept = store.after(0, acked);
        assert.equal(kept.length, acked);
        assert.ok(kept.every((m, i) => m.id === i + 1));
        assert.deepEqual(store.findRef(`r${acked}`)?.id, acked);
      } finally {
        store.close();
      }
    }),
});

Deno.test("refs are bounded: past keep + maxRefs' margin the oldest is forgotten, in memory and on disk", () =>
  withTempDir((dir) => {
    let now = 0;
    const path = `${dir}/chat.db`;
    const keep = 10;
    const extra = maxRefs(keep) - keep;
    const store = sqliteStore(path, keep, { refTtlMs: 3_600_000, now: () => now });
    const other = new DatabaseSync(path);
    try {
      const total = maxRefs(keep) + 500;
      for (let id = 1; id <= total; id += 1000) {
        const batch = [];
        for (let i = id; i < Math.min(id + 1000, total + 1); i++) {
          batch.push(message(i, { ts: now, ref: `r${i}` }));
        }
        store.append(batch);
      }
      assert.equal(store.findRef("r1"), undefined, "the oldest ref was forgotten for room");
      assert.equal(store.findRef("r500"), undefined);
      assert.deepEqual(store.findRef(`r${total}`), { id: total, ts: 0 });
      assert.ok(store.findRef(`r${total - keep - extra + 1}`), "the newest maxRefs are kept");
      now += 10_000; // a sweep is due: the log forgets them too
      store.append([message(total + 1, { ts: now })]);
      const rows = Number(
        (other.prepare("SELECT COUNT(*) AS n FROM refs").get() as { n: number }).n,
      );
      assert.ok(rows <= maxRefs(keep), `${rows} ref rows on disk`);
    } finally {
      other.close();
      store.close();
    }
  }));
