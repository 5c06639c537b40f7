/**
 * The streamed calibration against the whole-model float64 reference on a real (tiny) checkpoint
 * with a gated shared expert. The pass runs its experts, shared expert and head in float32
 * (compiler/calibration/), so the comparisons carry tolerances: the same counts and reservoir
 * picks as `calibrate`, routed inputs within 1e-5 of their largest value, output costs within 1e-4 relative of
 * `outputError` on those samples, and layer sensitivities measured in the one pass within 1e-5
 * bits/token of `layerDelta`'s full re-evaluations, on all tokens and on a prefix; and the same
 * record with the jobs on a 2-worker pool as on this thread.
 *
 * @module
 */

import assert from "node:assert/strict";
import { calibrate, type CalibrationData } from "./calibration.ts";
import { calibrateStream, type StreamCosts, streamCostsKey } from "./calibration_stream.ts";
import { loadCheckpoint } from "./checkpoint/mod.ts";
import { layerDelta, outputError } from "./expert_error.ts";
import { quantizeExpert, referenceExpert } from "./expert_weights.ts";
import { moeLayers } from "./ir.ts";
import { evaluateReference, prepareReference } from "./reference/mod.ts";
import { mulberry32 } from "../schemas/prng.ts";
import { QuantizePool } from "./parallel/pool.ts";
import type { QuantBits } from "../schemas/packing.ts";

const FIXTURE = new URL("../testdata/hf-oracle/qwen2_moe-a", import.meta.url).pathname;
const SHAKESPEARE = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;

/** Largest |a − b| over the largest |b|. */
function relMax(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, r = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    r = Math.max(r, Math.abs(b[i]));
  }
  return r > 0 ? d / r : d;
}

/**
 * Counts and sample sizes equal; sample inputs and weights within `tol` of their largest value.
 * Returns the largest error.
 */
function assertSameRecord(stream: CalibrationData, whole: CalibrationData, tol = 1e-5): number {
  assert.equal(stream.tokens, whole.tokens);
  assert.deepEqual(stream.counts, whole.counts);
  let worst = 0;
  for (const [m, row] of whole.samples.entries()) {
    for (const [e, s] of row.entries()) {
      const t = stream.samples[m][e];
      assert.deepEqual([t.n, t.seen], [s.n, s.seen], `sample ${m}/${e}`);
      assert.equal(t.inputs.length, s.inputs.length);
      const err = Math.max(relMax(t.inputs, s.inputs), relMax(t.weights, s.weights));
      assert.ok(err <= tol, `inputs ${m}/${e}: ${err}`);
      worst = Math.max(worst, err);
    }
  }
  return worst;
}

function randomIds(n: number, vocab: number, seed: number): number[] {
  const rng = mulberry32(seed);
  return Array.from({ length: n }, () => Math.floor(rng() * vocab));
}

Deno.test("calibrateStream: the same routed inputs as calibrate (gated shared expert)", async () => {
  const ir = await loadCheckpoint(FIXTURE);
  const ref = await prepareReference(ir);
  const ids = randomIds(40, ir.spec.vocabSize, 7);
  const whole = await calibrate(ref, ids, { context: 16, maxSamplesPerExpert: 1000 });
  const stream = await calibrateStream(ir, ids, { context: 16, maxSamplesPerExpert: 1000 });
  const worst = assertSameRecord(stream, whole);
  assert.ok(worst > 0, "the float32 blocks change the inputs a little");
  console.log(`routed inputs: largest relative error ${worst.toExponential(2)}`);
  // The jobs on worker threads: the same record, bit for bit.
  const pool = new QuantizePool(2);
  try {
    // Expert jobs on the pool; then the attention blocks as KV-head jobs too; then only the
    // attention projections as row-block jobs.
    const variants = [{}, { attentionJobs: true }, { projectionJobs: true }];
    for (const variant of variants) {
      const pooled = await calibrateStream(ir, ids, {
        context: 16,
        maxSamplesPerExpert: 1000,
        runner: pool,
        ...variant,
      });
      assert.deepEqual(pooled.counts, stream.counts, JSON.stringify(variant));
      assert.deepEqual(pooled.samples, stream.samples, JSON.stringify(variant));
    }
  } finally {
    pool.close();
  }
});

