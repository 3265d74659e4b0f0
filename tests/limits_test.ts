import assert from "node:assert/strict";
import { AuthLockout, TokenBucket } from "../src/limits.ts";

Deno.test("TokenBucket allows a burst, then the rate", () => {
  const bucket = new TokenBucket({ rate: 10, burst: 3, now: 0 });
  assert.deepEqual([0, 0, 0, 0].map(() => bucket.take(0)), [true, true, true, false]);
  assert.equal(bucket.take(50), false); // half a token
  assert.equal(bucket.take(100), true); // one token after 100 ms at 10/s
  assert.equal(bucket.take(100), false);
  assert.equal([...Array(10)].filter(() => bucket.take(10_000)).length, 3, "burst caps savings");
});

Deno.test("TokenBucket with rate 0 never limits", () => {
  const bucket = new TokenBucket({ rate: 0, burst: 1, now: 0 });
  for (let i = 0; i < 1000; i++) assert.equal(bucket.take(0), true);
});

Deno.test("AuthLockout locks an IP after N failures within the window, for the window", () => {
  const lockout = new AuthLockout({ maxFailures: 3, windowMs: 1000 });
  assert.equal(lockout.fail("a", 0), false);
  assert.equal(lockout.fail("a", 100), false);
  assert.equal(lockout.isLocked("a", 100), false);
  assert.equal(lockout.fail("a", 200), true);
  assert.equal(lockout.isLocked("a", 200), true);
  assert.equal(lockout.isLocked("b", 200), false, "another IP is locked too");
  assert.equal(lockout.isLocked("a", 1199), true);
  assert.equal(lockout.isLocked("a", 1200), false);
});

Deno.test("AuthLockout forgets failures older than the window", () => {
  const lockout = new AuthLockout({ maxFailures: 3, windowMs: 1000 });
  lockout.fail("a", 0);
  lockout.fail("a", 500);
  assert.equal(lockout.fail("a", 1500), false, "a failure outside the window counted");
  lockout.sweep(10_000);
  assert.equal(lockout.tracked, 0);
});
