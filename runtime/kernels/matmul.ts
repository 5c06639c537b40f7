/**
 * The classic matmul: matrix × activations with the weight format's decoding fused in, for
 * every storage format of kernels/weights.ts (f32, f16, bf16 and packed 2/3/4/8-bit codes).
 * Made for GPUs: threads cooperate on a row and read adjacent memory.
 *
 * One generator covers decode (a matvec: token tile 1) and prefill (a matmul: each workgroup
 * reuses each decoded weight across a tile of tokens). Shapes and format parameters are baked
 * into the WGSL as constants; pipelines are cached per generated source.
 *
 * Work split: a workgroup of 64 threads handles `ROWS_PER_GROUP` rows; the
 * `THREADS_PER_ROW = 64 / ROWS_PER_GROUP` threads of a row stride over its "units" (4 f32
 * columns, 2 f16/bf16 columns, or one 32-code block), so adjacent threads read adjacent memory,
 * then reduce their partial sums in workgroup memory.
 *
 * Output: y = scale · (W x) + bias (+ y when accumulating), so a residual add with a multiplier
 * (a layer's residual scale, the head's logit scale) costs nothing extra.
 *
 * Row blocks: a matrix larger than a binding is split into row blocks (engine/weights.ts), one
 * dispatch each; `row0` and `yCols` place a block's rows in the full output row.
 *
 * Expert mode ("sparse dispatch"): the weight set holds several experts' matrices back to back;
 * workgroup z serves matrix z (global expert id `setExperts[z]`), reads the router's chosen ids
 * and exits at once when no token of its tile chose that expert.
 *
 * @module
 */

import { BLOCK_CODES } from "../../schemas/packing.ts";
import { BindingList, f, type KernelSource, nextPow2, STEP_WGSL, u } from "./kernel.ts";
import {
  addWeightBindings,
  blockCode,
  codeValue,
  decodeFunctions,
  formatName,
  loadBlockWords,
  ROW_BLOCK_WGSL,
  type WeightFormat,
  weightLayout,
} from "./weights.ts";

/** Parameters that select one generated matmul kernel. */
export interface MatmulKey {
  format: WeightFormat;
  rows: number;
  cols: number;
  /** Tokens per workgroup (1 for decode). */
  tokenTile: number;
  /**
   * "dense": one matrix; "expert": matrix z of the set serves the tokens that chose
   * setExperts[z].
   */
  mode: "dense" | "expert";
  /** Expert mode: x rows are tokens ("token", gate/up) or (token, slot) pairs ("slot", down). */
  xRows?: "token" | "slot";
  /** Expert mode: experts per token. */
  topK?: number;
  /** Add a bias vector (binding "bias"). */
  bias?: boolean;
  /** Add into y instead of overwriting (fused residual). */
  accumulate?: boolean;
  /** Multiplier of W x (default 1). */
  scale?: number;
  /**
   * Row block of a split matrix: the weight set holds rows `row0 ..` of the full matrix (row0
   * read from the `rowBlock` uniform, kernels/weights.ts ROW_BLOCK_WGSL), so output row r goes
   * to y column row0 + r and reads bias[row0 + r].
   */
  rowBlock?: boolean;
  /** Columns of a y row (the full matrix's output rows when split; default `rows`). */
  yCols?: number;
  /** Use this token count instead of the Step uniform's T (e.g. 1 for last-position logits). */
  fixedT?: number;
  /**
   * Most threads cooperating on one row (a power of two ≤ 64, default 64). GPUs want many (wide,
   * coalesced reads); CPU adapters (lavapipe) want few, since workgroup barriers are costly there.
   */
  maxThreadsPerRow?: number;
}

/** Workgroup size of the matmul kernels. */
const WORKGROUP = 64;

/** Columns one thread reads at a time. */
function unitCols(format: WeightFormat): number {
  return format.kind === "f32" ? 4 : format.kind === "q" ? BLOCK_CODES : 2;
}

/** Threads per row and rows per workgroup for a key. */
export function matmulSplit(key: MatmulKey): { threadsPerRow: number; rowsPerGroup: number } {
  const units = Math.ceil(key.cols / unitCols(key.format));
  const threadsPerRow = Math.min(key.maxThreadsPerRow ?? WORKGROUP, WORKGROUP, nextPow2(units));
  return { threadsPerRow, rowsPerGroup: WORKGROUP / threadsPerRow };
}

