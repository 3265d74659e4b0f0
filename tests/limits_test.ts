import assert from "node:assert/strict";
import { AuthLockout, lockoutKey, TokenBucket } from "../src/server/limits.ts";

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
  bucket.charge(100, 0);
  for (let i = 0; i < 1000; i++) assert.equal(bucket.take(0), true);
});

Deno.test("TokenBucket.charge takes more tokens afterwards, into debt that the rate pays back", () => {
  const bucket = new TokenBucket({ rate: 10, burst: 5, now: 0 });
  assert.equal(bucket.take(0), true);
  bucket.charge(6, 0); // 4 left, 6 more taken: 2 owed
  assert.equal(bucket.take(200), false, "0 tokens after 200 ms");
  assert.equal(bucket.take(299), false);
  assert.equal(bucket.take(300), true, "1 token after 300 ms");
  bucket.charge(0, 300);
  assert.equal(bucket.take(300), false);
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

Deno.test("AuthLockout with a window of 0 never locks and tracks nothing", () => {
  const lockout = new AuthLockout({ maxFailures: 1, windowMs: 0 });
  assert.equal(lockout.fail("192.0.2.1", 0), false);
  assert.equal(lockout.isLocked("192.0.2.1", 0), false);
  assert.equal(lockout.tracked, 0);
});

Deno.test("AuthLockout counts from zero after a lockout, and ignores failures during it", () => {
  const lockout = new AuthLockout({ maxFailures: 2, windowMs: 1000 });
  lockout.fail("192.0.2.1", 0);
  assert.equal(lockout.fail("192.0.2.1", 10), true);
  assert.equal(lockout.fail("192.0.2.1", 500), true, "a failure while locked reports the lockout");
  assert.equal(lockout.isLocked("192.0.2.1", 1009), true);
  assert.equal(lockout.isLocked("192.0.2.1", 1010), false, "a failure while locked extended it");
  assert.equal(lockout.fail("192.0.2.1", 1010), false, "a failure while locked was counted");
  assert.equal(lockout.fail("192.0.2.1", 1020), true);
  assert.equal(lockout.tracked, 1);
});

Deno.test("AuthLockout sweeps only expired lockouts and records whose last failure left the window", () => {
  const lockout = new AuthLockout({ maxFailures: 3, windowMs: 1000 });
  for (let i = 0; i < 3; i++) lockout.fail("192.0.2.1", 0); // locked until 1000
  lockout.fail("192.0.2.2", 100);
  lockout.fail("192.0.2.3", 200);
  lockout.fail("192.0.2.2", 600); // now failed after 192.0.2.3
  for (let i = 0; i < 3; i++) lockout.fail("192.0.2.4", 700); // locked until 1700
  lockout.sweep(999);
  assert.equal(lockout.tracked, 4);
  lockout.sweep(1200); // 192.0.2.1's lockout and 192.0.2.3 (last failed at 200) expire
  assert.equal(lockout.tracked, 2);
  assert.equal(lockout.isLocked("192.0.2.4", 1200), true);
  assert.equal(lockout.fail("192.0.2.2", 1200), false, "192.0.2.2's failure at 100 still counted");
  assert.equal(lockout.fail("192.0.2.2", 1300), true, "192.0.2.2's failure at 600 was forgotten");
});
Deno.test("AuthLockout with a full table keeps an active lockout and evicts the least recently failed address", () => {
  const lockout = new AuthLockout({ maxFailures: 3, windowMs: 1000, maxTracked: 3 });
  for (let i = 0; i < 3; i++) lockout.fail("192.0.2.1", 0); // the first entry is a lockout
  lockout.fail("192.0.2.2", 10);
  lockout.fail("192.0.2.3", 20);
  lockout.fail("192.0.2.2", 30); // 192.0.2.3 is now the least recently failed
  lockout.fail("192.0.2.4", 40); // full: 192.0.2.3 goes
  assert.equal(lockout.tracked, 3);
  assert.equal(lockout.isLocked("192.0.2.1", 40), true, "the lockout was evicted");
  assert.equal(lockout.fail("192.0.2.2", 50), true, "192.0.2.2's failures were forgotten");
  lockout.fail("192.0.2.3", 60); // full: 192.0.2.4, the only failing address, goes
  assert.equal(lockout.fail("192.0.2.3", 61), false, "192.0.2.3's failure at 20 was kept");
  assert.equal(lockout.fail("192.0.2.3", 62), true);
  assert.deepEqual(
    ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map((ip) => lockout.isLocked(ip, 62)),
    [true, true, true],
  );
});
Deno.test("AuthLockout with a full table re-sorts a failing address on each failure", () => {
  const lockout = new AuthLockout({ maxFailures: 3, windowMs: 1000, maxTracked: 2 });
  lockout.fail("192.0.2.1", 0);
  lockout.fail("192.0.2.2", 10);
  lockout.fail("192.0.2.1", 20); // 192.0.2.2 is now the least recently failed
  lockout.fail("192.0.2.3", 30); // full: 192.0.2.2 goes
  assert.equal(lockout.fail("192.0.2.1", 40), true, "192.0.2.1's two failures were not kept");
  assert.equal(lockout.fail("192.0.2.2", 50), false);
  assert.equal(lockout.fail("192.0.2.2", 60), false, "192.0.2.2's failure at 10 was kept");
});
Deno.test("AuthLockout with a table full of lockouts evicts the one that expires first", () => {
  const lockout = new AuthLockout({ maxFailures: 1, windowMs: 1000, maxTracked: 3 });
  for (const [i, now] of [0, 10, 20].entries()) lockout.fail(`192.0.2.${i + 1}`, now);
  assert.equal(lockout.fail("192.0.2.4", 30), true);
  assert.equal(lockout.tracked, 3);
  assert.equal(lockout.isLocked("192.0.2.1", 30), false, "the lockout expiring first went");
  for (const ip of ["192.0.2.2", "192.0.2.3", "192.0.2.4"]) {
    assert.equal(lockout.isLocked(ip, 30), true, `${ip} lost its lockout`);
  }
});

Deno.test("AuthLockout with a full default-size table keeps an active lockout when a new address fails", () => {
  // The regression: the table used to evict in insertion order, and the first entry was this lockout.
  const lockout = new AuthLockout({ maxFailures: 2, windowMs: 60_000 });
  lockout.fail("198.51.100.1", 0);
  assert.equal(lockout.fail("198.51.100.1", 0), true);
  for (let i = 1; i < 100_000; i++) lockout.fail(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, 1);
  assert.equal(lockout.tracked, 100_000);
  lockout.fail("203.0.113.1", 2);
  assert.equal(lockout.tracked, 100_000);
  assert.equal(lockout.isLocked("198.51.100.1", 2), true);
});

Deno.test("AuthLockout handles 100 000 new failing addresses on a full table in well under a second", () => {
  const lockout = new AuthLockout({ maxFailures: 5, windowMs: 60_000 });
  const address = (i: number) => `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`;
  for (let i = 0; i < 100_000; i++) lockout.fail(address(i), 0);
  const start = performance.now();
  for (let i = 100_000; i < 200_000; i++) lockout.fail(address(i), 1);
  const elapsed = performance.now() - start;
  assert.equal(lockout.tracked, 100_000);
  assert.ok(elapsed < 1000, `100 000 evictions took ${elapsed.toFixed(0)} ms`);
});

Deno.test("lockoutKey groups IPv6 by /64 and keeps IPv4 per address", async (t) => {
  await t.step("IPv6 addresses in one /64 share a key, whatever their spelling", () => {
    const key = lockoutKey("2001:db8:1:2:aaaa::1");
    assert.equal(key, "2001:db8:1:2::/64");
    for (
      const ip of [
        "2001:db8:1:2:bbbb::9",
        "2001:0DB8:0001:0002:ffff:ffff:ffff:ffff",
        "2001:db8:1:2::",
        "2001:db8:1:2::192.0.2.1",
        "2001:db8:1:2:0:0:198.51.100.7",
      ]
    ) assert.equal(lockoutKey(ip), key, ip);
    assert.notEqual(lockoutKey("2001:db8:1:3::1"), key);
    assert.equal(lockoutKey("::1"), "0:0:0:0::/64");
    assert.equal(lockoutKey("2001:db8::"), "2001:db8:0:0::/64");
  });
  await t.step("a zone id is kept: one prefix on two links is two networks", () => {
    assert.equal(lockoutKey("fe80::1%eth0"), "fe80:0:0:0::/64%eth0");
    assert.equal(lockoutKey("fe80::2%eth0"), lockoutKey("fe80::1%eth0"));
    assert.notEqual(lockoutKey("fe80::1%eth1"), lockoutKey("fe80::1%eth0"));
  });
  await t.step("IPv4 and IPv4-mapped IPv6 are one address each", () => {
    assert.equal(lockoutKey("192.0.2.1"), "192.0.2.1");
    assert.notEqual(lockoutKey("192.0.2.2"), lockoutKey("192.0.2.1"));
    assert.equal(lockoutKey("::ffff:192.0.2.1"), "192.0.2.1");
    assert.equal(lockoutKey("::FFFF:c000:201"), "192.0.2.1");
    assert.equal(lockoutKey("0:0:0:0:0:ffff:192.0.2.1"), "192.0.2.1");
  });
  await t.step("anything else is its own key", () => {
    for (const ip of ["a", "", "1::2::3", "[::1]", "::ffff:1.2.3", "192.0.2.1%eth0", "%eth0"]) {
      assert.equal(lockoutKey(ip), ip);
    }
  });
});

Deno.test("AuthLockout locks a whole IPv6 /64 and an IPv4 address in both spellings", () => {
  const lockout = new AuthLockout({ maxFailures: 2, windowMs: 1000 });
  lockout.fail("2001:db8:1:2:aaaa::1", 0);
  assert.equal(lockout.fail("2001:db8:1:2:bbbb::9", 10), true, "a rotated address started afresh");
  assert.equal(lockout.isLocked("2001:db8:1:2::42", 10), true);
  assert.equal(lockout.isLocked("2001:db8:1:3::1", 10), false);
  lockout.fail("::ffff:192.0.2.1", 20);
  assert.equal(lockout.fail("192.0.2.1", 30), true);
  assert.equal(lockout.isLocked("::ffff:192.0.2.1", 30), true);
  assert.equal(lockout.isLocked("192.0.2.2", 30), false);
});
