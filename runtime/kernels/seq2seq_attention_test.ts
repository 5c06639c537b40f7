/**
 * The encoder–decoder attention kernels, lane-parallel and query-tiled (bidirectional over the encoder's keys with a relative
 * bias, causal over a decoder cache with a causal bias from a non-zero start position, cross over
 * encoder keys without bias; GQA ratios 1 and 2; head sizes 6, 8, 16; q in packed [q | k | v] rows) and the KV store, against a float64 host
 * computation on random non-zero data. Tolerance 1e-5 absolute (f32 dot products of ≤ 16 terms
 * and a softmax over ≤ 23 keys of values in [−1, 1]).
 */
import assert from "node:assert/strict";
import { mulberry32 } from "../../schemas/prng.ts";
import { requestGpu } from "../device.ts";
import { type KernelSource, STEP_BYTES, storageBuffer } from "./kernel.ts";
import { elementGroups } from "./ops.ts";
import {
  kvStoreSource,
  type Seq2SeqAttentionKey,
  seq2seqAttentionSource,
  seq2seqAttentionTiledSource,
  seq2seqTiledGroups,
} from "./seq2seq_attention.ts";
import { dispatchOnce, readF32 } from "./testing.ts";

const device = (await requestGpu()).device;
const TOLERANCE = 1e-5;

function random(n: number, rand: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => rand() * 2 - 1);
}

/** A Step uniform {T, pos0, encoder length}. */
function step(T: number, pos0: number, encoderLength: number): GPUBuffer {
  const b = device.createBuffer({
    size: STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(b, 0, new Uint32Array([T, pos0, 0, encoderLength]));
  return b;
}

interface Case {
  name: string;
  key: Seq2SeqAttentionKey;
  T: number;
  pos0: number;
  /** Keys present (the encoder length for "all"; cache rows for "causal"). */
  keys: number;
}

/** float64: out[t, h] = softmax_j(scale · q·k_j + bias(h, j, query)) · v_j over the visible j. */
function reference(c: Case, q: Float32Array, k: Float32Array, v: Float32Array, bias: Float32Array) {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd, scale } = c.key;
  const out = new Float64Array(c.T * nh * hd);
  for (let t = 0; t < c.T; t++) {
    const qpos = c.pos0 + t;
    const n = c.key.keys === "causal" ? qpos + 1 : c.keys;
    for (let h = 0; h < nh; h++) {
      const g = Math.floor(h / (nh / nkv));
      const scores = new Float64Array(n);
      for (let j = 0; j < n; j++) {
        let s = 0;
        const qs = c.key.qStride ?? nh * hd;
        for (let d = 0; d < hd; d++) s += q[t * qs + h * hd + d] * k[j * nkv * hd + g * hd + d];
        s *= scale;
        const b = c.key.bias;
        if (b) {
          const width = b.bidirectional ? 2 * b.span - 1 : b.span;
          const col = b.bidirectional ? j - qpos + b.span - 1 : qpos - j;
          s += bias[h * width + col];
        }
        scores[j] = s;
      }
      const m = Math.max(...scores);
      let z = 0;
      for (let j = 0; j < n; j++) z += scores[j] = Math.exp(scores[j] - m);
      for (let d = 0; d < hd; d++) {
        let o = 0;
        for (let j = 0; j < n; j++) o += scores[j] * v[j * nkv * hd + g * hd + d];
        out[t * nh * hd + h * hd + d] = o / z;
      }
    }
  }
  return out;
}

const CASES: Case[] = [
  {
    name: "encoder: bidirectional bias, all keys",
    key: {
      numHeads: 4,
      numKvHeads: 4,
      headDim: 8,
      scale: 1,
      keys: "all",
      bias: { bidirectional: true, span: 16 },
    },
    T: 11,
    pos0: 0,
    keys: 11,
  },
  {
    name: "decoder: causal bias from position 5, GQA 2",
    key: {
      numHeads: 4,
      numKvHeads: 2,
      headDim: 16,
      scale: 1,
      keys: "causal",
      bias: { bidirectional: false, span: 32 },
    },
    T: 3,
    pos0: 5,
    keys: 8,
  },
  {
    name: "decoder: packed [q | k | v] rows (q stride 64), causal bias",
    key: {
      numHeads: 2,
      numKvHeads: 1,
      headDim: 16,
      scale: 1,
      keys: "causal",
      bias: { bidirectional: false, span: 16 },
      qStride: 64,
    },
    T: 5,
    pos0: 3,
    keys: 8,
  },
  {
    name: "cross: no bias, scaled",
    key: { numHeads: 3, numKvHeads: 3, headDim: 8, scale: 0.35, keys: "all", bias: null },
    T: 4,
    pos0: 2,
    keys: 23,
  },
  {
    name: "encoder: head size 6 (scalar loads), GQA 2",
    key: {
      numHeads: 2,
      numKvHeads: 1,
      headDim: 6,
      scale: 1,
      keys: "all",
      bias: { bidirectional: true, span: 8 },
    },
    T: 7,
    pos0: 0,
    keys: 7,
  },
];

type Groups = [number, number, number];
const KERNELS: [string, (k: Seq2SeqAttentionKey) => KernelSource, (c: Case) => Groups][] = [
  ["lanes", seq2seqAttentionSource, (c) => [c.key.numHeads, c.T, 1]],
  ["tiled 4", (k) => seq2seqAttentionTiledSource(k), (c) => seq2seqTiledGroups(c.key, c.T)],
  ["tiled 3", (k) => seq2seqAttentionTiledSource(k, 3), (c) => seq2seqTiledGroups(c.key, c.T, 3)],
];

for (const c of CASES) {
  for (const [kernel, source, groups] of KERNELS) {
    Deno.test(`seq2seq attention kernel (${kernel}), ${c.name}: within ${TOLERANCE} of float64`, async () => {
      const rand = mulberry32(c.T * 131 + c.keys);
      const { numHeads: nh, numKvHeads: nkv, headDim: hd } = c.key;
      const rows = Math.max(c.keys, c.pos0 + c.T);
      const q = random(c.T * (c.key.qStride ?? nh * hd), rand);
      const k = random(rows * nkv * hd, rand);
      const v = random(rows * nkv * hd, rand);
      const b = c.key.bias;
      const bias = random(b ? nh * (b.bidirectional ? 2 * b.span - 1 : b.span) : 1, rand);
      const out = storageBuffer(device, c.T * nh * hd * 4, "out");
      const buffers: Record<string, GPUBuffer> = {
        step: step(c.T, c.pos0, c.keys),
        q: storageBuffer(device, q.byteLength, "q", q),
        kCache: storageBuffer(device, k.byteLength, "k", k),
        vCache: storageBuffer(device, v.byteLength, "v", v),
        out,
      };
      if (b) buffers.bias = storageBuffer(device, bias.byteLength, "bias", bias);
      dispatchOnce(device, source(c.key), buffers, groups(c));
      const got = await readF32(device, out, c.T * nh * hd);
      const want = reference(c, q, k, v, bias);
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]));
      assert.ok(err < TOLERANCE, `max error ${err}`);
      // The bias matters: without it the reference moves well past the tolerance.
      if (b) {
        const plain = reference({ ...c, key: { ...c.key, bias: null } }, q, k, v, bias);
        let moved = 0;
        for (let i = 0; i < want.length; i++) moved = Math.max(moved, Math.abs(plain[i] - want[i]));
        assert.ok(moved > 100 * TOLERANCE, `bias moved the output by only ${moved}`);
      }
    });
  }
}

