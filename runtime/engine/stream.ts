/**
 * What the one-sequence decode loops (generation.ts, seq2seq.ts) share: the size of the warm-up
 * forwards, reading the first id back on its own, and handing read-back ids to the caller.
 *
 * @module
 */

import { type Dispatch, readIds } from "../kernels/kernel.ts";

/**
 * Tokens of the warm-up forwards. Software adapters do per-pipeline work at a pipeline's first
 * dispatches, with the step values (T, pos0) of those dispatches: llvmpipe JIT-compiles a
 * pipeline at its first launch, and lavapipe (Mesa 22–23) recompiles a shader whose loop bounds
 * read the step uniform with those values inlined at every dispatch, until a dispatch where
 * inlining would not halve the shader, when it gives up for good. Small values (loops of ≤ 16
 * iterations, fully unrolled) never make it give up: after a warm-up on two tokens, the decode
 * steps of short prompts kept recompiling the pipelines they share with prefill, at 2–5× the
 * cost per token, until some request prefilled ≥ 17 tokens. So every plan runs once with
 * larger values.
 */
export const WARM_TOKENS = 32;

/**
 * The dispatches of `list` whose pipeline runs for the first time at `T` tokens (added to
 * `warmed`): a warm-up needs one launch per pipeline (llvmpipe JIT-compiles at the first launch
 * and gives up re-specialising at the first large step values), not one per layer and plan that
 * shares it. A dispatch with no workgroups at `T` does not count.
 */
export function firstLaunches(
  warmed: Set<GPUComputePipeline>,
  list: Dispatch[],
  T: number,
): Dispatch[] {
  return list.filter((d) => {
    if (warmed.has(d.kernel.pipeline) || d.groups(T).some((g) => g === 0)) return false;
    warmed.add(d.kernel.pipeline);
    return true;
  });
}

/** The warm-up's shape: prefill (and encoder) forwards of `tokens`, a decode step at `position`. */
export function warmUpShape(
  chunk: number,
  maxContext: number,
): { tokens: number; position: number } {
  return {
    tokens: Math.max(1, Math.min(chunk, maxContext, WARM_TOKENS)),
    position: Math.min(maxContext - 1, WARM_TOKENS),
  };
}

/**
 * Hands read-back ids to the caller in order. Returns true when the stream is over: the caller's
 * signal aborted (nothing more is yielded) or a stop id was yielded.
 */
export function* handIds(
  ids: Iterable<number>,
  stop: ReadonlySet<number>,
  signal: AbortSignal | undefined,
): Generator<number, boolean> {
  for (const id of ids) {
    if (signal?.aborted) return true;
    yield id;
    if (stop.has(id)) return true;
  }
  return false;
}

/**
 * Starts reading back the one id at entry `entry` of `tokens` (the prefill's sample), through a
 * staging buffer of its own: submitted right after the prefill, so it resolves when the prefill is
 * done while the first decode steps queued behind it run. The time to first token is then the
 * prefill and one readback, not the prefill and a whole readback batch. The promise is marked
 * handled (a caller that stops early never awaits it); awaiting it still throws.
 */
export function readFirstId(
  device: GPUDevice,
  tokens: GPUBuffer,
  entry: number,
): Promise<Uint32Array> {
  const staging = device.createBuffer({
    label: "first-id.staging",
    size: 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const read = readIds(device, tokens, entry, 1, staging).finally(() => staging.destroy());
  read.catch(() => {});
  return read;
}
