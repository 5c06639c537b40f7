/**
 * The forward pass's non-matmul kernels, each a WGSL generator with its shape baked in:
 * embedding lookup, RMSNorm, RoPE, KV-cache stores, causal GQA attention, MoE routing (softmax,
 * top-k, renormalisation), the SwiGLU activation, and the MoE combine (+ shared expert); sampling is
 * runtime/kernels/sample.ts. Activations are f32 row-major [tokens, width]; `step.T` tokens are in flight and the
 * first sits at sequence position `step.pos0`.
 *
 * @module
 */

import { groupsPerRow, wordsPerRow } from "../../schemas/packing.ts";
import { BindingList, f, type KernelSource, STEP_WGSL, u } from "./kernel.ts";
import type { WeightFormat } from "./matmul.ts";

/** Threads per workgroup of the element-wise kernels. */
export const EW = 64;

function kernel(label: string, decls: [string, string, string?][], body: string): KernelSource {
  const list = new BindingList();
  for (const [name, type, space] of decls) list.add(name, type, space);
  return { label, code: `${STEP_WGSL}\n${list.wgsl}\n${body}`, bindings: list.names };
}

/**
 * WGSL `fn wAt(r: u32, c: u32) -> f32` reading element (r, c) of a [rows, cols] matrix stored as
 * {@link uploadWeightSet} lays it out (one matrix), plus the bindings it needs.
 */
function elementReader(
  format: WeightFormat,
  cols: number,
): { decls: [string, string][]; fn: string } {
  switch (format.kind) {
    case "f32":
      return {
        decls: [["W", "array<vec4<f32>>"]],
        fn: `fn wAt(r: u32, c: u32) -> f32 { return W[r * ${
          u(Math.ceil(cols / 4))
        } + c / 4u][c % 4u]; }`,
      };
    case "f16":
      return {
        decls: [["W", "array<u32>"]],
        fn: `fn wAt(r: u32, c: u32) -> f32 {
  return unpack2x16float(W[r * ${u(Math.ceil(cols / 2))} + c / 2u])[c % 2u];
}`,
      };
    case "bf16":
      return {
        decls: [["W", "array<u32>"]],
        fn: `fn wAt(r: u32, c: u32) -> f32 {
  let p = W[r * ${u(Math.ceil(cols / 2))} + c / 2u];
  return bitcast<f32>(select(p << 16u, p & 0xffff0000u, (c % 2u) == 1u));
}`,
      };
    case "q": {
      const st = format.scaleType === "f16" ? "array<u32>" : "array<f32>";
      const param = (a: string) =>
        format.scaleType === "f16" ? `unpack2x16float(${a}[g >> 1u])[g & 1u]` : `${a}[g]`;
      return {
        decls: [["W", "array<u32>"], ["S", st], ["Z", st]],
        fn: `fn wAt(r: u32, c: u32) -> f32 {
  let bit = (c / 32u) * ${u(format.bits * 32)} + (c % 32u) * ${u(format.bits)};
  let w = r * ${u(wordsPerRow(cols, format.bits))} + bit / 32u;
  let sh = bit % 32u;
  var v = W[w] >> sh;
  if (sh + ${u(format.bits)} > 32u) { v |= W[w + 1u] << (32u - sh); }
  let q = f32(v & ${u((1 << format.bits) - 1)});
  let g = r * ${u(groupsPerRow(cols, format.groupSize))} + c / ${u(format.groupSize)};
  return (q - ${param("Z")}) * ${param("S")};
}`,
      };
    }
  }
}

/**
 * Embedding lookup: out[t, c] = E[tok[pos0 + t], c], the ids read from the GPU token buffer.
 * Dispatch (ceil(H / 64), T).
 */
