import assert from "node:assert/strict";
import type { MlaAttentionSpec } from "../../schemas/model.ts";
import { mulberry32 as rng } from "../../schemas/prng.ts";
import { mlaBlock, mlaCacheWidth, type ReferenceMla } from "./mla.ts";
import { prepareRope } from "./rope.ts";

/**
 * MLA written the way transformers computes it (no absorption): per head, keys
 * [W_k,h c_s | k_rope_s] and values W_v,h c_s expanded for every position, then plain causal
 * softmax attention. `mlaBlock` (absorbed, latent cache) must agree to float64 rounding, with
 * the q LoRA (no oracle fixture has one) and with direct queries, in one chunk and stepped.
 */
function expanded(a: ReferenceMla, h: Float64Array, n: number, H: number): Float64Array {
  const s = a.spec;
  const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, qkRopeHeadDim: dr, vHeadDim: dv } = s;
  const lin = (w: Float64Array, x: ArrayLike<number>, rows: number, cols: number) =>
    Array.from({ length: rows }, (_, r) => {
      let v = 0;
      for (let c = 0; c < cols; c++) v += w[r * cols + c] * x[c];
      return v;
    });
  const rms = (x: number[], w: Float64Array) => {
    const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
    return x.map((v, i) => v / Math.sqrt(ms + s.latentNorm.eps) * w[i]);
  };
  const rot = (x: number[], pos: number) => {
    const out = [...x];
    a.rope.invFreq.forEach((f, i) => {
      const [p, q] = a.rope.pairing === "half" ? [i, i + dr / 2] : [2 * i, 2 * i + 1];
      const c = Math.cos(pos * f), sn = Math.sin(pos * f);
      out[p] = x[p] * c - x[q] * sn;
      out[q] = x[q] * c + x[p] * sn;
    });
    return out;
  };
  const qs: number[][][] = [], ks: number[][][] = [], vs: number[][][] = [];
  for (let t = 0; t < n; t++) {
    const x = h.subarray(t * H, (t + 1) * H);
    const q = a.q
      ? lin(a.q, x, nh * (dn + dr), H)
      : lin(a.qB!, rms(lin(a.qA!, x, s.qLoraRank!, H), a.qANorm!), nh * (dn + dr), s.qLoraRank!);
    const kv = lin(a.kvA, x, R + dr, H);
    const c = rms(kv.slice(0, R), a.kvANorm);
    const kr = rot(kv.slice(R), t);
    const up = lin(a.kvB, c, nh * (dn + dv), R);
    qs.push([]), ks.push([]), vs.push([]);
    for (let hd = 0; hd < nh; hd++) {
      const qh = q.slice(hd * (dn + dr), (hd + 1) * (dn + dr));
      qs[t].push([...qh.slice(0, dn), ...rot(qh.slice(dn), t)]);
      ks[t].push([...up.slice(hd * (dn + dv), hd * (dn + dv) + dn), ...kr]);
      vs[t].push(up.slice(hd * (dn + dv) + dn, (hd + 1) * (dn + dv)));
    }
  }
  const att: number[] = [];
  for (let t = 0; t < n; t++) {
    for (let hd = 0; hd < nh; hd++) {
      const sc = Array.from(
        { length: t + 1 },
        (_, p) => qs[t][hd].reduce((acc, v, i) => acc + v * ks[p][hd][i], 0) * s.scale,
      );
      const m = Math.max(...sc);
      const e = sc.map((v) => Math.exp(v - m));
      const z = e.reduce((x, y) => x + y, 0);
      for (let i = 0; i < dv; i++) att.push(e.reduce((acc, p, j) => acc + p / z * vs[j][hd][i], 0));
    }
  }
  const out = new Float64Array(n * H);
  for (let t = 0; t < n; t++) {
    out.set(lin(a.o, att.slice(t * nh * dv, (t + 1) * nh * dv), H, nh * dv), t * H);
  }
  return out;
}

for (const [qLoraRank, pairing] of [[6, "interleaved"], [null, "half"]] as const) {
  Deno.test(`mla: absorbed latent-cache attention equals the expanded form (q LoRA ${qLoraRank}, ${pairing} RoPE)`, () => {
    const rand = rng(qLoraRank ?? 3);
    const H = 12, n = 5;
    const spec: MlaAttentionSpec = {
      kind: "mla",
      numHeads: 3,
      qLoraRank,
      kvLoraRank: 7,
      qkNopeHeadDim: 4,
      qkRopeHeadDim: 6,
      vHeadDim: 5,
      latentNorm: { kind: "rms", eps: 1e-6, bias: false },
      scale: 0.3,
      position: { kind: "rope", theta: 100, rotaryDim: 6, pairing, scaling: { kind: "none" } },
    };
    const m = (len: number) => Float64Array.from({ length: len }, () => 2 * rand() - 1);
    const qk = spec.qkNopeHeadDim + spec.qkRopeHeadDim;
    const a: ReferenceMla = {
      kind: "mla",
      spec,
      q: qLoraRank === null ? m(3 * qk * H) : null,
      qA: qLoraRank === null ? null : m(qLoraRank * H),
      qANorm: qLoraRank === null ? null : m(qLoraRank),
      qB: qLoraRank === null ? null : m(3 * qk * qLoraRank),
      kvA: m((7 + 6) * H),
      kvANorm: m(7),
      kvB: m(3 * (4 + 5) * 7),
      o: m(H * 3 * 5),
      rope: prepareRope(spec.position, 6),
      cacheSlot: 0,
    };
    const h = m(n * H);
    const want = expanded(a, h, n, H);
    const cache = new Float64Array(n * mlaCacheWidth(spec));
    const got = new Float64Array(n * H);
    mlaBlock(got.subarray(0, 2 * H), h.subarray(0, 2 * H), 2, a, cache, 0);
    for (let t = 2; t < n; t++) {
      mlaBlock(got.subarray(t * H, (t + 1) * H), h.subarray(t * H, (t + 1) * H), 1, a, cache, t);
    }
    let err = 0;
    want.forEach((w, i) => err = Math.max(err, Math.abs(w - got[i])));
    assert.ok(err < 1e-12, `max |absorbed − expanded| ${err}`);
    assert.ok(Math.max(...want.map(Math.abs)) > 0.1, "non-trivial output");
  });
}
