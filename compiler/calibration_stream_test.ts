/**
 * The streamed calibration against the whole-model reference on a real (tiny) checkpoint with a
 * gated shared expert: the same counts and, bit for bit, the same routed inputs as `calibrate`
 * (so the layer-by-layer states equal the reference's), output costs equal to `outputError` on
 * those samples, and layer sensitivities measured in the one pass equal `layerDelta`'s full
 * re-evaluations (float64 within 1e-9 bits/token), on all tokens and on a prefix.
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
import type { QuantBits } from "../schemas/packing.ts";

const FIXTURE = new URL("../testdata/hf-oracle/qwen2_moe-a", import.meta.url).pathname;
const SHAKESPEARE = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;

/** Counts and samples of both calibrations are equal, bit for bit. */
function assertSameRecord(stream: CalibrationData, whole: CalibrationData): void {
  assert.equal(stream.tokens, whole.tokens);
  assert.deepEqual(stream.counts, whole.counts);
  for (const [m, row] of whole.samples.entries()) {
    for (const [e, s] of row.entries()) {
      const t = stream.samples[m][e];
      assert.deepEqual([t.n, t.seen], [s.n, s.seen], `sample ${m}/${e}`);
      assert.deepEqual(t.inputs, s.inputs, `inputs ${m}/${e}`);
      assert.deepEqual(t.weights, s.weights, `weights ${m}/${e}`);
    }
  }
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
  assertSameRecord(stream, whole);
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
  const base = (await evaluateReference(ref, ids, { context })).bitsPerToken;
  for (const [m, layer] of layers.entries()) {
    const lowest = layer.experts.map((_, e) => {
      const w = referenceExpert(ref, m, e);
      widths.forEach((b, k) => {
        const expected = outputError(w, quantizeExpert(w, b, 64, "rtn"), whole.samples[m][e]).cost;
        const got = costs.output[m][e][k];
        assert.ok(Math.abs(got - expected) <= 1e-12 * Math.abs(expected), `cost ${m}/${e}/${b}`);
      });
      return quantizeExpert(w, widths[0], 64, "rtn");
    });
    const delta = await layerDelta(ref, ids, context, m, lowest, base);
    assert.ok(
      Math.abs(costs.deltas![m] - delta) < 1e-9,
      `delta ${m}: ${costs.deltas![m]} ${delta}`,
    );
  }
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
      assert.ok(Math.abs(got - want) <= 1e-12 * Math.abs(want), `small cost ${m}/${e}`);
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
    assert.ok(Math.abs(short.deltas![m] - delta) < 1e-9, `prefix delta ${m}`);
  }
});
