/**
 * The WebGPU engine: runs an artifact's model description on the GPU. Loading is five steps,
 * one module each:
 *
 * 1. support.ts — refuse, by name, any block variant the engine does not implement;
 * 2. weights.ts — upload the tensor records, found by (stack, layer, expert, role) key, as GPU
 *    weight sets grouped per block (with the tiled style's q/k/v and gate/up stacking);
 * 3. activations.ts — the activation buffers, KV caches and RoPE tables, for a context that
 *    context.ts chooses (the model's positions within the device memory, or maxContext, checked);
 * 4. plan.ts + blocks.ts — the dispatch lists: embed → for each layer its blocks → final norm →
 *    head, one plan per (token tile, logits mode); all pipelines compiled in parallel with
 *    createComputePipelineAsync, then bound;
 * 5. generation.ts — warm-up, then logits, the GPU-resident decode loop and context shifting;
 *    with option `parallel` > 1, batch.ts's continuous-batching loop over that many slots.
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
import { DeviceError, LimitError, UsageError } from "../../schemas/errors.ts";
import {
  bindKernel,
  type Dispatch,
  getKernel,
  prepareKernels,
  STEP_BYTES,
} from "../kernels/kernel.ts";
import { createBatchSampler, createSampler } from "../kernels/sample.ts";
import {
  activationBytes,
  createActivations,
  createKvCache,
  type KvCache,
  RopeTables,
} from "./activations.ts";
import {
  chooseContext,
  DEFAULT_BINDING_BYTES,
  type DeviceBytes,
  deviceBytes,
  type PerTokenBytes,
  perTokenBytes,
  prefillChunk,
  UNKNOWN_POSITIONS_CONTEXT,
  weightDeviceBytes,
} from "./context.ts";
import { createGeneration, type Plans } from "./generation.ts";
import { createMlaCache } from "./mla.ts";
import { buildPlan, type LogitsMode, type PendingDispatch, type PlanContext } from "./plan.ts";
import { createSeq2SeqEngine, seq2seqChunk } from "./seq2seq.ts";
import { checkSupported } from "./support.ts";
import { type EngineArtifact, largestDenseMatrix, uploadWeights } from "./weights.ts";
import { bindingLimit, fitChunk, wantedLimits } from "./limits.ts";

export { checkSupported } from "./support.ts";
export { type EngineArtifact, formatOf } from "./weights.ts";
export {
  type DeviceBytes,
  deviceBytes,
  perTokenBytes,
  plannedDeviceBytes,
  weightDeviceBytes,
} from "./context.ts";

/** Options of {@link createWebGpuEngine}. */
export interface WebGpuEngineOptions {
  /** Use shader-f16 when available (default true); false forces the f32-only path. */
  f16?: boolean;
  /** Use this device instead of requesting one. */
  device?: GPUDevice;
  /**
   * KV-cache length in tokens. Default: the model's max_position_embeddings, capped by the
   * device memory and the default binding limit (context.ts). A given value is checked: more
   * than the model's positions is a UsageError, more than the memory holds a LimitError.
   */
  maxContext?: number;
  /**
   * Device memory the engine may fill (weights + activations + KV cache), bytes. Default: half
   * the host's available memory on CPU adapters (their buffers live there); unknown on GPUs,
   * which WebGPU does not size (the default context then caps the KV cache at 1 GiB).
   */
  memoryBytes?: number;
  /** The name of `maxContext` in error messages (e.g. "--context"; default "maxContext"). */
  contextFlag?: string;
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
   * Sequences decoded together (continuous batching slots; default 1, which runs today's
   * one-sequence loop). Each slot has its own KV-cache region of maxContext positions, so the KV
   * memory grows by this factor (GQA caches and MLA latent caches alike); at most the prefill
   * chunk. Encoder–decoder models run one sequence at a time (the option is ignored).
   */
  parallel?: number;
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
  /** What the device holds: weights, activations, KV cache per token and at maxContext. */
  readonly deviceBytes: DeviceBytes;
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
  /** Sequences decoded together (see {@link WebGpuEngineOptions.parallel}). */
  readonly parallel: number;
  /** Bytes of the KV caches of all slots. */
  readonly kvCacheBytes: number;
}

/** Device memory on a CPU adapter: half of what the host has available now. */
function hostMemoryBudget(): number {
  return Math.floor(Deno.systemMemoryInfo().available / 2);
}

