/**
 * Register-tiled matmul for CPU adapters (lavapipe/llvmpipe), including the routed-token form of
 * the expert matmuls.
 *
 * Why a second matmul: on llvmpipe each invocation is one SIMD lane, and a storage load inside a
 * loop is a loop over the lanes (Mesa 22's gallivm: per lane, an exec-mask test, a bounds test and
 * a scalar load; ~16 ns for 8 lanes on the 2-core test machine), while arithmetic is almost free.
 * A vector load is the same lane loop with its 2 or 4 words loaded in one iteration, so it costs
 * far less than as many scalar loads; workgroup memory is no cheaper. The cost of a matmul is
 * therefore the number of load operations per multiply-add. Here one invocation owns a block of
 * `rowTile` output rows × `tokenTile` tokens, loads each token's 32 activations of a column
 * block as 8 vec4 once and reuses them for all its rows, and reads each row's packed block once
 * for all its tokens, as vectors where the block's words allow (4-bit and 8-bit: vec4; 2-bit and
 * 6-bit: vec2; f16/bf16/f32: vec4; weights.ts `blockVectorWidth`). Columns not a multiple of 32
 * fall back to bounds-checked scalar loads. No workgroup memory and no barriers. (The classic
 * kernel in matmul.ts has one load per MAC per token.) Weights are decoded by the snippets of
 * kernels/weights.ts. Measured (`bench kernels --shapes experts`, one expert of the 1.05 GB
 * synthetic, one token, 8 rows per invocation): vector loads take gate/up from 59–81 ms to 40–42
 * ms and down from 28 ms to 19–20 ms.
 *
 * Output: y = scale · (W x) + bias (+ y when accumulating); a row block of a split matrix
 * (`row0`, `yCols`) writes its slice of the full output row.
 *
 * Modes:
 * - "dense": token tile `wg.y` covers tokens wg.y·TT .. wg.y·TT + TT − 1 of the batch;
 * - "list" (routed experts): the weight set holds several experts' matrices; workgroup z serves
 *   matrix z (global expert id setExperts[z]) and tile wg.y covers entries wg.y·TT.. of that
 *   expert's token list, built on the GPU by kernels/moe.ts `routeListsSource`: routes[e] is the
 *   number of (token, slot) rows that chose expert e and routes[E + e·CAP + j] the j-th such row
 *   `t·K + k`. Tiles past the count exit at once, so an expert's matmul touches only the tokens
 *   routed to it. A tile with m live entries runs one pass over the weights for all TT of them
 *   when TT ≥ 4 and m > TT/2 (dead lanes load x row 0 and store nothing), one 2-token pass when
 *   TT ≥ 4 and m = 2, else m single-token passes, each over its rows in groups of at most
 *   {@link LIST_ROW_GROUP} weight rows.
 *
 * Why single-token passes: on llvmpipe a pass over a block for TT tokens holds 32·TT activations
 * live across the lane loops of every weight row, and that costs nearly as much as the loads it
 * saves. Measured on the 1.05 GB synthetic's expert shapes (4-bit group 64; [gate; up] 2·16384 ×
 * 4096 and down 4096 × 16384; lavapipe, 2 cores, min of 3, vector loads): one token costs 40 ms
 * (gate/up, 8 rows per invocation) and 19 ms (down); in the 16 × 4 tile one token costs 60 and
 * 19 ms, two (a 2-token pass) 82 and 42 ms, four (one pass) 99 and 55 ms; a 16 × 8 tile's pass
 * over 8 tokens 149 and 88 ms (3.7 and 4.6 single tokens) but 10.7 s of JIT for gate/up.
 *
 * `gateUp` fuses an MLP's gate and up projections and the SwiGLU activation: the weight matrix
 * is [gate; up] stacked (2·rows rows) and the kernel writes silu(gate·x) · (up·x).
 *
 * @module
 */

