/**
 * The attention block split into KV-head and output-projection jobs: bit for bit the block on one
 * thread with the float32 projections (`attentionBlock` with `linearF32`), on this thread and on
 * a 2-worker pool, with RoPE, per-head q/k norms, clamps, biases, sinks and a sliding window; and
 * within 1e-5 of the largest output of the float64 reference block (all-float64 projections);
 * several windows at once (`attendWindows`, projections batched across windows) bit for bit each
 * window alone, with float64 or float32 weights; and those batches' projections as row-block jobs
 * (`attendWindowsPooled`) bit for bit the same, on this thread in 1–5 blocks and on a 2-worker pool.
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
  attendF32,
  attendGrouped,
  attendWindows,
  attendWindowsPooled,
  type AttentionF32,
  type AttentionRunner,
  dropSharedBuffers,
  groupable,
  headsF32,
  linearF32,
  runAttentionGroup,
  runLinear,
  wholeHeads,
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

/** The float64 reference block over one window. */
function whole(a: ReferenceAttention, h: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * H);
  const cache = {
    keys: new Float64Array(n * NKV * HD),
    values: new Float64Array(n * NKV * HD),
  };
  attentionBlock(out, h, n, a, cache, 0);
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
    const want = hs.map((h, i) => attendF32(a, h, ns[i]));
    const got = await attendGrouped(a, hs, ns, inline);
    got.forEach((g, i) => assert.deepEqual(g, want[i], `window ${i}`));
    const pool = new QuantizePool(2);
    try {
      const pooled = await attendGrouped(a, hs, ns, pool);
      pooled.forEach((g, i) => assert.deepEqual(g, want[i], `pooled window ${i}`));
    } finally {
      pool.close();
    }
    // Against the float64 reference block: float32 products.
    let worst = 0;
    for (const [i, h] of hs.entries()) {
      const err = relMax(got[i], whole(a, h, ns[i]));
      assert.ok(err > 0 && err < 1e-5, `window ${i}: ${err}`);
      worst = Math.max(worst, err);
    }
    console.log(`largest error over the largest output: ${worst.toExponential(2)}`);
  });
}

Deno.test("attendF32: a q/k norm over the whole projection (not groupable)", () => {
  const rng = mulberry32(11);
  const a = block(rng, true);
  const full: ReferenceAttention = {
    ...a,
    spec: { ...a.spec, qkNorm: "full" },
    qNorm: random(NH * HD, rng),
    kNorm: random(NKV * HD, rng),
  };
  assert.equal(groupable(full), false);
  const n = 11;
  const h = random(n * H, rng);
  const err = relMax(attendF32(full, h, n), whole(full, h, n));
  assert.ok(err > 0 && err < 1e-5, `${err}`);
});

Deno.test("headsF32: the same values whatever the query row blocks", () => {
  for (const extras of [false, true]) {
    const rng = mulberry32(13);
    const a = wholeHeads(block(rng, extras));
    const n = 10;
    const x = Float32Array.from(random(n * H, rng));
    const once = headsF32(a, x, n);
    for (const values of [10, 30, 70]) assert.deepEqual(headsF32(a, x, n, values), once);
  }
});

Deno.test("attendWindows: each window's values alone, batched or not, f32 or f64 weights", () => {
  for (const extras of [false, true]) {
    const rng = mulberry32(17);
    const a = block(rng, extras);
    // Batches: [5, 300] (the next would pass 512 rows), [250, 3], [600] (one larger window).
    const ns = [5, 300, 250, 3, 600];
    const hs = ns.map((n) => random(n * H, rng));
    // Each window alone: its heads, then the output projection of their float32 values.
    const want = hs.map((h, i) => {
      const heads = headsF32(wholeHeads(a), Float32Array.from(h), ns[i]);
      const out = new Float64Array(ns[i] * H);
      linearF32(out, heads, a.o, ns[i], H, NH * HD);
      if (a.oBias) out.forEach((_, j) => out[j] += a.oBias![j % H]);
      return out;
    });
    const f32: AttentionF32 = {
      ...a,
      q: Float32Array.from(a.q),
      k: Float32Array.from(a.k),
      v: Float32Array.from(a.v),
      o: Float32Array.from(a.o),
    };
    for (const weights of [a, f32]) {
      const got = attendWindows(weights, hs, ns);
      got.forEach((g, i) => assert.deepEqual(g, want[i], `window ${i}`));
    }
    assert.deepEqual(attendF32(f32, hs[3], ns[3]), want[3]);
  }
});

Deno.test("attendWindowsPooled: attendWindows' values, projections in row blocks on a pool", async () => {
  const pool = new QuantizePool(2);
  try {
    for (const extras of [false, true]) {
      const rng = mulberry32(19);
      const a = block(rng, extras);
      // Batches [5, 300], [250, 3], [600], [7]: each batch's projections while others run.
      const ns = [5, 300, 250, 3, 600, 7];
      const hs = ns.map((n) => random(n * H, rng));
      const want = attendWindows(a, hs, ns);
      for (const parts of [1, 2, 3, 5]) {
        const got = await attendWindowsPooled(a, hs, ns, inline, parts);
        got.forEach((g, i) => assert.deepEqual(g, want[i], `${parts} blocks, window ${i}`));
      }
      // Twice: the second time on the shared buffers the first one left.
      for (const round of [0, 1]) {
        const pooled = await attendWindowsPooled(a, hs, ns, pool);
        assert.equal(pooled.length, ns.length);
        pooled.forEach((g, i) => assert.deepEqual(g, want[i], `pooled ${round}, window ${i}`));
      }
    }
    dropSharedBuffers();
  } finally {
    pool.close();
  }
});
