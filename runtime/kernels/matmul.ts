/**
 * Matrix × activations with the weight format's dequantization fused in, for every storage
 * precision: f32, f16, bf16 and the packed integer codes of schemas/packing.ts (2, 3, 4, 8 bits).
 *
 * One generator covers decode (a matvec: token tile 1) and prefill (a matmul: each workgroup
 * reuses each dequantized weight across a tile of tokens). Shapes and format parameters are
 * baked into the WGSL as constants; pipelines are cached per generated source.
 *
 * Work split: a workgroup of 64 threads handles `RPW` rows; the `TPR = 64 / RPW` threads of a row
 * stride over its "units" (4 f32 columns, 2 f16/bf16 columns, or one 32-code block), so adjacent
 * threads read adjacent memory, then reduce their partial sums in workgroup memory.
 *
 * Expert mode ("sparse dispatch"): the weight set holds several experts' matrices back to back;
 * workgroup z serves matrix z (global expert id `gex[z]`), reads the router's selected ids and
 * exits at once when no token of its tile chose that expert.
 *
 * @module
 */

import {
  BLOCK_CODES,
  groupsPerRow,
  type QuantBits,
  type QuantizedTensor,
  type ScaleType,
  wordsPerRow,
} from "../../schemas/packing.ts";
import { BindingList, type KernelSource, nextPow2, STEP_WGSL, storageBuffer, u } from "./kernel.ts";

/** How a weight matrix is stored on the GPU. */
export type WeightFormat =
  | { kind: "f32" }
  | { kind: "f16" }
  | { kind: "bf16" }
  | { kind: "q"; bits: QuantBits; groupSize: number; scaleType: ScaleType };

/** A short stable name for a format, e.g. "f16" or "q3g64f16". */
export function formatName(f: WeightFormat): string {
  return f.kind === "q" ? `q${f.bits}g${f.groupSize}${f.scaleType}` : f.kind;
}

/**
 * One matrix as read from the artifact: float storage as raw little-endian element bytes
 * (rows × cols of f32, f16 or bf16), or a packed quantized tensor.
 */
export type HostMatrix = { raw: Uint8Array } | QuantizedTensor;

/** Several matrices of one format and shape, resident on the GPU back to back. */
export interface WeightSet {
  format: WeightFormat;
  rows: number;
  cols: number;
  /** Number of matrices. */
  count: number;
  /** Float formats: [data]; quantized: [codes, scales, zeros]. */
  buffers: GPUBuffer[];
  /** Bytes on the GPU. */
  bytes: number;
}

/** Geometry of one stored matrix: units are what one thread reads at a time. */
interface Geometry {
  /** Columns per unit. */
  unitCols: number;
  /** Units per row. */
  units: number;
  /** Row stride in storage elements (vec4 for f32, u32 words otherwise). */
  rowStride: number;
  /** Elements per matrix (same units as rowStride). */
  matrixStride: number;
  /** Scales (and zeros) per matrix (quantized only). */
  groupStride: number;
}

function geometry(format: WeightFormat, rows: number, cols: number): Geometry {
  switch (format.kind) {
    case "f32": {
      const rs = Math.ceil(cols / 4);
      return { unitCols: 4, units: rs, rowStride: rs, matrixStride: rows * rs, groupStride: 0 };
    }
    case "f16":
    case "bf16": {
      const rs = Math.ceil(cols / 2);
      return { unitCols: 2, units: rs, rowStride: rs, matrixStride: rows * rs, groupStride: 0 };
    }
    case "q": {
      const rs = wordsPerRow(cols, format.bits);
      return {
        unitCols: BLOCK_CODES,
        units: Math.ceil(cols / BLOCK_CODES),
        rowStride: rs,
        matrixStride: rows * rs,
        groupStride: rows * groupsPerRow(cols, format.groupSize),
      };
    }
  }
}

/** Bytes of one matrix on the GPU (padding included). */
export function matrixBytes(format: WeightFormat, rows: number, cols: number): number {
  const g = geometry(format, rows, cols);
  if (format.kind === "f32") return g.matrixStride * 16;
  if (format.kind !== "q") return g.matrixStride * 4;
  return g.matrixStride * 4 + 2 * g.groupStride * (format.scaleType === "f16" ? 2 : 4);
}

/**
 * Uploads matrices of one format and shape as a {@link WeightSet}. Float rows are padded to
 * the unit width with zeros; quantized codes are copied verbatim (their layout is already the
 * kernel's), scales and zeros concatenated.
 */
