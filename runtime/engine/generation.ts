/**
 * Generation: running the plans — logits for a prompt, the GPU-resident decode loop with
 * readback batching and context shifting, the load-time warm-up and kernel profiling.
 *
 * Decode: the sampled id is written by the GPU sampler into the token buffer that the next
 * step's embedding lookup reads; one submission per step; ids are read back every
 * `readbackEvery` steps only (never per token).
 *
 * Context shifting: `generate` may run past the KV-cache capacity `maxContext`. When the next
 * token would be fed at position maxContext, the last ⌊maxContext/2⌋ tokens (the newest one
 * included) are copied to the front of the GPU token buffer, re-prefilled at positions
 * 0 .. ⌊maxContext/2⌋ − 1 and the next token is sampled after them; decoding continues from
 * there. The ids never leave the GPU for this (no readbacks beyond the batch ones; batches are
 * capped at ⌊maxContext/2⌋ tokens so unread ids survive a shift). A generation that fits the
 * context never shifts and is unchanged.
 *
 * Slots: `generate` and `logits` may be called concurrently. With one slot (option `parallel`
 * 1, the default) they run one at a time, in call order; with more, every generation gets a slot
 * and the continuous-batching loop of batch.ts advances them together (one decode step for all
 * slots, prompts prefilled in chunks between the steps, ids read back for all slots at once).
 * Calls beyond the slots wait in line (slots.ts). `stats()` counts the slots in use, the calls
 * waiting and the streams prefilling (api.ts EngineStats).
 *
 * @module
 */

import type { EngineStats, GenerateOptions } from "../api.ts";
import { LimitError, UsageError } from "../../schemas/errors.ts";
import type { ModelSpec } from "../../schemas/model.ts";
import {
  type Dispatch,
  encodeDispatches,
  mapStaging,
  readIds,
  storageBuffer,
} from "../kernels/kernel.ts";
import type { BatchSampler, Sampler } from "../kernels/sample.ts";
import type { Activations } from "./activations.ts";
import { createBatchDecoder } from "./batch.ts";
import type { LogitsMode } from "./plan.ts";
import { SlotPool } from "./slots.ts";
import { profileDispatches } from "./profile.ts";
import { firstLaunches, handIds, readFirstId, warmUpShape } from "./stream.ts";

/** The bound plans a generator runs: prefill plans per logits mode, and the decode plan. */
export interface Plans {
  /** Tokens per matmul workgroup of the prefill plans. */
  tokenTile: number;
  prefill: Record<LogitsMode, Dispatch[]>;
  /** One token, last-position logits. */
  decode: Dispatch[];
  /**
   * Multi-slot engines: one token of each of T slots, every position's logits; one plan per
   * token tile, ascending.
   */
  batch?: BatchPlan[];
}

/** A batched decode plan and the tokens per matmul workgroup it was built for. */
export interface BatchPlan {
  tile: number;
  dispatches: Dispatch[];
}

/** What {@link createGeneration} needs. */
export interface GenerationContext {
  device: GPUDevice;
  spec: ModelSpec;
  plans: Plans;
  acts: Activations;
  step: GPUBuffer;
  sampler: Sampler;
  maxContext: number;
  /** Most tokens per forward. */
  chunk: number;
  /** Sequence slots (default 1); more need `plans.batch` and `batchSampler`. */
  parallel?: number;
  batchSampler?: BatchSampler;
}

/** The running side of an engine. */
export interface Generation {
  logits(ids: number[]): Promise<Float32Array[]>;
  generate(promptIds: number[], options?: GenerateOptions): AsyncGenerator<number>;
  profileKernels(T: number, repeats?: number): Promise<Map<string, number>>;
  /**
   * Runs every plan once (software adapters JIT-compile a pipeline at its first dispatch, so
   * this happens at load, not at the first request).
   */
  warmUp(): Promise<void>;
  /** Slots in use, calls waiting for one, streams prefilling (see {@link EngineStats}). */
  stats(): EngineStats;
  /** Makes every later call fail (after dispose). */
  close(): void;
}

