/**
 * Continuous batching: the decode loop of a multi-slot engine (option `parallel` > 1).
 *
 * Every admitted `generate` call owns a slot (its KV-cache region, token entries, sampler params
 * and state; kernels/slots.ts). One loop drives all slots; each turn of the loop:
 *
 * 1. drops the streams whose caller went away (signal aborted, iterator returned): the slot is
 *    free for the next call from this step on;
 * 2. submits prefill chunks of the streams still prefilling — a new prompt, or the re-prefill
 *    of a context shift — first come first served, at most `chunk` tokens in all (the first
 *    stream's chunk always): a long prompt never freezes the running streams for more than a
 *    chunk, and short prompts arriving together are prefilled in the same turn (each with its
 *    own forward on its slot); a stream's last chunk samples its next token;
 * 3. submits one decode step for every other stream with tokens still to produce: one forward of
 *    one token per stream (attention over each stream's own cache at its own position; dense and
 *    expert matmuls over the batch), then the batched sampler writes each stream's next id with
 *    its own params into its own token entries. A single stream runs the one-token decode plan;
 * 4. bounds the work queued ahead of the GPU: it takes a completion fence (onSubmittedWorkDone)
 *    every few steps and, with more than two fences open, waits for the oldest — waiting for
 *    step k − 2 while step k is queued when steps are slow (1 s on a 1 GB model), spacing the
 *    fences to ~15 ms of work when they are fast (a fence costs ≥ 10 ms of latency in Deno, so
 *    one per 5 ms step would pace the loop). Those waits yield to the event loop, so a request
 *    that arrives is admitted at the next turn, behind at most ~2 fences of queued work, not
 *    behind everything the host could submit before its next readback;
 * 5. starts a readback when a stream awaits its first id (so time to first token is its queue,
 *    its prefill and about one step), has `readbackEvery` ids not yet read, or is at its max
 *    tokens: one copy and one mapAsync for all streams together, never per token or per stream.
 *    The loop does not wait for it: the ids reach their streams when the map resolves, while
 *    the next steps run (one readback in flight at a time).
 *
 * A context shift's re-prefill is chunked like a prompt (at most `chunk` tokens a turn), so the
 * other streams keep decoding during it, one step a turn.
 *
 * Context shifting is today's rule per slot (generation.ts): when a stream's next token would be
 * fed at position maxContext, its last ⌊maxContext/2⌋ tokens are copied to the front of its
 * token entries on the GPU and re-prefilled (in chunks, like a prompt), and decoding goes on.
 *
 * At temperature 0 every stream's ids equal a one-sequence engine's for the same prompt and
 * options: the same prefill plans run on the stream's slot, each token's row of a batched
 * matmul is summed in the same order as alone, and the sampler draws with the same (seed, step).
 *
 * @module
 */

import type { GenerateOptions } from "../api.ts";
import { type Dispatch, mapStaging, storageBuffer } from "../kernels/kernel.ts";
import type { BatchSampler } from "../kernels/sample.ts";
import type { Activations } from "./activations.ts";
import type { BatchPlan } from "./generation.ts";
import type { LogitsMode } from "./plan.ts";
import type { SlotPool } from "./slots.ts";

/** What {@link createBatchDecoder} needs from the generation side. */
export interface BatchContext {
  device: GPUDevice;
  acts: Activations;
  /** The one-sequence prefill plans (slot from the Step uniform) per logits mode. */
  prefill: Record<LogitsMode, Dispatch[]>;
  /** The one-token decode plan (slot from the Step uniform). */
  decode: Dispatch[];
  /** The batched decode plans per token tile: T tokens of T slots, (slot, position) in acts.rows. */
  batch: BatchPlan[];
  sampler: BatchSampler;
  pool: SlotPool;
  maxContext: number;
  chunk: number;
  /** Encodes one forward of T tokens at pos0 for `slot` (then `after`), submits. */
  submitForward(
    T: number,
    pos0: number,
    dispatches: Dispatch[],
    after: ((enc: GPUCommandEncoder) => void) | undefined,
    slot: number,
  ): void;
}

/** The running decode loop of a multi-slot engine. */
export interface BatchDecoder {
  /** Streams the ids of one request on `slot` (already acquired; released when it ends). */
  run(slot: number, promptIds: number[], options: GenerateOptions): AsyncGenerator<number>;
  /** Streams decoding or prefilling now. */
  readonly active: number;
  /** Of those, streams prefilling a prompt or re-prefilling after a context shift. */
  readonly prefilling: number;
}

