/**
 * Causal GQA attention kernels (the strided decode kernel and the query-tiled prefill kernel)
 * against a float64 host computation on random data: odd head counts, GQA ratios 1, 2 and 4,
 * T not a multiple of the query tile, a non-zero start position and packed [q | k | v] rows,
 * gpt-oss's sinks and sliding windows.
 */
import { dispatchOnce, readF32, stepBuffer } from "./testing.ts";
import assert from "node:assert/strict";
import { mulberry32 as rng } from "../../schemas/prng.ts";
import { requestGpu } from "../device.ts";
import { type KernelSource, storageBuffer } from "./kernel.ts";
import {
  type AttentionKey,
  attentionPrefillSource,
  attentionSource,
  prefillGroups,
  type PrefillTile,
  prefillTile,
} from "./attention.ts";

const device = (await requestGpu()).device;

interface Case {
  nh: number;
  nkv: number;
  hd: number;
  T: number;
  pos0: number;
  /** Extra floats per q row beyond nh·hd (a packed [q | k | v] row). */
  pad: number;
  /** Multiplier of q·k (default 1/√hd). */
  scale?: number;
  /** Keys j > pos − window only. */
  window?: number;
  /** One sink logit per head joins the softmax (its share dropped). */
  sinks?: boolean;
}

/** The kernels' key for a case. */
function keyOf(c: Case): AttentionKey {
  const shape = { numHeads: c.nh, numKvHeads: c.nkv, headDim: c.hd };
  return {
    ...shape,
    qStride: c.nh * c.hd + c.pad,
    scale: c.scale ?? 1 / Math.sqrt(c.hd),
    sinks: c.sinks,
    window: c.window ?? null,
  };
}

/**
 * float64 reference: out[t, h] = softmax_j≤pos0+t(scale · q·k_j) · v_j, kv head h / (nh/nkv);
 * with a window only j > pos0 + t − window; with sinks the softmax's sum also has exp(sinks[h]).
 */
function reference(
  c: Case,
  q: Float32Array,
  kc: Float32Array,
  vc: Float32Array,
  sinks: Float32Array,
): Float64Array {
  const { nh, nkv, hd, T, pos0 } = c;
  const qs = nh * hd + c.pad, R = nh / nkv;
  const out = new Float64Array(T * nh * hd);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nh; h++) {
      const g = Math.floor(h / R);
      const sc: number[] = [];
      const first = c.window ? Math.max(0, pos0 + t - c.window + 1) : 0;
      for (let j = first; j <= pos0 + t; j++) {
        let d = 0;
        for (let i = 0; i < hd; i++) d += q[t * qs + h * hd + i] * kc[(j * nkv + g) * hd + i];
        sc.push(d * (c.scale ?? 1 / Math.sqrt(hd)));
      }
      const m = Math.max(...sc, c.sinks ? sinks[h] : -Infinity);
      const p = sc.map((x) => Math.exp(x - m));
      const z = p.reduce((a, b) => a + b, 0) + (c.sinks ? Math.exp(sinks[h] - m) : 0);
      for (let i = 0; i < hd; i++) {
        let o = 0;
        for (let j = 0; j < p.length; j++) o += p[j] * vc[((first + j) * nkv + g) * hd + i];
        out[(t * nh + h) * hd + i] = o / z;
      }
    }
  }
  return out;
}

async function runKernel(
  src: KernelSource,
  c: Case,
  q: Float32Array,
  kc: Float32Array,
  vc: Float32Array,
  sinks: Float32Array,
  groups: [number, number, number],
): Promise<Float32Array> {
  const step = stepBuffer(device, c.T, c.pos0);
  const n = c.T * c.nh * c.hd;
  // Poison the output so a row the kernel fails to write cannot pass.
  const out = storageBuffer(device, n * 4, "out", new Float32Array(n).fill(NaN));
  const bufs: Record<string, GPUBuffer> = {
    step,
    q: storageBuffer(device, q.byteLength, "q", q),
    kCache: storageBuffer(device, kc.byteLength, "kCache", kc),
    vCache: storageBuffer(device, vc.byteLength, "vCache", vc),
    out,
  };
  if (c.sinks) bufs.sinks = storageBuffer(device, sinks.byteLength, "sinks", sinks);
  dispatchOnce(device, src, bufs, groups);
  const values = await readF32(device, out, n);
  for (const b of Object.values(bufs)) b.destroy();
  return values;
}

function inputs(c: Case, seed: number) {
  const r = rng(seed);
  const fill = (n: number, s: number) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * s);
  const ctx = c.pos0 + c.T;
  // Scale q so the softmax is far from uniform (a wrong mask or merge shows up).
  return {
    q: fill(c.T * (c.nh * c.hd + c.pad), 3),
    kc: fill(ctx * c.nkv * c.hd, 1),
    vc: fill(ctx * c.nkv * c.hd, 1),
    // Sink logits around the scores' range: some heads lose most of their weight to the sink.
    sinks: fill(c.nh, 3),
  };
}

