/**
 * The attention block split into KV-head and output-projection jobs: bit for bit the block on one
 * thread with the float32 projections (`attentionBlock` with `linearF32`), on this thread and on
 * a 2-worker pool, with RoPE, per-head q/k norms, clamps, biases, sinks and a sliding window; and
 * within 1e-5 of the largest output of the float64 reference block (all-float64 projections).
 *
 * @module
 */

import assert from "node:assert/strict";
import type { GqaAttentionSpec } from "../../schemas/model.ts";
import { mulberry32 } from "../../schemas/prng.ts";
import { attentionBlock, type ReferenceAttention } from "../reference/attention.ts";
import { prepareRope } from "../reference/rope.ts";
import { QuantizePool } from "../parallel/pool.ts";
import {
  attendGrouped,
  type AttentionRunner,
  groupable,
  linearF32,
  runAttentionGroup,
  runLinear,
} from "./attention.ts";
import type { AttentionGroupJob, LinearJob } from "./attention.ts";

const H = 40, NH = 6, NKV = 2, HD = 8;

function random(n: number, rng: () => number, scale = 1): Float64Array {
  // Values exact in float32, as the reference's weights are (read from f32 or BF16).
  return Float64Array.from({ length: n }, () => Math.fround((rng() * 2 - 1) * scale));
}

function block(rng: () => number, extras: boolean): ReferenceAttention {
  const spec: GqaAttentionSpec = {
    kind: "gqa",
    numHeads: NH,
    numKvHeads: NKV,
    headDim: HD,
    qkvBias: extras,
    outBias: extras,
    qkNorm: extras ? "head" : "none",
    qkNormSpec: { kind: "rms", eps: 1e-6, bias: false },
    clipQkv: extras ? 0.9 : null,
    scale: 1 / Math.sqrt(HD),
    sinks: extras,
    slidingWindow: extras ? 4 : null,
    causal: true,
    position: {
      kind: "rope",
      theta: 10000,
      rotaryDim: HD,
      pairing: "half",
      scaling: { kind: "none" },
    } as GqaAttentionSpec["position"],
  };
  const opt = (on: boolean, n: number) => on ? random(n, rng) : null;
  return {
    spec,
    q: random(NH * HD * H, rng, 0.3),
    k: random(NKV * HD * H, rng, 0.3),
    v: random(NKV * HD * H, rng, 0.3),
    o: random(H * NH * HD, rng, 0.3),
    qBias: opt(extras, NH * HD),
    kBias: opt(extras, NKV * HD),
    vBias: opt(extras, NKV * HD),
    oBias: opt(extras, H),
    qNorm: opt(extras, HD),
    kNorm: opt(extras, HD),
    sinks: opt(extras, NH),
    rope: prepareRope(spec.position, HD),
    relativeBias: null,
    cacheSlot: 0,
  };
}

/** The block over one window on this thread, with `linear` for the projections. */
function whole(a: ReferenceAttention, h: Float64Array, n: number, f32: boolean): Float64Array {
  const out = new Float64Array(n * H);
  const cache = {
    keys: new Float64Array(n * NKV * HD),
    values: new Float64Array(n * NKV * HD),
  };
  if (f32) attentionBlock(out, h, n, a, cache, 0, linearF32);
  else attentionBlock(out, h, n, a, cache, 0);
  return out;
}

/** Runs the jobs on this thread. */
const inline: AttentionRunner = {
  lanes: 3,
  runCalibration: ((job: AttentionGroupJob | LinearJob) =>
    Promise.resolve(
      job.kind === "attention" ? runAttentionGroup(job) : runLinear(job),
    )) as AttentionRunner["runCalibration"],
};

function relMax(a: Float64Array, b: Float64Array): number {
  let d = 0, r = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    r = Math.max(r, Math.abs(b[i]));
  }
  return d / r;
}

for (const extras of [false, true]) {
  Deno.test(`attendGrouped: the whole block's values${extras ? " (every extra)" : ""}`, async () => {
    const rng = mulberry32(extras ? 7 : 3);
    const a = block(rng, extras);
    assert.ok(groupable(a));
    const ns = [9, 3];
    const hs = ns.map((n) => random(n * H, rng));
    const want = hs.map((h, i) => whole(a, h, ns[i], true));
    const got = await attendGrouped(a, hs, ns, inline);
    got.forEach((g, i) => assert.deepEqual(g, want[i], `window ${i}`));
    const pool = new QuantizePool(2);
    try {
      const pooled = await attendGrouped(a, hs, ns, pool);
      pooled.forEach((g, i) => assert.deepEqual(g, want[i], `pooled window ${i}`));
    } finally {
      pool.close();
    }
    // Against the all-float64 block: the float32 projections' rounding only.
    for (const [i, h] of hs.entries()) {
      const err = relMax(got[i], whole(a, h, ns[i], false));
      assert.ok(err > 0 && err < 1e-5, `window ${i}: ${err}`);
    }
  });
}

Deno.test("groupable: a q/k norm over the whole projection runs whole", () => {
  const a = block(mulberry32(1), true);
  assert.equal(groupable({ ...a, spec: { ...a.spec, qkNorm: "full" } }), false);
});
