/**
 * LayerNorm (PhiMoE): out = (x − mean) · w / sqrt(var + eps) (+ b), the biased variance over
 * the row, as torch.nn.LayerNorm; one workgroup per token row. kernels/ops.ts has RMSNorm.
 *
 * @module
 */

import { type BindingDecl, f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";

/** Options of {@link layerNormSource}. */
export interface LayerNormKey {
  width: number;
  eps: number;
  /** Add the bias vector (binding "b"). */
  bias: boolean;
  /** Only the last token: reads row T − 1, writes row 0 (final norm before last-position logits). */
  lastOnly?: boolean;
}

/** LayerNorm of x [T, width] into out. Dispatch (T, 1, 1) ((1, 1, 1) when `lastOnly`). */
export function layerNormSource(key: LayerNormKey): KernelSource {
  const { width } = key;
  const decls: BindingDecl[] = [
    ["step", "Step", "uniform"],
    ["x", "array<f32>"],
    ["w", "array<f32>"],
    ["out", "array<f32>", "storage, read_write"],
  ];
  if (key.bias) decls.push(["b", "array<f32>"]);
  return kernelSource(
    `layernorm.${width}${key.bias ? ".bias" : ""}${key.lastOnly ? ".last" : ""}`,
    decls,
    `
var<workgroup> partial: array<f32, ${EW}>;
fn rowSum(li: u32, v: f32) -> f32 {
  partial[li] = v;
  workgroupBarrier();
  for (var h = ${u(EW / 2)}; h > 0u; h >>= 1u) {
    if (li < h) { partial[li] += partial[li + h]; }
    workgroupBarrier();
  }
  let s = partial[0];
  workgroupBarrier();
  return s;
}
@compute @workgroup_size(${EW})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let rows = ${key.lastOnly ? "1u" : "step.T"};
  if (wg.x >= rows) { return; }
  let src = ${key.lastOnly ? `(step.T - 1u) * ${u(width)}` : `wg.x * ${u(width)}`};
  let dst = wg.x * ${u(width)};
  var s = 0.0;
  for (var i = li; i < ${u(width)}; i += ${u(EW)}) { s += x[src + i]; }
  let mean = rowSum(li, s) / ${f(width)};
  var ss = 0.0;
  for (var i = li; i < ${u(width)}; i += ${u(EW)}) { let d = x[src + i] - mean; ss += d * d; }
  let inv = inverseSqrt(rowSum(li, ss) / ${f(width)} + ${f(key.eps)});
  for (var i = li; i < ${u(width)}; i += ${u(EW)}) {
    out[dst + i] = (x[src + i] - mean) * inv * w[i]${key.bias ? " + b[i]" : ""};
  }
}`,
  );
}
