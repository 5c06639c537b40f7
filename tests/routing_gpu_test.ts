/**
 * GPU routing (runtime/kernels/moe.ts chooseExperts, both kernel styles) against the float64
 * reference router (compiler/reference/router.ts) on random logits: softmax greedy, DeepSeek-V2
 * groups (group max), DeepSeek-V3/GLM sigmoid + selection bias + top-2-sum groups with
 * renormalisation and scaling, ERNIE's selection-only bias, and a DeepSeek-V3-shaped layer of
 * 256 experts, top-8, 8 groups / 4 kept. Ids must be equal; weights within 1e-6 (f32). Logits
 * are drawn so every decision has a margin ≥ 1e-5 in the reference (f32 cannot flip it).
 */
import assert from "node:assert/strict";
import { route, type RouteOptions } from "../compiler/reference/router.ts";
import { mulberry32 as rng } from "../schemas/prng.ts";
import { requestGpu } from "../runtime/device.ts";
import { readBuffer, storageBuffer } from "../runtime/kernels/kernel.ts";
import { routeListsSource, routerSource, type RoutingKey } from "../runtime/kernels/moe.ts";
import { dispatchOnce, readF32, stepBuffer } from "../runtime/kernels/testing.ts";

const device = (await requestGpu()).device;

interface Case {
  name: string;
  key: RoutingKey;
}

const CASES: Case[] = [
  { name: "softmax greedy", key: { numExperts: 10, topK: 3, normTopK: false, scale: 1 } },
  {
    name: "DeepSeek-V2 groups by max, scaled",
    key: {
      numExperts: 16,
      topK: 3,
      normTopK: false,
      scale: 1.5,
      groups: { count: 4, keep: 2, score: "max" },
    },
  },
  {
    name: "DeepSeek-V3 sigmoid + bias, top-2-sum groups, renormalised × 2.5",
    key: {
      numExperts: 32,
      topK: 4,
      normTopK: true,
      scale: 2.5,
      scoring: "sigmoid",
      selectionBias: true,
      groups: { count: 4, keep: 2, score: "top2sum" },
    },
  },
  {
    name: "ERNIE softmax + selection bias, renormalised",
    key: { numExperts: 8, topK: 2, normTopK: true, scale: 1, selectionBias: true },
  },
  {
    name: "256 experts, top-8, 8 groups / 4 kept (DeepSeek-V3 shape)",
    key: {
      numExperts: 256,
      topK: 8,
      normTopK: true,
      scale: 2.5,
      scoring: "sigmoid",
      selectionBias: true,
      groups: { count: 8, keep: 4, score: "top2sum" },
    },
  },
];

/** The smallest gap between consecutive sorted values (how close a decision came to a tie). */
function margin(values: number[]): number {
  const s = [...values].sort((a, b) => b - a);
  let m = Infinity;
  for (let i = 1; i < s.length; i++) m = Math.min(m, s[i - 1] - s[i]);
  return m;
}

/** Random f32 logits per token, redrawn until the reference's choices have a 1e-5 margin. */
function draw(key: RoutingKey, T: number, rand: () => number, bias: Float64Array | undefined) {
  const E = key.numExperts;
  const logits = new Float32Array(T * E);
  for (let t = 0; t < T; t++) {
    for (;;) {
      const row = Float32Array.from({ length: E }, () => 6 * rand() - 3);
      const scores = key.scoring === "sigmoid"
        ? [...row].map((l) => 1 / (1 + Math.exp(-l)))
        : (() => {
          const z = row.reduce((a, l) => a + Math.exp(l), 0);
          return [...row].map((l) => Math.exp(l) / z);
        })();
      const choice = scores.map((s, e) => s + (bias ? bias[e] : 0));
      let ok = margin(choice) >= 1e-5;
      const g = key.groups;
      if (g && ok) {
        const size = E / g.count;
        const gs = Array.from({ length: g.count }, (_, i) => {
          const m = choice.slice(i * size, (i + 1) * size).sort((a, b) => b - a);
          return g.score === "max" ? m[0] : m[0] + m[1];
        });
        ok = margin(gs) >= 1e-5;
      }
      if (ok) {
        logits.set(row, t * E);
        break;
      }
    }
  }
  return logits;
}

for (const { name, key } of CASES) {
  Deno.test(`routing on the GPU equals the reference: ${name}`, async () => {
    const rand = rng(key.numExperts * 31 + key.topK);
    const T = 9, E = key.numExperts, K = key.topK, cap = 16;
    const bias = key.selectionBias
      ? Float64Array.from(Float32Array.from({ length: E }, () => 0.2 * rand() - 0.1))
      : undefined;
    const logits = draw(key, T, rand, bias);
    const options: RouteOptions = {
      normTopK: key.normTopK,
      scale: key.scale,
      scoring: key.scoring ?? "softmax",
      groups: key.groups ?? null,
    };
    const want = Array.from(
      { length: T },
      (_, t) => route(Float64Array.from(logits.subarray(t * E, (t + 1) * E)), K, options, bias),
    );
    // The groups and the bias change some choices here (the test would not see them otherwise).
    const rowOf = (t: number) => Float64Array.from(logits.subarray(t * E, (t + 1) * E));
    if (key.groups) {
      const free = want.map((_, t) => route(rowOf(t), K, { ...options, groups: null }, bias));
      assert.ok(free.some((r, t) => r.experts.join() !== want[t].experts.join()), "groups idle");
    }
    if (bias) {
      const plain = want.map((_, t) => route(rowOf(t), K, options));
      assert.ok(plain.some((r, t) => r.experts.join() !== want[t].experts.join()), "bias idle");
    }
    for (const style of ["classic", "lists"] as const) {
      const bufs: Record<string, GPUBuffer> = {
        step: stepBuffer(device, T),
        routerLogits: storageBuffer(device, logits.byteLength, "routerLogits", logits),
        expertIds: storageBuffer(device, T * K * 4, "expertIds"),
        expertWeights: storageBuffer(device, T * K * 4, "expertWeights"),
      };
      if (bias) {
        const b = Float32Array.from(bias);
        bufs.selectionBias = storageBuffer(device, b.byteLength, "bias", b);
      }
      if (style === "classic") dispatchOnce(device, routerSource(key), bufs, [T, 1, 1]);
      else {
        bufs.routes = storageBuffer(device, (E + E * cap) * 4, "routes");
        dispatchOnce(device, routeListsSource(key, cap), bufs, [1, 1, 1]);
      }
      const ids = new Uint32Array((await readBuffer(device, bufs.expertIds, T * K * 4)).buffer);
      const weights = await readF32(device, bufs.expertWeights, T * K);
      let err = 0;
      for (let t = 0; t < T; t++) {
        assert.deepEqual([...ids.subarray(t * K, (t + 1) * K)], want[t].experts, `${style} ${t}`);
        want[t].weights.forEach((w, k) => err = Math.max(err, Math.abs(weights[t * K + k] - w)));
      }
      assert.ok(err <= 1e-6, `${style}: max |weight − reference| ${err}`);
      if (style === "lists") {
        const routes = new Uint32Array(
          (await readBuffer(device, bufs.routes, (E + E * cap) * 4)).buffer,
        );
        for (let e = 0; e < E; e++) {
          const rows: number[] = [];
          want.forEach((r, t) => r.experts.forEach((x, k) => x === e && rows.push(t * K + k)));
          assert.deepEqual([...routes.subarray(E + e * cap, E + e * cap + routes[e])], rows);
        }
      }
    }
  });
}
