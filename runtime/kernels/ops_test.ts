/**
 * The non-matmul kernels against float64 host computations on random non-zero data: embedding
 * lookup in every weight format (the shared decode's random-access form) with a scale, RMSNorm
 * (rows, per-head, last-only), the RoPE/KV-store prologue (split and packed, with and without
 * the q/k/v clamp), SwiGLU, routing (softmax top-k, renormalised or not, scaled) and the MoE
 * combine (shared expert plain/gated, residual scale).
 */
import { dispatchOnce, randomMatrix, readF32, stepBuffer } from "./testing.ts";
import assert from "node:assert/strict";
import { mulberry32 as rng } from "../../schemas/prng.ts";
import { requestGpu } from "../device.ts";
import { readBuffer, storageBuffer } from "./kernel.ts";
import { elementGroups, embedSource, rmsNormSource, swigluSource } from "./ops.ts";
import { ropeStoreSource, ropeStoreWidth, ropeTable } from "./attention.ts";
import { combineSource, routerSource, type RoutingKey, type SharedExpertTerm } from "./moe.ts";
import { uploadWeightSet, weightBuffers, type WeightFormat } from "./weights.ts";

const device = (await requestGpu()).device;

/** max |gpu − ref| / max |ref| */
function relErr(gpu: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(gpu[i] - ref[i]);
    num = Number.isNaN(d) ? Infinity : Math.max(num, d);
    den = Math.max(den, Math.abs(ref[i]));
  }
  return num / den;
}

const buffer = (data: Float32Array | Uint32Array, label = "b") =>
  storageBuffer(device, data.byteLength, label, data);
const poisoned = (n: number) => buffer(new Float32Array(n).fill(NaN), "out");
const randoms = (rand: () => number, n: number, lo = -1, hi = 1) =>
  Float32Array.from({ length: n }, () => lo + (hi - lo) * rand());

const FORMATS: WeightFormat[] = [
  { kind: "f32" },
  { kind: "f16" },
  { kind: "bf16" },
  { kind: "q", bits: 2, groupSize: 32, scaleType: "f16" },
  { kind: "q", bits: 3, groupSize: 37, scaleType: "f32" },
  { kind: "q", bits: 4, groupSize: 32, scaleType: "f32" },
  { kind: "q", bits: 8, groupSize: 37, scaleType: "f16" },
  { kind: "q", bits: 4, groupSize: 32, scaleType: "e8m0" }, // MXFP4
];

Deno.test("embed: every weight format, scaled, rows read from the token buffer at pos0 (rel ≤ 1e-6)", async () => {
  const rand = rng(41);
  const V = 11, H = 37; // H ragged: not a multiple of 2, 4 or 32
  for (const format of FORMATS) {
    const m = randomMatrix(format, V, H, rand);
    const set = uploadWeightSet(device, format, V, H, [m.host]);
    const tokens = new Uint32Array([9, 9, 4, 0, 10, 3]);
    const pos0 = 2, T = 4, scale = 2.5;
    const out = poisoned(T * H);
    dispatchOnce(device, embedSource(format, H, scale), {
      step: stepBuffer(device, T, pos0),
      tokens: buffer(tokens),
      ...weightBuffers(set),
      out,
    }, elementGroups(H, T));
    const ref = new Float64Array(T * H);
    for (let t = 0; t < T; t++) {
      for (let c = 0; c < H; c++) ref[t * H + c] = scale * m.values[tokens[pos0 + t] * H + c];
    }
    const err = relErr(await readF32(device, out, T * H), ref);
    assert.ok(err <= 1e-6, `${JSON.stringify(format)}: rel err ${err}`);
  }
});

Deno.test("rmsnorm: rows, per-head in place, last row only (rel ≤ 1e-5)", async () => {
  const rand = rng(42);
  const T = 3, width = 20, eps = 1e-5;
  const norm = (x: Float32Array, w: Float32Array, row: number) => {
    let s = 0;
    for (let i = 0; i < width; i++) s += x[row * width + i] ** 2;
    const inv = 1 / Math.sqrt(s / width + eps);
    return Array.from({ length: width }, (_, i) => x[row * width + i] * inv * w[i]);
  };
  for (
    const [rowsPerToken, inPlace, lastOnly] of [[1, false, false], [2, true, false], [
      1,
      false,
      true,
    ]] as const
  ) {
    const x = randoms(rand, T * rowsPerToken * width, -2, 2);
    const w = randoms(rand, width, 0.5, 1.5);
    const xb = buffer(x), out = poisoned(T * rowsPerToken * width);
    const src = rmsNormSource({ width, rowsPerToken, eps, inPlace, lastOnly });
    const bufs: Record<string, GPUBuffer> = { step: stepBuffer(device, T), x: xb, w: buffer(w) };
    if (!inPlace) bufs.out = out;
    dispatchOnce(device, src, bufs, [lastOnly ? 1 : T * rowsPerToken, 1, 1]);
    const rows = lastOnly ? [T - 1] : Array.from({ length: T * rowsPerToken }, (_, r) => r);
    const ref = rows.flatMap((r) => norm(x, w, r));
    const got = await readF32(device, inPlace ? xb : out, ref.length);
    const err = relErr(got, ref);
    assert.ok(err <= 1e-5, `rows ${rowsPerToken} inPlace ${inPlace} last ${lastOnly}: ${err}`);
  }
});

