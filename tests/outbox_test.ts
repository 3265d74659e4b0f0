import assert from "node:assert/strict";
import { Outbox, type OutboxOptions } from "../src/server/outbox.ts";

/** A writer whose writes complete only when the test says so, like a socket's callbacks. */
class GatedWriter {
  writes: Uint8Array[] = [];
  #done: ((error?: Error | null) => void)[] = [];
  failNext = false;
  write(data: Uint8Array, done: (error?: Error | null) => void): boolean {
    this.writes.push(data);
    if (this.failNext) {
      queueMicrotask(() => done(new Error("broken pipe")));
      return false;
    }
    this.#done.push(done);
    return true;
  }
  /** Completes the writes in flight. */
  release(): void {
    const done = this.#done;
    this.#done = [];
    for (const complete of done) complete();
  }
  /** Lets queued writes start and complete, a few turns over. */
  async settle(): Promise<void> {
    for (let i = 0; i < 10; i++) {
      this.release();
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }
}

const bytes = (...values: number[]) => new Uint8Array(values);

const joined = (writes: Uint8Array[]) => writes.flatMap((write) => [...write]);

let clock = 0;
const options = (limit: number, more: Partial<OutboxOptions> = {}): OutboxOptions => ({
  limit,
  now: () => clock,
  ...more,
});

Deno.test("Outbox coalesces frames queued together into one write", async () => {
  const writer = new GatedWriter();
  const outbox = new Outbox(writer, options(1000));
  outbox.push(bytes(1));
  outbox.push(bytes(2, 3));
  outbox.push(bytes(4));
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4]);
  assert.equal(writer.writes.length, 1, `${writer.writes.length} writes for 3 frames`);
  outbox.push(bytes(5));
  outbox.push(bytes(6));
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4, 5, 6]);
  assert.equal(outbox.queuedBytes, 0);
});

Deno.test("Outbox writes what was queued during a write as the next write, in order", async () => {
  const writer = new GatedWriter();
  const outbox = new Outbox(writer, options(1000));
  outbox.push(bytes(1));
  await new Promise((resolve) => setTimeout(resolve, 0)); // the first write is now in flight
  outbox.push(bytes(2));
  outbox.push(bytes(3));
  assert.equal(writer.writes.length, 1, "wrote while a write was in flight");
  await writer.settle();
  assert.deepEqual(writer.writes, [bytes(1), bytes(2, 3)]);
});

Deno.test("Outbox charges a queued view for the whole buffer it keeps alive, once per run", async () => {
  const writer = new GatedWriter();
  const outbox = new Outbox(writer, options(1 << 20));
  const chunk = new Uint8Array(65536); // like a broadcast arena chunk
  outbox.push(chunk.subarray(0, 100));
  assert.equal(outbox.queuedBytes, 65536, "a 100-byte view pins its 64 KiB buffer");
  outbox.push(chunk.subarray(100, 200)); // the same run: no second charge
  outbox.push(chunk.subarray(300, 400)); // same buffer, not contiguous: still one charge
  assert.equal(outbox.queuedBytes, 65536);
  outbox.push(bytes(1, 2, 3)); // a frame of its own buffer: charged its size
  assert.equal(outbox.queuedBytes, 65536 + 3);
  await writer.settle();
  assert.equal(outbox.queuedBytes, 0, "charges not released once written");
  assert.equal(joined(writer.writes).length, 303);
});

Deno.test("Outbox is full past the limit and reports relief at half of it, dropping nothing", async () => {
  const writer = new GatedWriter();
  const events: string[] = [];
  const outbox = new Outbox(
    writer,
    options(100, {
      owner: { outboxRelieved: () => events.push("relieved") },
    }),
  );
  outbox.push(new Uint8Array(60));
  await new Promise((resolve) => setTimeout(resolve, 0)); // in flight, still charged
  outbox.push(new Uint8Array(40)); // exactly at the limit
  assert.equal(outbox.full, false);
  outbox.push(new Uint8Array(30));
  outbox.push(new Uint8Array(30));
  assert.equal(outbox.full, true);
  assert.deepEqual(events, []);
  assert.equal(outbox.queuedBytes, 160, "a frame past the limit was refused");
  writer.release(); // the 60 are written; 100 queued: still above half
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(outbox.full, true);
  await writer.settle();
  assert.equal(outbox.full, false);
  assert.deepEqual(events, ["relieved"]);
  assert.equal(joined(writer.writes).length, 160);
});

