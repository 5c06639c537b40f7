/**
 * What routed experts may add around their matmuls (gpt-oss): a per-expert bias added to each
 * (token, slot) row by the expert that row was routed to, and the clamped SwiGLU activation.
 * Rows are (token, slot) rows t·K + k; expertIds [T, K] names each row's expert.
 *
 * @module
 */

import { f, type KernelSource, kernelSource, u } from "./kernel.ts";
import { EW } from "./ops.ts";

/**
 * y[r, c] += bias[expertIds[r], c] over the T·topK rows of `width`; bias is [E, width].
 * Dispatch ops.ts elementGroups(width, T · topK).
 */
export function expertBiasSource(width: number, topK: number): KernelSource {
  return kernelSource(
    `expert_bias.${width}.${topK}`,
    [
      ["step", "Step", "uniform"],
      ["y", "array<f32>", "storage, read_write"],
      ["bias", "array<f32>"],
      ["expertIds", "array<u32>"],
    ],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let c = id.x;
  let r = id.y;
  if (c >= ${u(width)} || r >= step.T * ${u(topK)}) { return; }
  y[r * ${u(width)} + c] += bias[expertIds[r] * ${u(width)} + c];
}`,
  );
}

/**
 * Clamped SwiGLU in place: g = min(gate, limit), v = clamp(up, −limit, limit),
 * gate = (v + 1) · g · σ(alpha · g), over [T · rowsPerToken, width]. Dispatch ops.ts
 * elementGroups(width, T · rowsPerToken).
 */
export function clampedSwigluSource(
  width: number,
  rowsPerToken: number,
  limit: number,
  alpha: number,
): KernelSource {
  return kernelSource(
    `swiglu_clamped.${width}.${rowsPerToken}.${limit}.${alpha}`,
    [["step", "Step", "uniform"], ["gate", "array<f32>", "storage, read_write"], [
      "up",
      "array<f32>",
    ]],
    `
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x >= ${u(width)} || id.y >= step.T * ${u(rowsPerToken)}) { return; }
  let i = id.y * ${u(width)} + id.x;
  let g = min(gate[i], ${f(limit)});
  let v = clamp(up[i], ${f(-limit)}, ${f(limit)});
  gate[i] = (v + 1.0) * g / (1.0 + exp(-${f(alpha)} * g));
}`,
  );
}
