import assert from "node:assert/strict";
import { mulberry32 as rng } from "./prng.ts";
import { f16ToF32, f32ToF16 } from "./half.ts";
import {
  checkGroupSize,
  checkMxfp4Layout,
  codeAt,
  dequantize,
  E2M1_VALUES,
  e8m0Scale,
  encodeParams,
  groupsPerRow,
  packCodes,
  packedByteSizes,
  paramAt,
  QUANT_BITS,
  type QuantBits,
  type QuantizedTensor,
  unpackCodes,
  wordsPerRow,
} from "./packing.ts";

const COLS = [1, 31, 32, 33, 95, 100, 257];

function randomCodes(rows: number, cols: number, bits: number, seed: number): Uint8Array {
  const u = rng(seed);
  return Uint8Array.from({ length: rows * cols }, () => Math.floor(u() * 2 ** bits));
}

/** Bit k of a packed row, read one bit at a time (independent of the straddling logic). */
function bitOf(words: Uint32Array, r: number, k: number, cols: number, bits: QuantBits): number {
  return (words[r * wordsPerRow(cols, bits) + Math.floor(k / 32)] >>> (k % 32)) & 1;
}

Deno.test("packCodes/unpackCodes/codeAt round trip, bit positions and zero padding", () => {
  const rows = 3;
  for (const bits of QUANT_BITS) {
    for (const cols of COLS) {
      const codes = randomCodes(rows, cols, bits, bits * 1000 + cols);
      const words = packCodes(codes, rows, cols, bits);
      assert.equal(words.length, rows * Math.ceil(cols / 32) * bits);
      assert.deepEqual(unpackCodes(words, rows, cols, bits), codes);
      const wpr = wordsPerRow(cols, bits);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          // Code c sits at bit (c / 32)·32·bits + (c % 32)·bits of the row, LSB first.
          const start = Math.floor(c / 32) * 32 * bits + (c % 32) * bits;
          let v = 0;
          for (let b = 0; b < bits; b++) v += bitOf(words, r, start + b, cols, bits) * 2 ** b;
          assert.equal(v, codes[r * cols + c]);
          assert.equal(codeAt(words, r, c, cols, bits), v);
        }
        // Every bit after the last code of the row (the block padding) is zero.
        const end = Math.floor(cols / 32) * 32 * bits + (cols % 32) * bits;
        for (let k = end; k < wpr * 32; k++) assert.equal(bitOf(words, r, k, cols, bits), 0);
      }
    }
  }
  assert.throws(() => packCodes(Uint8Array.of(4), 1, 1, 2), RangeError);
});

Deno.test("PACKING.md worked example: a 3-bit row of 33 codes", () => {
  const codes = Uint8Array.from({ length: 33 }, (_, j) => j % 8);
  const w = packCodes(codes, 1, 33, 3);
  assert.equal(w.length, 6); // two blocks of 3 words
  // codes 0..9 fill bits 0..29 of word 0; code 10 = 2 = 0b010: bits 30-31 of word 0 get 0b10,
  // bit 0 of word 1 gets 0b0.
  assert.equal(w[0] >>> 30, 2);
  assert.equal(w[1] & 1, 0);
  // code 21 = 5 = 0b101: bit 31 of word 1 gets 1, bits 0-1 of word 2 get 0b10.
  assert.equal(w[1] >>> 31, 1);
  assert.equal(w[2] & 3, 2);
  // code 31 = 7 sits at bits 29-31 of word 2.
  assert.equal(w[2] >>> 29, 7);
  // code 32 = 0 starts block 1 (word 3); words 3-5 hold only padding beyond bit 2.
  assert.deepEqual([w[3], w[4], w[5]], [0, 0, 0]);
  const c2 = codes.slice();
  c2[32] = 6;
  assert.deepEqual([...packCodes(c2, 1, 33, 3).subarray(3)], [6, 0, 0]);
  // Word 0 in full: codes 0..9 (0,1,...,7,0,1) at 3-bit steps, then code 10's low bits.
  let want = 0;
  for (let j = 0; j < 10; j++) want += (j % 8) * 2 ** (3 * j);
  want += 2 * 2 ** 30;
  assert.equal(w[0], want);
});