export function embedSource(format: WeightFormat, hidden: number): KernelSource {
  const r = elementReader(format, hidden);
  return kernel(
    `embed.${format.kind}.${hidden}`,
    [["step", "Step", "uniform"], ["tok", "array<u32>"], ...r.decls, [
      "out",
      "array<f32>",
      "storage, read_write",
    ]],
    `${r.fn}
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let c = id.x;
  let t = id.y;
  if (c >= ${u(hidden)} || t >= step.T) { return; }
  out[t * ${u(hidden)} + c] = wAt(tok[step.pos0 + t], c);
}`,
  );
}

/** Options of {@link rmsNormSource}. */
export interface RmsNormKey {
  /** Elements normalised together (hidden size, head_dim, or the full q/k width). */
  width: number;
  /** Normalised rows per token (1, or the head count for per-head q/k norms). */
  rowsPerToken: number;
  eps: number;
  /** Normalise x in place (binding "x" only) instead of writing "out". */
  inPlace: boolean;
  /** Only the last token: reads row T − 1, writes row 0 (final norm before last-position logits). */
  lastOnly?: boolean;
}

/** RMSNorm x · w / sqrt(mean(x²) + eps); one workgroup per row. Dispatch (rows, 1, 1). */
export function rmsNormSource(key: RmsNormKey): KernelSource {
  const { width, rowsPerToken } = key;
  const decls: [string, string, string?][] = key.inPlace
    ? [["step", "Step", "uniform"], ["x", "array<f32>", "storage, read_write"], ["w", "array<f32>"]]
    : [["step", "Step", "uniform"], ["x", "array<f32>"], ["w", "array<f32>"], [
      "out",
      "array<f32>",
      "storage, read_write",
    ]];
  const dst = key.inPlace ? "x" : "out";
  return kernel(
    `rmsnorm.${width}.${rowsPerToken}${key.inPlace ? ".inplace" : ""}${
      key.lastOnly ? ".last" : ""
    }`,
    decls,
    `
var<workgroup> red: array<f32, ${EW}>;
@compute @workgroup_size(${EW})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let n = ${key.lastOnly ? "1u" : `step.T * ${u(rowsPerToken)}`};
  if (wg.x >= n) { return; }
  let src = ${key.lastOnly ? `(step.T - 1u) * ${u(width)}` : `wg.x * ${u(width)}`};
  let dst = wg.x * ${u(width)};
  var s = 0.0;
  for (var i = li; i < ${u(width)}; i += ${u(EW)}) { let v = x[src + i]; s += v * v; }
  red[li] = s;
  workgroupBarrier();
  for (var h = ${u(EW / 2)}; h > 0u; h >>= 1u) {
    if (li < h) { red[li] += red[li + h]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(red[0] / ${f(width)} + ${f(key.eps)});
  for (var i = li; i < ${u(width)}; i += ${u(EW)}) {
    ${dst}[dst + i] = x[src + i] * inv * w[i % ${u(width)}];
  }
}`,
  );
}

/**
 * Fused attention prologue: rotate-half RoPE of q in place, RoPE of k written to the K cache row
 * pos0 + t, and v copied to the V cache row pos0 + t, in one dispatch (CPU adapters pay a
 * fixed cost per dispatch). Uses the table cs[pos, i] = (cos, sin) of pos · inv_freq[i].
 * `packed`: q, k and v are one buffer "qkv" of rows [q | k | v] (the stacked projection's
 * output) instead of three. Dispatch (ceil((nh·hd/2 + nkv·hd/2 + nkv·hd) / 64), T).
 */