/**
 * Batched decode plans: token tiles (a step of B slots runs the plan of the smallest tile ≥ B, or
 * the largest) and rows per invocation of their tiled matmuls. A batch needs many rows per
 * invocation (each loads the tile's activations once for all its rows) and few tokens (more
 * spill registers on llvmpipe). Measured on lavapipe, 4-bit 2048 × 2048, min of 3 (noisy, load
 * ~16): per token 2.6–2.8 ms one at a time (8 or 32 rows, tile 1); 1.0–1.1 ms with tile 4 and
 * 32–64 rows; 1.6 ms with tile 2 (one plan of tile 4 serves 2 slots about as fast, and each plan
 * costs JIT time at load); tile 8 1.4–2.7 ms.
 */
const BATCH_TILES = [4];
/** Rows per invocation of the batch plans' packed-weight matmuls (float ones keep rowTile). */
const BATCH_ROW_TILE = 32;
/**
 * Token tile of the routed-expert matmuls of the prefill and batched decode plans (tiled style;
 * one pipeline per expert shape serves both). A tile runs one pass for all its tokens only when
 * more than half of them are live, else single-token passes (kernels/tiled.ts): on lavapipe a
 * 2-token pass costs as much as two single ones, a full 4-token pass of 16 rows ≈ 2–2.8.
 */
const EXPERT_TILE = 4;
/**
 * Rows per invocation of the packed routed-expert matmuls of the prefill and batched decode
 * plans. Measured on lavapipe on the 1.05 GB synthetic's experts (4-bit [gate; up] 2·16384 × 4096,
 * down 4096 × 16384, min of 3–4): a full 4-token tile costs 141–157 / 91–95 ms at 16 rows vs
 * 179–193 / 113–123 ms at 8; single-token passes 86–90 / 37 ms vs 69–70 / 34 ms.
 */
const EXPERT_ROW_TILE = 16;

/** The batch plans' token tiles for `parallel` slots. */
function batchTiles(parallel: number): number[] {
  const tiles = BATCH_TILES.filter((t) => t < parallel);
  return [...tiles, Math.min(parallel, BATCH_TILES.at(-1)!)];
}

/** Validates the `parallel` option: a positive integer (GQA and MLA caches both take slots). */
function checkParallel(parallel: number): number {
  if (!Number.isInteger(parallel) || parallel < 1) {
    throw new UsageError(`parallel: ${parallel} is not a positive integer`);
  }
  return parallel;
}

/** A batched decode step holds one token per slot: `parallel` is at most the prefill chunk. */
function checkParallelChunk(parallel: number, chunk: number): void {
  if (parallel > chunk) {
    throw new UsageError(`parallel: ${parallel} exceeds the prefill chunk of ${chunk} tokens`);
  }
}