Deno.test("dequantize matches a float64 computation within 2^-23 relative", () => {
  const u = rng(7);
  for (const bits of QUANT_BITS) {
    for (const [cols, gs] of [[100, 32], [33, 33], [257, 64], [1, 1]]) {
      checkGroupSize(cols, gs);
      for (const scaleType of ["f16", "f32"] as const) {
        const rows = 4;
        const codes = randomCodes(rows, cols, bits, cols + bits);
        const n = rows * groupsPerRow(cols, gs);
        const scales = Array.from({ length: n }, () => (u() - 0.3) * 0.01);
        const zeros = Array.from({ length: n }, () => u() * 2 ** bits);
        const t: QuantizedTensor = {
          rows,
          cols,
          bits,
          groupSize: gs,
          scaleType,
          codes: packCodes(codes, rows, cols, bits),
          scales: encodeParams(scales, scaleType),
          zeros: encodeParams(zeros, scaleType),
        };
        assert.equal(packedByteSizes(t).scales, n * (scaleType === "f16" ? 2 : 4));
        const out = dequantize(t);
        for (let r = 0; r < rows; r++) {
          for (let c = 0; c < cols; c++) {
            const g = r * groupsPerRow(cols, gs) + Math.floor(c / gs);
            const s = paramAt(t.scales, g);
            const z = paramAt(t.zeros, g);
            // The stored params are the nearest f16/f32 of what was asked for.
            const sWant = scaleType === "f16"
              ? f16ToF32(f32ToF16(scales[g]))
              : Math.fround(scales[g]);
            assert.equal(s, sWant);
            const exact = (codes[r * cols + c] - z) * s;
            const got = out[r * cols + c];
            assert.ok(Math.abs(got - exact) <= Math.abs(exact) * 2 ** -23, `${got} vs ${exact}`);
          }
        }
      }
    }
  }
});

Deno.test("layout helpers: words, groups, sizes, group-size rule", () => {
  assert.equal(wordsPerRow(33, 3), 6);
  assert.equal(wordsPerRow(32, 4), 4);
  assert.equal(groupsPerRow(100, 32), 4);
  const s = packedByteSizes({ rows: 2, cols: 100, bits: 4, groupSize: 32, scaleType: "f16" });
  assert.deepEqual(s, { codes: 2 * 16 * 4, scales: 16, zeros: 16, total: 160 });
  checkGroupSize(100, 100);
  assert.throws(() => checkGroupSize(100, 48), RangeError);
  assert.throws(() => checkGroupSize(100, 0), RangeError);
});

Deno.test("MXFP4: a release block's 16 bytes are the 4-bit block words; e2m1 · 2^(s − 127)", () => {
  // Release layout: byte k of a 32-weight block holds weight 2k (low nibble) and 2k + 1 (high).
  const bytes = new Uint8Array(16);
  const codes = Array.from({ length: 32 }, (_, j) => (j * 7 + 3) % 16);
  for (let k = 0; k < 16; k++) bytes[k] = codes[2 * k] | (codes[2 * k + 1] << 4);
  const words = new Uint32Array(bytes.buffer);
  for (let j = 0; j < 32; j++) assert.equal(codeAt(words, 0, j, 32, 4), codes[j]);
  const t: QuantizedTensor = {
    rows: 1,
    cols: 32,
    bits: 4,
    groupSize: 32,
    scaleType: "e8m0",
    codes: words,
    scales: Uint8Array.of(125),
    zeros: new Uint8Array(0),
  };
  const v = dequantize(t);
  for (let j = 0; j < 32; j++) assert.equal(v[j], E2M1_VALUES[codes[j]] / 4);
  assert.deepEqual(E2M1_VALUES.slice(0, 8), [0, 0.5, 1, 1.5, 2, 3, 4, 6]);
  assert.equal(e8m0Scale(0), 0);
  assert.ok(Number.isNaN(e8m0Scale(255)));
  assert.deepEqual(packedByteSizes({ ...t, rows: 3, cols: 64 }), {
    codes: 96,
    scales: 6,
    zeros: 0,
    total: 102,
  });
  assert.throws(() => checkMxfp4Layout({ bits: 4, groupSize: 64, scaleType: "e8m0" }), /32/);
});
