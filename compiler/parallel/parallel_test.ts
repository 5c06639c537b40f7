import assert from "node:assert/strict";
import { CHUNK_ROWS, type ChunkOptions, chunkRanges, quantizeChunked } from "./chunked.ts";
import { QuantizePool } from "./pool.ts";
import { quantizeMatrix } from "../quantize/mod.ts";
import { gaussianMatrix } from "../quantize/test_util.ts";
import { dequantize, type QuantizedTensor } from "../../schemas/packing.ts";
import { UsageError } from "../../schemas/errors.ts";

const ROWS = CHUNK_ROWS * 2 + 37; // three blocks, the last one short
const COLS = 96;
const w = gaussianMatrix(ROWS * COLS, 0.02, 3);
for (let i = 0; i < 200; i++) w[(i * 7919) % w.length] *= 12; // outliers

const CASES: ChunkOptions[] = [
  { bits: 4, groupSize: 32, method: "rtn" },
  { bits: 2, groupSize: 32, method: "hqq" },
  { bits: 3, groupSize: COLS, method: "rtn-sym" },
  { bits: 8, groupSize: 32, method: "hqq", scaleType: "f32" },
];

function sameTensor(a: QuantizedTensor, b: QuantizedTensor, what: string) {
  for (const k of ["rows", "cols", "bits", "groupSize", "scaleType"] as const) {
    assert.equal(a[k], b[k], `${what}: ${k}`);
  }
  for (const k of ["codes", "scales", "zeros"] as const) {
    assert.equal(a[k].constructor, b[k].constructor, `${what}: ${k} type`);
    assert.deepEqual(new Uint8Array(a[k].buffer), new Uint8Array(b[k].buffer), `${what}: ${k}`);
  }
}

Deno.test("chunkRanges tiles the rows in CHUNK_ROWS blocks", () => {
  assert.deepEqual(chunkRanges(ROWS), [
    [0, CHUNK_ROWS],
    [CHUNK_ROWS, 2 * CHUNK_ROWS],
    [2 * CHUNK_ROWS, ROWS],
  ]);
  assert.deepEqual(chunkRanges(1), [[0, 1]]);
});

Deno.test("quantizeChunked = quantizeMatrix byte for byte; error sums match float64", () => {
  for (const o of CASES) {
    const what = `${o.method} ${o.bits}-bit g${o.groupSize}`;
    const got = quantizeChunked(w, ROWS, COLS, o);
    const want = quantizeMatrix(w, ROWS, COLS, o);
    sameTensor(got.tensor, want, what);
    const dq = dequantize(want);
    let err = 0, ref = 0;
    for (let i = 0; i < w.length; i++) {
      err += (w[i] - dq[i]) ** 2;
      ref += w[i] ** 2;
    }
    // Same terms, summed per block: equal up to float64 reassociation.
    assert.ok(Math.abs(got.err - err) <= 1e-12 * err, `${what}: err ${got.err} vs ${err}`);
    assert.ok(Math.abs(got.ref - ref) <= 1e-12 * ref, `${what}: ref ${got.ref} vs ${ref}`);
  }
});

Deno.test("QuantizePool (2 workers) = single thread exactly, and rethrows typed errors", async () => {
  const pool = new QuantizePool(2);
  try {
    for (const o of CASES) {
      const what = `${o.method} ${o.bits}-bit`;
      const a = await pool.quantize(w, ROWS, COLS, o);
      const b = quantizeChunked(w, ROWS, COLS, o);
      sameTensor(a.tensor, b.tensor, what);
      assert.equal(a.err, b.err, `${what}: err`);
      assert.equal(a.ref, b.ref, `${what}: ref`);
    }
    // A smaller matrix after a larger one reuses the shared buffer.
    const small = w.subarray(0, 5 * COLS);
    const o = CASES[0];
    sameTensor(
      (await pool.quantize(small, 5, COLS, o)).tensor,
      quantizeMatrix(small, 5, COLS, o),
      "small",
    );
    await assert.rejects(
      () => pool.quantize(w, ROWS, COLS, { ...o, groupSize: 48, name: "w1" }),
      (e: Error) => e instanceof UsageError && /w1/.test(e.message),
    );
    await assert.rejects(() => pool.quantize(w, ROWS + 1, COLS, o), UsageError);
  } finally {
    pool.close();
  }
  assert.throws(() => new QuantizePool(0), UsageError);
});