/** Per-token device bytes of `slots` sequences, each with its own caches and token entries. */
function perSlots(p: PerTokenBytes, slots: number): PerTokenBytes {
  return { kv: p.kv * slots, other: p.other * slots, widestBuffer: p.widestBuffer * slots };
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
  // Encoder–decoder models stay single-stream (seq2seq.ts).
  const parallel = spec.encoder ? 1 : checkParallel(opts.parallel ?? 1);
  // Every slot has its own KV cache and token entries: per-token bytes are paid once per slot.
  const perToken = perSlots(perTokenBytes(spec), parallel);
  const positions = spec.maxPositions > 0 ? spec.maxPositions : UNKNOWN_POSITIONS_CONTEXT;
  // Upper bounds before the context is chosen: the requested context (checked below), else at
  // most what the default binding limit holds per KV buffer.
  const contextRequest = {
    maxPositions: spec.maxPositions,
    requested: opts.maxContext,
    perToken,
    flag: `${opts.contextFlag ?? "maxContext"}${parallel > 1 ? ` (× ${parallel} slots)` : ""}`,
  };
  // A requested context is checked against the model (and a given memory) before the device.
  chooseContext({ ...contextRequest, fixedBytes: 0, memoryBytes: opts.memoryBytes ?? null });
  const contextBound = opts.maxContext ??
    Math.min(positions, Math.floor(DEFAULT_BINDING_BYTES / Math.max(1, perToken.widestBuffer)));
  const chunkBound = prefillChunk(spec, opts.prefillChunk, Math.max(1, contextBound));
  checkParallelChunk(parallel, chunkBound);

  // Bindings as large as the largest matrix and activation are wanted (larger ones are split,
  // the chunk shrinks); a KV cache cannot be split, so its size is needed.
  const tokens = spec.encoder ? seq2seqChunk(spec, opts) : chunkBound;
  const wants = wantedLimits(spec, tokens, largestDenseMatrix(artifact.tensors));
  const slotBinding = Math.max(1, contextBound) * perToken.widestBuffer;
  // A refusal caused by the slots' KV caches says so.
  const kvNote = parallel > 1
    ? ` (the KV cache of ${parallel} slots × ${contextBound} positions: lower parallel or the context)`
    : "";
  const { device, f16, cpu } = await acquireDevice(opts, slotBinding, wants).catch((e) => {
    if (e instanceof LimitError && kvNote) throw new LimitError(`${e.message}${kvNote}`);
    throw e;
  });
  // Encoder–decoder models run on their own plans (seq2seq.ts).
  if (spec.encoder) {
    return await createSeq2SeqEngine(artifact, { device, f16, cpu, owned: !opts.device }, opts);
  }
  const maxBinding = bindingLimit(device.limits, opts.maxBinding);
  const weightEstimate = weightDeviceBytes(artifact.tensors);
  const actBytes = activationBytes(spec, chunkBound);
  let maxContext: number;
  let chunk: number;
  try {
    maxContext = chooseContext({
      ...contextRequest,
      fixedBytes: weightEstimate + actBytes,
      memoryBytes: opts.memoryBytes ?? (cpu ? hostMemoryBudget() : null),
    });
    chunk = fitChunk(spec, Math.min(chunkBound, maxContext), maxBinding);
    checkParallelChunk(parallel, chunk);
  } catch (e) {
    if (!opts.device) device.destroy();
    throw e;
  }
  const tiled = (opts.kernels ?? (cpu ? "tiled" : "classic")) === "tiled";
  const tokenTile = opts.prefillTile ?? (tiled ? 8 : 4);
  device.pushErrorScope("validation");
  device.pushErrorScope("out-of-memory");

  const weights = await uploadWeights(device, artifact, { fuse: tiled, maxBinding });
  const acts = createActivations(device, spec, chunk, maxContext, parallel);
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
          ? createMlaCache(device, a, maxContext, label, parallel)
          : createKvCache(device, a, maxContext, label, parallel),
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
  const batchSampler = parallel > 1
    ? createBatchSampler(device, spec.vocabSize, parallel, maxContext + 1, {
      logits: acts.logits,
      ids: acts.tokens,
      rows: acts.rows,
    })
    : undefined;

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
    expertTokenTile: EXPERT_TILE,
    expertRowTile: opts.rowTile ?? EXPERT_ROW_TILE,
    threadsPerRow: opts.threadsPerRow ?? (cpu ? 16 : 64),
    chunk,
  };
  // Multi-slot engines: one-sequence plans take their slot from the Step uniform, the batched
  // decode plan (one token of each of up to `parallel` slots) reads (slot, position) rows.
  const one: PlanContext = parallel > 1
    ? { ...ctx, slots: { context: maxContext, source: "step" } }
    : ctx;
  const modes: LogitsMode[] = ["all", "none", "last"];
  const pending = modes.map((mode) => buildPlan(one, tokenTile, mode, true));
  const pendingDecode = buildPlan(one, 1, "last", false);
  const batchCtx: PlanContext = {
    ...ctx,
    packedRowTile: opts.rowTile ?? BATCH_ROW_TILE,
    slots: { context: maxContext, source: "rows" },
  };
  const tiles = parallel > 1 ? batchTiles(parallel) : [];
  const pendingBatch = tiles.map((tile) => buildPlan(batchCtx, tile, "all", false));
  await Promise.all([
    prepareKernels(
      device,
      [...pending, pendingDecode, ...pendingBatch].flat().map((p) => p.src),
    ),
    sampler.ready,
    batchSampler?.ready,
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
    batch: tiles.map((tile, i) => ({ tile, dispatches: bind(pendingBatch[i]) })),
  };
  const oom = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  if (oom) {
    const kv = parallel > 1 ? ` (KV caches of ${parallel} slots × ${maxContext} positions)` : "";
    throw new LimitError(`GPU out of memory while loading ${file}: ${oom.message}${kv}`);
  }
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
    parallel,
    batchSampler,
  });
  await generation.warmUp();
  let kvCacheBytes = 0;
  for (const c of caches.values()) kvCacheBytes += c.keys.size + c.values.size;

  let disposed = false;
  return {
    model: spec,
    device,
    f16,
    maxContext,
    weightBytes: weights.bytes,
    deviceBytes: deviceBytes(
      spec,
      weights.bytes,
      activationBytes(spec, chunk),
      maxContext,
      parallel,
    ),
    kernels: tiled ? "tiled" : "classic",
    dispatchesPerToken: plans.decode.length,
    prefillChunk: chunk,
    parallel,
    kvCacheBytes,
    logits: generation.logits,
    generate: generation.generate,
    profileKernels: generation.profileKernels,
    stats: generation.stats,
    dispose() {
      if (disposed) return;
      disposed = true;
      generation.close();
      sampler.dispose();
      batchSampler?.dispose();
      if (!opts.device) device.destroy();
    },
  };
}