/** Prefill progress of a stream: tokens 0 .. total − 1 at positions 0.., then a sample. */
interface Prefill {
  total: number;
  done: number;
  /** RNG step of the sample after the last chunk. */
  rng: number;
}

/** One request in a slot. */
interface Stream {
  slot: number;
  /** Prompt length. */
  n: number;
  /** Absolute token a (prompt 0..n-1, then generated) sits at position a − base. */
  base: number;
  /** Tokens sampled (absolute n .. n + produced − 1). */
  produced: number;
  /** Tokens copied for a readback (read back, or in the readback in flight). */
  copied: number;
  /** Tokens read back and handed to the caller. */
  read: number;
  maxTokens: number;
  every: number;
  stop: Set<number>;
  signal?: AbortSignal;
  prefill: Prefill | null;
  /** Ids read back, not yet taken by the caller. */
  queue: number[];
  ended: boolean;
  error?: unknown;
  cancelled: boolean;
  wake: (() => void) | null;
}

/** A completion signal of the steps submitted up to a point. */
interface Fence {
  /** Steps submitted when it was taken. */
  steps: number;
  /** performance.now() when it resolved, null before. */
  at: number | null;
  done: Promise<void>;
}

/** GPU work (ms) a fence should cover: the spacing of fences follows the measured step time. */
const FENCE_MS = 15;
/** Fences left open while the loop submits: waiting for fence k − 2 while step k is queued. */
const FENCES_AHEAD = 2;
/** Most steps between fences. */
const MAX_SPACING = 16;
/** Longest the loop runs without yielding to the event loop (new requests), ms. */
const YIELD_MS = 25;

