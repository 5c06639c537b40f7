/**
 * Causal grouped-query attention over the KV cache: the RoPE table, the fused prologue that
 * rotates q and k and stores k and v in the caches, the decode kernel (one token per workgroup
 * row, keys strided over lanes) and the query-tiled prefill kernel.
 *
 * Layouts: q rows are `qStride` floats apart per token, head h at h·headDim; the caches are
 * [position, numKvHeads · headDim]; query head h reads KV head h / (numHeads / numKvHeads).
 * Multi-slot engines (key `slots`, kernels/slots.ts) give each slot its own region of cache rows
 * and take each token's slot and position from the Step uniform (one sequence per forward) or
 * from per-token rows (the decode kernel and the prologue: one token of each of several slots).
 *
 * @module
 */

import type { RopeFrequencies } from "../../schemas/rope_frequencies.ts";
import { f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";
import { kvRowBase, slotDecls, slotLabel, type SlotLayout, tokenPosition } from "./slots.ts";

/** The head geometry of a GQA attention block. */
export interface AttentionShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
}

/** An attention kernel's parameters. */
export interface AttentionKey extends AttentionShape {
  /** Floats between consecutive tokens' q rows: numHeads·headDim, or a packed [q | k | v] row. */
  qStride: number;
  /** Multiplier of q·k before the softmax (1/√headDim by default in most models). */
  scale: number;
  /**
   * gpt-oss sinks: each head's softmax also gets the logit sinks[h] (binding "sinks", [nh]), whose
   * probability is dropped.
   */
  sinks?: boolean;
  /** Sliding window: the query at position p sees keys j > p − window only. */
  window?: number | null;
  /** Multi-slot engines: where each token's slot and position are (kernels/slots.ts). */
  slots?: SlotLayout;
}

/**
 * RoPE table over `rotaryDim` rotated dims: table[pos, i] = (cos, sin)(pos · invFreq[i]) for
 * i < rotaryDim/2, with invFreq[i] = 1 / θ^(2i/rotaryDim) rounded to f32 step by step as
 * transformers computes it; angles and cos/sin in float64, stored as f32 pairs. A scaled RoPE
 * passes its frequencies (schemas/rope_frequencies.ts): those, and cos/sin × their mscale.
 */
export function ropeTable(
  rotaryDim: number,
  theta: number,
  positions: number,
  scaled?: RopeFrequencies,
): Float32Array {
  const half = rotaryDim / 2;
  const table = new Float32Array(positions * half * 2);
  const invFreq = scaled ? [...scaled.invFreq] : Array.from(
    { length: half },
    (_, i) => Math.fround(1 / Math.fround(Math.pow(theta, Math.fround((2 * i) / rotaryDim)))),
  );
  const mscale = scaled ? scaled.mscale : 1;
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * invFreq[i];
      table[(p * half + i) * 2] = Math.cos(angle) * mscale;
      table[(p * half + i) * 2 + 1] = Math.sin(angle) * mscale;
    }
  }
  return table;
}

/** Options of {@link ropeStoreSource}. */
export interface RopeStoreKey extends AttentionShape {
  /** q, k and v are one buffer "qkv" of rows [q | k | v] (a stacked projection's output). */
  packed: boolean;
  /** Clamp q, k and v to [−clip, clip] before the rotation (OLMoE clip_qkv); null: no clamp. */
  clip: number | null;
  /** Dims rotated per head (the first ones; default the whole head; the rest pass through). */
  rotaryDim?: number;
  /** Rotated pairs (i, i + rotaryDim/2) ("half", default) or (2i, 2i + 1) ("interleaved"). */
  pairing?: "half" | "interleaved";
  /** Multi-slot engines: where each token's slot and position are (kernels/slots.ts). */
  slots?: SlotLayout;
}

/** Invocations of {@link ropeStoreSource} per token: q pairs, k pairs, v values. */
export function ropeStoreWidth(s: AttentionShape): number {
  return s.numHeads * s.headDim / 2 + s.numKvHeads * s.headDim / 2 + s.numKvHeads * s.headDim;
}