export function ropeStoreSource(nh: number, nkv: number, hd: number, packed = false): KernelSource {
  const half = hd / 2;
  const nq = nh * half, nk = nkv * half, nv = nkv * hd;
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
    ["cs", "array<vec2<f32>>"],
    ["kc", "array<f32>", "storage, read_write"],
    ["vc", "array<f32>", "storage, read_write"],
  );
  // Base offsets of token t's q, k and v rows.
  const qb = packed ? `t * ${u(row)}` : `t * ${u(nh * hd)}`;
  const kb = packed ? `t * ${u(row)} + ${u(nh * hd)}` : `t * ${u(nkv * hd)}`;
  const vb = packed ? `t * ${u(row)} + ${u((nh + nkv) * hd)}` : `t * ${u(nv)}`;
  const Q = packed ? "qkv" : "q", Kb = packed ? "qkv" : "k", Vb = packed ? "qkv" : "v";
  return kernel(
    `rope_store.${nh}.${nkv}.${hd}${packed ? ".packed" : ""}`,
    decls,
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let t = id.y;
  if (id.x >= ${u(nq + nk + nv)} || t >= step.T) { return; }
  let pos = step.pos0 + t;
  if (id.x >= ${u(nq + nk)}) {
    let j = id.x - ${u(nq + nk)};
    vc[pos * ${u(nv)} + j] = ${Vb}[${vb} + j];
    return;
  }
  let isK = id.x >= ${u(nq)};
  let j = select(id.x, id.x - ${u(nq)}, isK);
  let h = j / ${u(half)};
  let i = j % ${u(half)};
  let c = cs[pos * ${u(half)} + i];
  if (isK) {
    let a = ${kb} + h * ${u(hd)} + i;
    let o = pos * ${u(nkv * hd)} + h * ${u(hd)} + i;
    let x1 = ${Kb}[a];
    let x2 = ${Kb}[a + ${u(half)}];
    kc[o] = x1 * c.x - x2 * c.y;
    kc[o + ${u(half)}] = x2 * c.x + x1 * c.y;
  } else {
    let a = ${qb} + h * ${u(hd)} + i;
    let x1 = ${Q}[a];
    let x2 = ${Q}[a + ${u(half)}];
    ${Q}[a] = x1 * c.x - x2 * c.y;
    ${Q}[a + ${u(half)}] = x2 * c.x + x1 * c.y;
  }
}`,
  );
}

/** Threads per attention workgroup for a head size (bounded by 16 KB of workgroup memory). */
export function attentionThreads(hd: number): number {
  let n = 32;
  while (n > 1 && n * (hd + 2) * 4 > 16000) n >>= 1;
  return n;
}

/**
 * Causal GQA attention over the KV cache: token t (position pos0 + t) of head h attends cache
 * rows 0..pos0 + t of kv head h / (nh / nkv), softmax(q·k / sqrt(hd)) · v; q rows are `qStride`
 * floats apart (the packed [q | k | v] rows of a stacked projection). Each thread keeps an
 * online softmax over a strided subset of positions; partials merge in workgroup memory.
 * Dispatch (nh, T).
 */
export function attentionSource(
  nh: number,
  nkv: number,
  hd: number,
  qStride = nh * hd,
): KernelSource {
  const n = attentionThreads(hd);
  return kernel(
    `attention.${nh}.${nkv}.${hd}${qStride !== nh * hd ? `.q${qStride}` : ""}`,
    [["step", "Step", "uniform"], ["q", "array<f32>"], ["kc", "array<f32>"], ["vc", "array<f32>"], [
      "out",
      "array<f32>",
      "storage, read_write",
    ]],
    `
