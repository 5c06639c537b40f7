/**
 * Multi-head latent attention (DeepSeek-V2/V3) over a latent KV cache: per position and layer the
 * cache holds only the normalised latent c (kvLoraRank values) and the rotated shared RoPE key
 * (qkRopeHeadDim values), not per-head keys and values. kv_b ([nh·(nope + v), R], in its storage
 * format, read through the shared random-access decode `weightAt`) is absorbed
 * into both sides as DeepSeek's inference and llama.cpp do:
 *
 *   store:    c = RMSNorm(kv_a[:R]) · w, k_rope = RoPE(kv_a[R:]) → cache row pos; q_rope ← RoPE
 *   absorb q: q_lat[h] = W_k,hᵀ q_nope[h]                                  [nh, R]
 *   attend:   score(p) = scale · (q_lat[h] · c_p + q_rope[h] · k_rope_p); o_lat[h] = Σ softmax · c_p
 *   absorb o: out[h] = W_v,h o_lat[h]                                       [nh, v]
 *
 * with W_k,h = kv_b rows h·(nope+v) .. +nope and W_v,h the next v rows. The reference is
 * compiler/reference/mla.ts.
 *
 * @module
 */

import { f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";
import { kvRowBase, slotDecls, slotLabel, type SlotLayout, tokenPosition } from "./slots.ts";
import { formatName, weightAtFunction, weightDecls, type WeightFormat } from "./weights.ts";

/** The geometry of one MLA block. */
export interface MlaKey {
  numHeads: number;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
}

/**
 * Where the cache-reading kernels find each token's slot and position: absent, one sequence at
 * cache rows 0..; otherwise slot s owns rows s·context .. s·context + context − 1 and token t's
 * slot and position come from the Step uniform ("step") or from binding `rows` ("rows"), as for
 * the GQA caches (kernels/slots.ts).
 */
export interface MlaSlots {
  slots?: SlotLayout;
}

/** Lanes of the per-token and per-head MLA workgroups. */
const LW = 64;

function label(k: MlaKey): string {
  return `${k.numHeads}.${k.kvLoraRank}.${k.qkNopeHeadDim}.${k.qkRopeHeadDim}.${k.vHeadDim}`;
}

/** A tree reduction (max: op 0, sum: op 1) of `red` over the LW lanes into red[0]. */
const REDUCE = `
var<workgroup> red: array<f32, ${LW}>;
fn reduceLanes(li: u32, op: u32) {
  for (var s = ${u(LW / 2)}; s > 0u; s >>= 1u) {
    workgroupBarrier();
    if (li < s) { red[li] = select(max(red[li], red[li + s]), red[li] + red[li + s], op == 1u); }
  }
  workgroupBarrier();
}`;

/**
 * The latent store: for token t at position pos (pos0 + t, or its `rows` entry in slot mode),
 * cache[pos] of its slot = [RMSNorm(kva[t, :R]) · latentNorm | RoPE(kva[t, R:])] and q's RoPE
 * parts rotated in place. `rope` is the table of rotary width qkRopeHeadDim. Dispatch (T, 1, 1).
 */
export function mlaStoreSource(
  key: MlaKey & MlaSlots & { eps: number; pairing: "half" | "interleaved" },
): KernelSource {
  const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, qkRopeHeadDim: dr } = key;
  const W = R + dr, qk = dn + dr, half = dr / 2;
  const pair = key.pairing === "half"
    ? `let d1 = i; let d2 = i + ${u(half)};`
    : `let d1 = 2u * i; let d2 = 2u * i + 1u;`;
  return kernelSource(
    `mla_store.${label(key)}.${key.pairing}${slotLabel(key.slots)}`,
    [
      ["step", "Step", "uniform"],
      ["kva", "array<f32>"],
      ["latentNorm", "array<f32>"],
      ["rope", "array<vec2<f32>>"],
      ["q", "array<f32>", "storage, read_write"],
      ["cache", "array<f32>", "storage, read_write"],
      ...slotDecls(key.slots),
    ],
    `${REDUCE}
@compute @workgroup_size(${LW})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let t = wid.x;
  if (t >= step.T) { return; }
  let pos = ${tokenPosition(key.slots, "t")};
  // The token's cache row: its slot's first row + its position.
  let row = ${kvRowBase(key.slots, "t")} + pos;
  var ss = 0.0;
  for (var j = li; j < ${u(R)}; j += ${u(LW)}) { let x = kva[t * ${u(W)} + j]; ss += x * x; }
  red[li] = ss;
  reduceLanes(li, 1u);
  let inv = inverseSqrt(red[0] / ${f(R)} + ${f(key.eps)});
  for (var j = li; j < ${u(R)}; j += ${u(LW)}) {
    cache[row * ${u(W)} + j] = kva[t * ${u(W)} + j] * inv * latentNorm[j];
  }
  for (var i = li; i < ${u(half)}; i += ${u(LW)}) {
    ${pair}
    let cs = rope[pos * ${u(half)} + i];
    let x1 = kva[t * ${u(W)} + ${u(R)} + d1];
    let x2 = kva[t * ${u(W)} + ${u(R)} + d2];
    cache[row * ${u(W)} + ${u(R)} + d1] = x1 * cs.x - x2 * cs.y;
    cache[row * ${u(W)} + ${u(R)} + d2] = x2 * cs.x + x1 * cs.y;
  }
  for (var p = li; p < ${u(nh * half)}; p += ${u(LW)}) {
    let h = p / ${u(half)};
    let i = p % ${u(half)};
    ${pair}
    let cs = rope[pos * ${u(half)} + i];
    let base = t * ${u(nh * qk)} + h * ${u(qk)} + ${u(dn)};
    let x1 = q[base + d1];
    let x2 = q[base + d2];
    q[base + d1] = x1 * cs.x - x2 * cs.y;
    q[base + d2] = x2 * cs.x + x1 * cs.y;
  }
}`,
  );
}

