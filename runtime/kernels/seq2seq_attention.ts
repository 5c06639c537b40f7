/**
 * The attention kernels of encoder–decoder models: one kernel for the three uses —
 * bidirectional self-attention over the encoder's own keys, causal self-attention over the
 * decoder's KV cache, and cross-attention over the keys and values projected once per request
 * from the encoder output — each with an optional T5 relative position bias read by distance
 * from a per-stack table (kernels/relative_bias.ts); plus the store of a decoder step's keys and
 * values into its cache.
 *
 * The encoder length is the Step uniform's third field (`step.pad0`), written by the seq2seq
 * engine into every submission; decoder-only kernels ignore it.
 *
 * Layouts as kernels/attention.ts: q [T, nh·hd]; keys and values [position, nkv·hd]; query head
 * h reads KV head h / (nh / nkv); out [T, nh·hd].
 *
 * @module
 */

import { type AttentionShape, attentionThreads } from "./attention.ts";
import { type BindingDecl, f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";

/** Parameters of {@link seq2seqAttentionSource}. */
export interface Seq2SeqAttentionKey extends AttentionShape {
  /** Multiplier of q·k (T5: 1). */
  scale: number;
  /**
   * "causal": the query at position pos0 + t sees keys 0..pos0 + t (decoder self-attention);
   * "all": every key 0..step.pad0 − 1 (encoder self-attention, cross-attention).
   */
  keys: "causal" | "all";
  /**
   * A relative bias table (binding "bias", kernels/relative_bias.ts layout) for sequences of up
   * to `span` positions; null for none.
   */
  bias: { bidirectional: boolean; span: number } | null;
}

/**
 * softmax(scale · q·k + bias) · v for each (head, token): workgroup (h, t); each lane keeps an
 * online softmax over a strided subset of the keys, the partials merge in workgroup memory.
 * Dispatch (numHeads, T, 1).
 */
export function seq2seqAttentionSource(key: Seq2SeqAttentionKey): KernelSource {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = key;
  if (nh % nkv !== 0) throw new RangeError(`attention: ${nh} heads over ${nkv} KV heads`);
  const n = attentionThreads(hd);
  const b = key.bias;
  const decls: BindingDecl[] = [
    ["step", "Step", "uniform"],
    ["q", "array<f32>"],
    ["kCache", "array<f32>"],
    ["vCache", "array<f32>"],
  ];
  if (b) decls.push(["bias", "array<f32>"]);
  decls.push(["out", "array<f32>", "storage, read_write"]);
  const width = b ? (b.bidirectional ? 2 * b.span - 1 : b.span) : 0;
  const biasTerm = !b
    ? ""
    : b.bidirectional
    ? ` + bias[h * ${u(width)} + j + ${u(b.span - 1)} - qpos]`
    : ` + bias[h * ${u(width)} + qpos - j]`;
  const label = `s2s_attention.${nh}.${nkv}.${hd}.${key.keys}${
    key.scale === 1 ? "" : `.s${key.scale}`
  }${b ? `.${b.bidirectional ? "bi" : "causal"}${b.span}` : ""}`;
  return kernelSource(
    label,
    decls,
    `
const HD = ${u(hd)};
const THREADS = ${u(n)};
var<workgroup> laneMax: array<f32, ${n}>;
var<workgroup> laneSum: array<f32, ${n}>;
var<workgroup> laneAcc: array<f32, ${n * hd}>;
@compute @workgroup_size(${n})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let h = wg.x;
  let t = wg.y;
  if (t >= step.T) { return; }
  let qpos = step.pos0 + t;
  let nKeys = ${key.keys === "causal" ? "qpos + 1u" : "step.pad0"};
  let kvBase = (h / ${u(nh / nkv)}) * HD;
  let qb = t * ${u(nh * hd)} + h * HD;
  var qv: array<f32, ${hd}>;
  for (var d = 0u; d < HD; d++) { qv[d] = q[qb + d] * ${f(key.scale)}; }
  var m = -3.0e38;
  var s = 0.0;
  var acc: array<f32, ${hd}>;
  for (var j = li; j < nKeys; j += THREADS) {
    let kb = j * ${u(nkv * hd)} + kvBase;
    var dot = 0.0;
    for (var d = 0u; d < HD; d++) { dot += qv[d] * kCache[kb + d]; }
    let score = dot${biasTerm};
    let mNew = max(m, score);
    let corr = exp(m - mNew);
    let p = exp(score - mNew);
    s = s * corr + p;
    for (var d = 0u; d < HD; d++) { acc[d] = acc[d] * corr + p * vCache[kb + d]; }
    m = mNew;
  }
  laneMax[li] = m;
  laneSum[li] = s;
  for (var d = 0u; d < HD; d++) { laneAcc[li * HD + d] = acc[d]; }
  workgroupBarrier();
  var M = -3.0e38;
  for (var i = 0u; i < THREADS; i++) { M = max(M, laneMax[i]); }
  var S = 0.0;
  for (var i = 0u; i < THREADS; i++) { S += laneSum[i] * exp(laneMax[i] - M); }
  for (var d = li; d < HD; d += THREADS) {
    var o = 0.0;
    for (var i = 0u; i < THREADS; i++) { o += laneAcc[i * HD + d] * exp(laneMax[i] - M); }
    out[t * ${u(nh * hd)} + h * HD + d] = o / S;
  }
}`,
  );
}

/**
 * Copies a step's keys and values k, v [T, width] into rows pos0.. of kCache and vCache.
 * Dispatch ops.ts elementGroups(width, T).
 */
export function kvStoreSource(width: number): KernelSource {
  return kernelSource(
    `kv_store.${width}`,
    [
      ["step", "Step", "uniform"],
      ["k", "array<f32>"],
      ["v", "array<f32>"],
      ["kCache", "array<f32>", "storage, read_write"],
      ["vCache", "array<f32>", "storage, read_write"],
    ],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let c = id.x;
  let t = id.y;
  if (c >= ${u(width)} || t >= step.T) { return; }
  let dst = (step.pos0 + t) * ${u(width)} + c;
  kCache[dst] = k[t * ${u(width)} + c];
  vCache[dst] = v[t * ${u(width)} + c];
}`,
  );
}