const HD = ${u(hd)};
const N = ${u(n)};
var<workgroup> pm: array<f32, ${n}>;
var<workgroup> ps: array<f32, ${n}>;
var<workgroup> pacc: array<f32, ${n * hd}>;
@compute @workgroup_size(${n})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let h = wg.x;
  let t = wg.y;
  if (t >= step.T) { return; }
  let pos = step.pos0 + t;
  let kvBase = (h / ${u(nh / nkv)}) * HD;
  let qb = t * ${u(qStride)} + h * HD;
  let ob = t * ${u(nh * hd)} + h * HD;
  var qv: array<f32, ${hd}>;
  for (var d = 0u; d < HD; d++) { qv[d] = q[qb + d] * ${f(1 / Math.sqrt(hd))}; }
  var m = -3.0e38;
  var s = 0.0;
  var acc: array<f32, ${hd}>;
  for (var j = li; j <= pos; j += N) {
    let kb = j * ${u(nkv * hd)} + kvBase;
    var sc = 0.0;
    for (var d = 0u; d < HD; d++) { sc += qv[d] * kc[kb + d]; }
    let mn = max(m, sc);
    let corr = exp(m - mn);
    let p = exp(sc - mn);
    s = s * corr + p;
    for (var d = 0u; d < HD; d++) { acc[d] = acc[d] * corr + p * vc[kb + d]; }
    m = mn;
  }
  pm[li] = m;
  ps[li] = s;
  for (var d = 0u; d < HD; d++) { pacc[li * HD + d] = acc[d]; }
  workgroupBarrier();
  var M = -3.0e38;
  for (var i = 0u; i < N; i++) { M = max(M, pm[i]); }
  var S = 0.0;
  for (var i = 0u; i < N; i++) { S += ps[i] * exp(pm[i] - M); }
  for (var d = li; d < HD; d += N) {
    var o = 0.0;
    for (var i = 0u; i < N; i++) { o += pacc[i * HD + d] * exp(pm[i] - M); }
    out[ob + d] = o / S;
  }
}`,
  );
}

/** How {@link attentionPrefillSource} tiles the work: query positions × heads per invocation. */
export interface PrefillTile {
  /** Query positions per invocation. */
  qt: number;
  /** Heads of one KV group per invocation (divides nh / nkv). */
  rh: number;
}

/**
 * The default prefill tile: about 256 / hd (query, head) pairs per invocation, all heads of a KV
 * group when they fit. More pairs load less but JIT-compile much longer on lavapipe (hd 32, R 2:
 * 8 pairs ≈ 2 s, 16 pairs ≈ 6 s) for little gain (5.8 → 5.0 ms per layer at T = 128).
 */
export function prefillTile(nh: number, nkv: number, hd: number): PrefillTile {
  const R = nh / nkv;
  const pairs = Math.max(1, Math.floor(256 / hd));
  let rh = Math.min(R, pairs);
  while (R % rh !== 0) rh--;
  return { qt: Math.max(1, Math.floor(pairs / rh)), rh };
}

/** Workgroups of {@link attentionPrefillSource} for T tokens. */
export function prefillGroups(
  nh: number,
  nkv: number,
  tile: PrefillTile,
  T: number,
): [number, number, number] {
  return [nkv * (nh / nkv / tile.rh), Math.ceil(T / tile.qt), 1];
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
  nh: number,
  nkv: number,
  hd: number,
  qStride = nh * hd,
  tile: PrefillTile = prefillTile(nh, nkv, hd),
): KernelSource {
  const R = nh / nkv, { qt, rh } = tile;
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
  return kernel(
    `attention_prefill.${nh}.${nkv}.${hd}.t${qt}.r${rh}${
      qStride !== nh * hd ? `.q${qStride}` : ""
    }`,
    [
      ["step", "Step", "uniform"],
      ["q", `array<${T}>`],
      ["kc", `array<${T}>`],
      ["vc", `array<${T}>`],
      ["out", `array<${T}>`, "storage, read_write"],
    ],
    `
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3<u32>) {
  let g = wg.x / ${u(R / rh)};
  let h0 = wg.x * ${u(rh)};
  let t0 = wg.y * ${u(qt)};
  if (t0 >= step.T) { return; }
  let tl = min(t0 + ${u(qt - 1)}, step.T - 1u);
  let jEnd = step.pos0 + tl;
${
      each((i, r, c) => {
        const qb = `min(t0 + ${u(i)}, tl) * ${u(qStride / W)} + (h0 + ${u(r)}) * ${u(n)}`;
        return `  let qb${c} = ${qb};
${perD((d) => `  let q${c}_${d} = q[qb${c} + ${u(d)}] * ${f(1 / Math.sqrt(hd))};`)}
  var m${c} = -3.0e38;
  var s${c} = 0.0;
${perD((d) => `  var a${c}_${d} = ${zero};`)}`;
      })
    }
  for (var j = 0u; j <= jEnd; j++) {
    let kb = j * ${u(nkv * n)} + g * ${u(n)};
${perD((d) => `    let k${d} = kc[kb + ${u(d)}];`)}
${perD((d) => `    let v${d} = vc[kb + ${u(d)}];`)}
${
      each((i, _r, c) =>
        `    {
      let sc = ${dot(c)};
      let ok = j <= step.pos0 + t0 + ${u(i)};
      let mn = select(m${c}, max(m${c}, sc), ok);
      let corr = exp(m${c} - mn);
      let p = select(0.0, exp(sc - mn), ok);
      s${c} = s${c} * corr + p;
${perD((d) => `      a${c}_${d} = a${c}_${d} * corr + p * v${d};`)}
      m${c} = mn;
    }`
      )
    }
  }
${
      each((i, r, c) =>
        `  if (t0 + ${u(i)} < step.T) {
    let ob = (t0 + ${u(i)}) * ${u(nh * n)} + (h0 + ${u(r)}) * ${u(n)};
${perD((d) => `    out[ob + ${u(d)}] = a${c}_${d} / s${c};`)}
  }`
      )
    }
}`,
  );
}

/**
 * MoE routing per token: softmax over the E router logits (f32), top-k (largest first; ties go
 * to the lower expert index), optional renormalisation of the k weights. Writes ids[t·K + k]
 * and wts[t·K + k]. Dispatch (ceil(T / 64)).
 */
export function routerSource(E: number, K: number, normTopK: boolean): KernelSource {
  return kernel(
    `router.${E}.${K}${normTopK ? ".norm" : ""}`,
    [["step", "Step", "uniform"], ["logits", "array<f32>"], [
      "ids",
      "array<u32>",
      "storage, read_write",
    ], ["wts", "array<f32>", "storage, read_write"]],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let t = id.x;
  if (t >= step.T) { return; }
  let b = t * ${u(E)};
  var m = -3.0e38;
  for (var e = 0u; e < ${u(E)}; e++) { m = max(m, logits[b + e]); }
  var z = 0.0;
  for (var e = 0u; e < ${u(E)}; e++) { z += exp(logits[b + e] - m); }
  var taken: array<bool, ${E}>;
  var sum = 0.0;
  for (var k = 0u; k < ${u(K)}; k++) {
    var best = 0u;
    var bv = -3.4e38;
    for (var e = 0u; e < ${u(E)}; e++) {
      if (!taken[e] && logits[b + e] > bv) { bv = logits[b + e]; best = e; }
    }
    taken[best] = true;
    let p = exp(bv - m) / z;
    ids[t * ${u(K)} + k] = best;
    wts[t * ${u(K)} + k] = p;
    sum += p;
  }
  ${
      normTopK
        ? `for (var k = 0u; k < ${u(K)}; k++) { wts[t * ${u(K)} + k] = wts[t * ${
          u(K)
        } + k] / sum; }`
        : ""
    }
}`,
  );
}