/**
 * q_lat[t, h, j] = Σ_i kvB[h·(nope+v) + i, j] · q[t, h, i] (i < nope), kvB bound as a weight set
 * in `format`. Dispatch elementGroups(nh·R, T).
 */
export function mlaAbsorbQSource(key: MlaKey, format: WeightFormat): KernelSource {
  const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, qkRopeHeadDim: dr, vHeadDim: dv } = key;
  return kernelSource(
    `mla_absorb_q.${label(key)}.${formatName(format)}`,
    [
      ["step", "Step", "uniform"],
      ["q", "array<f32>"],
      ...weightDecls(format, "array<f32>"),
      ["qLat", "array<f32>", "storage, read_write"],
    ],
    `${weightAtFunction(format, R)}
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let t = id.y;
  if (id.x >= ${u(nh * R)} || t >= step.T) { return; }
  let h = id.x / ${u(R)};
  let j = id.x % ${u(R)};
  let qBase = t * ${u(nh * (dn + dr))} + h * ${u(dn + dr)};
  let row = h * ${u(dn + dv)};
  var s = 0.0;
  for (var i = 0u; i < ${u(dn)}; i++) { s += weightAt(row + i, j) * q[qBase + i]; }
  qLat[t * ${u(nh * R)} + id.x] = s;
}`,
  );
}

/**
 * Attention of token t (position pos: pos0 + t, or its `rows` entry in slot mode), head h over
 * its slot's cached positions 0..pos: scores scale · (q_lat · c_p + q_rope · k_rope_p), softmax,
 * o_lat = Σ p · c_p, in tiles of LW keys with a running max (one key per lane per tile).
 * Dispatch (nh, T, 1).
 */