Deno.test("Outbox measures how long it has waited for the peer to accept a write", async () => {
  const writer = new GatedWriter();
  clock = 1000;
  const outbox = new Outbox(writer, options(1000));
  assert.equal(outbox.stalledFor(5000), 0, "an empty outbox is never stalled");
  outbox.push(bytes(1));
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(outbox.stalledFor(1500), 500);
  clock = 1800;
  outbox.push(bytes(2)); // queuing more is not progress
  assert.equal(outbox.stalledFor(1900), 900);
  writer.release(); // the peer accepted the first write at 1800
  assert.equal(outbox.stalledFor(1900), 100);
  await writer.settle();
  assert.equal(outbox.stalledFor(9000), 0);
});

Deno.test("Outbox reports a failed write once and stops", async () => {
  const writer = new GatedWriter();
  writer.failNext = true;
  const errors: unknown[] = [];
  const outbox = new Outbox(
    writer,
    options(100, {
      owner: { outboxFailed: (error) => errors.push(error) },
    }),
  );
  outbox.push(bytes(1));
  await outbox.drain();
  assert.equal(errors.length, 1);
  assert.equal(outbox.closed, true);
  assert.equal(outbox.push(bytes(2)), false);
});

Deno.test("Outbox.drain resolves when everything queued is written", async () => {
  const writer = new GatedWriter();
  const outbox = new Outbox(writer, options(100));
  await outbox.drain(); // empty: at once
  outbox.push(bytes(1));
  outbox.push(bytes(2));
  let drained = false;
  const done = outbox.drain().then(() => drained = true);
  await writer.settle();
  await done;
  assert.equal(drained, true);
  assert.deepEqual(joined(writer.writes), [1, 2]);
});

Deno.test("Outbox writes frames that lie back to back in one buffer as one uncopied view", async () => {
  const writer = new GatedWriter();
  const outbox = new Outbox(writer, options(1000));
  const arena = new Uint8Array([1, 2, 3, 4, 5, 6]);
  outbox.push(arena.subarray(0, 2));
  outbox.push(arena.subarray(2, 3));
  outbox.push(arena.subarray(3, 6));
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4, 5, 6]);
  assert.equal(writer.writes.length, 1, "a run of one buffer was split");
  assert.equal(writer.writes[0].buffer, arena.buffer, "the run was copied");
  outbox.push(arena.subarray(0, 1));
  outbox.push(bytes(7)); // another buffer breaks the run: copied together instead
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4, 5, 6, 1, 7]);
});

Deno.test("Outbox charges a member list but does not count it against the limit, and says when it is written", async () => {
  const writer = new GatedWriter();
  const events: string[] = [];
  const outbox = new Outbox(
    writer,
    options(100, {
      owner: {
        outboxRelieved: () => events.push("relieved"),
        outboxListSent: () => events.push("list sent"),
      },
    }),
  );
  outbox.push(new Uint8Array(10)); // a frame before the list
  const parts = [new Uint8Array(40_000), new Uint8Array(30_000), bytes(9, 9)];
  outbox.pushList(parts);
  assert.equal(outbox.queuedBytes, 70_012, "the list is charged");
  assert.equal(outbox.full, false, "a list never makes the outbox full");
  assert.equal(outbox.listQueued, true);
  // Room frames behind the list get the whole limit.
  outbox.push(new Uint8Array(60));
  assert.equal(outbox.full, false);
  outbox.push(new Uint8Array(60));
  assert.equal(outbox.full, true, "past the limit without the list");
  // The list goes out, its small last part copied together with the frames after it.
  await new Promise((resolve) => setTimeout(resolve, 0));
  for (let i = 0; i < 3; i++) {
    writer.release();
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  assert.deepEqual(writer.writes.map((write) => write.length), [10, 40_000, 30_000, 122]);
  assert.equal(outbox.listQueued, true, "the last part is in flight");
  assert.deepEqual(events, []);
  await writer.settle();
  assert.deepEqual(events.toSorted(), ["list sent", "relieved"]);
  assert.equal(outbox.listQueued, false);
  assert.equal(outbox.queuedBytes, 0);
  events.length = 0;
  // Two lists, with a frame between them: told once both are written.
  outbox.pushList([new Uint8Array(20_000)]);
  outbox.push(bytes(1));
  outbox.pushList([new Uint8Array(20_000), new Uint8Array(20_000)]);
  assert.equal(outbox.queuedBytes, 60_001);
  await writer.settle();
  assert.deepEqual(events, ["list sent"]);
  assert.equal(outbox.queuedBytes, 0);
  outbox.close();
  assert.equal(outbox.listQueued, false);
  assert.equal(outbox.pushList([bytes(1)]), false);
});
