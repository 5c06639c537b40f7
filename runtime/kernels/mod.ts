/**
 * moeq's WebGPU kernels: weight storage and decoding, the fused-decoding matmuls (classic and
 * tiled), attention, MoE routing and combine, the element-wise kernels, and the GPU sampler.
 *
 * @module
 */

export * from "./attention.ts";
export * from "./kernel.ts";
export * from "./matmul.ts";
export * from "./moe.ts";
export * from "./ops.ts";
export { createSampler, type Sampler, type SamplerParams } from "./sample.ts";
export * from "./tiled.ts";
export * from "./weights.ts";