Deno.test("calibrateStream: costs equal outputError, sensitivities equal layerDelta", async () => {
  const ir = await loadCheckpoint(SHAKESPEARE);
  const ref = await prepareReference(ir);
  const layers = moeLayers(ir);
  const ids = randomIds(40, ir.spec.vocabSize, 7);
  const context = 16;
  const widths: QuantBits[] = [2, 3, 4];
  const req = { widths, groupSize: 64, quantizer: "rtn" as const, sensitivity: true };
  const whole = await calibrate(ref, ids, { context, maxSamplesPerExpert: 1000 });
  const stream = await calibrateStream(ir, ids, {
    context,
    maxSamplesPerExpert: 1000,
    costs: req,
  });
  assertSameRecord(stream, whole);

  const costs = stream.memo.get(streamCostsKey(req)) as StreamCosts;
  let costErr = 0;
  let deltaErr = 0;
  const base = (await evaluateReference(ref, ids, { context })).bitsPerToken;
  for (const [m, layer] of layers.entries()) {
    const lowest = layer.experts.map((_, e) => {
      const w = referenceExpert(ref, m, e);
      widths.forEach((b, k) => {
        const expected = outputError(w, quantizeExpert(w, b, 64, "rtn"), whole.samples[m][e]).cost;
        const got = costs.output[m][e][k];
        if (expected > 0) costErr = Math.max(costErr, Math.abs(got - expected) / expected);
        assert.ok(Math.abs(got - expected) <= 1e-4 * Math.abs(expected), `cost ${m}/${e}/${b}`);
      });
      return quantizeExpert(w, widths[0], 64, "rtn");
    });
    const delta = await layerDelta(ref, ids, context, m, lowest, base);
    deltaErr = Math.max(deltaErr, Math.abs(costs.deltas![m] - delta));
    assert.ok(
      Math.abs(costs.deltas![m] - delta) < 1e-5,
      `delta ${m}: ${costs.deltas![m]} ${delta}`,
    );
  }
  console.log(
    `costs: largest relative error ${costErr.toExponential(2)}; ` +
      `Δ bits/token: largest error ${deltaErr.toExponential(2)}`,
  );
  assert.equal(costs.sensitivityTokens, 40);

  // Costs on a caller's samples (a 3-row reservoir): outputError on exactly those.
  const small = await calibrate(ref, ids, { context, maxSamplesPerExpert: 3 });
  const onSmall = await calibrateStream(ir, ids, {
    context,
    costs: { ...req, sensitivity: false },
    samples: small.samples,
  });
  assert.ok(onSmall.samples.flat().some((x) => x.n > 0));
  const dropped = await calibrateStream(ir, ids, { context, keepSamples: false });
  assert.deepEqual(dropped.counts, whole.counts);
  assert.ok(
    dropped.samples.flat().every((x, i) => x.n === 0 && x.seen === whole.samples.flat()[i].seen),
  );
  const smallCosts = onSmall.memo.get(
    streamCostsKey({ ...req, sensitivity: false }),
  ) as StreamCosts;
  assert.equal(smallCosts.deltas, null);
  for (const [m, layer] of layers.entries()) {
    for (let e = 0; e < layer.experts.length; e++) {
      const w = referenceExpert(ref, m, e);
      const want = outputError(w, quantizeExpert(w, 3, 64, "rtn"), small.samples[m][e]).cost;
      const got = smallCosts.output[m][e][1];
      assert.ok(Math.abs(got - want) <= 1e-4 * Math.abs(want), `small cost ${m}/${e}`);
    }
  }

  // Sensitivity on the first two windows only: the same as re-evaluating on that prefix.
  const prefix = await calibrateStream(ir, ids, { context, costs: req, sensitivityTokens: 32 });
  const short = prefix.memo.get(streamCostsKey(req)) as StreamCosts;
  assert.equal(short.sensitivityTokens, 32);
  const head = ids.slice(0, 33);
  const baseShort = (await evaluateReference(ref, head, { context })).bitsPerToken;
  for (const m of layers.keys()) {
    const lowest = layers[m].experts.map((_, e) =>
      quantizeExpert(referenceExpert(ref, m, e), widths[0], 64, "rtn")
    );
    const delta = await layerDelta(ref, head, context, m, lowest, baseShort);
    assert.ok(Math.abs(short.deltas![m] - delta) < 1e-5, `prefix delta ${m}`);
  }

  // A prefix that cuts a window (20 = 16 + 4 tokens): the same as re-evaluating those tokens.
  const cut = await calibrateStream(ir, ids, { context, costs: req, sensitivityTokens: 20 });
  const cutCosts = cut.memo.get(streamCostsKey(req)) as StreamCosts;
  assert.equal(cutCosts.sensitivityTokens, 20);
  assert.deepEqual(cutCosts.output, costs.output);
  const head20 = ids.slice(0, 21);
  const base20 = (await evaluateReference(ref, head20, { context })).bitsPerToken;
  for (const m of layers.keys()) {
    const lowest = layers[m].experts.map((_, e) =>
      quantizeExpert(referenceExpert(ref, m, e), widths[0], 64, "rtn")
    );
    const delta = await layerDelta(ref, head20, context, m, lowest, base20);
    assert.ok(Math.abs(cutCosts.deltas![m] - delta) < 1e-5, `cut delta ${m}`);
    assert.ok(Math.abs(cutCosts.deltas![m] - short.deltas![m]) > 1e-9, `cut ${m} differs`);
  }
});
