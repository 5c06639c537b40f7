import assert from "node:assert/strict";
import { LimitError } from "../../schemas/errors.ts";
import { bf16ToF32, f16ToF32 } from "../../schemas/half.ts";
import { castMatrix, decodeMatrix, f32ToBf16 } from "./cast.ts";
import { heavyTailedMatrix } from "./test_util.ts";

Deno.test("f32ToBf16 rounds to nearest, ties to even (checked against neighbours in float64)", () => {
  const w = heavyTailedMatrix(20000, 3, 1);
  for (const x of [...w, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1e-40]) {
    const b = f32ToBf16(x);
    const v = bf16ToF32(b);
    const xf = Math.fround(x);
    const d = Math.abs(v - xf);
    for (const n of [b - 1, b + 1]) {
      const dn = Math.abs(bf16ToF32(n & 0xffff) - xf);
      assert.ok(d < dn || (d === dn && (b & 1) === 0), `${x}: 0x${b.toString(16)}`);
    }
  }
  assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80); // tie, down to even
  assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82); // tie, up to even
  assert.equal(f32ToBf16(3.4e38), 0x7f80); // nearer 2^128 than the largest bf16: Inf
  assert.equal(f32ToBf16(3.39e38), 0x7f7f);
  assert.ok(Number.isNaN(bf16ToF32(f32ToBf16(NaN))));
});

Deno.test("castMatrix/decodeMatrix: f16 and bf16 round trip within half an ulp", () => {
  const w = heavyTailedMatrix(4097, 0.05, 2);
  for (const [type, rel] of [["f16", 2 ** -11], ["bf16", 2 ** -8]] as const) {
    const bits = castMatrix(w, type);
    const back = decodeMatrix(bits, type);
    const dec = type === "f16" ? f16ToF32 : bf16ToF32;
    for (let i = 0; i < w.length; i++) {
      assert.equal(back[i], dec(bits[i]));
      // Normal range: relative error ≤ 2^-(p+1); f16 subnormals: absolute ≤ 2^-25.
      assert.ok(
        Math.abs(back[i] - w[i]) <= Math.max(Math.abs(w[i]) * rel, 2 ** -25),
        `${type} ${i}`,
      );
    }
  }
  assert.throws(
    () => castMatrix(Float32Array.of(1, 70000), "f16", "lm_head"),
    (e: Error) => e instanceof LimitError && e.message.startsWith("lm_head: "),
  );
  assert.equal(castMatrix(Float32Array.of(70000), "bf16")[0], f32ToBf16(70000));
});