Deno.test("kv store: a step's keys and values land at rows pos0.., split or packed", async () => {
  const rand = mulberry32(7);
  const width = 12, T = 3, pos0 = 4, rows = 9;
  const k = random(T * width, rand), v = random(T * width, rand);
  const kc = random(rows * width, rand), vc = random(rows * width, rand);
  const kCache = storageBuffer(device, kc.byteLength, "kc", kc);
  const vCache = storageBuffer(device, vc.byteLength, "vc", vc);
  dispatchOnce(device, kvStoreSource(width), {
    step: step(T, pos0, 0),
    k: storageBuffer(device, k.byteLength, "k", k),
    v: storageBuffer(device, v.byteLength, "v", v),
    kCache,
    vCache,
  }, elementGroups(width, T));
  const wantK = kc.slice(), wantV = vc.slice();
  wantK.set(k, pos0 * width);
  wantV.set(v, pos0 * width);
  assert.deepEqual(await readF32(device, kCache, kc.length), wantK);
  assert.deepEqual(await readF32(device, vCache, vc.length), wantV);

  // From packed [q | k | v] rows of 3 · width floats.
  const qkv = random(T * 3 * width, rand);
  dispatchOnce(device, kvStoreSource(width, { stride: 3 * width, kOffset: width }), {
    step: step(T, pos0, 0),
    qkv: storageBuffer(device, qkv.byteLength, "qkv", qkv),
    kCache,
    vCache,
  }, elementGroups(width, T));
  for (let t = 0; t < T; t++) {
    wantK.set(qkv.subarray((3 * t + 1) * width, (3 * t + 2) * width), (pos0 + t) * width);
    wantV.set(qkv.subarray((3 * t + 2) * width, (3 * t + 3) * width), (pos0 + t) * width);
  }
  assert.deepEqual(await readF32(device, kCache, kc.length), wantK);
  assert.deepEqual(await readF32(device, vCache, vc.length), wantV);
});