export function mlaAttentionSource(key: MlaKey & MlaSlots & { scale: number }): KernelSource {
  const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, qkRopeHeadDim: dr } = key;
  const W = R + dr, qk = dn + dr, perLane = Math.ceil(R / LW);
  return kernelSource(
    `mla_attention.${label(key)}.${key.scale}${slotLabel(key.slots)}`,
    [
      ["step", "Step", "uniform"],
      ["qLat", "array<f32>"],
      ["q", "array<f32>"],
      ["cache", "array<f32>"],
      ["oLat", "array<f32>", "storage, read_write"],
      ...slotDecls(key.slots),
    ],
    `${REDUCE}
var<workgroup> query: array<f32, ${W}>;
var<workgroup> weights: array<f32, ${LW}>;
@compute @workgroup_size(${LW})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let h = wid.x;
  let t = wid.y;
  if (t >= step.T) { return; }
  let n = ${tokenPosition(key.slots, "t")} + 1u;
  // The slot's first cache row (0 for one sequence).
  let base = ${kvRowBase(key.slots, "t")};
  for (var j = li; j < ${u(R)}; j += ${u(LW)}) { query[j] = qLat[(t * ${u(nh)} + h) * ${
      u(R)
    } + j]; }
  for (var i = li; i < ${u(dr)}; i += ${u(LW)}) {
    query[${u(R)} + i] = q[t * ${u(nh * qk)} + h * ${u(qk)} + ${u(dn)} + i];
  }
  var acc: array<f32, ${perLane}>;
  for (var r = 0u; r < ${u(perLane)}; r++) { acc[r] = 0.0; }
  var m = -3.4e38;
  var z = 0.0;
  for (var tile = 0u; tile < n; tile += ${u(LW)}) {
    workgroupBarrier();
    let p = tile + li;
    var s = -3.4e38;
    if (p < n) {
      var d = 0.0;
      for (var j = 0u; j < ${u(W)}; j++) { d += query[j] * cache[(base + p) * ${u(W)} + j]; }
      s = ${f(key.scale)} * d;
    }
    red[li] = s;
    reduceLanes(li, 0u);
    let mNew = max(m, red[0]);
    let alpha = exp(m - mNew);
    workgroupBarrier();
    let e = select(0.0, exp(s - mNew), p < n);
    weights[li] = e;
    red[li] = e;
    reduceLanes(li, 1u);
    z = z * alpha + red[0];
    let count = min(${u(LW)}, n - tile);
    for (var r = 0u; r < ${u(perLane)}; r++) {
      let j = li + r * ${u(LW)};
      if (j < ${u(R)}) {
        var v = acc[r] * alpha;
        for (var k = 0u; k < count; k++) {
          v += weights[k] * cache[(base + tile + k) * ${u(W)} + j];
        }
        acc[r] = v;
      }
    }
    m = mNew;
  }
  for (var r = 0u; r < ${u(perLane)}; r++) {
    let j = li + r * ${u(LW)};
    if (j < ${u(R)}) { oLat[(t * ${u(nh)} + h) * ${u(R)} + j] = acc[r] / z; }
  }
}`,
  );
}

/**
 * out[t, h, i] = Σ_j kvB[h·(nope+v) + nope + i, j] · o_lat[t, h, j], kvB bound as a weight set in
 * `format`. Dispatch elementGroups(nh·v, T).
 */
export function mlaAbsorbOSource(key: MlaKey, format: WeightFormat): KernelSource {
  const { numHeads: nh, kvLoraRank: R, qkNopeHeadDim: dn, vHeadDim: dv } = key;
  return kernelSource(
    `mla_absorb_o.${label(key)}.${formatName(format)}`,
    [
      ["step", "Step", "uniform"],
      ["oLat", "array<f32>"],
      ...weightDecls(format, "array<f32>"),
      ["out", "array<f32>", "storage, read_write"],
    ],
    `${weightAtFunction(format, R)}
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let t = id.y;
  if (id.x >= ${u(nh * dv)} || t >= step.T) { return; }
  let h = id.x / ${u(dv)};
  let i = id.x % ${u(dv)};
  let row = h * ${u(dn + dv)} + ${u(dn)} + i;
  let oBase = (t * ${u(nh)} + h) * ${u(R)};
  var s = 0.0;
  for (var j = 0u; j < ${u(R)}; j++) { s += weightAt(row, j) * oLat[oBase + j]; }
  out[t * ${u(nh * dv)} + id.x] = s;
}`,
  );
}