/** Workgroup counts [x, y, z] for T tokens and `count` matrices (expert mode). */
export function matmulGroups(key: MatmulKey, T: number, count = 1): [number, number, number] {
  const t = key.fixedT ?? T;
  return [
    Math.ceil(key.rows / matmulSplit(key).rowsPerGroup),
    Math.ceil(t / key.tokenTile),
    key.mode === "expert" ? count : 1,
  ];
}

/** WGSL accumulating one unit (`un`) of row `row` into acc[tt] for every token of the tile. */
function unitBody(format: WeightFormat, cols: number): string {
  const guard = cols % unitCols(format) !== 0;
  const xAt = (off: string) =>
    guard ? `select(0.0, x[xb + ${off}], c + ${off} < COLS)` : `x[xb + ${off}]`;
  switch (format.kind) {
    case "f32":
      return `
      let w = weights[mbase + row * ROW_STRIDE + un];
      let c = un * 4u;
      for (var tt = 0u; tt < TT; tt++) {
        let xb = xRow[tt] * COLS + c;
        acc[tt] += dot(w, vec4<f32>(${xAt("0u")}, ${xAt("1u")}, ${xAt("2u")}, ${xAt("3u")}));
      }`;
    case "f16":
    case "bf16":
      return `
      let w = decodePair(weights[mbase + row * ROW_STRIDE + un]);
      let c = un * 2u;
      for (var tt = 0u; tt < TT; tt++) {
        let xb = xRow[tt] * COLS + c;
        acc[tt] += dot(w, vec2<f32>(${xAt("0u")}, ${xAt("1u")}));
      }`;
    case "q": {
      // Σ_j (q_j − z)·s·x_j = s·(Σ_j q_j·x_j − z·Σ_j x_j), in vec4s of codes and activations.
      const bits = format.bits;
      const quads = [0, 1, 2, 3];
      const codes = Array.from(
        { length: 8 },
        (_, v) =>
          `let q${v} = vec4<f32>(${
            quads.map((i) => codeValue(format, blockCode(4 * v + i, bits))).join(", ")
          });`,
      );
      const xs = Array.from(
        { length: 8 },
        (_, v) => `let x${v} = vec4<f32>(${quads.map((i) => xAt(`${u(4 * v + i)}`)).join(", ")});`,
      );
      const dots = Array.from({ length: 8 }, (_, v) => `dot(q${v}, x${v})`).join(" + ");
      const xSum = Array.from({ length: 8 }, (_, v) => `x${v}`).join(" + ");
      return `
      ${loadBlockWords(bits, `mbase + row * ROW_STRIDE + un * ${u(bits)}`).join("\n      ")}
      let g = gbase + row * GROUPS_PER_ROW + (un * 32u) / GROUP_SIZE;
      let s = groupScale(g);
      let z = groupZero(g);
      let c = un * 32u;
      ${codes.join("\n      ")}
      for (var tt = 0u; tt < TT; tt++) {
        let xb = xRow[tt] * COLS + c;
        ${xs.join("\n        ")}
        let xSum = ${xSum};
        acc[tt] += s * ((${dots}) - z * (xSum.x + xSum.y + xSum.z + xSum.w));
      }`;
    }
  }
}

/** Label suffix of a split matrix's row block ("" for a whole matrix). */
export function blockLabel(key: { rowBlock?: boolean; yCols?: number }): string {
  return key.rowBlock ? `.block.of${key.yCols}` : "";
}