Deno.test("rope store: q rotated in place, k rotated and v copied into the caches at pos0, optional clamp (rel ≤ 1e-6)", async () => {
  const rand = rng(43);
  const shape = { numHeads: 4, numKvHeads: 2, headDim: 6 };
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = shape;
  const T = 3, pos0 = 5, positions = 8, theta = 10000, half = hd / 2;
  const table = ropeTable(hd, theta, positions);
  for (const packed of [false, true]) {
    for (const clip of [null, 0.6]) {
      const q = randoms(rand, T * nh * hd), k = randoms(rand, T * nkv * hd);
      const v = randoms(rand, T * nkv * hd);
      const kc0 = randoms(rand, positions * nkv * hd), vc0 = randoms(rand, positions * nkv * hd);
      const bufs: Record<string, GPUBuffer> = {
        step: stepBuffer(device, T, pos0),
        rope: buffer(table),
        kCache: buffer(kc0),
        vCache: buffer(vc0),
      };
      const row = (nh + 2 * nkv) * hd;
      if (packed) {
        const qkv = new Float32Array(T * row);
        for (let t = 0; t < T; t++) {
          qkv.set(q.subarray(t * nh * hd, (t + 1) * nh * hd), t * row);
          qkv.set(k.subarray(t * nkv * hd, (t + 1) * nkv * hd), t * row + nh * hd);
          qkv.set(v.subarray(t * nkv * hd, (t + 1) * nkv * hd), t * row + (nh + nkv) * hd);
        }
        bufs.qkv = buffer(qkv);
      } else {
        Object.assign(bufs, { q: buffer(q), k: buffer(k), v: buffer(v) });
      }
      dispatchOnce(
        device,
        ropeStoreSource({ ...shape, packed, clip }),
        bufs,
        elementGroups(ropeStoreWidth(shape), T),
      );
      const c = (x: number) => clip === null ? x : Math.min(clip, Math.max(-clip, x));
      const rotate = (src: Float32Array, at: number, pos: number, dst: number[], to: number) => {
        for (let i = 0; i < half; i++) {
          const angle = pos * Math.fround(1 / Math.fround(theta ** Math.fround(2 * i / hd)));
          const x1 = c(src[at + i]), x2 = c(src[at + i + half]);
          dst[to + i] = x1 * Math.cos(angle) - x2 * Math.sin(angle);
          dst[to + i + half] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
        }
      };
      const qRef: number[] = [], kc = Array.from(kc0), vc = Array.from(vc0);
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < nh; h++) {
          rotate(q, (t * nh + h) * hd, pos0 + t, qRef, (t * nh + h) * hd);
        }
        for (let h = 0; h < nkv; h++) {
          rotate(k, (t * nkv + h) * hd, pos0 + t, kc, ((pos0 + t) * nkv + h) * hd);
          for (let i = 0; i < hd; i++) {
            vc[((pos0 + t) * nkv + h) * hd + i] = c(v[(t * nkv + h) * hd + i]);
          }
        }
      }
      let qGot: Float32Array;
      if (packed) {
        const all = await readF32(device, bufs.qkv, T * row);
        qGot = new Float32Array(T * nh * hd);
        for (let t = 0; t < T; t++) qGot.set(all.subarray(t * row, t * row + nh * hd), t * nh * hd);
      } else {
        qGot = await readF32(device, bufs.q, T * nh * hd);
      }
      const what = `packed ${packed} clip ${clip}`;
      assert.ok(relErr(qGot, qRef) <= 1e-6, `${what}: q`);
      assert.ok(relErr(await readF32(device, bufs.kCache, kc.length), kc) <= 1e-6, `${what}: k`);
      assert.ok(relErr(await readF32(device, bufs.vCache, vc.length), vc) <= 1e-6, `${what}: v`);
    }
  }
});

