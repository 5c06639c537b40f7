import assert from "node:assert/strict";
import { crc32c, crc32cUpdate } from "./crc32c.ts";

/** Bit-at-a-time CRC-32C straight from the definition: the independent reference. */
function crc32cBitwise(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

const ascii = (s: string) => new TextEncoder().encode(s);

Deno.test("crc32c: published check values (RFC 3720 B.4, iSCSI)", () => {
  assert.equal(crc32c(ascii("123456789")), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(0)), 0);
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa); // 32 zero bytes
  assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43); // 32 0xFF bytes
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e); // 0..31
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c); // 31..0
});

Deno.test("crc32c: slicing-by-8 equals the bitwise definition at every length 0..300", () => {
  let seed = 12345;
  const data = Uint8Array.from(
    { length: 300 },
    () => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24,
  );
  for (let n = 0; n <= data.length; n++) {
    assert.equal(crc32c(data.subarray(0, n)), crc32cBitwise(data.subarray(0, n)), `length ${n}`);
  }
});

Deno.test("crc32c: incremental update over arbitrary splits equals one pass", () => {
  const data = Uint8Array.from({ length: 1000 }, (_, i) => (i * 131 + 7) & 0xff);
  const whole = crc32c(data);
  for (const cut of [0, 1, 7, 8, 9, 500, 999, 1000]) {
    const c = crc32cUpdate(crc32cUpdate(0, data.subarray(0, cut)), data.subarray(cut));
    assert.equal(c, whole, `split at ${cut}`);
  }
});

Deno.test("crc32c: throughput on 16 MiB (informational, must exceed 50 MB/s)", () => {
  const data = new Uint8Array(16 << 20).map((_, i) => i * 7);
  const t0 = performance.now();
  crc32c(data);
  const ms = performance.now() - t0;
  const mbs = (16 * 1.048576) / (ms / 1000);
  console.log(`crc32c: ${mbs.toFixed(0)} MB/s`);
  assert.ok(mbs > 50, `crc32c too slow: ${mbs.toFixed(1)} MB/s`);
});
