/**
 * The WebGPU engine: runs an artifact's model description on the GPU. Loading is five steps,
 * one module each:
 *
 * 1. support.ts — refuse, by name, any block variant the engine does not implement;
 * 2. weights.ts — upload the tensor records, found by (stack, layer, expert, role) key, as GPU
 *    weight sets grouped per block (with the tiled style's q/k/v and gate/up stacking);
 * 3. activations.ts — the activation buffers, KV caches and RoPE tables;
 * 4. plan.ts + blocks.ts — the dispatch lists: embed → for each layer its blocks → final norm →
 *    head, one plan per (token tile, logits mode); all pipelines compiled in parallel with
 *    createComputePipelineAsync, then bound;
 * 5. generation.ts — warm-up, then logits, the GPU-resident decode loop and context shifting.
 *
 * Two kernel styles (option `kernels`): "classic" (kernels/matmul.ts, threads cooperate on a
 * row; the default on GPUs) and "tiled" (kernels/tiled.ts, register tiles of rows × tokens; the
 * default on CPU adapters, where every scalar load costs a bounds-checked lane load and every
 * dispatch a fixed ~0.2–0.5 ms). In the tiled style the router is followed by one route-lists
 * dispatch that builds, on the GPU, each expert's list of routed (token, slot) rows, and the
 * expert matmuls walk those lists, so an expert touches only its tokens; gate and up are
 * stacked and fused with SwiGLU, and q/k/v are stacked when the model has no q/k norm. Classic
 * expert matmuls instead scan the chosen ids and exit for tiles with no hit.
 *
 * @module
 */

import type { Engine } from "../api.ts";
import { describeAdapter, requestGpu } from "../device.ts";
import { DeviceError, LimitError } from "../../schemas/errors.ts";
import type { ModelSpec } from "../../schemas/model.ts";
import {
  bindKernel,
  type Dispatch,
  getKernel,
  prepareKernels,
  STEP_BYTES,
} from "../kernels/kernel.ts";
import { createSampler } from "../kernels/sample.ts";
import {
  activationWidths,
  createActivations,
  createKvCache,
  type KvCache,
  RopeTables,
} from "./activations.ts";
import { createGeneration, type Plans } from "./generation.ts";
import { createMlaCache } from "./mla.ts";
import { buildPlan, type LogitsMode, type PendingDispatch, type PlanContext } from "./plan.ts";
import { checkSupported } from "./support.ts";
import { type EngineArtifact, largestDenseMatrix, uploadWeights } from "./weights.ts";
import { bindingLimit, fitChunk, wantedLimits } from "./limits.ts";

export { checkSupported } from "./support.ts";
export { type EngineArtifact, formatOf } from "./weights.ts";

/** Options of {@link createWebGpuEngine}. */
export interface WebGpuEngineOptions {
  /** Use shader-f16 when available (default true); false forces the f32-only path. */
  f16?: boolean;
  /** Use this device instead of requesting one. */
  device?: GPUDevice;
  /** KV-cache length in tokens (default min(model.maxPositions, 4096)). */
  maxContext?: number;
  /** Tokens per prefill batch (default: up to 128, fewer for large vocabularies). */
  prefillChunk?: number;
  /** Tokens per workgroup in prefill matmuls (default 8 tiled, 4 classic). */
  prefillTile?: number;
  /** Most threads per matrix row in classic matmuls (default: 64 on GPUs, 16 on CPU adapters). */
  threadsPerRow?: number;
  /**
   * Matmul kernel style: "tiled" (register-tiled, routed-token expert lists, fused gate/up and
   * q/k/v; made for CPU adapters, see kernels/tiled.ts) or "classic" (threads cooperate on a
   * row, coalesced reads; made for GPUs). Default: tiled on CPU adapters, classic otherwise.
   */
  kernels?: "tiled" | "classic";
  /** Output rows per invocation in tiled matmuls (default 8). */
  rowTile?: number;
  /**
   * Largest buffer binding to use, bytes (default: the device's maxStorageBufferBindingSize and
   * maxBufferSize). Larger matrices are split into row blocks and the prefill chunk shrinks to
   * fit; a smaller value forces those paths on any adapter (CLI `--max-binding`).
   */
  maxBinding?: number;
}