Deno.test("swiglu: gate = silu(gate) · up over T · rows (rel ≤ 1e-6)", async () => {
  const rand = rng(44);
  const T = 3, rows = 2, width = 70;
  const g = randoms(rand, T * rows * width, -4, 4), up = randoms(rand, T * rows * width);
  const gate = buffer(g);
  dispatchOnce(
    device,
    swigluSource(width, rows),
    { step: stepBuffer(device, T), gate, up: buffer(up) },
    elementGroups(width, T * rows),
  );
  const ref = Array.from(g, (a, i) => a / (1 + Math.exp(-a)) * up[i]);
  assert.ok(relErr(await readF32(device, gate, g.length), ref) <= 1e-6);
});

/** Host routing of one token: softmax, top-k by logit (lower index on ties), weights. */
function routeHost(key: RoutingKey, row: Float32Array): { ids: number[]; weights: number[] } {
  const m = Math.max(...row);
  const z = row.reduce((s, v) => s + Math.exp(v - m), 0);
  const order = Array.from(row, (v, e) => [v, e]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  const top = order.slice(0, key.topK).map(([v, e]) => ({ e, p: Math.exp(v - m) / z }));
  const sum = top.reduce((s, t) => s + t.p, 0);
  return {
    ids: top.map((t) => t.e),
    weights: top.map((t) => (key.normTopK ? t.p / sum : t.p) * key.scale),
  };
}

Deno.test("router: softmax top-k ids and weights, renormalised or not, scaled (abs ≤ 1e-6)", async () => {
  const rand = rng(45);
  const T = 70, E = 7; // T > 64: more than one workgroup
  for (
    const key of [
      { numExperts: E, topK: 2, normTopK: true, scale: 1 },
      { numExperts: E, topK: 3, normTopK: false, scale: 2.5 },
    ]
  ) {
    const K = key.topK;
    const logits = randoms(rand, T * E, -3, 3);
    const bufs = {
      step: stepBuffer(device, T),
      routerLogits: buffer(logits),
      expertIds: storageBuffer(device, T * K * 4, "expertIds"),
      expertWeights: poisoned(T * K),
    };
    dispatchOnce(device, routerSource(key), bufs, [T, 1, 1]);
    const ids = new Uint32Array((await readBuffer(device, bufs.expertIds, T * K * 4)).buffer);
    const weights = await readF32(device, bufs.expertWeights, T * K);
    for (let t = 0; t < T; t++) {
      const want = routeHost(key, logits.subarray(t * E, (t + 1) * E));
      assert.deepEqual(Array.from(ids.subarray(t * K, (t + 1) * K)), want.ids, `token ${t}`);
      want.weights.forEach((w, k) =>
        assert.ok(Math.abs(weights[t * K + k] - w) <= 1e-6, `token ${t} slot ${k}`)
      );
    }
  }
});

Deno.test("combine: x += residualScale · (Σ weights · expert rows + shared term) (rel ≤ 1e-6)", async () => {
  const rand = rng(46);
  const T = 3, K = 2, H = 70;
  for (
    const [shared, residualScale] of [["none", 1], ["plain", 0.5], ["gated", 1.25]] as [
      SharedExpertTerm,
      number,
    ][]
  ) {
    const x = randoms(rand, T * H), expertOut = randoms(rand, T * K * H);
    const weights = randoms(rand, T * K, 0, 1), sharedOut = randoms(rand, T * H);
    const sharedGate = randoms(rand, T, -2, 2);
    const xb = buffer(x);
    const bufs: Record<string, GPUBuffer> = {
      step: stepBuffer(device, T),
      x: xb,
      expertOut: buffer(expertOut),
      expertWeights: buffer(weights),
    };
    if (shared !== "none") bufs.sharedOut = buffer(sharedOut);
    if (shared === "gated") bufs.sharedGate = buffer(sharedGate);
    dispatchOnce(
      device,
      combineSource({ hidden: H, topK: K, shared, residualScale }),
      bufs,
      elementGroups(H, T),
    );
    const ref = Array.from(x, (v, i) => {
      const t = Math.floor(i / H), c = i % H;
      let body = 0;
      for (let k = 0; k < K; k++) body += weights[t * K + k] * expertOut[(t * K + k) * H + c];
      if (shared === "plain") body += sharedOut[i];
      if (shared === "gated") body += sharedOut[i] / (1 + Math.exp(-sharedGate[t]));
      return v + residualScale * body;
    });
    assert.ok(relErr(await readF32(device, xb, T * H), ref) <= 1e-6, shared);
  }
});
