/**
 * Sizing the KV cache: what the device must hold for a model at a context length, and the
 * context the engine picks (or checks, when the caller names one).
 *
 * Device bytes = weights + activations (a forward of `chunk` tokens, fixed) + context ×
 * (KV cache + RoPE table rows + the two u32 token buffers) per token. The default context is
 * the model's max_position_embeddings, capped so that (1) each context-sized buffer (a block's
 * keys or values, the widest) stays within the WebGPU default binding limit that every adapter
 * offers, and (2) the total fits the device memory. WebGPU does not report a device's memory:
 * on CPU adapters (lavapipe, llvmpipe, SwiftShader) buffers live in host memory, so the host's
 * available memory is the budget; on GPUs the caller may give one (`memoryBytes`), otherwise
 * only the KV cache is capped, at {@link DEFAULT_GPU_KV_BYTES}.
 *
 * @module
 */

import { LimitError, UsageError } from "../../schemas/errors.ts";
import type { ModelSpec } from "../../schemas/model.ts";
import { kvCacheCost } from "../../schemas/kv_cache.ts";
import type { TensorRecord } from "../../schemas/artifact.ts";
import { matrixBytes } from "../kernels/weights.ts";
import { formatOf } from "./weights.ts";
import { activationBytes, activationWidths } from "./activations.ts";

/** The WebGPU default maxStorageBufferBindingSize: every adapter offers at least this. */
export const DEFAULT_BINDING_BYTES = 134217728;

/** KV-cache cap of the default context on GPUs whose memory is not given. */
export const DEFAULT_GPU_KV_BYTES = 1 << 30;

/** Context length used when a model does not state max_position_embeddings. */
export const UNKNOWN_POSITIONS_CONTEXT = 4096;

/**
 * Bytes the weights take on the device: matrices in their storage format (kernels/weights.ts
 * layout), vectors as f32. Known from the records alone, before anything is uploaded.
 */
export function weightDeviceBytes(tensors: readonly TensorRecord[]): number {
  let bytes = 0;
  for (const t of tensors) {
    bytes += t.shape.length === 2
      ? matrixBytes(formatOf(t), t.shape[0], t.shape[1])
      : 4 * t.shape.reduce((a, b) => a * b, 1);
  }
  return bytes;
}

/** Device bytes that grow with the context, per token. */
export interface PerTokenBytes {
  /** KV caches of every attention block (schemas/kv_cache.ts). */
  kv: number;
  /** RoPE table rows (one table per distinct rotary setting) and the token buffers. */
  other: number;
  /** The widest single context-sized buffer (one block's keys, values or latent), per token. */
  widestBuffer: number;
}

/** Per-token device bytes of `spec` as the engine allocates them (f32 caches and tables). */
export function perTokenBytes(spec: ModelSpec): PerTokenBytes {
  const ropes = new Map<string, number>();
  let widest = 0;
  for (const layer of spec.decoder.layers) {
    for (const block of layer.blocks) {
      if (block.kind !== "attention") continue;
      const a = block.attention;
      widest = Math.max(
        widest,
        4 * (a.kind === "mla" ? a.kvLoraRank + a.qkRopeHeadDim : a.numKvHeads * a.headDim),
      );
      const p = a.position;
      if (p.kind === "rope") {
        ropes.set(`${p.rotaryDim}/${p.theta}/${JSON.stringify(p.scaling)}`, p.rotaryDim * 4);
      }
    }
  }
  const rope = [...ropes.values()].reduce((s, b) => s + b, 0);
  // tokens and the context-shift scratch: one u32 each per position.
  return { kv: kvCacheCost(spec).bytesPerToken, other: rope + 8, widestBuffer: widest };
}

/** What the device must hold at one context length. */
export interface DeviceBytes {
  context: number;
  weights: number;
  activations: number;
  kvPerToken: number;
  /** KV cache at `context`. */
  kv: number;
  /** RoPE tables and token buffers at `context`. */
  other: number;
  total: number;
}

/**
 * The device bytes of a model with `weights` and `activations` bytes at `context` tokens in each
 * of `slots` sequences (continuous batching: every slot has its own caches).
 */
export function deviceBytes(
  spec: ModelSpec,
  weights: number,
  activations: number,
  context: number,
  slots = 1,
): DeviceBytes {
  const p = perTokenBytes(spec);
  const kv = slots * context * p.kv, other = slots * context * p.other;
  return {
    context,
    weights,
    activations,
    kvPerToken: p.kv,
    kv,
    other,
    total: weights + activations + kv + other,
  };
}