/** The WebGPU engine; see the module docs. */
export interface WebGpuEngine extends Engine {
  /** The device in use. */
  readonly device: GPUDevice;
  /** Whether shader-f16 is enabled. */
  readonly f16: boolean;
  /** KV-cache capacity in tokens. */
  readonly maxContext: number;
  /** Bytes of weights resident on the GPU. */
  readonly weightBytes: number;
  /**
   * Diagnostics: runs each dispatch of the decode plan (T = 1) or of the prefill plan (T tokens)
   * alone, `repeats` times, and returns the mean milliseconds per kernel label (summed over
   * layers). Includes the per-submission cost; uses onSubmittedWorkDone, not readbacks.
   */
  profileKernels(T: number, repeats?: number): Promise<Map<string, number>>;
  /** Kernel style in use (see {@link WebGpuEngineOptions.kernels}). */
  readonly kernels: "tiled" | "classic";
  /** Compute dispatches per decode step (one submission each), sampler excluded. */
  readonly dispatchesPerToken: number;
  /** Tokens per prefill submission. */
  readonly prefillChunk: number;
}

/** KV-cache capacity and tokens per forward for a model and the options. */
function contextSizes(spec: ModelSpec, opts: WebGpuEngineOptions) {
  const maxContext = opts.maxContext ?? Math.min(spec.maxPositions || 4096, 4096);
  // Default chunk: up to 128 tokens (fewer submissions and dispatches per prompt), fewer for
  // large vocabularies so the logits buffer stays within 64 MiB; the route lists hold
  // chunk · top-k rows in workgroup memory (≤ 4096).
  const defaultChunk = Math.max(16, Math.min(128, Math.floor(2 ** 26 / (spec.vocabSize * 4))));
  const topK = activationWidths(spec).topK;
  const chunk = Math.max(
    1,
    Math.min(opts.prefillChunk ?? defaultChunk, maxContext, Math.floor(4096 / topK)),
  );
  return { maxContext, chunk };
}

/**
 * The device, either given (checked against the model's needs) or requested with them; the
 * binding size is only wanted (larger matrices are split), the KV cache's is needed.
 */
async function acquireDevice(
  opts: WebGpuEngineOptions,
  needBinding: number,
  wants: { maxStorageBufferBindingSize: number; maxBufferSize: number },
): Promise<{ device: GPUDevice; f16: boolean; cpu: boolean }> {
  if (opts.device) {
    const device = opts.device;
    const cpu = describeAdapter((device as { adapterInfo?: GPUAdapterInfo }).adapterInfo).cpu;
    const f16 = (opts.f16 ?? true) && device.features.has("shader-f16");
    const offers = bindingLimit(device.limits);
    if (offers < needBinding) {
      throw new LimitError(
        `the model needs maxStorageBufferBindingSize = ${needBinding} but the device offers ${offers}`,
      );
    }
    return { device, f16, cpu };
  }
  return await requestGpu({
    f16: opts.f16,
    needs: {
      maxBufferSize: needBinding,
      maxStorageBufferBindingSize: needBinding,
      maxStorageBuffersPerShaderStage: 7,
    },
    wants,
  });
}

/**
 * Creates a WebGPU engine for an opened artifact: checks the description, acquires a device
 * with the limits the model needs, uploads every tensor, builds and compiles the plans and runs
 * each once.
 */
