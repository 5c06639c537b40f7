/**
 * The attention kernels of encoder–decoder models: one kernel for the three uses —
 * bidirectional self-attention over the encoder's own keys, causal self-attention over the
 * decoder's KV cache, and cross-attention over the keys and values projected once per request
 * from the encoder output — each with an optional T5 relative position bias read by distance
 * from a per-stack table (kernels/relative_bias.ts); plus the store of a decoder step's keys and
 * values into its cache.
 *
 * The encoder length is the Step uniform's fourth field (`step.encoderLength`), written by the seq2seq
 * engine into every submission; decoder-only kernels ignore it.
 *
 * Layouts as kernels/attention.ts: q [T, nh·hd]; keys and values [position, nkv·hd]; query head
 * h reads KV head h / (nh / nkv); out [T, nh·hd].
 *
 * @module
 */

import {
  type AttentionShape,
  attentionThreads,
  laneMerge,
  ONLINE_SOFTMAX_STEP,
} from "./attention.ts";
import { type BindingDecl, f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";

/** Parameters of {@link seq2seqAttentionSource}. */
export interface Seq2SeqAttentionKey extends AttentionShape {
  /** Multiplier of q·k (T5: 1). */
  scale: number;
  /**
   * "causal": the query at position pos0 + t sees keys 0..pos0 + t (decoder self-attention);
   * "all": every key 0..step.encoderLength − 1 (encoder self-attention, cross-attention).
   */
  keys: "causal" | "all";
  /**
   * A relative bias table (binding "bias", kernels/relative_bias.ts layout) for sequences of up
   * to `span` positions; null for none.
   */
  bias: { bidirectional: boolean; span: number } | null;
  /** Floats between consecutive tokens' q rows (default numHeads·headDim; a packed [q | k | v] row). */
  qStride?: number;
}

/** Label suffix of a key's q stride when it is not the default. */
function strideLabel(key: Seq2SeqAttentionKey): string {
  const s = key.qStride ?? key.numHeads * key.headDim;
  return s === key.numHeads * key.headDim ? "" : `.q${s}`;
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
  }${b ? `.${b.bidirectional ? "bi" : "causal"}${b.span}` : ""}${strideLabel(key)}`;
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
  let nKeys = ${key.keys === "causal" ? "qpos + 1u" : "step.encoderLength"};
  let kvBase = (h / ${u(nh / nkv)}) * HD;
  let qb = t * ${u(key.qStride ?? nh * hd)} + h * HD;
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
${ONLINE_SOFTMAX_STEP}
  }
${laneMerge("-3.0e38", "0.0")}
  for (var d = li; d < HD; d += THREADS) {
    var o = 0.0;
    for (var i = 0u; i < THREADS; i++) { o += laneAcc[i * HD + d] * exp(laneMax[i] - M); }
    out[t * ${u(nh * hd)} + h * HD + d] = o / S;
  }
}`,
  );
}

/**
 * The same attention for many queries at once (prefill, the encoder), shaped for CPU adapters
 * where every storage load costs a lane load: one invocation owns head h and `qt` consecutive
 * queries, walks the keys once (each key and value row loaded once for all its queries, as
 * vec4s when the head size allows) and keeps one online softmax per query in unrolled
 * variables. Same bindings and contract as {@link seq2seqAttentionSource}. Dispatch
 * {@link seq2seqTiledGroups}.
 */