/** Inputs of {@link chooseContext}. */
export interface ContextRequest {
  /** The model's positions (max_position_embeddings; 0 when unknown). */
  maxPositions: number;
  /** The context the caller asked for (`--context`), if any. */
  requested?: number;
  /** Bytes that do not depend on the context: weights + activations. */
  fixedBytes: number;
  perToken: PerTokenBytes;
  /** Device memory the engine may fill, or null when unknown (GPUs). */
  memoryBytes: number | null;
  /** What to call the requested value in messages (default "context"). */
  flag?: string;
}

const MIB = 1024 * 1024;
const mib = (b: number) => `${(b / MIB).toFixed(1)} MiB`;

/**
 * The KV-cache length in tokens: the requested one, checked, or the default (see the module
 * docs). Throws {@link UsageError} for a requested context that is not a positive integer or
 * exceeds the model's positions, and {@link LimitError} when it (or even one token, for the
 * default) does not fit the memory.
 */
export function chooseContext(r: ContextRequest): number {
  const flag = r.flag ?? "context";
  const per = r.perToken.kv + r.perToken.other;
  const room = r.memoryBytes === null ? Infinity : r.memoryBytes - r.fixedBytes;
  const fitMemory = Math.floor(room / per);
  if (r.requested !== undefined) {
    const n = r.requested;
    if (!Number.isInteger(n) || n < 1) {
      throw new UsageError(`${flag}: ${n} is not a positive integer`);
    }
    if (r.maxPositions > 0 && n > r.maxPositions) {
      throw new UsageError(
        `${flag}: ${n} tokens exceed the model's ${r.maxPositions} positions (max_position_embeddings)`,
      );
    }
    if (n > fitMemory) {
      throw new LimitError(
        `${flag}: ${n} tokens need ${mib(n * per)} of KV cache and tables besides ${
          mib(r.fixedBytes)
        } of weights and activations, but the device has ${mib(r.memoryBytes!)}; at most ${
          Math.max(0, fitMemory)
        } tokens fit`,
      );
    }
    return n;
  }
  const positions = r.maxPositions > 0 ? r.maxPositions : UNKNOWN_POSITIONS_CONTEXT;
  const fitBinding = r.perToken.widestBuffer > 0
    ? Math.floor(DEFAULT_BINDING_BYTES / r.perToken.widestBuffer)
    : Infinity;
  const fitKv = r.memoryBytes === null && r.perToken.kv > 0
    ? Math.floor(DEFAULT_GPU_KV_BYTES / r.perToken.kv)
    : Infinity;
  const context = Math.min(positions, fitBinding, fitMemory, fitKv);
  if (context < 1) {
    throw new LimitError(
      `the weights and activations (${mib(r.fixedBytes)}) do not fit the device memory (${
        mib(r.memoryBytes!)
      })`,
    );
  }
  return context;
}

/**
 * Tokens per forward (prefill chunk): `requested` or up to 128 (fewer submissions and
 * dispatches per prompt), fewer for large vocabularies so the logits buffer stays within
 * 64 MiB; at most `context`, and the route lists hold chunk · top-k rows in workgroup memory
 * (≤ 4096).
 */
export function prefillChunk(
  spec: ModelSpec,
  requested: number | undefined,
  context: number,
): number {
  const defaultChunk = Math.max(16, Math.min(128, Math.floor(2 ** 26 / (spec.vocabSize * 4))));
  const topK = activationWidths(spec).topK;
  return Math.max(1, Math.min(requested ?? defaultChunk, context, Math.floor(4096 / topK)));
}

/**
 * What the device would hold for an artifact's model at `context` tokens (default: the model's
 * positions) with the default prefill chunk, before any device is involved (`inspect`).
 */
export function plannedDeviceBytes(
  spec: ModelSpec,
  tensors: readonly TensorRecord[],
  context = spec.maxPositions > 0 ? spec.maxPositions : UNKNOWN_POSITIONS_CONTEXT,
): DeviceBytes & { chunk: number } {
  const chunk = prefillChunk(spec, undefined, context);
  return {
    ...deviceBytes(spec, weightDeviceBytes(tensors), activationBytes(spec, chunk), context),
    chunk,
  };
}