/**
 * Fused attention prologue: RoPE of q in place (half-split or interleaved pairs, over the first
 * `rotaryDim` dims of each head), RoPE of k written to the K cache
 * row pos0 + t, and v copied to the V cache row pos0 + t, in one dispatch (CPU adapters pay a
 * fixed cost per dispatch), each value first clamped when `clip` is set. Reads the
 * {@link ropeTable} of `rotaryDim` as `rope`. Dispatch ops.ts elementGroups(ropeStoreWidth, T).
 */
export function ropeStoreSource(key: RopeStoreKey): KernelSource {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd, packed } = key;
  const half = hd / 2;
  const rot = key.rotaryDim ?? hd;
  const interleaved = key.pairing === "interleaved";
  if (rot % 2 !== 0 || rot > hd || rot <= 0) throw new RangeError(`rope over ${rot} of ${hd} dims`);
  const qPairs = nh * half, kPairs = nkv * half, vWidth = nkv * hd;
  const row = (nh + 2 * nkv) * hd;
  const decls: [string, string, string?][] = packed
    ? [["step", "Step", "uniform"], ["qkv", "array<f32>", "storage, read_write"]]
    : [
      ["step", "Step", "uniform"],
      ["q", "array<f32>", "storage, read_write"],
      ["k", "array<f32>"],
      ["v", "array<f32>"],
    ];
  decls.push(
    ["rope", "array<vec2<f32>>"],
    ["kCache", "array<f32>", "storage, read_write"],
    ["vCache", "array<f32>", "storage, read_write"],
    ...slotDecls(key.slots),
  );
  // The KV-cache row of the token (its slot's rows start at kvb).
  const cacheRow = key.slots ? "(kvb + pos)" : "pos";
  // Where token t's q, k and v rows start.
  const qRow = packed ? `t * ${u(row)}` : `t * ${u(nh * hd)}`;
  const kRow = packed ? `t * ${u(row)} + ${u(nh * hd)}` : `t * ${u(nkv * hd)}`;
  const vRow = packed ? `t * ${u(row)} + ${u((nh + nkv) * hd)}` : `t * ${u(vWidth)}`;
  const Q = packed ? "qkv" : "q", K = packed ? "qkv" : "k", V = packed ? "qkv" : "v";
  const load = (expr: string) =>
    key.clip === null ? expr : `clamp(${expr}, ${f(-key.clip)}, ${f(key.clip)})`;
  return kernelSource(
    `rope_store.${nh}.${nkv}.${hd}${packed ? ".packed" : ""}${
      key.clip === null ? "" : `.clip${key.clip}`
    }${rot === hd ? "" : `.rot${rot}`}${interleaved ? ".il" : ""}${slotLabel(key.slots)}`,
    decls,
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let t = id.y;
  if (id.x >= ${u(qPairs + kPairs + vWidth)} || t >= step.T) { return; }
  let pos = ${tokenPosition(key.slots, "t")};${
      key.slots
        ? `
  let kvb = ${kvRowBase(key.slots, "t")};`
        : ""
    }
  if (id.x >= ${u(qPairs + kPairs)}) {
    let j = id.x - ${u(qPairs + kPairs)};
    vCache[${cacheRow} * ${u(vWidth)} + j] = ${load(`${V}[${vRow} + j]`)};
    return;
  }
  let isK = id.x >= ${u(qPairs)};
  let j = select(id.x, id.x - ${u(qPairs)}, isK);
  let h = j / ${u(half)};
  let i = j % ${u(half)};
  // Pair i of the head: dims (d1, d2) turned by position · invFreq[i] while i < rotaryDim/2,
  // else the pass-through dims (2i, 2i + 1) (identity rotation).
  var cosSin = vec2<f32>(1.0, 0.0);
  var d1 = 2u * i;
  var d2 = 2u * i + 1u;
  if (i < ${u(rot / 2)}) {
    cosSin = rope[pos * ${u(rot / 2)} + i];${
      interleaved ? "" : `
    d1 = i;
    d2 = i + ${u(rot / 2)};`
    }
  }
  if (isK) {
    let a = ${kRow} + h * ${u(hd)};
    let o = ${cacheRow} * ${u(nkv * hd)} + h * ${u(hd)};
    let x1 = ${load(`${K}[a + d1]`)};
    let x2 = ${load(`${K}[a + d2]`)};
    kCache[o + d1] = x1 * cosSin.x - x2 * cosSin.y;
    kCache[o + d2] = x2 * cosSin.x + x1 * cosSin.y;
  } else {
    let a = ${qRow} + h * ${u(hd)};
    let x1 = ${load(`${Q}[a + d1]`)};
    let x2 = ${load(`${Q}[a + d2]`)};
    ${Q}[a + d1] = x1 * cosSin.x - x2 * cosSin.y;
    ${Q}[a + d2] = x2 * cosSin.x + x1 * cosSin.y;
  }
}`,
  );
}

/** Label suffix of the parameters that differ from the defaults. */
function attentionLabel(key: AttentionKey): string {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = key;
  const stride = key.qStride !== nh * hd ? `.q${key.qStride}` : "";
  const scale = Math.abs(key.scale * Math.sqrt(hd) - 1) > 1e-12 ? `.s${key.scale}` : "";
  const extras = `${key.sinks ? ".sinks" : ""}${key.window ? `.w${key.window}` : ""}`;
  return `${nh}.${nkv}.${hd}${stride}${scale}${extras}${slotLabel(key.slots)}`;
}

/** The attention kernels' bindings: q, the caches, out, and the sinks when the key has them. */
function attentionDecls(key: AttentionKey, type: string): [string, string, string?][] {
  const decls: [string, string, string?][] = [
    ["step", "Step", "uniform"],
    ["q", `array<${type}>`],
    ["kCache", `array<${type}>`],
    ["vCache", `array<${type}>`],
    ["out", `array<${type}>`, "storage, read_write"],
  ];
  if (key.sinks) decls.push(["sinks", "array<f32>"]);
  decls.push(...slotDecls(key.slots));
  return decls;
}

/** WGSL: the first key position the query at `pos` sees (0 without a window). */
function firstKey(key: AttentionKey, pos: string): string {
  const w = key.window;
  return w ? `select(0u, ${pos} + 1u - ${u(w)}, ${pos} + 1u > ${u(w)})` : "0u";
}

/** Threads per attention workgroup for a head size (bounded by 16 KB of workgroup memory). */
export function attentionThreads(headDim: number): number {
  let n = 32;
  while (n > 1 && n * (headDim + 2) * 4 > 16000) n >>= 1;
  return n;
}

/**
 * Causal GQA attention over the KV cache: token t (position pos0 + t) of head h attends cache
 * rows 0..pos0 + t (the last `window` of them with a window), softmax(scale · q·k) · v, the
 * softmax's denominator also summing exp(sinks[h]) with sinks. Each thread keeps an online
 * softmax over a strided subset of positions; the partials merge in workgroup memory. Dispatch
 * (numHeads, T).
 */
export function attentionSource(key: AttentionKey): KernelSource {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = key;
  const n = attentionThreads(hd);
  return kernelSource(
    `attention.${attentionLabel(key)}`,
    attentionDecls(key, "f32"),
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
  let pos = ${tokenPosition(key.slots, "t")};
  let kvBase = (h / ${u(nh / nkv)}) * HD;${
      key.slots
        ? `
  let kvb = ${kvRowBase(key.slots, "t")};`
        : ""
    }
  let qb = t * ${u(key.qStride)} + h * HD;
  let ob = t * ${u(nh * hd)} + h * HD;
  var qv: array<f32, ${hd}>;
  for (var d = 0u; d < HD; d++) { qv[d] = q[qb + d] * ${f(key.scale)}; }
  var m = -3.0e38;
  var s = 0.0;
  var acc: array<f32, ${hd}>;
  for (var j = ${firstKey(key, "pos")} + li; j <= pos; j += THREADS) {
    let kb = ${key.slots ? "(kvb + j)" : "j"} * ${u(nkv * hd)} + kvBase;
    var score = 0.0;
    for (var d = 0u; d < HD; d++) { score += qv[d] * kCache[kb + d]; }
${ONLINE_SOFTMAX_STEP}
  }
${laneMerge(key.sinks ? "sinks[h]" : "-3.0e38", key.sinks ? "exp(sinks[h] - M)" : "0.0")}
  for (var d = li; d < HD; d += THREADS) {
    var o = 0.0;
    for (var i = 0u; i < THREADS; i++) { o += laneAcc[i * HD + d] * exp(laneMax[i] - M); }
    out[ob + d] = o / S;
  }
}`,
  );
}

