/**
 * The element-wise and per-row kernels of the forward pass: embedding lookup, RMSNorm and the
 * SwiGLU activation. Attention is kernels/attention.ts, MoE routing and combine kernels/moe.ts,
 * matmuls kernels/matmul.ts and kernels/tiled.ts, sampling kernels/sample.ts.
 *
 * Activations are f32 row-major [tokens, width]; `step.T` tokens are in flight and the first
 * sits at sequence position `step.pos0`.
 *
 * @module
 */

import { type BindingDecl, f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { slotDecls, slotLabel, type SlotLayout, tokenEntry } from "./slots.ts";
import { ROW_BLOCK_WGSL, weightAtFunction, weightDecls, type WeightFormat } from "./weights.ts";

/** Threads per workgroup of the element-wise kernels. */
export const EW = 64;

/** Workgroups [ceil(width / EW), rows, 1] of an element-wise kernel over `rows` rows. */
export function elementGroups(width: number, rows: number): [number, number, number] {
  return [Math.ceil(width / EW), rows, 1];
}

/**
 * Embedding lookup: out[t, c] = scale · E[tokens[pos0 + t], c], the ids read from the GPU token
 * buffer, the row decoded by kernels/weights.ts `weightAt`; with a slot layout the id is the
 * token's entry in its slot (kernels/slots.ts). Dispatch {@link elementGroups} (hidden, T).
 *
 * With `rowBlock` (an embedding split into row blocks, one dispatch each) the weight set holds
 * the rows given by the `rowBlock` uniform (kernels/weights.ts ROW_BLOCK_WGSL) and the kernel
 * writes only the tokens whose ids fall there: the dispatches of all blocks together gather
 * every token's row.
 */
export function embedSource(
  format: WeightFormat,
  hidden: number,
  scale = 1,
  slots?: SlotLayout,
  rowBlock = false,
): KernelSource {
  const decls: BindingDecl[] = [
    ["step", "Step", "uniform"],
    ...(rowBlock ? [["rowBlock", "RowBlock", "uniform"] as BindingDecl] : []),
    ["tokens", "array<u32>"],
    ...weightDecls(format, "array<f32>"),
    ["out", "array<f32>", "storage, read_write"],
    ...slotDecls(slots),
  ];
  const value = scale === 1 ? "weightAt(row, c)" : `${f(scale)} * weightAt(row, c)`;
  // u32 arithmetic: ids below row0 wrap around to large values and fail the test too.
  const pick = rowBlock
    ? `let row = tokens[${tokenEntry(slots, "t")}] - rowBlock.row0;
  if (row >= rowBlock.rows) { return; }`
    : `let row = tokens[${tokenEntry(slots, "t")}];`;
  return kernelSource(
    `embed.${format.kind}.${hidden}${scale === 1 ? "" : `.x${scale}`}${slotLabel(slots)}${
      rowBlock ? ".block" : ""
    }`,
    decls,
    `${rowBlock ? ROW_BLOCK_WGSL : ""}
${weightAtFunction(format, hidden)}
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let c = id.x;
  let t = id.y;
  if (c >= ${u(hidden)} || t >= step.T) { return; }
  ${pick}
  out[t * ${u(hidden)} + c] = ${value};
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

/**
 * RMSNorm x · w / sqrt(mean(x²) + eps); one workgroup per row. Dispatch (rows, 1, 1) with rows =
 * T · rowsPerToken (1 when `lastOnly`).
 */
export function rmsNormSource(key: RmsNormKey): KernelSource {
  const { width, rowsPerToken } = key;
  const decls: BindingDecl[] = key.inPlace
    ? [["step", "Step", "uniform"], ["x", "array<f32>", "storage, read_write"], ["w", "array<f32>"]]
    : [
      ["step", "Step", "uniform"],
      ["x", "array<f32>"],
      ["w", "array<f32>"],
      ["out", "array<f32>", "storage, read_write"],
    ];
  const dst = key.inPlace ? "x" : "out";
  return kernelSource(
    `rmsnorm.${width}.${rowsPerToken}${key.inPlace ? ".inplace" : ""}${
      key.lastOnly ? ".last" : ""
    }`,
    decls,
    `
var<workgroup> partial: array<f32, ${EW}>;
@compute @workgroup_size(${EW})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let rows = ${key.lastOnly ? "1u" : `step.T * ${u(rowsPerToken)}`};
  if (wg.x >= rows) { return; }
  let src = ${key.lastOnly ? `(step.T - 1u) * ${u(width)}` : `wg.x * ${u(width)}`};
  let dst = wg.x * ${u(width)};
  var s = 0.0;
  for (var i = li; i < ${u(width)}; i += ${u(EW)}) { let v = x[src + i]; s += v * v; }
  partial[li] = s;
  workgroupBarrier();
  for (var h = ${u(EW / 2)}; h > 0u; h >>= 1u) {
    if (li < h) { partial[li] += partial[li + h]; }
    workgroupBarrier();
  }
  let inv = inverseSqrt(partial[0] / ${f(width)} + ${f(key.eps)});
  for (var i = li; i < ${u(width)}; i += ${u(EW)}) {
    ${dst}[dst + i] = x[src + i] * inv * w[i % ${u(width)}];
  }
}`,
  );
}

/**
 * SwiGLU activation in place: gate = silu(gate) · up over [T · rowsPerToken, width]. Dispatch
 * {@link elementGroups} (width, T · rowsPerToken).
 */
export function swigluSource(width: number, rowsPerToken: number): KernelSource {
  return kernelSource(
    `swiglu.${width}.${rowsPerToken}`,
    [["step", "Step", "uniform"], ["gate", "array<f32>", "storage, read_write"], [
      "up",
      "array<f32>",
    ]],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x >= ${u(width)} || id.y >= step.T * ${u(rowsPerToken)}) { return; }
  let i = id.y * ${u(width)} + id.x;
  let a = gate[i];
  gate[i] = a / (1.0 + exp(-a)) * up[i];
}`,
  );
}
