/**
 * Register-tiled matmul for CPU adapters (lavapipe/llvmpipe), and the routed-token form of the
 * expert matmuls that both kernel styles share.
 *
 * Why a second matmul: on llvmpipe each invocation is one SIMD lane and every storage load is a
 * per-lane scalar load with a bounds check (~16 ns measured on the 2-core test machine, vec4
 * loads cost 4×, workgroup memory is no cheaper), while arithmetic is almost free. The cost of a
 * matmul is therefore the number of scalar loads per multiply-add. Here one invocation owns a
 * block of `RT` output rows × `TT` tokens, loads each activation once per 32-column block and
 * reuses it for all `RT` rows, and reads each packed weight word once for all `TT` tokens:
 * loads per MAC = 1/RT + bits/(32·TT) (quantized) or 1/RT + 1/TT (float), with no workgroup
 * memory and no barriers. (The classic kernel in matmul.ts has one load per MAC per token.)
 *
 * Modes:
 * - "dense": token tile `wg.y` covers tokens wg.y·TT .. wg.y·TT + TT − 1 of the batch;
 * - "list" (routed experts): the weight set holds several experts' matrices; workgroup z serves
 *   matrix z (global expert id gex[z]) and tile wg.y covers entries wg.y·TT.. of that expert's
 *   token list, built on the GPU by {@link routeListsSource}: route[e] is the number of
 *   (token, slot) rows that chose expert e and route[E + e·CAP + j] the j-th such row
 *   `t·K + k`. Tiles past the count exit at once, so an expert's matmul touches only the tokens
 *   routed to it.
 *
 * `gateUp` fuses an MLP's gate and up projections and the SwiGLU activation: the weight matrix
 * is [gate; up] stacked (2·rows rows) and the kernel writes silu(gate·x) · (up·x).
 *
 * @module
 */

import { BLOCK_CODES, groupsPerRow, wordsPerRow } from "../../schemas/packing.ts";
import { BindingList, type KernelSource, nextPow2, STEP_WGSL, u } from "./kernel.ts";
import { addLinearBindings, formatName, type WeightFormat } from "./matmul.ts";

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
  /** List mode: x rows are tokens ("token": gate/up read x[t]) or slots ("slot": down reads x[t·K + k]). */
  xRows?: "token" | "slot";
  /** List mode: experts per token. */
  topK?: number;
  /** List mode: number of experts E (offset of the lists in the route buffer). */
  numExperts?: number;
  /** List mode: list capacity per expert (the prefill chunk). */
  capacity?: number;
  /** Fused gate/up + SwiGLU (weights stacked [gate; up]). */
  gateUp?: boolean;
  /** Add a bias vector (binding "B"). */
  bias?: boolean;
  /** Add into y instead of overwriting (fused residual). */
  accumulate?: boolean;
  /** Use this token count instead of the Step uniform's T. */
  fixedT?: number;
}

/** Columns per inner block (one packed block of 32 codes). */
const BC = BLOCK_CODES;

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