/**
 * WGSL for the prefill kernel's pair c (head h0 + r): with sinks, fold exp(sinks[h]) into the
 * running sum s{c} and rescale to the new max (keep{c} multiplies the accumulators); else 1.
 */
function sinkMerge(key: AttentionKey, c: number, r: number): string {
  if (!key.sinks) return `    let keep${c} = 1.0;`;
  return `    let sink${c} = sinks[h0 + ${u(r)}];
    let mx${c} = max(m${c}, sink${c});
    let keep${c} = exp(m${c} - mx${c});
    s${c} = s${c} * keep${c} + exp(sink${c} - mx${c});`;
}

/** How {@link attentionPrefillSource} tiles the work: query positions × heads per invocation. */
export interface PrefillTile {
  /** Query positions per invocation. */
  qt: number;
  /** Heads of one KV group per invocation (divides numHeads / numKvHeads). */
  rh: number;
}

/**
 * The default prefill tile: about 256 / headDim (query, head) pairs per invocation, all heads of
 * a KV group when they fit. More pairs load less but JIT-compile much longer on lavapipe (hd 32,
 * R 2: 8 pairs ≈ 2 s, 16 pairs ≈ 6 s) for little gain (5.8 → 5.0 ms per layer at T = 128).
 */
export function prefillTile(s: AttentionShape): PrefillTile {
  const R = s.numHeads / s.numKvHeads;
  const pairs = Math.max(1, Math.floor(256 / s.headDim));
  let rh = Math.min(R, pairs);
  while (R % rh !== 0) rh--;
  return { qt: Math.max(1, Math.floor(pairs / rh)), rh };
}