export async function createWebGpuEngine(
  artifact: EngineArtifact,
  opts: WebGpuEngineOptions = {},
): Promise<WebGpuEngine> {
  const spec = artifact.model;
  const file = artifact.path;
  checkSupported(spec);
  const { maxContext, chunk: wantChunk } = contextSizes(spec, opts);

  // Bindings as large as the largest matrix and activation are wanted (larger ones are split,
  // the chunk shrinks); a KV cache cannot be split, so its size is needed.
  const widths = activationWidths(spec);
  const wants = wantedLimits(spec, wantChunk, largestDenseMatrix(artifact.tensors));
  const { device, f16, cpu } = await acquireDevice(opts, maxContext * widths.kv * 4, wants);
  const maxBinding = bindingLimit(device.limits, opts.maxBinding);
  const chunk = fitChunk(spec, wantChunk, maxBinding);
  const tiled = (opts.kernels ?? (cpu ? "tiled" : "classic")) === "tiled";
  const tokenTile = opts.prefillTile ?? (tiled ? 8 : 4);
  device.pushErrorScope("validation");
  device.pushErrorScope("out-of-memory");

  const weights = await uploadWeights(device, artifact, { fuse: tiled, maxBinding });
  const acts = createActivations(device, spec, chunk, maxContext);
  const caches = new Map<string, KvCache>();
  const ropes = new Map<string, GPUBuffer>();
  const ropeTables = new RopeTables(device, maxContext);
  spec.decoder.layers.forEach((layer, l) =>
    layer.blocks.forEach((block, b) => {
      if (block.kind !== "attention") return;
      const a = block.attention, label = `kv.${l}.${b}`;
      caches.set(
        `${l}/${b}`,
        a.kind === "mla"
          ? createMlaCache(device, a, maxContext, label)
          : createKvCache(device, a, maxContext, label),
      );
      ropes.set(`${l}/${b}`, ropeTables.for(block.attention));
    })
  );
  const step = device.createBuffer({
    label: "step",
    size: STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  const sampler = createSampler(device, spec.vocabSize);

  // Build every plan, compile all their pipelines in parallel, then bind: no pipeline is
  // created at first use.
  const ctx: PlanContext = {
    spec,
    weights,
    acts,
    caches,
    ropes,
    step,
    tiled,
    rowTile: opts.rowTile ?? 8,
    threadsPerRow: opts.threadsPerRow ?? (cpu ? 16 : 64),
    chunk,
  };
  const modes: LogitsMode[] = ["all", "none", "last"];
  const pending = modes.map((mode) => buildPlan(ctx, tokenTile, mode, true));
  const pendingDecode = buildPlan(ctx, 1, "last", false);
  await Promise.all([
    prepareKernels(device, [...pending, pendingDecode].flat().map((p) => p.src)),
    sampler.ready,
  ]);
  const bind = (list: PendingDispatch[]): Dispatch[] =>
    list.map((p) => {
      const kernel = getKernel(device, p.src);
      return { kernel, bindGroup: bindKernel(device, kernel, p.buffers), groups: p.groups };
    });
  const plans: Plans = {
    tokenTile,
    prefill: { all: bind(pending[0]), none: bind(pending[1]), last: bind(pending[2]) },
    decode: bind(pendingDecode),
  };
  const oom = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  if (oom) throw new LimitError(`GPU out of memory while loading ${file}: ${oom.message}`);
  if (invalid) {
    throw new DeviceError(`WebGPU validation failed while loading ${file}: ${invalid.message}`);
  }

  const generation = createGeneration({
    device,
    spec,
    plans,
    acts,
    step,
    sampler,
    maxContext,
    chunk,
  });
  await generation.warmUp();

  let disposed = false;
  return {
    model: spec,
    device,
    f16,
    maxContext,
    weightBytes: weights.bytes,
    kernels: tiled ? "tiled" : "classic",
    dispatchesPerToken: plans.decode.length,
    prefillChunk: chunk,
    logits: generation.logits,
    generate: generation.generate,
    profileKernels: generation.profileKernels,
    dispose() {
      if (disposed) return;
      disposed = true;
      generation.close();
      sampler.dispose();
      if (!opts.device) device.destroy();
    },
  };
}
