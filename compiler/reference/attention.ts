/**
 * Causal GQA self-attention in float64 over a KV cache, as transformers computes it:
 *
 *   q = q_proj h (+ bq), k = k_proj h (+ bk), v = v_proj h (+ bv)
 *   q, k ← RMSNorm per head ("head") or over the whole projection ("full")
 *   q, k, v ← clamp(·, −clip, clip)             (OLMoE clip_qkv: after the q/k norm)
 *   q, k ← RoPE at their positions                (when the position is RoPE)
 *   out = o_proj(softmax(scale · q kᵀ (+ T5 relative bias) over the visible keys) v) (+ bo)
 *
 * Causal attention sees the keys up to its own position, bidirectional (an encoder) every key of
 * the chunk. Query head h reads kv head ⌊h / (nh/nkv)⌋. gpt-oss adds a sink logit per head to the
 * softmax (then drops its share) and a per-layer sliding window (keys j > q − W). MLA is described
 * but not implemented here yet.
 *
 * @module
 */

import type { AttentionSpec, GqaAttentionSpec } from "../../schemas/model.ts";
import { addBias, matmul, notImplemented, softmax } from "./math.ts";
import { checkNorm, rmsNorm } from "./norms.ts";
import { type ReferenceRelativeBias, relativeBiasRow } from "./relative_bias.ts";
import { prepareRope, type ReferenceRope, rope, ropeTables } from "./rope.ts";
import type { LayerWeights } from "./weights.ts";

/** A GQA attention block's weights in float64. */
export interface ReferenceAttention {
  spec: GqaAttentionSpec;
  /** [nh·hd, H] */
  q: Float64Array;
  /** [nkv·hd, H] */
  k: Float64Array;
  /** [nkv·hd, H] */
  v: Float64Array;
  /** [H, nh·hd] */
  o: Float64Array;
  /** [H], when the output projection has a bias. */
  oBias: Float64Array | null;
  qBias: Float64Array | null;
  kBias: Float64Array | null;
  vBias: Float64Array | null;
  /** [hd] ("head") or [nh·hd] ("full"). */
  qNorm: Float64Array | null;
  /** [hd] ("head") or [nkv·hd] ("full"). */
  kNorm: Float64Array | null;
  /** [nh] one learned logit per head (gpt-oss sinks). */
  sinks: Float64Array | null;
  /** null when the position is not RoPE. */
  rope: ReferenceRope | null;
  /** The T5 relative bias (the owner layer's table), when the position is one. */
  relativeBias: ReferenceRelativeBias | null;
  /** Which of a session's KV caches is this block's. */
  cacheSlot: number;
}

/** One attention block's cached keys and values: [capacity, nkv·hd] each. */
export interface KvCache {
  keys: Float64Array;
  values: Float64Array;
}

/** The GQA spec of an attention block; UnsupportedError for what the reference lacks. */
export function checkAttention(spec: AttentionSpec): GqaAttentionSpec {
  if (spec.kind !== "gqa") throw notImplemented(`attention kind "${spec.kind}"`);
  if (spec.qkNorm !== "none") checkNorm(spec.qkNormSpec);
  return spec;
}

/** Where {@link readAttention} finds a block's tensors. */
export interface AttentionSource {
  /** Role prefix: `attn` for self-attention, `cross` for cross-attention. */
  prefix?: "attn" | "cross";
  /** The weights of the layer owning the relative-bias table (its `<prefix>_relative_bias`). */
  owner?: LayerWeights;
}