/** Workgroups of {@link attentionPrefillSource} for T tokens. */
export function prefillGroups(
  s: AttentionShape,
  tile: PrefillTile,
  T: number,
): [number, number, number] {
  return [s.numKvHeads * (s.numHeads / s.numKvHeads / tile.rh), Math.ceil(T / tile.qt), 1];
}

/**
 * Causal GQA attention for prefill, same contract as {@link attentionSource}. CPU adapters pay
 * per lane for every storage load, so the work is shaped to load each key/value element once for
 * many queries: one invocation owns `rh` heads of one KV group and a tile of `qt` consecutive
 * query positions, walks cache rows 0..pos0 + t_last once, and keeps an online softmax per (query,
 * head) pair, masking row j for query t unless j ≤ pos0 + t. Everything is unrolled into named
 * variables (no private arrays). Dispatch {@link prefillGroups}.
 */
export function attentionPrefillSource(
  key: AttentionKey,
  tile: PrefillTile = prefillTile(key),
): KernelSource {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd, qStride } = key;
  const R = nh / nkv, { qt, rh } = tile;
  if (key.slots?.source === "rows") {
    throw new RangeError("attentionPrefillSource: one sequence per forward (slots from the step)");
  }
  if (!Number.isInteger(R) || R % rh !== 0 || qt < 1) {
    throw new RangeError(
      `attentionPrefillSource: bad tile ${JSON.stringify(tile)} for ${nh}/${nkv}`,
    );
  }
  // vec4 path when every row start is 16-byte aligned.
  const v4 = hd % 4 === 0 && qStride % 4 === 0;
  const W = v4 ? 4 : 1, n = hd / W;
  const T = v4 ? "vec4<f32>" : "f32";
  const zero = v4 ? "vec4<f32>(0.0)" : "0.0";
  const ds = Array.from({ length: n }, (_, d) => d);
  const pairs: [number, number][] = [];
  for (let i = 0; i < qt; i++) for (let r = 0; r < rh; r++) pairs.push([i, r]);
  const each = (fn: (i: number, r: number, c: number) => string) =>
    pairs.map(([i, r], c) => fn(i, r, c)).join("\n");
  const perD = (fn: (d: number) => string, sep = "\n") => ds.map(fn).join(sep);
  const dot = (c: number) =>
    perD((d) => v4 ? `dot(q${c}_${d}, k${d})` : `q${c}_${d} * k${d}`, " + ");
  return kernelSource(
    `attention_prefill.${attentionLabel(key)}.t${qt}.r${rh}`,
    attentionDecls(key, T),
    `
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3<u32>) {
  let g = wg.x / ${u(R / rh)};
  let h0 = wg.x * ${u(rh)};
  let t0 = wg.y * ${u(qt)};
  if (t0 >= step.T) { return; }
  let tLast = min(t0 + ${u(qt - 1)}, step.T - 1u);
  let jEnd = step.pos0 + tLast;
${
      each((i, r, c) => {
        const qb = `min(t0 + ${u(i)}, tLast) * ${u(qStride / W)} + (h0 + ${u(r)}) * ${u(n)}`;
        return `  let qb${c} = ${qb};
${perD((d) => `  let q${c}_${d} = q[qb${c} + ${u(d)}] * ${f(key.scale)};`)}
  var m${c} = -3.0e38;
  var s${c} = 0.0;
${perD((d) => `  var a${c}_${d} = ${zero};`)}`;
      })
    }
  for (var j = ${firstKey(key, "(step.pos0 + t0)")}; j <= jEnd; j++) {
    let kb = ${key.slots ? `(${kvRowBase(key.slots, "0u")} + j)` : "j"} * ${u(nkv * n)} + g * ${
      u(n)
    };
${perD((d) => `    let k${d} = kCache[kb + ${u(d)}];`)}
${perD((d) => `    let v${d} = vCache[kb + ${u(d)}];`)}
${
      each((i, _r, c) =>
        `    {
      let score = ${dot(c)};
      let ok = j <= step.pos0 + t0 + ${u(i)}${
          key.window ? ` && j + ${u(key.window)} > step.pos0 + t0 + ${u(i)}` : ""
        };
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
      each((i, r, c) =>
        `  if (t0 + ${u(i)} < step.T) {
    let ob = (t0 + ${u(i)}) * ${u(nh * n)} + (h0 + ${u(r)}) * ${u(n)};
${sinkMerge(key, c, r)}
${perD((d) => `    out[ob + ${u(d)}] = a${c}_${d} * keep${c} / s${c};`)}
  }`
      )
    }
}`,
  );
}

/**
 * WGSL, one query over a lane's keys: folds `score` (of the key whose values start at
 * `vCache[kb]`) into the lane's running max `m`, sum `s` and value accumulator `acc` (online
 * softmax). Shared by every one-query attention kernel.
 */
export const ONLINE_SOFTMAX_STEP = `    let mNew = max(m, score);
    let corr = exp(m - mNew);
    let p = exp(score - mNew);
    s = s * corr + p;
    for (var d = 0u; d < HD; d++) { acc[d] = acc[d] * corr + p * vCache[kb + d]; }
    m = mNew;`;

/**
 * WGSL: publishes each lane's (m, s, acc) to workgroup memory and merges them into the global max
 * `M` and sum `S`, starting from `m0` and `s0` (a sink's logit, or nothing).
 */
export function laneMerge(m0: string, s0: string): string {
  return `  laneMax[li] = m;
  laneSum[li] = s;
  for (var d = 0u; d < HD; d++) { laneAcc[li * HD + d] = acc[d]; }
  workgroupBarrier();
  var M = ${m0};
  for (var i = 0u; i < THREADS; i++) { M = max(M, laneMax[i]); }
  var S = ${s0};
  for (var i = 0u; i < THREADS; i++) { S += laneSum[i] * exp(laneMax[i] - M); }`;
}