/** Generates the matmul kernel for a key. */
export function matmulSource(key: MatmulKey): KernelSource {
  const { format, rows, cols } = key;
  const TT = key.tokenTile;
  const layout = weightLayout(format, rows, cols);
  // f32 weights are read as vec4s: strides in vec4 units.
  const per = format.kind === "f32" ? 4 : 1;
  const { threadsPerRow, rowsPerGroup } = matmulSplit(key);
  const expert = key.mode === "expert";
  const K = key.topK ?? 1;
  const useStep = key.fixedT === undefined;
  const binds = new BindingList();
  if (useStep) binds.add("step", "Step", "uniform");
  if (key.rowBlock) binds.add("rowBlock", "RowBlock", "uniform");
  binds.add("x", "array<f32>");
  binds.add("y", "array<f32>", "storage, read_write");
  addWeightBindings(binds, format, "array<vec4<f32>>");
  if (key.bias) binds.add("bias", "array<f32>");
  if (expert) {
    binds.add("expertIds", "array<u32>");
    binds.add("setExperts", "array<u32>");
  }

  const selection = expert
    ? `
  if (li == 0u) {
    let e = setExperts[wg.z];
    var hit = 0u;
    for (var tt = 0u; tt < TT; tt++) {
      var s = -1;
      let t = t0 + tt;
      if (t < T) {
        for (var k = 0u; k < K; k++) {
          if (expertIds[t * K + k] == e) { s = i32(k); }
        }
      }
      slot[tt] = s;
      if (s >= 0) { hit = 1u; }
    }
    anyChosen = hit;
  }
  if (workgroupUniformLoad(&anyChosen) == 0u) { return; }
  let mbase = wg.z * MATRIX_STRIDE;
  let gbase = wg.z * GROUP_STRIDE;
  var xRow: array<u32, TT>;
  var yRow: array<u32, TT>;
  var live: array<bool, TT>;
  for (var tt = 0u; tt < TT; tt++) {
    let s = slot[tt];
    live[tt] = s >= 0;
    let t = select(0u, t0 + tt, s >= 0);
    let slotRow = t * K + u32(max(s, 0));
    xRow[tt] = ${expert && key.xRows === "slot" ? "slotRow" : "t"};
    yRow[tt] = slotRow;
  }`
    : `
  let mbase = 0u;
  let gbase = 0u;
  var xRow: array<u32, TT>;
  var yRow: array<u32, TT>;
  var live: array<bool, TT>;
  for (var tt = 0u; tt < TT; tt++) {
    let t = t0 + tt;
    live[tt] = t < T;
    xRow[tt] = select(0u, t, t < T);
    yRow[tt] = t;
  }`;

  const scaled = key.scale === undefined || key.scale === 1 ? "sum" : `${f(key.scale)} * sum`;
  const code = `${useStep ? STEP_WGSL : ""}
${key.rowBlock ? ROW_BLOCK_WGSL : ""}
${binds.wgsl}
${decodeFunctions(format)}
const ROWS = ${u(rows)};
${key.rowBlock ? "" : "const ROW0 = 0u;\n"}const Y_COLS = ${u(key.yCols ?? rows)};
const COLS = ${u(cols)};
const ROW_STRIDE = ${u(layout.rowStride / per)};
const MATRIX_STRIDE = ${u(layout.matrixStride / per)};
const GROUP_STRIDE = ${u(layout.groupStride)};
const GROUPS_PER_ROW = ${u(layout.groupsPerRow)};
const GROUP_SIZE = ${u(format.kind === "q" ? format.groupSize : 1)};
const UNITS = ${u(Math.ceil(cols / unitCols(format)))};
const THREADS_PER_ROW = ${u(threadsPerRow)};
const ROWS_PER_GROUP = ${u(rowsPerGroup)};
const TT = ${u(TT)};
const K = ${u(K)};
var<workgroup> partial: array<f32, ${WORKGROUP * TT}>;
${expert ? `var<workgroup> slot: array<i32, ${TT}>;\nvar<workgroup> anyChosen: u32;` : ""}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  ${key.rowBlock ? "let ROW0 = rowBlock.row0;" : ""}
  let T = ${useStep ? "step.T" : u(key.fixedT!)};
  let t0 = wg.y * TT;
  let lane = li % THREADS_PER_ROW;
  let row = wg.x * ROWS_PER_GROUP + li / THREADS_PER_ROW;
  ${selection}
  var acc: array<f32, TT>;
  if (row < ROWS) {
    for (var un = lane; un < UNITS; un += THREADS_PER_ROW) {${unitBody(format, cols)}
    }
  }
  for (var tt = 0u; tt < TT; tt++) { partial[tt * ${u(WORKGROUP)} + li] = acc[tt]; }
  workgroupBarrier();
  for (var h = THREADS_PER_ROW / 2u; h > 0u; h >>= 1u) {
    if (lane < h) {
      for (var tt = 0u; tt < TT; tt++) {
        partial[tt * ${u(WORKGROUP)} + li] += partial[tt * ${u(WORKGROUP)} + li + h];
      }
    }
    workgroupBarrier();
  }
  if (lane == 0u && row < ROWS) {
    for (var tt = 0u; tt < TT; tt++) {
      if (live[tt]) {
        let o = yRow[tt] * Y_COLS + ROW0 + row;
        let sum = partial[tt * ${u(WORKGROUP)} + li];
        var v = ${scaled};
        ${key.bias ? "v += bias[ROW0 + row];" : ""}
        ${key.accumulate ? "v += y[o];" : ""}
        y[o] = v;
      }
    }
  }
}
`;
  return {
    label: `matmul.${formatName(format)}.${rows}x${cols}.${key.mode}.t${TT}${blockLabel(key)}`,
    code,
    bindings: binds.names,
  };
}