/** Resolves after the event loop has had a turn (timers, I/O). */
const macrotask = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Creates the decode loop over a multi-slot engine's plans. */
export function createBatchDecoder(ctx: BatchContext): BatchDecoder {
  const { device, acts, sampler, pool, maxContext: C, chunk } = ctx;
  const perSlot = C + 1;
  const keep = Math.max(1, Math.floor(C / 2));
  const scratch = storageBuffer(device, perSlot * 4, "shift.batch");
  const staging = device.createBuffer({
    label: "batch.staging",
    size: pool.size * keep * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const rowData = new Uint32Array(2 * pool.size);
  const active: Stream[] = [];
  let running = false;
  /** The readback in flight (ids handed out when it resolves), or null. */
  let pending: Promise<void> | null = null;

  const wake = (s: Stream) => {
    const w = s.wake;
    s.wake = null;
    w?.();
  };
  /** Ends a stream and frees its slot (once). */
  const end = (s: Stream, error?: unknown) => {
    if (s.ended) return;
    s.ended = true;
    s.error = error;
    const i = active.indexOf(s);
    if (i >= 0) active.splice(i, 1);
    pool.release(s.slot);
    wake(s);
  };
  const writeRows = (list: Stream[]) => {
    list.forEach((s, i) => {
      rowData[2 * i] = s.slot;
      rowData[2 * i + 1] = feedPosition(s);
    });
    device.queue.writeBuffer(acts.rows, 0, rowData, 0, 2 * list.length);
  };
  /** Position the stream's newest token is fed at. */
  const feedPosition = (s: Stream) => s.n + s.produced - 1 - s.base;

  function prefillChunk(s: Stream): void {
    const p = s.prefill!;
    const T = Math.min(chunk, p.total - p.done);
    const final = p.done + T >= p.total;
    if (!final) {
      ctx.submitForward(T, p.done, ctx.prefill.none, undefined, s.slot);
      p.done += T;
      return;
    }
    sampler.setState(s.slot, p.rng, p.total);
    rowData[0] = s.slot;
    device.queue.writeBuffer(acts.rows, 0, rowData, 0, 2);
    ctx.submitForward(T, p.done, ctx.prefill.last, (enc) => sampler.encode(enc, 1), s.slot);
    s.prefill = null;
    s.produced++;
  }

  /** Starts a context shift: the last `keep` tokens to the front, then re-prefilled. */
  function startShift(s: Stream): void {
    const from = s.n + s.produced - keep - s.base;
    const enc = device.createCommandEncoder();
    const at = s.slot * perSlot * 4;
    enc.copyBufferToBuffer(acts.tokens, at + from * 4, scratch, 0, keep * 4);
    enc.copyBufferToBuffer(scratch, 0, acts.tokens, at, keep * 4);
    device.queue.submit([enc.finish()]);
    s.base = s.n + s.produced - keep;
    s.prefill = { total: keep, done: 0, rng: s.produced };
  }

  function decodeStep(list: Stream[]): void {
    writeRows(list);
    if (list.length === 1) {
      const s = list[0];
      ctx.submitForward(1, feedPosition(s), ctx.decode, (enc) => sampler.encode(enc, 1), s.slot);
    } else {
      const B = list.length;
      const plan = ctx.batch.find((p) => p.tile >= B) ?? ctx.batch.at(-1)!;
      ctx.submitForward(B, 0, plan.dispatches, (enc) => sampler.encode(enc, B), 0);
    }
    for (const s of list) s.produced++;
  }

  /** Streams with ids sampled but not yet copied for a readback. */
  const uncopied = () => active.filter((s) => s.produced > s.copied);

  /**
   * A readback is due when a stream awaits its first id (TTFT), has `every` ids not yet copied,
   * or is at its max tokens with ids not yet copied.
   */
  const readbackDue = () =>
    active.some((s) =>
      s.produced > s.copied &&
      (s.copied === 0 || s.produced - s.copied >= s.every || s.produced >= s.maxTokens)
    );

  /**
   * Copies every stream's ids not yet copied to the staging buffer (queued after the steps that
   * sample them) and maps it: one mapAsync for all streams. Does not wait: the ids are handed
   * to their streams when the map resolves, while the loop goes on submitting steps. One
   * readback is in flight at a time ({@link pending}).
   */
  function startReadback(): void {
    const list = uncopied();
    if (list.length === 0) return;
    const enc = device.createCommandEncoder();
    const spans: [Stream, number, number][] = [];
    let off = 0;
    for (const s of list) {
      const count = s.produced - s.copied;
      const src = (s.slot * perSlot + s.n + s.copied - s.base) * 4;
      enc.copyBufferToBuffer(acts.tokens, src, staging, off * 4, count * 4);
      spans.push([s, off, count]);
      s.copied += count;
      off += count;
    }
    device.queue.submit([enc.finish()]);
    pending = mapStaging(staging, off * 4).then((bytes) => {
      const ids = new Uint32Array(bytes.buffer, bytes.byteOffset, off);
      for (const [s, at, count] of spans) {
        if (s.ended) continue;
        for (let i = 0; i < count; i++) {
          const id = ids[at + i];
          s.read++;
          s.queue.push(id);
          if (s.stop.has(id)) {
            end(s);
            break;
          }
        }
        if (s.read >= s.maxTokens) end(s);
        wake(s);
      }
    }, (e) => {
      for (const [s] of spans) end(s, e);
    }).finally(() => pending = null);
  }

  /**
   * Submits one step: prefill chunks of the first streams still prefilling, up to `chunk` tokens
   * in all (the first one always), then one decode step of the others.
   */
  function submitStep(): boolean {
    let stepped = false;
    let budget = chunk;
    const prefilled = new Set<Stream>();
    for (const s of active) {
      if (!s.prefill) continue;
      const T = Math.min(chunk, s.prefill.total - s.prefill.done);
      if (prefilled.size > 0 && T > budget) break; // first come, first served
      prefillChunk(s);
      prefilled.add(s);
      stepped = true;
      budget -= T;
      if (budget <= 0) break;
    }
    const ready: Stream[] = [];
    for (const s of active) {
      if (s.prefill || prefilled.has(s) || s.produced >= s.maxTokens) continue;
      if (feedPosition(s) >= C) startShift(s);
      else ready.push(s);
    }
    if (ready.length > 0) {
      decodeStep(ready);
      stepped = true;
    }
    return stepped;
  }

  async function loop(): Promise<void> {
    // Work queued ahead of the GPU is bounded: after every `spacing` steps the loop takes a
    // fence (onSubmittedWorkDone) and, with more than FENCES_AHEAD fences open, waits for the
    // oldest. The spacing is chosen from the measured step time so that a fence covers about
    // FENCE_MS of work: one fence per step for slow steps (at most ~2 steps queued ahead), fewer
    // for fast ones (a fence costs ≥ 10 ms of latency in Deno, which must not pace 5 ms steps).
    const fences: Fence[] = [];
    let sinceFence = 0;
    let steps = 0;
    let lastYield = performance.now();
    while (true) {
      for (const s of [...active]) if (s.cancelled || s.signal?.aborted) end(s);
      if (active.length === 0) return;
      const stepped = submitStep();
      if (stepped) {
        steps++;
        if (++sinceFence >= spacing()) {
          fences.push(fence(steps));
          sinceFence = 0;
        }
      }
      while (fences.length > FENCES_AHEAD) {
        const f = fences.shift()!;
        const waits = f.at === null; // not resolved yet: the event loop runs meanwhile
        await f.done;
        if (waits) lastYield = performance.now();
      }
      if (readbackDue()) {
        if (pending) {
          await pending;
          lastYield = performance.now();
        }
        startReadback();
      } else if (!stepped) {
        // Every stream waits for ids already being read back.
        await (pending ?? macrotask());
        lastYield = performance.now();
      }
      if (performance.now() - lastYield > YIELD_MS) {
        // Fences resolved before they were awaited: let I/O (new requests) in between steps.
        await macrotask();
        lastYield = performance.now();
      }
    }
  }

  /** Estimated GPU time of one step (ms), from the fences; 0 until measured. */
  let stepMs = 0;
  let lastFence: Fence | null = null;
  /** Steps between fences: about FENCE_MS of work each, 1 until the step time is known. */
  const spacing = () =>
    stepMs > 0 ? Math.max(1, Math.min(MAX_SPACING, Math.round(FENCE_MS / stepMs))) : 1;
  /** A completion signal for the steps submitted so far (the `steps`-th included). */
  function fence(steps: number): Fence {
    const f: Fence = { steps, at: null, done: Promise.resolve() };
    f.done = device.queue.onSubmittedWorkDone().then(() => {
      f.at = performance.now();
      const prev = lastFence;
      lastFence = f;
      if (prev?.at == null || f.steps <= prev.steps) return;
      // Fences resolve on polls: average over several intervals (an interval where the GPU went
      // idle overestimates the step, which only spaces the fences closer).
      const ms = (f.at - prev.at) / (f.steps - prev.steps);
      stepMs = stepMs === 0 ? ms : 0.7 * stepMs + 0.3 * ms;
    }, () => {
      // A lost device fails the readbacks, which end the streams with the error.
    });
    return f;
  }

  function kick(): void {
    if (running || active.length === 0) return;
    running = true;
    loop().catch((e) => {
      for (const s of [...active]) end(s, e);
    }).finally(() => {
      running = false;
      kick();
    });
  }

  async function* run(
    slot: number,
    promptIds: number[],
    options: GenerateOptions,
  ): AsyncGenerator<number> {
    const s: Stream = {
      slot,
      n: promptIds.length,
      base: 0,
      produced: 0,
      copied: 0,
      read: 0,
      maxTokens: options.maxTokens ?? 64,
      every: Math.max(1, Math.min(keep, Math.floor(options.readbackEvery ?? 8))),
      stop: new Set(options.stopIds ?? []),
      signal: options.signal,
      prefill: { total: promptIds.length, done: 0, rng: 0 },
      queue: [],
      ended: false,
      cancelled: false,
      wake: null,
    };
    try {
      sampler.setParams(slot, {
        temperature: options.temperature ?? 0,
        topK: options.topK ?? 0,
        topP: options.topP ?? 1,
        seed: options.seed ?? 0,
      });
      device.queue.writeBuffer(acts.tokens, slot * perSlot * 4, new Uint32Array(promptIds));
    } catch (e) {
      pool.release(slot);
      throw e;
    }
    active.push(s);
    kick();
    try {
      let taken = 0;
      while (true) {
        if (taken < s.queue.length) {
          if (s.signal?.aborted) return;
          yield s.queue[taken++];
          continue;
        }
        if (s.ended) {
          if (s.error !== undefined) throw s.error;
          return;
        }
        await new Promise<void>((resolve) => s.wake = resolve);
      }
    } finally {
      s.cancelled = true;
      // Not yet ended: the loop frees the slot at its next step.
    }
  }

  return {
    run,
    get active() {
      return active.length;
    },
    get prefilling() {
      return active.filter((s) => s.prefill).length;
    },
  };
}