export function seq2seqAttentionTiledSource(key: Seq2SeqAttentionKey, qt = 4): KernelSource {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = key;
  if (nh % nkv !== 0) throw new RangeError(`attention: ${nh} heads over ${nkv} KV heads`);
  const qStride = key.qStride ?? nh * hd;
  const v4 = hd % 4 === 0 && qStride % 4 === 0;
  const W = v4 ? 4 : 1, n = hd / W;
  const T = v4 ? "vec4<f32>" : "f32";
  const zero = v4 ? "vec4<f32>(0.0)" : "0.0";
  const b = key.bias;
  const width = b ? (b.bidirectional ? 2 * b.span - 1 : b.span) : 0;
  const decls: BindingDecl[] = [
    ["step", "Step", "uniform"],
    ["q", `array<${T}>`],
    ["kCache", `array<${T}>`],
    ["vCache", `array<${T}>`],
  ];
  if (b) decls.push(["bias", "array<f32>"]);
  decls.push(["out", `array<${T}>`, "storage, read_write"]);
  const ds = Array.from({ length: n }, (_, d) => d);
  const qs = Array.from({ length: qt }, (_, c) => c);
  const perD = (fn: (d: number) => string, sep = "\n") => ds.map(fn).join(sep);
  const perQ = (fn: (c: number) => string) => qs.map(fn).join("\n");
  const dot = (c: number) =>
    perD((d) => v4 ? `dot(q${c}_${d}, k${d})` : `q${c}_${d} * k${d}`, " + ");
  const visible = (c: number) => key.keys === "causal" ? `j <= qpos${c}` : "true";
  const biasTerm = (c: number) =>
    !b
      ? ""
      : b.bidirectional
      ? ` + bias[h * ${u(width)} + j + ${u(b.span - 1)} - qpos${c}]`
      : ` + bias[h * ${u(width)} + select(0u, qpos${c} - j, j <= qpos${c})]`;
  const label = `s2s_attention_tiled.${nh}.${nkv}.${hd}.${key.keys}${
    key.scale === 1 ? "" : `.s${key.scale}`
  }${b ? `.${b.bidirectional ? "bi" : "causal"}${b.span}` : ""}${strideLabel(key)}.t${qt}`;
  return kernelSource(
    label,
    decls,
    `
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3<u32>) {
  let h = wg.x;
  let t0 = wg.y * ${u(qt)};
  if (t0 >= step.T) { return; }
  let tLast = min(t0 + ${u(qt - 1)}, step.T - 1u);
  let jEnd = ${key.keys === "causal" ? "step.pos0 + tLast + 1u" : "step.encoderLength"};
  let kvBase = (h / ${u(nh / nkv)}) * ${u(n)};
${
      perQ((c) =>
        `  let qpos${c} = step.pos0 + min(t0 + ${u(c)}, tLast);
  let qb${c} = min(t0 + ${u(c)}, tLast) * ${u(qStride / W)} + h * ${u(n)};
${perD((d) => `  let q${c}_${d} = q[qb${c} + ${u(d)}] * ${f(key.scale)};`)}
  var m${c} = -3.0e38;
  var s${c} = 0.0;
${perD((d) => `  var a${c}_${d} = ${zero};`)}`
      )
    }
  for (var j = 0u; j < jEnd; j++) {
    let kb = j * ${u(nkv * n)} + kvBase;
${perD((d) => `    let k${d} = kCache[kb + ${u(d)}];`)}
${perD((d) => `    let v${d} = vCache[kb + ${u(d)}];`)}
${
      perQ((c) =>
        `    {
      let ok = ${visible(c)};
      let score = ${dot(c)}${biasTerm(c)};
      let mNew = select(m${c}, max(m${c}, score), ok);
      let corr = exp(m${c} - mNew);
      let p = select(0.0, exp(score - mNew), ok);
      s${c} = s${c} * corr + p;
${perD((d) => `      a${c}_${d} = a${c}_${d} * corr + p * v${d};`)}
      m${c} = mNew;
    }`
      )
    }
  }
${
      perQ((c) =>
        `  if (t0 + ${u(c)} < step.T) {
    let ob = (t0 + ${u(c)}) * ${u(nh * n)} + h * ${u(n)};
${perD((d) => `    out[ob + ${u(d)}] = a${c}_${d} / s${c};`)}
  }`
      )
    }
}`,
  );
}

/** Workgroups of {@link seq2seqAttentionTiledSource} for T tokens. */
export function seq2seqTiledGroups(
  key: Seq2SeqAttentionKey,
  T: number,
  qt = 4,
): [number, number, number] {
  return [key.numHeads, Math.ceil(T / qt), 1];
}

/** Where {@link kvStoreSource} finds k and v in one packed buffer "qkv" of [q | k | v] rows. */
export interface PackedKv {
  /** Floats per token row. */
  stride: number;
  /** Offset of k in a row (v follows it). */
  kOffset: number;
}

/**
 * Copies a step's keys and values — k, v [T, width], or from packed [q | k | v] rows — into rows
 * pos0.. of kCache and vCache. Dispatch ops.ts elementGroups(width, T).
 */
export function kvStoreSource(width: number, packed?: PackedKv): KernelSource {
  const inputs: BindingDecl[] = packed ? [["qkv", "array<f32>"]] : [
    ["k", "array<f32>"],
    ["v", "array<f32>"],
  ];
  const kAt = packed
    ? `qkv[t * ${u(packed.stride)} + ${u(packed.kOffset)} + c]`
    : `k[t * ${u(width)} + c]`;
  const vAt = packed
    ? `qkv[t * ${u(packed.stride)} + ${u(packed.kOffset + width)} + c]`
    : `v[t * ${u(width)} + c]`;
  return kernelSource(
    `kv_store.${width}${packed ? `.packed${packed.stride}.${packed.kOffset}` : ""}`,
    [
      ["step", "Step", "uniform"],
      ...inputs,
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
  kCache[dst] = ${kAt};
  vCache[dst] = ${vAt};
}`,
  );
}
