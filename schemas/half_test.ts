import assert from "node:assert/strict";
import { bf16ToF32, f16ToF32, f32ToF16, roundF16 } from "./half.ts";

const f = new Float32Array(1);
const u = new Uint32Array(f.buffer);

/** The next f32 after x towards +Inf (x a positive f32). */
function nextUp(x: number): number {
  f[0] = x;
  u[0]++;
  return f[0];
}

/** The next f32 after x towards 0 (x a positive f32). */
function nextDown(x: number): number {
  f[0] = x;
  u[0]--;
  return f[0];
}

Deno.test("f16: every bit pattern decodes as IEEE binary16 and re-encodes to itself", () => {
  for (let h = 0; h < 0x10000; h++) {
    const v = f16ToF32(h);
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 31;
    const m = h & 1023;
    // Independent float64 decoding from the IEEE definition.
    const want = e === 31
      ? (m ? NaN : sign * Infinity)
      : e === 0
      ? sign * m * 2 ** -24
      : sign * 2 ** (e - 15) * (1 + m / 1024);
    assert.ok(Object.is(v, want) || (Number.isNaN(v) && Number.isNaN(want)), `0x${h.toString(16)}`);
    if (Number.isNaN(v)) assert.ok(Number.isNaN(f16ToF32(f32ToF16(v))));
    else assert.equal(f32ToF16(v), h);
  }
});

Deno.test("f32ToF16 rounds to nearest, ties to even, at every midpoint (subnormals included)", () => {
  for (let h = 0; h < 0x7c00; h++) {
    const a = f16ToF32(h);
    const b = h + 1 === 0x7c00 ? 65536 : f16ToF32(h + 1); // 65536: where the next value would be
    const mid = (a + b) / 2; // exact in f32: at most 12 significant bits
    const even = h % 2 === 0 ? h : h + 1;
    assert.equal(f32ToF16(mid), even, `midpoint above 0x${h.toString(16)}`);
    assert.equal(f32ToF16(-mid), even | 0x8000);
    assert.equal(f32ToF16(nextDown(mid)), h);
    assert.equal(f32ToF16(nextUp(mid)), h + 1);
  }
});

Deno.test("f32ToF16 edge cases: overflow, underflow, f32 subnormals, NaN", () => {
  assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(65519.99), 0x7bff);
  assert.equal(f32ToF16(65520), 0x7c00); // tie between 65504 (odd) and 2^16: to even, i.e. Inf
  assert.equal(f32ToF16(1e10), 0x7c00);
  assert.equal(f32ToF16(-1e10), 0xfc00);
  assert.equal(f32ToF16(Infinity), 0x7c00);
  assert.equal(f32ToF16(2 ** -24), 0x0001);
  assert.equal(f32ToF16(2 ** -25), 0); // tie between 0 and the smallest subnormal: to even
  assert.equal(f32ToF16(nextUp(2 ** -25)), 1);
  assert.equal(f32ToF16(-(2 ** -26)), 0x8000);
  assert.equal(f32ToF16(1e-45), 0); // an f32 subnormal
  assert.equal(f32ToF16(-0), 0x8000);
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
  assert.equal(roundF16(0.1), f16ToF32(0x2e66));
});

Deno.test("bf16ToF32 is the top half of the f32 bits", () => {
  for (const x of [1, -2.5, 3.140625, 2 ** -130, -Infinity]) {
    f[0] = x;
    assert.equal(bf16ToF32(u[0] >>> 16), x);
  }
});
