/**
 * The allocation study's machinery on the tiny mixtral-classic fixture, and the budget cost's
 * basic promise: a damaged expert costs more.
 *
 * @module
 */

import assert from "node:assert/strict";
import { runCli } from "./cli_helpers.ts";
import { aggregate, type StudyRow, studyTable } from "../cli/study.ts";
import { layerDelta, layerScales, outputError, spearman } from "../compiler/expert_error.ts";
import {
  type ExpertWeights,
  matrixNames,
  outputMatrix,
  quantizeExpert,
  referenceExpert,
  swapExpert,
} from "../compiler/expert_weights.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { evaluateReference, prepareReference } from "../compiler/reference/mod.ts";
import { mulberry32 } from "../schemas/prng.ts";
import { allocateBudget } from "../compiler/passes/budget_allocator.ts";

const FIXTURE = new URL("../testdata/hf-moe/mixtral-classic", import.meta.url).pathname;

/** Synthetic byte text for a 48-token vocabulary: bytes 32..47, seeded. */
function syntheticText(n: number, seed: number): Uint8Array {
  const rng = mulberry32(seed);
  return Uint8Array.from({ length: n }, () => 32 + Math.floor(rng() * 16));
}

Deno.test("study: JSON shape, equal average bits at equal targets, markdown table", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-study-test-" });
  try {
    const text = `${dir}/text.txt`;
    await Deno.writeFile(text, syntheticText(400, 7));
    const only = "uniform-2,uniform-3,paper@2.5,random#0@2.5,frequency@2.5,budget@2.5";
    const r = await runCli([
      "study",
      FIXTURE,
      "--text",
      text,
      "--max-bytes",
      "200",
      "--calibration-bytes",
      "150",
      "--context",
      "32",
      "--bits",
      "2.5",
      "--seeds",
      "1",
      "--group-size",
      "32",
      "--quantizers",
      "",
      "--jobs",
      "1",
      "--only",
      only,
      "--json",
      "--quiet",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.eval_bytes, 200);
    assert.equal(out.calibration_bytes, 150);
    const labels = out.runs.map((x: StudyRow) => x.label);
    assert.deepEqual(labels, ["f32", ...only.split(",")]);
    for (const row of out.runs as StudyRow[]) {
      assert.ok(Number.isFinite(row.bitsPerByte) && row.bitsPerByte > 0, row.label);
      assert.ok(row.bytes > 0, row.label);
    }
    const f32 = out.runs[0] as StudyRow;
    assert.equal(f32.delta, 0);
    const at = (out.runs as StudyRow[]).filter((x) => x.targetBits === 2.5);
    assert.equal(at.length, 4);
    // Equal-bit comparisons: every allocator's artifact really averages 2.5 bits per expert.
    for (const x of at) assert.ok(Math.abs(x.avgExpertBits - 2.5) < 1e-9, `${x.label}`);
    const u2 = out.runs.find((x: StudyRow) => x.label === "uniform-2") as StudyRow;
    assert.equal(u2.avgExpertBits, 2);
    for (const x of out.runs as StudyRow[]) {
      assert.ok(Math.abs(x.delta - (x.bitsPerByte - f32.bitsPerByte)) < 1e-12);
    }
    // Aggregated random row and the markdown table.
    const table = studyTable(out.rows);
    assert.equal(table.split("\n").length, 2 + out.rows.length);
    assert.match(table, /\| random@2\.5 \| random \| rtn \| 2\.500 \|/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("study: aggregate averages random seeds with a sample sd", () => {
  const row = (label: string, bpb: number): StudyRow => ({
    label,
    allocator: "random",
    quantizer: "rtn",
    targetBits: 2.5,
    avgExpertBits: 2.5,
    denseBits: "f32",
    bytes: 100,
    bitsPerByte: bpb,
    delta: bpb - 2,
  });
  const rows = aggregate([row("f32", 2), row("random#0@2.5", 2.1), row("random#1@2.5", 2.3)]);
  assert.equal(rows.length, 2);
  assert.equal(rows[1].label, "random@2.5");
  assert.ok(Math.abs(rows[1].bitsPerByte - 2.2) < 1e-12);
  assert.ok(Math.abs(rows[1].sd! - Math.sqrt(0.02)) < 1e-12);
  assert.equal(rows[1].seeds, 2);
});

Deno.test("spearman: known values, ties, constant input", () => {
  assert.equal(spearman([1, 2, 3, 4], [10, 20, 30, 40]), 1);
  assert.equal(spearman([1, 2, 3, 4], [4, 3, 2, 1]), -1);
  // Ranks a = [0, 1, 2], b = [0.5, 0.5, 2]: Pearson of those = √3/2.
  assert.ok(Math.abs(spearman([1, 2, 3], [5, 5, 9]) - Math.sqrt(3) / 2) < 1e-12);
  assert.ok(Number.isNaN(spearman([1, 1, 1], [1, 2, 3])));
});

Deno.test("budget cost: a damaged expert costs more and gets more bits", async () => {
  const ir = await loadCheckpoint(FIXTURE);
  const ref = await prepareReference(ir);
  const w = referenceExpert(ref, 0, 0);
  // Damage: one large outlier per 32-column group of the input-side matrices' rows (gate and up
  // here) widens the min-max range, so 2-bit RTN rounds the rest of those groups far more
  // coarsely.
  const damaged: ExpertWeights = { ...w, matrices: {} };
  const inputSide = matrixNames(w).filter((name) => name !== outputMatrix(w.activation));
  assert.equal(inputSide.length, 2);
  for (const name of matrixNames(w)) damaged.matrices[name] = w.matrices[name]!.slice();
  inputSide.forEach((name, i) => {
    for (let r = 0; r < w.inter; r++) damaged.matrices[name]![r * w.hidden] = i ? -0.5 : 0.5;
  });
  const rng = mulberry32(3);
  const n = 64;
  const inputs = Float32Array.from({ length: n * w.hidden }, () => rng() * 2 - 1);
  const sample = { n, seen: n, inputs, weights: new Float32Array(n).fill(0.5) };
  const costs = [w, damaged].map((x) =>
    [2, 3, 4].map((b) => outputError(x, quantizeExpert(x, b as 2 | 3 | 4, 32, "rtn"), sample).cost)
  );
  // Both fall with the width; the damaged one is costlier at every width.
  for (const c of costs) assert.ok(c[0] > c[1] && c[1] > c[2], `${c}`);
  for (let k = 0; k < 3; k++) assert.ok(costs[1][k] > 2 * costs[0][k], `width ${k}: ${costs}`);
  // The budget solver then gives the damaged expert (index 1) more bits at a 3-bit average.
  const alloc = allocateBudget({ widths: [2, 3, 4], cost: [costs], targetAverage: 3 });
  assert.deepEqual(alloc.bits[0], [2, 4]);
});

Deno.test("layer sensitivity: identical swap gives Δ = 0, quantized layer costs bits", async () => {
  const ir = await loadCheckpoint(FIXTURE);
  const ref = await prepareReference(ir);
  const ids = Array.from(syntheticText(96, 11));
  const base = (await evaluateReference(ref, ids, { context: 32 })).bitsPerToken;
  const same = [0, 1, 2, 3].map((e) => referenceExpert(ref, 1, e));
  assert.equal(await layerDelta(ref, ids, 32, 1, same, base), 0);
  const q2 = same.map((w) => quantizeExpert(w, 2, 32, "rtn"));
  const before = ref.moe[1].experts[2];
  const d = await layerDelta(ref, ids, 32, 1, q2, base);
  assert.ok(Number.isFinite(d) && d !== 0, `Δ ${d}`);
  // Weights are restored afterwards, and swapExpert's own restore works.
  assert.equal(ref.moe[1].experts[2], before);
  const restore = swapExpert(ref, 1, 2, q2[2]);
  restore();
  assert.equal((await evaluateReference(ref, ids, { context: 32 })).bitsPerToken, base);
  // Scales: Δ/Σproxy; a non-positive Δ gets a tenth of the smallest positive scale.
  const s = layerScales([0.2, -0.1, 0], [2, 4, 0]);
  assert.ok(Math.abs(s[0] - 0.1) < 1e-15 && Math.abs(s[1] - 0.01) < 1e-15 && s[2] === 0, `${s}`);
});
