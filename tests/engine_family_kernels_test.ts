/**
 * PhiMoE's and gpt-oss's kernels against the float64 reference on random non-zero data:
 * LayerNorm (+ bias, every row or the last only) within 1e-5 relative; sparsemixer routing (both
 * routing kernels: one token per invocation, and the tiled style's per-expert token lists)
 * choosing the reference's experts with weights within 1e-5; per-expert biases by routed row and
 * the clamped SwiGLU (through the reference's MLP) within 1e-5 relative.
 */
import assert from "node:assert/strict";
import { layerNorm } from "../compiler/reference/norms.ts";
import { mlp } from "../compiler/reference/mlp.ts";
import { sparsemixer } from "../compiler/reference/sparsemixer.ts";
import { mulberry32 as rng } from "../schemas/prng.ts";
import { requestGpu } from "../runtime/device.ts";
import { readBuffer, storageBuffer } from "../runtime/kernels/kernel.ts";
import { clampedSwigluSource, expertBiasSource } from "../runtime/kernels/expert_extras.ts";
import { layerNormSource } from "../runtime/kernels/layer_norm.ts";
import { elementGroups } from "../runtime/kernels/ops.ts";
import { routeListsSource, routerSource, type RoutingKey } from "../runtime/kernels/moe.ts";
import { dispatchOnce, readF32, stepBuffer } from "../runtime/kernels/testing.ts";

const device = (await requestGpu()).device;
const buffer = (data: Float32Array | Uint32Array) =>
  storageBuffer(device, data.byteLength, "b", data);
const randoms = (rand: () => number, n: number, lo: number, hi: number) =>
  Float32Array.from({ length: n }, () => lo + (hi - lo) * rand());

Deno.test("layernorm kernel: rows with and without bias, last row only (rel ≤ 1e-5)", async () => {
  const rand = rng(51);
  const T = 3, width = 70, eps = 1e-5; // width > 64: several elements per lane
  for (const [bias, lastOnly] of [[true, false], [false, false], [true, true]]) {
    const x = randoms(rand, T * width, -2, 3);
    const w = randoms(rand, width, 0.5, 1.5), b = randoms(rand, width, -0.5, 0.5);
    const out = buffer(new Float32Array(T * width).fill(NaN));
    const bufs: Record<string, GPUBuffer> = {
      step: stepBuffer(device, T),
      x: buffer(x),
      w: buffer(w),
      out,
    };
    if (bias) bufs.b = buffer(b);
    dispatchOnce(device, layerNormSource({ width, eps, bias, lastOnly }), bufs, [
      lastOnly ? 1 : T,
      1,
      1,
    ]);
    const rows = lastOnly ? [T - 1] : [0, 1, 2];
    const got = await readF32(device, out, rows.length * width);
    rows.forEach((r, i) => {
      const want = new Float64Array(width);
      const xr = Float64Array.from(x.subarray(r * width, (r + 1) * width));
      layerNorm(want, xr, Float64Array.from(w), bias ? Float64Array.from(b) : null, eps);
      const scale = Math.max(...want.map(Math.abs));
      want.forEach((v, c) => {
        const err = Math.abs(got[i * width + c] - v) / scale;
        assert.ok(err <= 1e-5, `bias ${bias} last ${lastOnly} row ${r} col ${c}: ${err}`);
      });
    });
  }
});

Deno.test("sparsemixer routing kernels: the reference's experts, weights within 1e-5", async () => {
  const rand = rng(52);
  const E = 6, T = 40;
  for (const jitter of [0.01, 0.3, 0]) {
    const logits = randoms(rand, T * E, -2, 2);
    const key: RoutingKey = {
      numExperts: E,
      topK: 2,
      normTopK: false,
      scale: 1,
      sparsemixer: jitter,
    };
    for (const lists of [false, true]) {
      const ids = buffer(new Uint32Array(T * 2).fill(99));
      const weights = buffer(new Float32Array(T * 2).fill(NaN));
      const bufs: Record<string, GPUBuffer> = {
        step: stepBuffer(device, T),
        routerLogits: buffer(logits),
        expertIds: ids,
        expertWeights: weights,
      };
      if (lists) bufs.routes = buffer(new Uint32Array(E + E * T));
      const src = lists ? routeListsSource(key, T) : routerSource(key);
      // The router kernel routes a token per workgroup; the lists kernel all in one workgroup.
      dispatchOnce(device, src, bufs, lists ? [1, 1, 1] : [T, 1, 1]);
      const gotIds = new Uint32Array((await readBuffer(device, ids, T * 8)).buffer.slice(0));
      const gotWeights = await readF32(device, weights, T * 2);
      for (let t = 0; t < T; t++) {
        const want = sparsemixer(Float64Array.from(logits.subarray(t * E, (t + 1) * E)), jitter);
        const at = `jitter ${jitter} lists ${lists} token ${t}`;
        assert.deepEqual([gotIds[2 * t], gotIds[2 * t + 1]], want.experts, at);
        for (let k = 0; k < 2; k++) {
          const err = Math.abs(gotWeights[2 * t + k] - want.weights[k]);
          assert.ok(err <= 1e-5, `${at} slot ${k}: ${err}`);
        }
      }
    }
  }
});

Deno.test("expert bias by routed row, clamped SwiGLU: float64 within 1e-5 relative", async () => {
  const rand = rng(53);
  const T = 5, K = 2, E = 4, W = 37;
  const ids = Uint32Array.from({ length: T * K }, () => Math.floor(rand() * E));
  const y0 = randoms(rand, T * K * W, -1, 1), bias = randoms(rand, E * W, -1, 1);
  const y = buffer(y0);
  dispatchOnce(device, expertBiasSource(W, K), {
    step: stepBuffer(device, T),
    y,
    bias: buffer(bias),
    expertIds: buffer(ids),
  }, elementGroups(W, T * K));
  const got = await readF32(device, y, T * K * W);
  for (let r = 0; r < T * K; r++) {
    for (let c = 0; c < W; c++) {
      const want = y0[r * W + c] + bias[ids[r] * W + c];
      assert.ok(Math.abs(got[r * W + c] - want) <= 1e-6, `row ${r} col ${c}`);
    }
  }

  // gate, up ∈ [−12, 12]: the clamps at 7 bind on both sides.
  const n = T * K;
  const gate = randoms(rand, n * W, -12, 12), up = randoms(rand, n * W, -12, 12);
  const g = buffer(gate);
  dispatchOnce(device, clampedSwigluSource(W, K, 7, 1.702), {
    step: stepBuffer(device, T),
    gate: g,
    up: buffer(up),
  }, elementGroups(W, n));
  const act = await readF32(device, g, n * W);
  const one = Float64Array.of(1);
  const activation = { kind: "swiglu_clamped" as const, limit: 7, alpha: 1.702 };
  let worst = 0, scale = 0;
  const out = new Float64Array(1);
  for (let i = 0; i < n * W; i++) {
    // A 1 → 1 → 1 MLP on input 1 with gate weight gate[i], up weight up[i] and down weight 1 is
    // the activation of (gate[i], up[i]).
    const matrices = { gate: Float64Array.of(gate[i]), up: Float64Array.of(up[i]), down: one };
    mlp(out, one, 1, { activation, inter: 1, matrices, biases: {} }, 1);
    worst = Math.max(worst, Math.abs(act[i] - out[0]));
    scale = Math.max(scale, Math.abs(out[0]));
  }
  assert.ok(worst / scale <= 1e-5, `clamped swiglu rel err ${worst / scale}`);
});