/** SwiGLU activation in place: g = silu(g) · u over [T · rowsPerToken, width]. Dispatch (ceil(width/64), T·rowsPerToken). */
export function swigluSource(width: number, rowsPerToken: number): KernelSource {
  return kernel(
    `swiglu.${width}.${rowsPerToken}`,
    [["step", "Step", "uniform"], ["g", "array<f32>", "storage, read_write"], ["up", "array<f32>"]],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x >= ${u(width)} || id.y >= step.T * ${u(rowsPerToken)}) { return; }
  let i = id.y * ${u(width)} + id.x;
  let a = g[i];
  g[i] = a / (1.0 + exp(-a)) * up[i];
}`,
  );
}

/**
 * MoE combine with the residual: x[t] += Σ_k wts[t,k] · ye[t·K + k] (+ shared expert output ys[t],
 * scaled by sigmoid(sg[t]) when gated). Dispatch (ceil(H/64), T).
 */
export function combineSource(
  hidden: number,
  K: number,
  shared: "none" | "plain" | "gated",
): KernelSource {
  const decls: [string, string, string?][] = [
    ["step", "Step", "uniform"],
    ["x", "array<f32>", "storage, read_write"],
    ["ye", "array<f32>"],
    ["wts", "array<f32>"],
  ];
  if (shared !== "none") decls.push(["ys", "array<f32>"]);
  if (shared === "gated") decls.push(["sg", "array<f32>"]);
  const sharedTerm = shared === "none"
    ? ""
    : shared === "plain"
    ? "v += ys[t * H + c];"
    : "v += ys[t * H + c] / (1.0 + exp(-sg[t]));";
  return kernel(
    `combine.${hidden}.${K}.${shared}`,
    decls,
    `