export function uploadWeightSet(
  device: GPUDevice,
  format: WeightFormat,
  rows: number,
  cols: number,
  mats: HostMatrix[],
  label = formatName(format),
): WeightSet {
  const g = geometry(format, rows, cols);
  const n = mats.length;
  if (format.kind === "q") {
    const codes = new Uint32Array(n * g.matrixStride);
    const f16 = format.scaleType === "f16";
    const scales = f16
      ? new Uint16Array(n * g.groupStride + 2)
      : new Float32Array(n * g.groupStride);
    const zeros = f16
      ? new Uint16Array(n * g.groupStride + 2)
      : new Float32Array(n * g.groupStride);
    mats.forEach((m, i) => {
      if (!("codes" in m)) throw new TypeError(`${label}: expected a quantized matrix`);
      codes.set(m.codes, i * g.matrixStride);
      scales.set(m.scales, i * g.groupStride);
      zeros.set(m.zeros, i * g.groupStride);
    });
    const buffers = [
      storageBuffer(device, codes.byteLength, `${label}.codes`, codes),
      storageBuffer(device, scales.byteLength, `${label}.scales`, scales),
      storageBuffer(device, zeros.byteLength, `${label}.zeros`, zeros),
    ];
    return { format, rows, cols, count: n, buffers, bytes: n * matrixBytes(format, rows, cols) };
  }
  const elemBytes = format.kind === "f32" ? 4 : 2;
  const strideBytes = format.kind === "f32" ? g.rowStride * 16 : g.rowStride * 4;
  const out = new Uint8Array(n * rows * strideBytes);
  mats.forEach((m, i) => {
    if (!("raw" in m)) throw new TypeError(`${label}: expected a float matrix`);
    const rowBytes = cols * elemBytes;
    for (let r = 0; r < rows; r++) {
      const dst = (i * rows + r) * strideBytes;
      out.set(m.raw.subarray(r * rowBytes, (r + 1) * rowBytes), dst);
    }
  });
  const buffers = [storageBuffer(device, out.byteLength, `${label}.data`, out)];
  return { format, rows, cols, count: n, buffers, bytes: out.byteLength };
}

/** Binding names of a weight set's buffers, in order. */
export function weightBindings(format: WeightFormat): string[] {
  return format.kind === "q" ? ["W", "S", "Z"] : ["W"];
}

/** Parameters that select one generated matmul kernel. */
export interface MatmulKey {
  format: WeightFormat;
  rows: number;
  cols: number;
  /** Tokens per workgroup (1 for decode). */
  tokenTile: number;
  /** "dense": one matrix; "expert": matrix z of the set serves the tokens that chose gex[z]. */
  mode: "dense" | "expert";
  /** Expert mode: x rows are tokens ("token", gate/up) or (token, slot) pairs ("slot", down). */
  xRows?: "token" | "slot";
  /** Expert mode: experts per token. */
  topK?: number;
  /** Add a bias vector (binding "B"). */
  bias?: boolean;
  /** Add into y instead of overwriting (fused residual). */
  accumulate?: boolean;
  /** Use this token count instead of the Step uniform's T (e.g. 1 for last-position logits). */
  fixedT?: number;
  /**
   * Most threads cooperating on one row (a power of two ≤ 64, default 64). GPUs want many (wide,
   * coalesced reads); CPU adapters (lavapipe) want few, since workgroup barriers are costly there.
   */
  maxThreadsPerRow?: number;
}

/** Workgroup size of the matmul kernels. */
const WG = 64;

/** Threads per row and rows per workgroup for a key. */
export function matmulSplit(key: MatmulKey): { tpr: number; rpw: number } {
  const units = geometry(key.format, key.rows, key.cols).units;
  const tpr = Math.min(key.maxThreadsPerRow ?? WG, WG, nextPow2(units));
  return { tpr, rpw: WG / tpr };
}

/** Workgroup counts [x, y, z] for T tokens and `count` matrices (expert mode). */
export function matmulGroups(key: MatmulKey, T: number, count = 1): [number, number, number] {
  const t = key.fixedT ?? T;
  return [
    Math.ceil(key.rows / matmulSplit(key).rpw),
    Math.ceil(t / key.tokenTile),
    key.mode === "expert" ? count : 1,
  ];
}