/** Creates the generation side of an engine over its bound plans. */
export function createGeneration(ctx: GenerationContext): Generation {
  const { device, plans, acts, step, sampler, maxContext, chunk } = ctx;
  const V = ctx.spec.vocabSize;
  const samplerState = storageBuffer(device, 8, "sampler.state");
  const shiftScratch = storageBuffer(device, (maxContext + 1) * 4, "shift");
  const stepData = new Uint32Array(4);
  const pool = new SlotPool(ctx.parallel ?? 1);

  /**
   * Encodes one forward of T tokens at position pos0 of `slot` (then `after`, e.g. sampling),
   * submits.
   */
  function submitForward(
    T: number,
    pos0: number,
    dispatches: Dispatch[],
    after?: (enc: GPUCommandEncoder) => void,
    slot = 0,
  ): void {
    stepData[0] = T;
    stepData[1] = pos0;
    stepData[2] = slot;
    device.queue.writeBuffer(step, 0, stepData);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encodeDispatches(pass, dispatches, T);
    pass.end();
    after?.(enc);
    device.queue.submit([enc.finish()]);
  }

  /** Prefills tokens [0, n) at positions 0.. in chunks; the last chunk runs `last` and `after`. */
  function prefill(n: number, last: LogitsMode, after?: (enc: GPUCommandEncoder) => void) {
    for (let s = 0; s < n; s += chunk) {
      const T = Math.min(chunk, n - s);
      const final = s + T >= n;
      submitForward(T, s, plans.prefill[final ? last : "none"], final ? after : undefined);
    }
  }

  let closed = false;
  /** A slot for one call (waiting in line for one); null when `signal` aborted first. */
  const enter = async (signal?: AbortSignal) => {
    if (closed) throw new UsageError("the engine was disposed");
    const slot = await pool.acquire(signal);
    if (closed) {
      if (slot !== null) pool.release(slot);
      throw new UsageError("the engine was disposed");
    }
    return slot;
  };
  const batch = (ctx.parallel ?? 1) > 1
    ? createBatchDecoder({
      device,
      acts,
      prefill: plans.prefill,
      decode: plans.decode,
      batch: plans.batch!,
      sampler: ctx.batchSampler!,
      pool,
      maxContext,
      chunk,
      submitForward,
    })
    : null;
  const checkIds = (ids: number[], what: string) => {
    if (ids.length === 0) throw new UsageError(`${what}: no input ids`);
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new UsageError(`${what}: token id ${id} is outside the vocabulary [0, ${V})`);
      }
    }
    if (ids.length > maxContext) {
      throw new LimitError(`${what}: ${ids.length} tokens exceed the context of ${maxContext}`);
    }
  };

  async function logits(ids: number[]): Promise<Float32Array[]> {
    checkIds(ids, "logits");
    const slot = (await enter())!;
    try {
      const n = ids.length;
      device.queue.writeBuffer(acts.tokens, slot * (maxContext + 1) * 4, new Uint32Array(ids));
      const staging = device.createBuffer({
        size: n * V * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      for (let s = 0; s < n; s += chunk) {
        const T = Math.min(chunk, n - s);
        submitForward(T, s, plans.prefill.all, (enc) => {
          enc.copyBufferToBuffer(acts.logits, 0, staging, s * V * 4, T * V * 4);
        }, slot);
      }
      const bytes = await mapStaging(staging, n * V * 4);
      staging.destroy();
      const all = new Float32Array(bytes.buffer, bytes.byteOffset, n * V);
      return Array.from({ length: n }, (_, i) => all.slice(i * V, (i + 1) * V));
    } finally {
      pool.release(slot);
    }
  }

  async function* generate(
    promptIds: number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<number> {
    checkIds(promptIds, "generate");
    const n = promptIds.length;
    const maxTokens = options.maxTokens ?? 64;
    // Context shifting keeps the last `keep` tokens; a readback batch never exceeds it, so the
    // tokens not yet read back always survive a shift.
    const keep = Math.max(1, Math.floor(maxContext / 2));
    const every = Math.max(1, Math.min(keep, Math.floor(options.readbackEvery ?? 8)));
    const stop = new Set(options.stopIds ?? ctx.spec.eosTokenIds);
    const params = {
      temperature: options.temperature ?? 0,
      topK: options.topK ?? 0,
      topP: options.topP ?? 1,
      seed: options.seed ?? 0,
    };
    if (maxTokens <= 0) return;
    const slot = await enter(options.signal);
    if (slot === null) return;
    if (batch) {
      // The batch decoder releases the slot when the stream ends.
      yield* batch.run(slot, promptIds, { ...options, maxTokens, stopIds: [...stop] });
      return;
    }
    const staging = device.createBuffer({
      size: every * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      device.queue.writeBuffer(acts.tokens, 0, new Uint32Array(promptIds));
      /** Samples the token at `pos` from the last logits (RNG step `s`). */
      const sample = (pos: number, s: number) => (enc: GPUCommandEncoder) => {
        device.queue.writeBuffer(samplerState, 0, new Uint32Array([s, pos]));
        sampler.encode(enc, acts.logits, acts.tokens, { buffer: samplerState, offset: 0 }, params);
      };
      // Prefill: all chunks but the last compute no logits; the last samples token n.
      prefill(n, "last", sample(n, 0));
      const firstId = readFirstId(device, acts.tokens, n);
      // Absolute token a (prompt 0..n-1, then generated) lives at tokens[a - base].
      let base = 0;
      let produced = 1; // tokens sampled so far (absolute n .. n + produced)
      let yielded = 0;
      while (yielded < maxTokens) {
        // Run decode steps until a readback is due.
        const target = Math.min(maxTokens, yielded + every);
        while (produced < target) {
          if (options.signal?.aborted) return;
          const pos = n + produced - 1 - base; // position of the newest token, fed now
          if (pos < maxContext) {
            submitForward(1, pos, plans.decode, sample(pos + 1, produced));
          } else {
            // Context shift: the KV cache is full. Move the last `keep` tokens (the newest,
            // unfed one included) to the front of the token buffer on the GPU, re-prefill
            // them at positions 0..keep-1 and sample the next token after them.
            const from = n + produced - keep - base;
            const enc = device.createCommandEncoder();
            enc.copyBufferToBuffer(acts.tokens, from * 4, shiftScratch, 0, keep * 4);
            enc.copyBufferToBuffer(shiftScratch, 0, acts.tokens, 0, keep * 4);
            device.queue.submit([enc.finish()]);
            base = n + produced - keep;
            prefill(keep, "last", sample(keep, produced));
          }
          produced++;
        }
        if (yielded === 0) {
          if (yield* handIds(await firstId, stop, options.signal)) return;
          yielded = 1;
        }
        const count = produced - yielded;
        if (count === 0) continue;
        const got = await readIds(device, acts.tokens, n + yielded - base, count, staging);
        if (yield* handIds(got, stop, options.signal)) return;
        yielded += got.length;
      }
    } finally {
      staging.destroy();
      pool.release(slot);
    }
  }

  async function warmUp(): Promise<void> {
    // Every pipeline runs once with step values that stop lavapipe re-specialising it
    // (stream.ts): its first dispatch in the prefill plans, the decode plan, the batch plans.
    const warm = warmUpShape(chunk, maxContext);
    const warmed = new Set<GPUComputePipeline>();
    for (const mode of ["all", "none", "last"] as LogitsMode[]) {
      submitForward(warm.tokens, 0, firstLaunches(warmed, plans.prefill[mode], warm.tokens));
    }
    submitForward(1, warm.position, firstLaunches(warmed, plans.decode, 1), (enc) => {
      device.queue.writeBuffer(samplerState, 0, new Uint32Array([0, 1]));
      sampler.encode(enc, acts.logits, acts.tokens, { buffer: samplerState, offset: 0 }, {
        temperature: 1,
        topK: 0,
        topP: 0.9,
        seed: 0,
      });
    });
    for (const p of plans.batch ?? []) warmUpBatch(firstLaunches(warmed, p.dispatches, 2));
    await device.queue.onSubmittedWorkDone();
  }

  /** Runs the batched decode plan and sampler once on two slots (multi-slot engines). */
  function warmUpBatch(list: Dispatch[]): void {
    device.queue.writeBuffer(acts.rows, 0, new Uint32Array([0, 0, 1, 0]));
    ctx.batchSampler!.setParams(0, { temperature: 1, topK: 0, topP: 0.9, seed: 0 });
    ctx.batchSampler!.setParams(1, { temperature: 0, topK: 0, topP: 1, seed: 0 });
    submitForward(2, 0, list, (enc) => ctx.batchSampler!.encode(enc, 2));
  }

  async function profileKernels(T: number, repeats = 5): Promise<Map<string, number>> {
    if (T < 1 || T > chunk) throw new UsageError(`profileKernels: T must be in [1, ${chunk}]`);
    const plan = T === 1 ? plans.decode : plans.prefill.all;
    return await profileDispatches(device, plan, repeats, (list) => submitForward(T, 0, list));
  }

  return {
    logits,
    generate,
    profileKernels,
    warmUp,
    stats: () => ({
      slots: pool.size,
      active: pool.active,
      waiting: pool.queued,
      prefilling: batch?.prefilling ?? 0,
    }),
    close() {
      closed = true;
      pool.close();
    },
  };
}