import { BLOCK_CODES } from "../../schemas/packing.ts";
import { BindingList, f, type KernelSource, nextPow2, STEP_WGSL, u } from "./kernel.ts";
import { blockLabel } from "./matmul.ts";
import {
  addWeightBindings,
  blockCode,
  blockVectorWidth,
  codeValue,
  decodeFunctions,
  formatName,
  loadBlockWords,
  ROW_BLOCK_WGSL,
  type VectorWidth,
  type WeightFormat,
  weightLayout,
  wordsArrayType,
} from "./weights.ts";

/** Parameters that select one generated tiled matmul. */
export interface TiledKey {
  format: WeightFormat;
  /** Output rows (for gateUp: rows of gate = rows of up). */
  rows: number;
  cols: number;
  /** Output rows per invocation. */
  rowTile: number;
  /** Tokens (or list entries) per invocation. */
  tokenTile: number;
  mode: "dense" | "list";
  /**
   * List mode: x rows are tokens ("token": gate/up read x[t]) or slots ("slot": down reads
   * x[t·K + k]).
   */
  xRows?: "token" | "slot";
  /** List mode: experts per token. */
  topK?: number;
  /** List mode: number of experts E (offset of the lists in the routes buffer). */
  numExperts?: number;
  /** List mode: list capacity per expert (the prefill chunk). */
  capacity?: number;
  /** Fused gate/up + SwiGLU (weights stacked [gate; up]). */
  gateUp?: boolean;
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
  /** Use this token count instead of the Step uniform's T. */
  fixedT?: number;
}

/** Columns per inner block (one packed block of 32 codes). */
const BLOCK = BLOCK_CODES;

/** Invocations per workgroup for a key (llvmpipe's SIMD width is 8; at most 64). */
export function tiledWorkgroup(key: TiledKey): number {
  return Math.min(64, Math.max(8, nextPow2(Math.ceil(key.rows / key.rowTile))));
}

/** Workgroup counts [x, y, z] for T tokens and `count` matrices (list mode). */
export function tiledGroups(key: TiledKey, T: number, count = 1): [number, number, number] {
  const t = key.fixedT ?? T;
  const lanes = Math.ceil(key.rows / key.rowTile);
  return [
    Math.ceil(lanes / tiledWorkgroup(key)),
    Math.ceil(t / key.tokenTile),
    key.mode === "list" ? count : 1,
  ];
}

/**
 * Whether a list-mode kernel of this token tile has multi-token passes (a whole-tile pass for
 * tiles more than half live, a 2-token pass for two live entries); tiles of 1 or 2 run
 * single-token passes only.
 */
export function listTilePass(tokenTile: number): boolean {
  return tokenTile >= 4;
}

/**
 * Most weight rows (gate and up rows both count) one single-token pass of a list-mode kernel
 * accumulates per loop over the columns. Measured on lavapipe (syn4b shapes, one token): 8 rows
 * per invocation pass 4-bit weights ~1.5× faster than 16 and ~1.25× faster than 4.
 */
export const LIST_ROW_GROUP = 8;

/** Sum of eight-term groups of `term(j)` over the block's 32 columns (a fixed summation tree). */
function blockSum(term: (j: number) => string): string {
  const groups = [];
  for (let v = 0; v < BLOCK; v += 8) {
    groups.push(`(${Array.from({ length: 8 }, (_, i) => term(v + i)).join(" + ")})`);
  }
  return groups.join(" + ");
}

