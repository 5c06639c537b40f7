/**
 * Calibration on a real (tiny) checkpoint: tables indexed by MoE layer, every routed token
 * counted, and the kept samples are exactly the hidden states and weights the reference showed
 * its observer (independently collected here), while the reservoir keeps at most the cap.
 *
 * @module
 */

import assert from "node:assert/strict";
import { calibrate } from "./calibration.ts";
import { loadCheckpoint } from "./checkpoint/mod.ts";
import { moeLayers } from "./ir.ts";
import { forward, prepareReference } from "./reference/mod.ts";
import { mulberry32 } from "../schemas/prng.ts";

const FIXTURE = new URL("../testdata/hf-oracle/qwen2_moe-a", import.meta.url).pathname;

Deno.test("calibrate: counts and samples per MoE layer equal what the forward pass routed", async () => {
  const ir = await loadCheckpoint(FIXTURE);
  const ref = await prepareReference(ir);
  const layers = moeLayers(ir);
  const H = ir.spec.hiddenSize;
  const rng = mulberry32(5);
  const ids = Array.from({ length: 40 }, () => Math.floor(rng() * ir.spec.vocabSize));
  const context = 16;
  const calib = await calibrate(ref, ids, { context, maxSamplesPerExpert: 1000 });

  // What the reference routes, window by window (the windows calibration uses: 16, 16, 8).
  const seen = layers.map((l) =>
    l.experts.map(() => ({ rows: [] as number[], w: [] as number[] }))
  );
  for (let start = 0; start < ids.length; start += context) {
    forward(ref, ids.slice(start, start + context), {
      observer: (m, _pos, h, experts, weights) =>
        experts.forEach((e, j) => {
          seen[m][e].rows.push(...h.subarray(0, H));
          seen[m][e].w.push(weights[j]);
        }),
    });
  }
  assert.equal(calib.tokens, ids.length);
  assert.deepEqual(calib.counts.map((r) => r.length), layers.map((l) => l.experts.length));
  for (const [m, layer] of layers.entries()) {
    const topK = layer.spec.topK;
    assert.equal(calib.counts[m].reduce((s, c) => s + c, 0), ids.length * topK, `layer ${m}`);
    for (let e = 0; e < layer.experts.length; e++) {
      const s = calib.samples[m][e];
      assert.equal(calib.counts[m][e], seen[m][e].w.length);
      assert.deepEqual([s.n, s.seen], [seen[m][e].w.length, seen[m][e].w.length]);
      // Stored as f32: the observed float64 rows rounded once.
      assert.deepEqual(s.inputs, Float32Array.from(seen[m][e].rows), `inputs ${m}/${e}`);
      assert.deepEqual(s.weights, Float32Array.from(seen[m][e].w), `weights ${m}/${e}`);
    }
  }

  // A small cap: at most `cap` rows kept per expert, each one of the rows that expert saw.
  const cap = 3;
  const small = await calibrate(ref, ids, { context, maxSamplesPerExpert: cap });
  assert.deepEqual(small.counts, calib.counts);
  for (const [m, row] of small.samples.entries()) {
    for (const [e, s] of row.entries()) {
      assert.equal(s.n, Math.min(cap, calib.counts[m][e]));
      const all = calib.samples[m][e].inputs;
      for (let t = 0; t < s.n; t++) {
        const kept = s.inputs.subarray(t * H, (t + 1) * H);
        let found = false;
        for (let r = 0; r < all.length / H && !found; r++) {
          found = all.subarray(r * H, (r + 1) * H).every((v, i) => v === kept[i]);
        }
        assert.ok(found, `sample ${m}/${e}/${t} is not a routed input`);
      }
    }
  }
});