function maxAbsErr(gpu: Float32Array, ref: Float64Array): number {
  let e = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(gpu[i] - ref[i]);
    e = Number.isNaN(d) ? Infinity : Math.max(e, d);
  }
  return e;
}

const CASES: Case[] = [
  { nh: 3, nkv: 3, hd: 16, T: 7, pos0: 0, pad: 0 }, // GQA 1, odd heads
  { nh: 6, nkv: 3, hd: 32, T: 19, pos0: 5, pad: 0 }, // GQA 2, T not a multiple of the tile
  { nh: 4, nkv: 2, hd: 32, T: 40, pos0: 0, pad: 4 * 32 }, // the Shakespeare shape, packed qkv
  { nh: 12, nkv: 3, hd: 8, T: 11, pos0: 37, pad: 6 * 8 }, // GQA 4, pos0 > 0, packed
  { nh: 5, nkv: 1, hd: 24, T: 1, pos0: 9, pad: 0 }, // one token (decode shape) through both
  { nh: 4, nkv: 2, hd: 16, T: 6, pos0: 3, pad: 0, scale: 0.4 }, // attention scale ≠ 1/√hd
  { nh: 6, nkv: 3, hd: 16, T: 13, pos0: 5, pad: 0, window: 4, sinks: true }, // gpt-oss
  { nh: 4, nkv: 2, hd: 32, T: 9, pos0: 20, pad: 4 * 32, window: 7, sinks: true }, // packed
  { nh: 4, nkv: 4, hd: 8, T: 1, pos0: 30, pad: 0, window: 5, sinks: true }, // decode shape
  { nh: 4, nkv: 2, hd: 8, T: 5, pos0: 2, pad: 0, window: 16 }, // window longer than the context
  { nh: 2, nkv: 1, hd: 12, T: 7, pos0: 1, pad: 0, sinks: true }, // sinks, full attention
];

// |error| ≤ 2e-5: f32 accumulation over ≤ 48 keys of values in [-1, 1] (outputs are convex
// combinations of v, so |out| ≤ 1); measured errors are ~1e-6.
const TOL = 2e-5;

Deno.test("prefill attention (query tile × GQA group) matches float64", async () => {
  for (const [i, c] of CASES.entries()) {
    const { q, kc, vc, sinks } = inputs(c, 100 + i);
    const ref = reference(c, q, kc, vc, sinks);
    const key = keyOf(c);
    const tile = prefillTile(key);
    const src = attentionPrefillSource(key, tile);
    const gpu = await runKernel(src, c, q, kc, vc, sinks, prefillGroups(key, tile, c.T));
    const e = maxAbsErr(gpu, ref);
    assert.ok(e <= TOL, `case ${JSON.stringify(c)} tile ${JSON.stringify(tile)}: max |err| ${e}`);
  }
});

Deno.test("prefill attention: explicit tiles (heads split, scalar and vec4) match float64", async () => {
  // hd 6 with an odd q stride takes the scalar path; hd 16 the vec4 path.
  const cases: [Case, PrefillTile[]][] = [
    [{ nh: 8, nkv: 2, hd: 16, T: 13, pos0: 4, pad: 0 }, [{ qt: 1, rh: 1 }, { qt: 3, rh: 2 }, {
      qt: 5,
      rh: 4,
    }]],
    [{ nh: 6, nkv: 3, hd: 6, T: 9, pos0: 2, pad: 3 }, [{ qt: 2, rh: 1 }, { qt: 4, rh: 2 }]],
    [{ nh: 8, nkv: 2, hd: 6, T: 11, pos0: 6, pad: 3, window: 3, sinks: true }, [{ qt: 3, rh: 2 }]],
  ];
  for (const [c, tiles] of cases) {
    const { q, kc, vc, sinks } = inputs(c, 7);
    const ref = reference(c, q, kc, vc, sinks);
    for (const tile of tiles) {
      const src = attentionPrefillSource(keyOf(c), tile);
      const groups = prefillGroups(keyOf(c), tile, c.T);
      const gpu = await runKernel(src, c, q, kc, vc, sinks, groups);
      const e = maxAbsErr(gpu, ref);
      assert.ok(e <= TOL, `case ${JSON.stringify(c)} tile ${JSON.stringify(tile)}: max |err| ${e}`);
    }
  }
  const bad = { nh: 8, nkv: 2, hd: 16, T: 1, pos0: 0, pad: 0 };
  assert.throws(() => attentionPrefillSource(keyOf(bad), { qt: 2, rh: 3 }), RangeError);
});

Deno.test("decode attention (keys strided over lanes) matches float64", async () => {
  for (const [i, c] of CASES.entries()) {
    const { q, kc, vc, sinks } = inputs(c, 200 + i);
    const ref = reference(c, q, kc, vc, sinks);
    const src = attentionSource(keyOf(c));
    const gpu = await runKernel(src, c, q, kc, vc, sinks, [c.nh, c.T, 1]);
    const e = maxAbsErr(gpu, ref);
    assert.ok(e <= TOL, `case ${JSON.stringify(c)}: max |err| ${e}`);
  }
});