/** Generates the tiled matmul kernel for a key. */
export function tiledMatmulSource(key: TiledKey): KernelSource {
  const { format, rows, cols } = key;
  const RT = key.rowTile, TT = key.tokenTile;
  const list = key.mode === "list";
  const K = key.topK ?? 1;
  const useStep = key.fixedT === undefined && !list;
  const WG = tiledWorkgroup(key);
  const binds = new BindingList();
  if (useStep) binds.add("step", "Step", "uniform");
  if (key.rowBlock) binds.add("rowBlock", "RowBlock", "uniform");
  const layout = weightLayout(format, rows * (key.gateUp ? 2 : 1), cols);
  const blocks = Math.ceil(cols / BLOCK);
  const ragged = cols % BLOCK !== 0;
  // Whole blocks are read with vector loads (every row and x row starts on a block).
  const width: VectorWidth = ragged ? 1 : format.kind === "q" ? blockVectorWidth(format.bits) : 4;
  binds.add("x", ragged ? "array<f32>" : "array<vec4<f32>>");
  binds.add("y", "array<f32>", "storage, read_write");
  addWeightBindings(
    binds,
    format,
    ragged ? "array<f32>" : "array<vec4<f32>>",
    wordsArrayType(width),
  );
  if (key.bias) binds.add("bias", "array<f32>");
  if (list) {
    binds.add("routes", "array<u32>");
    binds.add("setExperts", "array<u32>");
  }

  // Activations of one block for the tokens `ts` (suffixes): x{t}_{j} is column c0 + j of the
  // x row starting at xo{t}.
  const xLoads = (ts: string[]): string[] => {
    const lines: string[] = [];
    for (const t of ts) {
      lines.push(`let xb${t} = xo${t} + c0;`);
      if (!ragged) {
        for (let v = 0; v < BLOCK / 4; v++) {
          lines.push(`let xv${t}_${v} = x[xb${t} / 4u + ${u(v)}];`);
          for (let i = 0; i < 4; i++) {
            lines.push(`let x${t}_${4 * v + i} = xv${t}_${v}.${"xyzw"[i]};`);
          }
        }
        continue;
      }
      for (let j = 0; j < BLOCK; j++) {
        const idx = `xb${t} + ${u(j)}`;
        lines.push(`let x${t}_${j} = select(0.0, x[min(${idx}, xLast)], c0 + ${u(j)} < COLS);`);
      }
    }
    if (format.kind === "q") {
      for (const t of ts) lines.push(`let xSum${t} = ${blockSum((j) => `x${t}_${j}`)};`);
    }
    return lines;
  };

  // One weight row's block (row index expression `wr`) accumulated into `{acc}{t}` for t in ts.
  const rowBlock = (wr: string, acc: string, ts: string[]): string => {
    const lines: string[] = [];
    const rowStart = `mbase + ${wr} * ROW_STRIDE`;
    if (format.kind === "q") {
      // Σ_j (q_j − z)·s·x_j = s·(Σ_j q_j·x_j − z·Σ_j x_j).
      const bits = format.bits;
      lines.push(...loadBlockWords(bits, `${rowStart} + b * ${u(bits)}`, width));
      lines.push(`let g = gbase + ${wr} * GROUPS_PER_ROW + (b * ${u(BLOCK)}) / GROUP_SIZE;`);
      lines.push(`let s = groupScale(g);`, `let z = groupZero(g);`);
      for (let j = 0; j < BLOCK; j++) {
        lines.push(`let q${j} = ${codeValue(format, blockCode(j, bits))};`);
      }
      for (const t of ts) {
        const dot = blockSum((j) => `q${j} * x${t}_${j}`);
        lines.push(`${acc}${t} += s * ((${dot}) - z * xSum${t});`);
      }
    } else {
      const perWord = format.kind === "f32" ? 1 : 2;
      const words = BLOCK / perWord;
      const rowEnd = `(${rowStart} + ROW_STRIDE - 1u)`;
      for (let i = 0; i < words; i++) {
        const idx = `${rowStart} + b * ${u(words)} + ${u(i)}`;
        if (!ragged) {
          // Vector loads of 4 words (f32: 4 weights), element i of load i / 4.
          if (i % 4 === 0) lines.push(`let wv${i / 4} = weights[(${idx}) / 4u];`);
          const word = `wv${i >> 2}.${"xyzw"[i & 3]}`;
          lines.push(
            format.kind === "f32" ? `let w${i} = ${word};` : `let p${i} = decodePair(${word});`,
          );
          continue;
        }
        const at = `min(${idx}, ${rowEnd})`;
        lines.push(
          format.kind === "f32"
            ? `let w${i} = weights[${at}];`
            : `let p${i} = decodePair(weights[${at}]);`,
        );
      }
      const weight = (j: number) => format.kind === "f32" ? `w${j}` : `p${j >> 1}.${"xy"[j & 1]}`;
      for (const t of ts) {
        lines.push(`${acc}${t} += ${blockSum((j) => `${weight(j)} * x${t}_${j}`)};`);
      }
    }
    return `{\n        ${lines.join("\n        ")}\n      }`;
  };

  // The product of output rows r0 + i (i in `rowIdx`) for the tokens `ts`: accumulators
  // acc{i}_{t} (gate, or the plain product) and up{i}_{t} (gateUp), one loop over the 32-column
  // blocks, the stores (token t's are guarded by live{t} and write y row yRow{t}).
  const scale = key.scale === undefined || key.scale === 1 ? "" : `${f(key.scale)} * `;
  const product = (rowIdx: number[], ts: string[]): string => {
    const accDecl: string[] = [];
    const rowCode: string[] = [];
    const stores: string[] = [];
    for (const i of rowIdx) {
      for (const t of ts) {
        accDecl.push(`var acc${i}_${t} = 0.0;`);
        if (key.gateUp) accDecl.push(`var up${i}_${t} = 0.0;`);
      }
      const wr = `min(r0 + ${u(i)}, ROWS - 1u)`;
      rowCode.push(rowBlock(wr, `acc${i}_`, ts));
      if (key.gateUp) rowCode.push(rowBlock(`(${wr} + ROWS)`, `up${i}_`, ts));
      for (const t of ts) {
        const a = `acc${i}_${t}`;
        const val = key.gateUp ? `${a} / (1.0 + exp(-${a})) * up${i}_${t}` : a;
        stores.push(`if (live${t} && r0 + ${u(i)} < ROWS) {
    let o = yRow${t} * Y_COLS + ROW0 + r0 + ${u(i)};
    var v = ${scale}${val};
    ${key.bias ? `v += bias[ROW0 + r0 + ${u(i)}];` : ""}
    ${key.accumulate ? "v += y[o];" : ""}
    y[o] = v;
  }`);
      }
    }
    return `{
  ${accDecl.join("\n  ")}
  for (var b = 0u; b < ${u(blocks)}; b++) {
    let c0 = b * ${u(BLOCK)};
    ${xLoads(ts).join("\n    ")}
    ${rowCode.join("\n    ")}
  }
  ${stores.join("\n  ")}
  }`;
  };

  const allRows = Array.from({ length: RT }, (_, i) => i);
  const tileTokens = Array.from({ length: TT }, (_, t) => String(t));
  let body: string;
  if (!list) {
    body = product(allRows, tileTokens);
  } else {
    // List mode: see the module doc. m (the tile's live entries) is the same for the whole
    // workgroup; llvmpipe runs the branch not taken once with every lane masked off (one
    // iteration of its column loop).
    const perRow = key.gateUp ? 2 : 1;
    const group = Math.max(1, Math.floor(LIST_ROW_GROUP / perRow));
    const single: string[] = [];
    for (let i0 = 0; i0 < RT; i0 += group) {
      single.push(product(allRows.slice(i0, i0 + group), ["p"]));
    }
    const entry = `routes[NUM_EXPERTS + e * CAPACITY + min(j0 + p, CAPACITY - 1u)]`;
    const singles = `for (var p = 0u; p < m; p++) {
    let livep = true;
    let yRowp = ${entry};
    let xop = ${key.xRows === "slot" ? "yRowp" : `(yRowp / ${u(K)})`} * COLS;
    ${single.join("\n    ")}
  }`;
    const xo = (n: number) =>
      Array.from({ length: n }, (_, t) => `let xo${t} = xRow${t} * COLS;`).join("\n  ");
    body = !listTilePass(TT) ? singles : `if (m * 2u > TT) {
  ${xo(TT)}
  ${product(allRows, tileTokens)}
  } else if (m == 2u) {
  ${xo(2)}
  ${product(allRows, ["0", "1"])}
  } else {
  ${singles}
  }`;
  }

  const tokenSetup: string[] = [];
  if (list) {
    tokenSetup.push(
      `let e = setExperts[wg.z];`,
      `let n = routes[e];`,
      `let j0 = wg.y * TT;`,
      `if (j0 >= n) { return; }`,
      `let m = min(TT, n - j0);`,
      `let mbase = wg.z * MATRIX_STRIDE;`,
      `let gbase = wg.z * GROUP_STRIDE;`,
    );
    for (let tt = 0; tt < TT; tt++) {
      const entry = `routes[NUM_EXPERTS + e * CAPACITY + min(j0 + ${u(tt)}, CAPACITY - 1u)]`;
      tokenSetup.push(
        `let live${tt} = j0 + ${u(tt)} < n;`,
        `let slotRow${tt} = select(0u, ${entry}, live${tt});`,
        `let xRow${tt} = ${key.xRows === "slot" ? `slotRow${tt}` : `slotRow${tt} / ${u(K)}`};`,
        `let yRow${tt} = slotRow${tt};`,
      );
    }
  } else {
    const T = useStep ? "step.T" : u(key.fixedT ?? 0);
    tokenSetup.push(`let T = ${T};`, `let mbase = 0u;`, `let gbase = 0u;`);
    for (let tt = 0; tt < TT; tt++) {
      tokenSetup.push(
        `let t${tt} = wg.y * TT + ${u(tt)};`,
        `let live${tt} = t${tt} < T;`,
        `let xRow${tt} = select(0u, t${tt}, live${tt});`,
        `let yRow${tt} = t${tt};`,
      );
    }
  }

  const code = `${useStep ? STEP_WGSL : ""}
${key.rowBlock ? ROW_BLOCK_WGSL : ""}
${binds.wgsl}
${decodeFunctions(format)}
const ROWS = ${u(rows)};
${key.rowBlock ? "" : "const ROW0 = 0u;\n"}const Y_COLS = ${u(key.yCols ?? rows)};
const COLS = ${u(cols)};
const ROW_STRIDE = ${u(layout.rowStride)};
const MATRIX_STRIDE = ${u(layout.matrixStride)};
const GROUP_STRIDE = ${u(layout.groupStride)};
const GROUPS_PER_ROW = ${u(layout.groupsPerRow)};
const GROUP_SIZE = ${u(format.kind === "q" ? format.groupSize : 1)};
const TT = ${u(TT)};
const NUM_EXPERTS = ${u(key.numExperts ?? 0)};
const CAPACITY = ${u(key.capacity ?? 1)};

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  ${key.rowBlock ? "let ROW0 = rowBlock.row0;" : ""}
  let r0 = (wg.x * ${u(WG)} + li) * ${u(RT)};
  if (r0 >= ROWS) { return; }
  ${tokenSetup.join("\n  ")}
  ${ragged ? "let xLast = arrayLength(&x) - 1u;" : ""}
  ${list ? "" : Array.from({ length: TT }, (_, t) => `let xo${t} = xRow${t} * COLS;`).join("\n  ")}
  ${body}
}
`;
  return {
    label: `tiled.${formatName(format)}.${rows}x${cols}.${key.mode}${
      key.gateUp ? ".gateup" : ""
    }.r${RT}t${TT}${blockLabel(key)}`,
    code,
    bindings: binds.names,
  };
}
