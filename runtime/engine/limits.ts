/**
 * The binding limit the engine works within, and what it decides: which device limits to ask
 * for, and how many tokens one forward may carry so that no activation buffer exceeds a binding.
 *
 * The limit is the smallest of the device's maxStorageBufferBindingSize, its maxBufferSize (the
 * engine binds whole buffers) and the `maxBinding` option, which forces a smaller one so the
 * split paths run on any adapter. Weight matrices larger than the limit are split into row
 * blocks (weights.ts); activations shrink with the prefill chunk.
 *
 * @module
 */

import { LimitError } from "../../schemas/errors.ts";
import type { ModelSpec } from "../../schemas/model.ts";
import { activationWidths } from "./activations.ts";

/**
 * The binding limit in bytes: the device's binding and buffer limits, or `maxBinding` if less,
 * rounded down to 16 bytes (buffers are allocated in 16-byte steps).
 */
export function bindingLimit(limits: GPUSupportedLimits, maxBinding?: number): number {
  const device = Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
  return Math.floor(Math.min(device, maxBinding ?? Infinity) / 16) * 16;
}

/**
 * Bytes per token of each activation buffer that grows with the prefill chunk (f32 or u32
 * elements; see activations.ts), by buffer name.
 */
export function activationBytesPerToken(spec: ModelSpec): [string, number][] {
  const w = activationWidths(spec);
  const H = spec.hiddenSize;
  return [
    ["hidden", H],
    ["q", w.q],
    ["k", w.kv],
    ["qkv", w.q + 2 * w.kv],
    ["routerLogits", w.experts],
    ["routes", w.experts],
    ["mlpGate", w.mlp],
    ["expertOut", w.topK * H],
    ["logits", spec.vocabSize],
  ].map(([name, n]) => [name as string, 4 * (n as number)]);
}

/**
 * The largest prefill chunk ≤ `chunk` whose activation buffers each fit `limit` bytes. Throws a
 * {@link LimitError} naming the buffer when not even one token's row fits.
 */
export function fitChunk(spec: ModelSpec, chunk: number, limit: number): number {
  let fit = chunk;
  for (const [name, perToken] of activationBytesPerToken(spec)) {
    // routes also holds one count per expert.
    const fixed = name === "routes" ? perToken : 0;
    const tokens = Math.floor((limit - fixed) / perToken);
    if (tokens < 1) {
      throw new LimitError(
        `activation ${name}: one token needs ${perToken + fixed} bytes but a binding holds ` +
          `${limit} (maxBinding or the adapter's limits)`,
      );
    }
    fit = Math.min(fit, tokens);
  }
  return fit;
}

/**
 * Device limits the engine would use if the adapter offers them (never required): bindings as
 * large as the model's largest matrix or activation, so nothing needs splitting.
 */
export function wantedLimits(
  spec: ModelSpec,
  chunk: number,
  largestMatrix: number,
): { maxStorageBufferBindingSize: number; maxBufferSize: number } {
  const acts = activationBytesPerToken(spec).map(([, perToken]) => perToken * (chunk + 1));
  const bytes = Math.max(largestMatrix, ...acts);
  return { maxStorageBufferBindingSize: bytes, maxBufferSize: bytes };
}
