/**
 * moeq's runtime library: load a compiled artifact and run it with WebGPU.
 *
 * ```ts
 * import { loadModel } from "./runtime/mod.ts";
 * const engine = await loadModel("model.moeq");
 * const logits = await engine.logits([1, 2, 3]);
 * for await (const id of engine.generate([1, 2, 3], { maxTokens: 16 })) console.log(id);
 * engine.dispose();
 * ```
 *
 * @module
 */

import { type Artifact, openArtifact, openArtifactBytes } from "../schemas/artifact.ts";
import { createWebGpuEngine, type WebGpuEngine, type WebGpuEngineOptions } from "./engine/mod.ts";

export type { Engine, EngineStats, GenerateOptions } from "./api.ts";
export { type Artifact, openArtifact, openArtifactBytes } from "../schemas/artifact.ts";
export { requestGpu } from "./device.ts";
export type { DeviceNeeds, DeviceOptions, GpuContext } from "./device.ts";
export { checkSupported, createWebGpuEngine, formatOf } from "./engine/mod.ts";
export type { EngineArtifact, WebGpuEngine, WebGpuEngineOptions } from "./engine/mod.ts";
export { readbackCount } from "./kernels/kernel.ts";
export * from "../schemas/errors.ts";

/**
 * Opens an artifact (a path, or its bytes) and creates a WebGPU engine for it. The artifact file
 * is closed once the weights are on the GPU.
 */
export async function loadModel(
  pathOrBytes: string | Uint8Array,
  opts: WebGpuEngineOptions = {},
): Promise<WebGpuEngine> {
  const artifact: Artifact = typeof pathOrBytes === "string"
    ? await openArtifact(pathOrBytes)
    : await openArtifactBytes(pathOrBytes);
  try {
    return await createWebGpuEngine(artifact, opts);
  } finally {
    artifact.close();
  }
}