/** Generates the tiled matmul kernel for a key. */
export function tiledMatmulSource(key: TiledKey): KernelSource {
  const { format, rows, cols } = key;
  const RT = key.rowTile, TT = key.tokenTile;
  const list = key.mode === "list";
  const K = key.topK ?? 1;
  const useStep = key.fixedT === undefined && !list;
  const WG = tiledWorkgroup(key);
  const nmat = key.gateUp ? 2 : 1;
  const binds = new BindingList();
  if (useStep) binds.add("step", "Step", "uniform");
  addLinearBindings(binds, format, { f32Type: "array<f32>", bias: key.bias === true });
  if (list) {
    binds.add("route", "array<u32>");
    binds.add("gex", "array<u32>");
  }

  // Weight rows of one stored matrix, row stride, per-matrix strides.
  const wRows = rows * nmat;
  let rowStride: number, groupStride = 0, gpr = 0;
  if (format.kind === "q") {
    rowStride = wordsPerRow(cols, format.bits);
    gpr = groupsPerRow(cols, format.groupSize);
    groupStride = wRows * gpr;
  } else if (format.kind === "f32") {
    rowStride = Math.ceil(cols / 4) * 4; // f32 rows are padded to vec4 by uploadWeightSet
  } else {
    rowStride = Math.ceil(cols / 2);
  }
  const matrixStride = wRows * rowStride;
  const blocks = Math.ceil(cols / BC);
  const ragged = cols % BC !== 0;

  // x loads of one block: xv{tt}_{j} for column c0 + j of token row xr{tt}.
  const xLoads: string[] = [];
  const xSums: string[] = [];
  for (let tt = 0; tt < TT; tt++) {
    for (let j = 0; j < BC; j++) {
      const idx = `xb${tt} + ${u(j)}`;
      xLoads.push(
        ragged
          ? `let x${tt}_${j} = select(0.0, x[min(${idx}, xlim)], c0 + ${u(j)} < COLS);`
          : `let x${tt}_${j} = x[${idx}];`,
      );
    }
    if (format.kind === "q") {
      const terms = Array.from({ length: BC }, (_, j) => `x${tt}_${j}`);
      const parts = [];
      for (let v = 0; v < BC; v += 8) parts.push(`(${terms.slice(v, v + 8).join(" + ")})`);
      xSums.push(`let sx${tt} = ${parts.join(" + ")};`);
    }
  }

  // Per weight row (index expression `wr`, accumulator prefix `a`), the weights of the block
  // as w_{j} and the per-token accumulation.
  const rowBlock = (wr: string, a: string): string => {
    const lines: string[] = [];
    if (format.kind === "q") {
      const bits = format.bits;
      const base = `mb + ${wr} * RS + b * ${u(bits)}`;
      for (let i = 0; i < bits; i++) lines.push(`let w${i} = W[${base} + ${u(i)}];`);
      const param = (arr: string) =>
        format.scaleType === "f16" ? `unpack2x16float(${arr}[gi >> 1u])[gi & 1u]` : `${arr}[gi]`;
      lines.push(`let gi = gb + ${wr} * GPR + (b * ${u(BC)}) / GS;`);
      lines.push(`let s = ${param("S")};`);
      lines.push(`let z = ${param("Z")};`);
      for (let j = 0; j < BC; j++) lines.push(`let q${j} = f32(${codeExpr(j, bits)});`);
      for (let tt = 0; tt < TT; tt++) {
        const dot = [];
        for (let v = 0; v < BC; v += 8) {
          dot.push(
            `(${Array.from({ length: 8 }, (_, i) => `q${v + i} * x${tt}_${v + i}`).join(" + ")})`,
          );
        }
        lines.push(`${a}${tt} += s * ((${dot.join(" + ")}) - z * sx${tt});`);
      }
    } else {
      const per = format.kind === "f32" ? 1 : 2;
      const words = BC / per;
      const rowEnd = `(mb + ${wr} * RS + RS - 1u)`;
      for (let i = 0; i < words; i++) {
        const idx = `mb + ${wr} * RS + b * ${u(words)} + ${u(i)}`;
        const at = ragged ? `min(${idx}, ${rowEnd})` : idx;
        if (format.kind === "f32") lines.push(`let w${i} = W[${at}];`);
        else if (format.kind === "f16") lines.push(`let p${i} = unpack2x16float(W[${at}]);`);
        else {
          lines.push(`let h${i} = W[${at}];`);
          lines.push(
            `let p${i} = vec2<f32>(bitcast<f32>(h${i} << 16u), bitcast<f32>(h${i} & 0xffff0000u));`,
          );
        }
      }
      const wAt = (j: number) => format.kind === "f32" ? `w${j}` : `p${j >> 1}.${"xy"[j & 1]}`;
      for (let tt = 0; tt < TT; tt++) {
        const dot = [];
        for (let v = 0; v < BC; v += 8) {
          dot.push(
            `(${
              Array.from({ length: 8 }, (_, i) => `${wAt(v + i)} * x${tt}_${v + i}`).join(" + ")
            })`,
          );
        }
        lines.push(`${a}${tt} += ${dot.join(" + ")};`);
      }
    }
    return `{\n        ${lines.join("\n        ")}\n      }`;
  };

  // Accumulators: acc{i}_{tt} (gate or plain) and up{i}_{tt} (gateUp).
  const accDecl: string[] = [];
  const rowCode: string[] = [];
  const stores: string[] = [];
  for (let i = 0; i < RT; i++) {
    for (let tt = 0; tt < TT; tt++) {
      accDecl.push(`var a${i}_${tt} = 0.0;`);
      if (key.gateUp) accDecl.push(`var g${i}_${tt} = 0.0;`);
    }
    const wr = `min(r0 + ${u(i)}, ROWS - 1u)`;
    rowCode.push(rowBlock(wr, `a${i}_`));
    if (key.gateUp) rowCode.push(rowBlock(`(${wr} + ROWS)`, `g${i}_`));
    for (let tt = 0; tt < TT; tt++) {
      const val = key.gateUp
        ? `a${i}_${tt} / (1.0 + exp(-a${i}_${tt})) * g${i}_${tt}`
        : `a${i}_${tt}`;
      stores.push(`if (live${tt} && r0 + ${u(i)} < ROWS) {
    let o = yr${tt} * ROWS + r0 + ${u(i)};
    var v = ${val};
    ${key.bias ? `v += B[r0 + ${u(i)}];` : ""}
    ${key.accumulate ? "v += y[o];" : ""}
    y[o] = v;
  }`);
    }
  }

  const tExpr = useStep ? "step.T" : u(key.fixedT ?? 0);
  const tokenSetup: string[] = [];
  if (list) {
    tokenSetup.push(
      `let e = gex[wg.z];`,
      `let n = route[e];`,
      `let j0 = wg.y * TT;`,
      `if (j0 >= n) { return; }`,
      `let mb = wg.z * MS;`,
      `let gb = wg.z * GSTRIDE;`,
    );
    for (let tt = 0; tt < TT; tt++) {
      tokenSetup.push(
        `let live${tt} = j0 + ${u(tt)} < n;`,
        `let sr${tt} = select(0u, route[NE + e * CAP + min(j0 + ${u(tt)}, CAP - 1u)], live${tt});`,
        `let xr${tt} = ${key.xRows === "slot" ? `sr${tt}` : `sr${tt} / ${u(K)}`};`,
        `let yr${tt} = sr${tt};`,
      );
    }
  } else {
    tokenSetup.push(`let T = ${tExpr};`, `let mb = 0u;`, `let gb = 0u;`);
    for (let tt = 0; tt < TT; tt++) {
      tokenSetup.push(
        `let t${tt} = wg.y * TT + ${u(tt)};`,
        `let live${tt} = t${tt} < T;`,
        `let xr${tt} = select(0u, t${tt}, live${tt});`,
        `let yr${tt} = t${tt};`,
      );
    }
  }

  const code = `${useStep ? STEP_WGSL : ""}
${binds.wgsl}
const ROWS = ${u(rows)};
const COLS = ${u(cols)};
const RS = ${u(rowStride)};
const MS = ${u(matrixStride)};
const GSTRIDE = ${u(groupStride)};
const GPR = ${u(gpr)};
const GS = ${u(format.kind === "q" ? format.groupSize : 1)};
const TT = ${u(TT)};
const NE = ${u(key.numExperts ?? 0)};
const CAP = ${u(key.capacity ?? 1)};

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let r0 = (wg.x * ${u(WG)} + li) * ${u(RT)};
  if (r0 >= ROWS) { return; }
  ${tokenSetup.join("\n  ")}
  let xlim = arrayLength(&x) - 1u;
  ${Array.from({ length: TT }, (_, tt) => `let xo${tt} = xr${tt} * COLS;`).join("\n  ")}
  ${accDecl.join("\n  ")}
  for (var b = 0u; b < ${u(blocks)}; b++) {
    let c0 = b * ${u(BC)};
    ${Array.from({ length: TT }, (_, tt) => `let xb${tt} = xo${tt} + c0;`).join("\n    ")}
    ${xLoads.join("\n    ")}
    ${xSums.join("\n    ")}
    ${rowCode.join("\n    ")}
  }
  ${stores.join("\n  ")}
}
`;
  return {
    label: `tiled.${formatName(format)}.${rows}x${cols}.${key.mode}${
      key.gateUp ? ".gateup" : ""
    }.r${RT}t${TT}`,
    code,
    bindings: binds.names,
  };
}

/** WGSL of code j of a 32-code block held in words w0..w{bits-1}. */
function codeExpr(j: number, bits: number): string {
  const bit = j * bits;
  const w = bit >>> 5;
  const sh = bit & 31;
  const mask = u((1 << bits) - 1);
  const lo = sh === 0 ? `w${w}` : `(w${w} >> ${u(sh)})`;
  if (sh + bits <= 32) return bits === 32 - sh ? lo : `(${lo} & ${mask})`;
  return `((${lo} | (w${w + 1} << ${u(32 - sh)})) & ${mask})`;
}