const H = ${u(hidden)};
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let c = id.x;
  let t = id.y;
  if (c >= H || t >= step.T) { return; }
  var v = 0.0;
  for (var k = 0u; k < ${u(K)}; k++) {
    v += wts[t * ${u(K)} + k] * ye[(t * ${u(K)} + k) * H + c];
  }
  ${sharedTerm}
  x[t * H + c] += v;
}`,
  );
}

/**
 * MoE routing plus per-expert token lists, in one workgroup: for each token, softmax over the E
 * router logits, top-k (largest first; ties go to the lower expert index) and optional
 * renormalisation, writing ids[t·K + k] and wts[t·K + k] as {@link routerSource} does; then, for
 * each expert e, route[e] = the number of (token, slot) rows that chose e and
 * route[E + e·cap + j] = the j-th such row index t·K + k, in increasing order. `cap` is the most
 * tokens a batch holds (the prefill chunk); cap · K must fit in workgroup memory
 * (cap · K ≤ 4096). Dispatch (1, 1, 1).
 */
export function routeListsSource(
  E: number,
  K: number,
  normTopK: boolean,
  cap: number,
): KernelSource {
  if (cap * K > 4096) throw new RangeError(`routeListsSource: cap ${cap} × top-k ${K} > 4096`);
  return kernel(
    `route_lists.${E}.${K}.${cap}${normTopK ? ".norm" : ""}`,
    [
      ["step", "Step", "uniform"],
      ["logits", "array<f32>"],
      ["ids", "array<u32>", "storage, read_write"],
      ["wts", "array<f32>", "storage, read_write"],
      ["route", "array<u32>", "storage, read_write"],
    ],
    `
const E = ${u(E)};
const K = ${u(K)};
const CAP = ${u(cap)};
var<workgroup> sel: array<u32, ${cap * K}>;
@compute @workgroup_size(${EW})
fn main(@builtin(local_invocation_index) li: u32) {
  let T = min(step.T, CAP);
  for (var t = li; t < T; t += ${u(EW)}) {
    let b = t * E;
    var m = -3.0e38;
    for (var e = 0u; e < E; e++) { m = max(m, logits[b + e]); }
    var z = 0.0;
    for (var e = 0u; e < E; e++) { z += exp(logits[b + e] - m); }
    // Explicit reset: a var declared in a loop body is not reliably re-zeroed per iteration.
    var taken: array<bool, ${E}>;
    for (var e = 0u; e < E; e++) { taken[e] = false; }
    var sum = 0.0;
    var p: array<f32, ${K}>;
    for (var k = 0u; k < K; k++) {
      var best = 0u;
      var bv = -3.4e38;
      for (var e = 0u; e < E; e++) {
        if (!taken[e] && logits[b + e] > bv) { bv = logits[b + e]; best = e; }
      }
      taken[best] = true;
      p[k] = exp(bv - m) / z;
      sum += p[k];
      ids[t * K + k] = best;
      sel[t * K + k] = best;
    }
    for (var k = 0u; k < K; k++) { wts[t * K + k] = ${normTopK ? "p[k] / sum" : "p[k]"}; }
  }
  workgroupBarrier();
  for (var e = li; e < E; e += ${u(EW)}) {
    var n = 0u;
    for (var r = 0u; r < T * K; r++) {
      if (sel[r] == e) {
        route[E + e * CAP + n] = r;
        n++;
      }
    }
    route[e] = n;
  }
}`,
  );
}
