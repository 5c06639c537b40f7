/**
 * Multi-head latent attention (DeepSeek-V2/V3) in float64, over a latent KV cache:
 *
 *   q = attn_q h, or attn_q_b · RMSNorm(attn_q_a h)          [nh, nope + rope]
 *   [c̃ | k_rope] = attn_kv_a h;  c = RMSNorm(c̃)             latent [R] and shared RoPE key [r]
 *   q_rope, k_rope ← RoPE at their positions (one k_rope for all heads)
 *   head h: k_nope = W_k,h c, v = W_v,h c with attn_kv_b = [W_k,0; W_v,0; W_k,1; W_v,1; ...]
 *   score(s) = scale · (q_nope · k_nope(s) + q_rope · k_rope(s)); out_h = Σ softmax · v(s)
 *   out = attn_o [out_0 | out_1 | ...]
 *
 * The cache holds only c and k_rope per position (R + r values, not nh·(nope + rope + v)); kv_b
 * is absorbed as DeepSeek's own inference does: q_lat = W_k,hᵀ q_nope gives q_nope · k_nope(s) =
 * q_lat · c_s, and out_h = W_v,h (Σ p_s c_s). In float64 both orders agree to rounding.
 *
 * @module
 */

import type { MlaAttentionSpec } from "../../schemas/model.ts";
import { matmul, softmax } from "./math.ts";
import { checkNorm, rmsNorm } from "./norms.ts";
import { prepareRope, type ReferenceRope, rope, ropeTables } from "./rope.ts";
import type { LayerWeights } from "./weights.ts";

/** An MLA block's weights in float64. */
export interface ReferenceMla {
  kind: "mla";
  spec: MlaAttentionSpec;
  /** [nh·(nope+rope), H] direct queries, or null with the q LoRA below. */
  q: Float64Array | null;
  /** [qLoraRank, H], [qLoraRank], [nh·(nope+rope), qLoraRank] */
  qA: Float64Array | null;
  qANorm: Float64Array | null;
  qB: Float64Array | null;
  /** [R + r, H] */
  kvA: Float64Array;
  /** [R] */
  kvANorm: Float64Array;
  /** [nh·(nope+v), R] */
  kvB: Float64Array;
  /** [H, nh·v] */
  o: Float64Array;
  rope: ReferenceRope;
  /** Which of a session's caches is this block's. */
  cacheSlot: number;
}

/** Values an MLA block caches per position: the latent and the RoPE key. */
export function mlaCacheWidth(spec: MlaAttentionSpec): number {
  return spec.kvLoraRank + spec.qkRopeHeadDim;
}

/** Reads an MLA block's weights (roles `attn_*`). */
export async function readMla(
  spec: MlaAttentionSpec,
  weights: LayerWeights,
  cacheSlot: number,
): Promise<ReferenceMla> {
  checkNorm(spec.latentNorm);
  const lora = spec.qLoraRank !== null;
  return {
    kind: "mla",
    spec,
    q: lora ? null : await weights.read("attn_q"),
    qA: lora ? await weights.read("attn_q_a") : null,
    qANorm: lora ? await weights.read("attn_q_a_norm") : null,
    qB: lora ? await weights.read("attn_q_b") : null,
    kvA: await weights.read("attn_kv_a"),
    kvANorm: await weights.read("attn_kv_a_norm"),
    kvB: await weights.read("attn_kv_b"),
    o: await weights.read("attn_o"),
    rope: prepareRope(spec.position, spec.qkRopeHeadDim),
    cacheSlot,
  };
}

/**
 * The MLA block over n new tokens h [n, H] at positions start..start+n−1: writes their latents
 * and RoPE keys into `cache` ([capacity, R + r]) and the block output into `out` [n, H].
 */
export function mlaBlock(
  out: Float64Array,
  h: Float64Array,
  n: number,
  a: ReferenceMla,
  cache: Float64Array,
  start: number,
): void {
  const s = a.spec;
  const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, qkRopeHeadDim: dr, vHeadDim: dv } = s;
  const H = h.length / n;
  const qk = dn + dr, W = R + dr, eps = s.latentNorm.eps;

  const q = new Float64Array(n * nh * qk);
  if (a.q) matmul(q, h, a.q, n, nh * qk, H);
  else {
    const qa = new Float64Array(n * s.qLoraRank!);
    matmul(qa, h, a.qA!, n, s.qLoraRank!, H);
    for (let t = 0; t < n; t++) {
      const row = qa.subarray(t * s.qLoraRank!, (t + 1) * s.qLoraRank!);
      rmsNorm(row, row, a.qANorm!, eps);
    }
    matmul(q, qa, a.qB!, n, nh * qk, s.qLoraRank!);
  }
  const rows = cache.subarray(start * W, (start + n) * W);
  matmul(rows, h, a.kvA, n, W, H);

  const { invFreq, pairing, mscale } = a.rope;
  const { cos, sin } = ropeTables(invFreq, start, n, mscale);
  for (let t = 0; t < n; t++) {
    const latent = rows.subarray(t * W, t * W + R);
    rmsNorm(latent, latent, a.kvANorm, eps);
    const c = cos.subarray(t * dr / 2, (t + 1) * dr / 2);
    const sn = sin.subarray(t * dr / 2, (t + 1) * dr / 2);
    rope(rows.subarray(t * W + R, (t + 1) * W), 1, dr, c, sn, dr, pairing);
    for (let hd = 0; hd < nh; hd++) {
      rope(q.subarray((t * nh + hd) * qk + dn, (t * nh + hd + 1) * qk), 1, dr, c, sn, dr, pairing);
    }
  }

  const att = new Float64Array(n * nh * dv);
  const qLat = new Float64Array(R);
  const oLat = new Float64Array(R);
  const scores = new Float64Array(start + n);
  for (let t = 0; t < n; t++) {
    const keys = start + t + 1;
    for (let hd = 0; hd < nh; hd++) {
      const qh = q.subarray((t * nh + hd) * qk, (t * nh + hd + 1) * qk);
      const wk = hd * (dn + dv) * R; // W_k,h rows [dn, R], then W_v,h rows [dv, R]
      qLat.fill(0);
      for (let i = 0; i < dn; i++) {
        for (let j = 0; j < R; j++) qLat[j] += qh[i] * a.kvB[wk + i * R + j];
      }
      for (let p = 0; p < keys; p++) {
        let sc = 0;
        for (let j = 0; j < R; j++) sc += qLat[j] * cache[p * W + j];
        for (let i = 0; i < dr; i++) sc += qh[dn + i] * cache[p * W + R + i];
        scores[p] = sc * s.scale;
      }
      softmax(scores, keys);
      oLat.fill(0);
      for (let p = 0; p < keys; p++) {
        for (let j = 0; j < R; j++) oLat[j] += scores[p] * cache[p * W + j];
      }
      const wv = wk + dn * R;
      for (let i = 0; i < dv; i++) {
        let v = 0;
        for (let j = 0; j < R; j++) v += a.kvB[wv + i * R + j] * oLat[j];
        att[(t * nh + hd) * dv + i] = v;
      }
    }
  }
  matmul(out, att, a.o, n, H, nh * dv);
}