/** Reads an attention block's weights (roles `attn_*`, or `cross_*`). */
export async function readAttention(
  described: AttentionSpec,
  weights: LayerWeights,
  cacheSlot: number,
  source: AttentionSource = {},
): Promise<ReferenceAttention> {
  const spec = checkAttention(described);
  const p = source.prefix ?? "attn";
  const position = spec.position;
  const rope = position.kind === "rope" ? prepareRope(position, spec.headDim) : null;
  const relativeBias = position.kind === "relative_bias"
    ? { spec: position, table: await (source.owner ?? weights).read(`${p}_relative_bias`) }
    : null;
  const optional = (on: boolean, role: string) => on ? weights.read(`${p}_${role}`) : null;
  const norms = spec.qkNorm !== "none";
  return {
    spec,
    q: await weights.read(`${p}_q`),
    k: await weights.read(`${p}_k`),
    v: await weights.read(`${p}_v`),
    o: await weights.read(`${p}_o`),
    qBias: await optional(spec.qkvBias, "q_bias"),
    kBias: await optional(spec.qkvBias, "k_bias"),
    vBias: await optional(spec.qkvBias, "v_bias"),
    oBias: await optional(spec.outBias, "o_bias"),
    qNorm: await optional(norms, "q_norm"),
    kNorm: await optional(norms, "k_norm"),
    sinks: await optional(spec.sinks, "sinks"),
    rope,
    relativeBias,
    cacheSlot,
  };
}

/** What {@link attention} may add: a score bias, a sink logit per head, a sliding window. */
export interface AttentionExtras {
  /** [nh, nKeys]: added to the scores (T5 relative position bias). */
  bias?: Float64Array | null;
  /** [nh]: head h's softmax gets the extra logit sinks[h], whose probability is dropped. */
  sinks?: Float64Array | null;
  /** Only keys j > q − window are visible to the query at q = nKeys − 1. */
  window?: number | null;
}

/**
 * Attention of one query position over cached keys/values 0..nKeys−1 (GQA: query head h reads
 * kv head ⌊h / (nh/nkv)⌋; scores × scale (+ bias[h, j]), softmax in float64). `q` is [nh·hd],
 * `keys`/`values` [positions, nkv·hd]; `out` [nh·hd]; `scores` scratch holds nKeys + 1 values.
 * With a window the keys before nKeys − window are masked; with sinks each head's softmax runs over
 * its visible keys plus its sink logit, and the sink's share is dropped (the weights sum to less
 * than 1); `bias`, when given, is [nh, nKeys].
 */
export function attention(
  out: Float64Array,
  q: Float64Array,
  keys: Float64Array,
  values: Float64Array,
  nKeys: number,
  nh: number,
  nkv: number,
  hd: number,
  scale: number,
  scores: Float64Array,
  extras: AttentionExtras = {},
): void {
  const group = nh / nkv;
  const kvDim = nkv * hd;
  const first = extras.window ? Math.max(0, nKeys - extras.window) : 0;
  for (let h = 0; h < nh; h++) {
    const qo = h * hd;
    const ko = Math.floor(h / group) * hd;
    for (let j = first; j < nKeys; j++) {
      const kj = j * kvDim + ko;
      let s = 0;
      for (let i = 0; i < hd; i++) s += q[qo + i] * keys[kj + i];
      scores[j] = s * scale;
    }
    if (extras.bias) {
      for (let j = first; j < nKeys; j++) scores[j] += extras.bias[h * nKeys + j];
    }
    if (extras.sinks) {
      scores[nKeys] = extras.sinks[h];
      softmax(scores.subarray(first, nKeys + 1));
    } else {
      softmax(scores.subarray(first, nKeys));
    }
    for (let i = 0; i < hd; i++) out[qo + i] = 0;
    for (let j = first; j < nKeys; j++) {
      const vj = j * kvDim + ko;
      const p = scores[j];
      for (let i = 0; i < hd; i++) out[qo + i] += p * values[vj + i];
    }
  }
}

/** RMSNorm of each of `groups` equal slices of `vec` with the shared weight `w`. */
function normGroups(vec: Float64Array, w: Float64Array, groups: number, eps: number): void {
  const size = vec.length / groups;
  for (let g = 0; g < groups; g++) {
    const slice = vec.subarray(g * size, (g + 1) * size);
    rmsNorm(slice, slice, w, eps);
  }
}

/** What {@link prepareQkv} reads of an attention block. */
export interface QkvSteps {
  spec: GqaAttentionSpec;
  qNorm: Float64Array | null;
  kNorm: Float64Array | null;
  rope: ReferenceRope | null;
}

/**
 * The per-token steps between the q/k/v projections and the scores, in place on n tokens at
 * positions start..start+n−1 (q [n, nh·hd], k and v [n, nkv·hd]): the q/k norms, the clip, RoPE.
 */
