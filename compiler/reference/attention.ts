/**
 * Causal GQA self-attention in float64 over a KV cache, as transformers computes it:
 *
 *   q = q_proj h (+ bq), k = k_proj h (+ bk), v = v_proj h (+ bv)
 *   q, k ← RMSNorm per head ("head") or over the whole projection ("full")
 *   q, k, v ← clamp(·, −clip, clip)             (OLMoE clip_qkv: after the q/k norm)
 *   q, k ← RoPE at their positions
 *   out = o_proj(softmax(scale · q kᵀ over the cached keys) v)
 *
 * Query head h reads kv head ⌊h / (nh/nkv)⌋. Other attention variants (MLA, sinks, sliding
 * windows, bidirectional, output bias) are described but not implemented here yet.
 *
 * @module
 */

import type { AttentionSpec, GqaAttentionSpec } from "../../schemas/model.ts";
import { addBias, matmul, notImplemented, softmax } from "./math.ts";
import { checkNorm, rmsNorm } from "./norms.ts";
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
  qBias: Float64Array | null;
  kBias: Float64Array | null;
  vBias: Float64Array | null;
  /** [hd] ("head") or [nh·hd] ("full"). */
  qNorm: Float64Array | null;
  /** [hd] ("head") or [nkv·hd] ("full"). */
  kNorm: Float64Array | null;
  rope: ReferenceRope;
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
  if (spec.sinks) throw notImplemented("attention sinks");
  if (spec.slidingWindow !== null) throw notImplemented("sliding-window attention");
  if (!spec.causal) throw notImplemented("bidirectional attention");
  if (spec.outBias) throw notImplemented("an attention output bias");
  if (spec.qkNorm !== "none") checkNorm(spec.qkNormSpec);
  return spec;
}

/** Reads an attention block's weights (roles `attn_*`). */
export async function readAttention(
  described: AttentionSpec,
  weights: LayerWeights,
  cacheSlot: number,
): Promise<ReferenceAttention> {
  const spec = checkAttention(described);
  const rope = prepareRope(spec.position, spec.headDim);
  const optional = (on: boolean, role: string) => on ? weights.read(role) : null;
  const norms = spec.qkNorm !== "none";
  return {
    spec,
    q: await weights.read("attn_q"),
    k: await weights.read("attn_k"),
    v: await weights.read("attn_v"),
    o: await weights.read("attn_o"),
    qBias: await optional(spec.qkvBias, "attn_q_bias"),
    kBias: await optional(spec.qkvBias, "attn_k_bias"),
    vBias: await optional(spec.qkvBias, "attn_v_bias"),
    qNorm: await optional(norms, "attn_q_norm"),
    kNorm: await optional(norms, "attn_k_norm"),
    rope,
    cacheSlot,
  };
}

/**
 * Attention of one query position over cached keys/values 0..nKeys−1 (GQA: query head h reads
 * kv head ⌊h / (nh/nkv)⌋; scores × scale, softmax in float64). `q` is [nh·hd], `keys`/`values`
 * [positions, nkv·hd]; `out` [nh·hd]; `scores` scratch holds nKeys values.
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
): void {
  const group = nh / nkv;
  const kvDim = nkv * hd;
  for (let h = 0; h < nh; h++) {
    const qo = h * hd;
    const ko = Math.floor(h / group) * hd;
    for (let j = 0; j < nKeys; j++) {
      const kj = j * kvDim + ko;
      let s = 0;
      for (let i = 0; i < hd; i++) s += q[qo + i] * keys[kj + i];
      scores[j] = s * scale;
    }
    softmax(scores, nKeys);
    for (let i = 0; i < hd; i++) out[qo + i] = 0;
    for (let j = 0; j < nKeys; j++) {
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

/** Clamps every value to [−limit, limit]. */
function clamp(vec: Float64Array, limit: number): void {
  for (let i = 0; i < vec.length; i++) vec[i] = Math.min(limit, Math.max(-limit, vec[i]));
}

/**
 * The attention block over n new tokens h [n, H] at positions start..start+n−1: writes their
 * keys/values into `cache` and the block output into `out` [n, H].
 */
export function attentionBlock(
  out: Float64Array,
  h: Float64Array,
  n: number,
  a: ReferenceAttention,
  cache: KvCache,
  start: number,
): void {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd, qkNorm, clipQkv } = a.spec;
  const H = h.length / n;
  const qDim = nh * hd;
  const kvDim = nkv * hd;
  const q = new Float64Array(n * qDim);
  const k = cache.keys.subarray(start * kvDim, (start + n) * kvDim);
  const v = cache.values.subarray(start * kvDim, (start + n) * kvDim);
  matmul(q, h, a.q, n, qDim, H);
  matmul(k, h, a.k, n, kvDim, H);
  matmul(v, h, a.v, n, kvDim, H);
  if (a.qBias) addBias(q, a.qBias, n);
  if (a.kBias) addBias(k, a.kBias, n);
  if (a.vBias) addBias(v, a.vBias, n);

  const { rotaryDim, invFreq, pairing } = a.rope;
  const half = rotaryDim / 2;
  const { cos, sin } = ropeTables(invFreq, start, n);
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
    const c = cos.subarray(t * half, (t + 1) * half);
    const s = sin.subarray(t * half, (t + 1) * half);
    rope(qt, nh, hd, c, s, rotaryDim, pairing);
    rope(kt, nkv, hd, c, s, rotaryDim, pairing);
  }

  const att = new Float64Array(n * qDim);
  const scores = new Float64Array(start + n);
  for (let t = 0; t < n; t++) {
    const qt = q.subarray(t * qDim, (t + 1) * qDim);
    const at = att.subarray(t * qDim, (t + 1) * qDim);
    attention(at, qt, cache.keys, cache.values, start + t + 1, nh, nkv, hd, a.spec.scale, scores);
  }
  matmul(out, att, a.o, n, H, qDim);
}
