/**
 * moeq's WebGPU kernels: the fused-dequantization matmul for every weight format, the rest of
 * the forward pass, and the GPU sampler.
 *
 * @module
 */

export * from "./kernel.ts";
export * from "./matmul.ts";
export * from "./ops.ts";
export { createSampler, type Sampler, type SamplerParams } from "./sample.ts";
export * from "./tiled.ts";