export function prepareQkv(
  a: QkvSteps,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  n: number,
  start: number,
): void {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd, qkNorm, clipQkv } = a.spec;
  const qDim = nh * hd;
  const kvDim = nkv * hd;
  const eps = a.spec.qkNormSpec.eps;
  for (let t = 0; t < n; t++) {
    const qt = q.subarray(t * qDim, (t + 1) * qDim);
    const kt = k.subarray(t * kvDim, (t + 1) * kvDim);
    if (a.qNorm && a.kNorm) {
      normGroups(qt, a.qNorm, qkNorm === "head" ? nh : 1, eps);
      normGroups(kt, a.kNorm, qkNorm === "head" ? nkv : 1, eps);
    }
    if (clipQkv !== null) {
      clamp(qt, clipQkv);
      clamp(kt, clipQkv);
      clamp(v.subarray(t * kvDim, (t + 1) * kvDim), clipQkv);
    }
  }
  if (a.rope) {
    const { rotaryDim, invFreq, pairing } = a.rope;
    const half = rotaryDim / 2;
    const { cos, sin } = ropeTables(invFreq, start, n, a.rope.mscale);
    for (let t = 0; t < n; t++) {
      const c = cos.subarray(t * half, (t + 1) * half);
      const s = sin.subarray(t * half, (t + 1) * half);
      rope(q.subarray(t * qDim, (t + 1) * qDim), nh, hd, c, s, rotaryDim, pairing);
      rope(k.subarray(t * kvDim, (t + 1) * kvDim), nkv, hd, c, s, rotaryDim, pairing);
    }
  }
}

/** Clamps every value to [−limit, limit]. */
function clamp(vec: Float64Array, limit: number): void {
  for (let i = 0; i < vec.length; i++) vec[i] = Math.min(limit, Math.max(-limit, vec[i]));
}

/**
 * The attention block over n new tokens h [n, H] at positions start..start+n−1: writes their
 * keys/values into `cache` and the block output into `out` [n, H]. Causal: token t sees keys
 * 0..start+t; bidirectional: every key 0..start+n−1. `linear` computes the four projections
 * (default: the float64 `matmul`; the streamed calibration passes a float32 one).
 */
export function attentionBlock(
  out: Float64Array,
  h: Float64Array,
  n: number,
  a: ReferenceAttention,
  cache: KvCache,
  start: number,
  linear: typeof matmul = matmul,
): void {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = a.spec;
  const H = h.length / n;
  const qDim = nh * hd;
  const kvDim = nkv * hd;
  const q = new Float64Array(n * qDim);
  const k = cache.keys.subarray(start * kvDim, (start + n) * kvDim);
  const v = cache.values.subarray(start * kvDim, (start + n) * kvDim);
  linear(q, h, a.q, n, qDim, H);
  linear(k, h, a.k, n, kvDim, H);
  linear(v, h, a.v, n, kvDim, H);
  if (a.qBias) addBias(q, a.qBias, n);
  if (a.kBias) addBias(k, a.kBias, n);
  if (a.vBias) addBias(v, a.vBias, n);

  prepareQkv(a, q, k, v, n, start);

  const att = new Float64Array(n * qDim);
  const scores = new Float64Array(start + n + 1);
  const bias = a.relativeBias ? new Float64Array(nh * (start + n)) : null;
  const extras = { sinks: a.sinks, window: a.spec.slidingWindow, bias };
  for (let t = 0; t < n; t++) {
    const qt = q.subarray(t * qDim, (t + 1) * qDim);
    const at = att.subarray(t * qDim, (t + 1) * qDim);
    const nKeys = a.spec.causal ? start + t + 1 : start + n;
    if (bias) relativeBiasRow(bias, a.relativeBias!, start + t, nKeys, nh);
    attention(at, qt, cache.keys, cache.values, nKeys, nh, nkv, hd, a.spec.scale, scores, extras);
  }
  linear(out, att, a.o, n, H, qDim);
  if (a.oBias) addBias(out, a.oBias, n);
}
