/**
 * T5 relative-position buckets and the per-distance tables: the buckets of transformers'
 * `_relative_position_bucket` at T5's defaults (32 buckets, max distance 128), worked out by hand
 * from its formula, and the expanded tables' layout (every column the table entry of its bucket).
 * tests/engine_seq2seq_test.ts also checks the buckets against the float64 reference's.
 */
import assert from "node:assert/strict";
import { relativeBiasTable, relativeBiasWidth, relativeBucket } from "./relative_bias.ts";

const BI = { buckets: 32, maxDistance: 128, bidirectional: true };
const CAUSAL = { buckets: 32, maxDistance: 128, bidirectional: false };

Deno.test("relative buckets at T5's defaults", () => {
  // Bidirectional: 16 per direction, 8 exact; 8 + ⌊ln(d/8)/ln(16)·8⌋ beyond, capped at 15.
  const bi: [number, number][] = [
    [0, 0],
    [-1, 1],
    [1, 17],
    [-7, 7],
    [7, 23],
    [-8, 8],
    [-16, 10],
    [-31, 11],
    [-32, 12],
    [-127, 15],
    [-500, 15],
    [500, 31],
  ];
  for (const [r, b] of bi) assert.equal(relativeBucket(r, BI), b, `bidirectional ${r}`);
  // Causal: only the past, 16 exact, 16 + ⌊ln(d/16)/ln(8)·16⌋ beyond, capped at 31.
  const causal: [number, number][] = [
    [5, 0],
    [0, 0],
    [-1, 1],
    [-15, 15],
    [-16, 16],
    [-32, 21],
    [-64, 26],
    [-127, 31],
    [-1000, 31],
  ];
  for (const [r, b] of causal) assert.equal(relativeBucket(r, CAUSAL), b, `causal ${r}`);
});

Deno.test("relative bias tables: each column holds its bucket's entry per head", () => {
  const nh = 3;
  const table = Float32Array.from({ length: 32 * nh }, (_, i) => 0.25 * i - 7);
  for (const shape of [BI, CAUSAL]) {
    const span = 40;
    const out = relativeBiasTable(table, shape, nh, span);
    const width = relativeBiasWidth(shape, span);
    assert.equal(out.length, nh * width);
    for (let query = 0; query < span; query++) {
      for (let key = 0; key < (shape.bidirectional ? span : query + 1); key++) {
        const col = shape.bidirectional ? key - query + span - 1 : query - key;
        const b = relativeBucket(key - query, shape);
        for (let h = 0; h < nh; h++) assert.equal(out[h * width + col], table[b * nh + h]);
      }
    }
  }
  assert.throws(() => relativeBiasTable(table, BI, 4, 8), /expected 32·4/);
});