/** WGSL of one 32-code extraction from words w0..w{bits-1}: code j of the block. */
function codeExpr(j: number, bits: number): string {
  const bit = j * bits;
  const w = bit >>> 5;
  const sh = bit & 31;
  const mask = u((1 << bits) - 1);
  const lo = sh === 0 ? `w${w}` : `(w${w} >> ${u(sh)})`;
  if (sh + bits <= 32) return bits === 32 - sh ? lo : `(${lo} & ${mask})`;
  return `((${lo} | (w${w + 1} << ${u(32 - sh)})) & ${mask})`;
}

/** Generates the matmul kernel for a key. */
export function matmulSource(key: MatmulKey): KernelSource {
  const { format, rows, cols } = key;
  const TT = key.tokenTile;
  const g = geometry(format, rows, cols);
  const { tpr, rpw } = matmulSplit(key);
  const expert = key.mode === "expert";
  const K = key.topK ?? 1;
  const slotX = expert && key.xRows === "slot";
  const useStep = key.fixedT === undefined;
  const binds = new BindingList();
  if (useStep) binds.add("step", "Step", "uniform");
  addLinearBindings(binds, format, { f32Type: "array<vec4<f32>>", bias: key.bias === true });
  if (expert) {
    binds.add("ids", "array<u32>");
    binds.add("gex", "array<u32>");
  }

  const guard = cols % g.unitCols !== 0;
  const xAt = (off: string) =>
    guard ? `select(0.0, x[xb + ${off}], c + ${off} < COLS)` : `x[xb + ${off}]`;
  let body: string;
  switch (format.kind) {
    case "f32":
      body = `
      let w = W[mbase + row * RS + un];
      let c = un * 4u;
      for (var tt = 0u; tt < TT; tt++) {
        let xb = xr[tt] * COLS + c;
        acc[tt] += dot(w, vec4<f32>(${xAt("0u")}, ${xAt("1u")}, ${xAt("2u")}, ${xAt("3u")}));
      }`;
      break;
    case "f16":
    case "bf16": {
      const unpack = format.kind === "f16"
        ? "unpack2x16float(p)"
        : "vec2<f32>(bitcast<f32>(p << 16u), bitcast<f32>(p & 0xffff0000u))";
      body = `
      let p = W[mbase + row * RS + un];
      let w = ${unpack};
      let c = un * 2u;
      for (var tt = 0u; tt < TT; tt++) {
        let xb = xr[tt] * COLS + c;
        acc[tt] += dot(w, vec2<f32>(${xAt("0u")}, ${xAt("1u")}));
      }`;
      break;
    }
    case "q": {
      const bits = format.bits;
      const loads = Array.from({ length: bits }, (_, i) => `let w${i} = W[wb + ${u(i)}];`);
      const qv = Array.from(
        { length: 8 },
        (_, v) =>
          `let q${v} = vec4<f32>(${
            [0, 1, 2, 3].map((i) => `f32(${codeExpr(4 * v + i, bits)})`).join(", ")
          });`,
      );
      const xv = Array.from(
        { length: 8 },
        (_, v) =>
          `let x${v} = vec4<f32>(${[0, 1, 2, 3].map((i) => xAt(`${u(4 * v + i)}`)).join(", ")});`,
      );
      const dq = Array.from({ length: 8 }, (_, v) => `dot(q${v}, x${v})`).join(" + ");
      const sx = Array.from({ length: 8 }, (_, v) => `x${v}`).join(" + ");
      const param = (a: string) =>
        format.scaleType === "f16" ? `unpack2x16float(${a}[gi >> 1u])[gi & 1u]` : `${a}[gi]`;
      body = `
      let wb = mbase + row * RS + un * ${u(bits)};
      ${loads.join("\n      ")}
      let gi = gbase + row * GPR + (un * 32u) / GS;
      let s = ${param("S")};
      let z = ${param("Z")};
      let c = un * 32u;
      ${qv.join("\n      ")}
      for (var tt = 0u; tt < TT; tt++) {
        let xb = xr[tt] * COLS + c;
        ${xv.join("\n        ")}
        let sxv = ${sx};
        acc[tt] += s * ((${dq}) - z * (sxv.x + sxv.y + sxv.z + sxv.w));
      }`;
      break;
    }
  }

  const tExpr = useStep ? "step.T" : u(key.fixedT!);
  const selection = expert
    ? `
  if (li == 0u) {
    let e = gex[wg.z];
    var hit = 0u;
    for (var tt = 0u; tt < TT; tt++) {
      var s = -1;
      let t = t0 + tt;
      if (t < T) {
        for (var k = 0u; k < K; k++) {
          if (ids[t * K + k] == e) { s = i32(k); }
        }
      }
      slot[tt] = s;
      if (s >= 0) { hit = 1u; }
    }
    anySel = hit;
  }
  if (workgroupUniformLoad(&anySel) == 0u) { return; }
  let mbase = wg.z * MS;
  let gbase = wg.z * GSTRIDE;
  var xr: array<u32, TT>;
  var yr: array<u32, TT>;
  var live: array<bool, TT>;
  for (var tt = 0u; tt < TT; tt++) {
    let s = slot[tt];
    live[tt] = s >= 0;
    let t = select(0u, t0 + tt, s >= 0);
    let sr = t * K + u32(max(s, 0));
    xr[tt] = ${slotX ? "sr" : "t"};
    yr[tt] = sr;
  }`
    : `
  let mbase = 0u;
  let gbase = 0u;
  var xr: array<u32, TT>;
  var yr: array<u32, TT>;
  var live: array<bool, TT>;
  for (var tt = 0u; tt < TT; tt++) {
    let t = t0 + tt;
    live[tt] = t < T;
    xr[tt] = select(0u, t, t < T);
    yr[tt] = t;
  }`;

  const code = `${useStep ? STEP_WGSL : ""}
${binds.wgsl}
const ROWS = ${u(rows)};
const COLS = ${u(cols)};
const RS = ${u(g.rowStride)};
const MS = ${u(g.matrixStride)};
const GSTRIDE = ${u(g.groupStride)};
const GPR = ${u(format.kind === "q" ? groupsPerRow(cols, format.groupSize) : 0)};
const GS = ${u(format.kind === "q" ? format.groupSize : 1)};
const UNITS = ${u(g.units)};
const TPR = ${u(tpr)};
const RPW = ${u(rpw)};
const TT = ${u(TT)};
const K = ${u(K)};
var<workgroup> red: array<f32, ${WG * TT}>;
${expert ? `var<workgroup> slot: array<i32, ${TT}>;\nvar<workgroup> anySel: u32;` : ""}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let T = ${tExpr};
  let t0 = wg.y * TT;
  let lane = li % TPR;
  let row = wg.x * RPW + li / TPR;
  ${selection}
  var acc: array<f32, TT>;
  if (row < ROWS) {
    for (var un = lane; un < UNITS; un += TPR) {${body}
    }
  }
  for (var tt = 0u; tt < TT; tt++) { red[tt * ${u(WG)} + li] = acc[tt]; }
  workgroupBarrier();
  for (var h = TPR / 2u; h > 0u; h >>= 1u) {
    if (lane < h) {
      for (var tt = 0u; tt < TT; tt++) { red[tt * ${u(WG)} + li] += red[tt * ${u(WG)} + li + h]; }
    }
    workgroupBarrier();
  }
  if (lane == 0u && row < ROWS) {
    for (var tt = 0u; tt < TT; tt++) {
      if (live[tt]) {
        let o = yr[tt] * ROWS + row;
        var v = red[tt * ${u(WG)} + li];
        ${key.bias ? "v += B[row];" : ""}
        ${key.accumulate ? "v += y[o];" : ""}
        y[o] = v;
      }
    }
  }
}
`;
  return {
    label: `matmul.${formatName(format)}.${rows}x${cols}.${key.mode}.t${TT}`,
    code,
    bindings: binds.names,
  };
}

/**
 * Binds what every matmul kernel reads and writes, in this order: activations `x`, output `y`,
 * the weight words `W` (f32 weights as `f32Type`), for quantized weights scales `S` and zeros `Z`
 * (u32-packed f16 pairs or f32), and the bias `B` when there is one.
 */
export function addLinearBindings(
  binds: BindingList,
  format: WeightFormat,
  opts: { f32Type: string; bias: boolean },
): void {
  binds.add("x", "array<f32>");
  binds.add("y", "array<f32>", "storage, read_write");
  binds.add("W", format.kind === "f32" ? opts.f32Type : "array<u32>");
  if (format.kind === "q") {
    const st = format.scaleType === "f16" ? "array<u32>" : "array<f32>";
    binds.add("S", st);
    binds.add("Z", st);
  }
  if (opts.bias) binds.add("B", "array<f32>");
}
