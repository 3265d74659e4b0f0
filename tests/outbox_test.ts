import assert from "node:assert/strict";
import { Outbox } from "../src/outbox.ts";

/** A writer whose writes complete only when the test says so. */
class GatedWriter {
  writes: Uint8Array[] = [];
  views: Uint8Array[] = [];
  #gates: (() => void)[] = [];
  maxChunk = Infinity;
  failNext = false;
  write(data: Uint8Array): Promise<number> {
    if (this.failNext) return Promise.reject(new Error("broken pipe"));
    const n = Math.min(data.length, this.maxChunk);
    this.writes.push(data.slice(0, n));
    this.views.push(data);
    return new Promise((resolve) => this.#gates.push(() => resolve(n)));
  }
  release(): void {
    const gates = this.#gates;
    this.#gates = [];
    for (const open of gates) open();
  }
  async settle(): Promise<void> {
    for (let i = 0; i < 10; i++) {
      this.release();
      await Promise.resolve();
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }
}

const bytes = (...values: number[]) => new Uint8Array(values);

const joined = (writes: Uint8Array[]) => writes.flatMap((write) => [...write]);

Deno.test("Outbox coalesces frames queued together into one write", async () => {
  const writer = new GatedWriter();
  const outbox = new Outbox(writer, { limit: 1000 });
  outbox.push(bytes(1));
  outbox.push(bytes(2, 3));
  outbox.push(bytes(4));
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4]);
  assert.ok(writer.writes.length <= 2, `${writer.writes.length} writes for 3 frames`);
  outbox.push(bytes(5));
  outbox.push(bytes(6));
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4, 5, 6]);
  assert.equal(outbox.queuedBytes, 0);
  assert.equal(outbox.bytesWritten, 6);
});

Deno.test("Outbox finishes partial writes in order", async () => {
  const writer = new GatedWriter();
  writer.maxChunk = 2;
  const outbox = new Outbox(writer, { limit: 1000 });
  outbox.push(bytes(1, 2, 3, 4, 5));
  await writer.settle();
  assert.deepEqual(writer.writes, [bytes(1, 2), bytes(3, 4), bytes(5)]);
});

Deno.test("Outbox overflows once queued bytes pass the limit, and closes", async () => {
  const writer = new GatedWriter();
  let overflowed = -1;
  const outbox = new Outbox(writer, { limit: 10, onOverflow: (queued) => overflowed = queued });
  assert.equal(outbox.push(new Uint8Array(6)), true);
  await new Promise((resolve) => setTimeout(resolve, 0)); // now in flight, still counted
  assert.equal(outbox.push(new Uint8Array(4)), true); // exactly at the limit
  assert.equal(outbox.push(new Uint8Array(1)), false);
  assert.equal(overflowed, 10);
  assert.equal(outbox.closed, true);
  assert.equal(outbox.push(new Uint8Array(1)), false);
  await writer.settle();
  assert.equal(writer.writes.length, 1, "wrote after being closed");
});

Deno.test("Outbox reports a failed write once and stops", async () => {
  const writer = new GatedWriter();
  writer.failNext = true;
  const errors: unknown[] = [];
  const outbox = new Outbox(writer, { limit: 100, onError: (error) => errors.push(error) });
  outbox.push(bytes(1));
  await outbox.drain();
  assert.equal(errors.length, 1);
  assert.equal(outbox.closed, true);
});

Deno.test("Outbox.drain resolves when everything queued is written", async () => {
  const writer = new GatedWriter();
  const outbox = new Outbox(writer, { limit: 100 });
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
  const outbox = new Outbox(writer, { limit: 1000 });
  const arena = new Uint8Array([1, 2, 3, 4, 5, 6]);
  outbox.push(arena.subarray(0, 2));
  outbox.push(arena.subarray(2, 3));
  outbox.push(arena.subarray(3, 6));
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4, 5, 6]);
  assert.equal(writer.views.length, 1, "a run of one buffer was split");
  assert.equal(writer.views[0].buffer, arena.buffer, "the run was copied");
  outbox.push(arena.subarray(0, 1));
  outbox.push(bytes(7)); // another buffer breaks the run: copied together instead
  await writer.settle();
  assert.deepEqual(joined(writer.writes), [1, 2, 3, 4, 5, 6, 1, 7]);
});
