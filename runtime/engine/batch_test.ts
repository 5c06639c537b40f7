/**
 * The continuous-batching loop's schedule (batch.ts) on a scripted GPU: the loop never gets more
 * than a few turns ahead of the GPU, a stream that arrives is prefilled at the loop's next turn
 * (short prompts that arrive together in the same turn) and its first id is read back right
 * after its prefill (not at the others' next readback), a call beyond the slots is admitted when
 * one frees, and the other streams keep decoding during a context shift's re-prefill. The ids themselves are the real engine's concern
 * (tests/engine_batch_test.ts); here every id reads back as 0.
 */
import assert from "node:assert/strict";
import type { GenerateOptions } from "../api.ts";
import type { Dispatch } from "../kernels/kernel.ts";
import type { BatchSampler } from "../kernels/sample.ts";
import type { Activations } from "./activations.ts";
import { createBatchDecoder } from "./batch.ts";
import { SlotPool } from "./slots.ts";

/** GPU time of one forward (prefill chunk or decode step), ms: slow, as on a 1 GB model. */
const STEP_MS = 30;

/** One forward the loop submitted. */
interface Forward {
  kind: "prefill" | "decode";
  /** Prefill: the stream's slot; decode: the slots of the step, in row order. */
  slots: number[];
  /** Decode: each row's feed position; prefill: [pos0]. */
  positions: number[];
  T: number;
  /** Forwards the GPU had finished when this one was submitted. */
  doneBefore: number;
  /** The loop turn that submitted it (forwards submitted in one synchronous run). */
  turn: number;
}

/** Most loop turns the host was ahead of the GPU: a forward's turn − the last finished one's. */
function turnsAhead(forwards: Forward[]): number {
  return Math.max(
    ...forwards.map((f) => f.turn - (f.doneBefore > 0 ? forwards[f.doneBefore - 1].turn : 0)),
  );
}

/**
 * A GPU that runs submissions in order: each forward takes STEP_MS, copies nothing.
 * `onSubmittedWorkDone` and `mapAsync` resolve once everything submitted before them ran.
 */
function scriptedGpu() {
  const kinds: ("forward" | "copy")[] = [];
  let done = 0;
  let forwardsDone = 0;
  let waiters: { upTo: number; resolve: () => void }[] = [];
  let running = true;
  let lastRows: number[] = [];
  const forwards: Forward[] = [];
  let turn = 0;
  let turnOpen = false;
  const until = (upTo: number) =>
    new Promise<void>((resolve) => {
      if (done >= upTo) resolve();
      else waiters.push({ upTo, resolve });
    });
  const rows = { label: "rows" } as unknown as GPUBuffer;
  const device = {
    queue: {
      writeBuffer(buf: GPUBuffer, _off: number, data: Uint32Array, at = 0, size?: number) {
        if (buf === rows) lastRows = [...data.subarray(at, at + (size ?? data.length - at))];
      },
      submit() {
        kinds.push("copy");
      },
      onSubmittedWorkDone: () => until(kinds.length),
    },
    createCommandEncoder: () => ({ copyBufferToBuffer() {}, finish: () => ({}) }),
    createBuffer: ({ size }: { size: number }) => ({
      size,
      mapAsync: () => until(kinds.length),
      getMappedRange: (_o: number, n: number) => new ArrayBuffer(n),
      unmap() {},
      destroy() {},
    }),
  } as unknown as GPUDevice;
  (async () => {
    while (running) {
      if (done < kinds.length) {
        if (kinds[done] === "forward") {
          await new Promise((r) => setTimeout(r, STEP_MS));
          forwardsDone++;
        }
        done++;
        waiters = waiters.filter((w) => {
          if (done < w.upTo) return true;
          w.resolve();
          return false;
        });
      } else await new Promise((r) => setTimeout(r, 1));
    }
  })();
  const prefill = { all: [], none: [], last: [] } as unknown as Record<string, Dispatch[]>;
  const decode: Dispatch[] = [];
  const submitForward = (
    T: number,
    pos0: number,
    dispatches: Dispatch[],
    _after: unknown,
    slot: number,
  ) => {
    if (!turnOpen) {
      turn++;
      turnOpen = true;
      queueMicrotask(() => turnOpen = false);
    }
    const isDecode = dispatches !== prefill.none && dispatches !== prefill.last;
    const pairs = isDecode ? lastRows : [slot, pos0];
    forwards.push({
      kind: isDecode ? "decode" : "prefill",
      slots: pairs.filter((_, i) => i % 2 === 0),
      positions: pairs.filter((_, i) => i % 2 === 1),
      T,
      doneBefore: forwardsDone,
      turn,
    });
    kinds.push("forward");
  };
  return {
    device,
    forwards,
    /** Forwards finished so far. */
    get forwardsDone() {
      return forwardsDone;
    },
    stop() {
      running = false;
    },
    ctx(parallel: number, maxContext: number, chunk: number) {
      const sampler = { setParams() {}, setState() {}, encode() {} } as unknown as BatchSampler;
      return {
        device,
        acts: { tokens: { label: "tokens" }, rows } as unknown as Activations,
        prefill: prefill as Record<"all" | "none" | "last", Dispatch[]>,
        decode,
        batch: [{ tile: parallel, dispatches: [] }],
        sampler,
        pool: new SlotPool(parallel),
        maxContext,
        chunk,
        submitForward,
      };
    },
  };
}

/** Starts a stream on a slot of `pool`: its iterator, already running. */
async function start(
  decoder: ReturnType<typeof createBatchDecoder>,
  pool: SlotPool,
  prompt: number,
  options: GenerateOptions,
) {
  const slot = (await pool.acquire())!;
  const it = decoder.run(slot, Array.from({ length: prompt }, (_, i) => i + 1), options);
  const first = it.next(); // runs the generator up to its first wait: the stream is queued
  return { slot, it, first };
}

/** Polls `condition` every millisecond until it holds (fails after 5 s). */
async function until(condition: () => boolean): Promise<void> {
  const t0 = performance.now();
  while (!condition()) {
    if (performance.now() - t0 > 5000) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Takes the rest of a stream's ids: how many it yielded in all (`got` taken before). */
async function drain(it: AsyncGenerator<number>, got = 1): Promise<number> {
  for await (const _ of it) got++;
  return got;
}

Deno.test("batch loop: bounded work in flight; an arrival is prefilled next and read back after its prefill", async () => {
  const gpu = scriptedGpu();
  const ctx = gpu.ctx(4, 256, 4);
  const decoder = createBatchDecoder(ctx);
  try {
    const a = await start(decoder, ctx.pool, 5, { maxTokens: 40, stopIds: [] });
    await a.first;
    // A stream arrives in the middle of a's readback window (a has read 9 ids, batches of 8).
    for (let i = 1; i < 9; i++) await a.it.next();
    const before = gpu.forwards.length;
    const b = await start(decoder, ctx.pool, 3, { maxTokens: 6, stopIds: [] });
    // The very next forward is b's prefill (one chunk of 3), then a's decode step.
    await until(() => gpu.forwards.length > before + 1);
    const [pre, beside] = gpu.forwards.slice(before);
    assert.deepEqual([pre.kind, pre.slots, pre.T], ["prefill", [b.slot], 3]);
    assert.deepEqual([beside.kind, beside.slots], ["decode", [a.slot]]);
    // Its first id comes back once its prefill and the decode step of that turn ran (one
    // readback later at most), not after a's next 8 steps.
    assert.equal((await b.first).value, 0);
    assert.ok(
      gpu.forwardsDone <= before + 4,
      `b's first id after ${gpu.forwardsDone - before} forwards since its arrival`,
    );
    assert.equal(await drain(b.it), 6);
    assert.equal(await drain(a.it, 9), 40);
    // The host never ran more than FENCES_AHEAD + 1 turns ahead of the GPU.
    assert.ok(turnsAhead(gpu.forwards) <= 3, `${turnsAhead(gpu.forwards)} turns ahead`);
    assert.equal(decoder.active, 0);
    assert.equal(ctx.pool.active, 0);
  } finally {
    gpu.stop();
  }
});

Deno.test("batch loop: a call beyond the slots is admitted when a stream ends, and prefilled next", async () => {
  const gpu = scriptedGpu();
  const ctx = gpu.ctx(8, 256, 8);
  const decoder = createBatchDecoder(ctx);
  try {
    const streams = await Promise.all(
      Array.from(
        { length: 8 },
        (_, i) => start(decoder, ctx.pool, 2 + i, { maxTokens: 12 + 2 * i, stopIds: [] }),
      ),
    );
    await Promise.all(streams.map((s) => s.first));
    assert.deepEqual([ctx.pool.active, ctx.pool.queued], [8, 0]);
    // Short prompts arriving together share a turn while they fit one chunk (8 tokens): 3 + 4,
    // then 5, then 6, ...
    const turnOf = (slot: number) =>
      gpu.forwards.find((f) => f.kind === "prefill" && f.slots[0] === slot)!.turn;
    assert.equal(turnOf(streams[1].slot), turnOf(streams[2].slot));
    assert.equal(turnOf(streams[3].slot), turnOf(streams[2].slot) + 1);
    // A ninth call waits for a slot; the first stream to end (the shortest) hands it over.
    const ninth = start(decoder, ctx.pool, 4, { maxTokens: 5, stopIds: [] });
    await new Promise((r) => setTimeout(r, 0));
    assert.equal(ctx.pool.queued, 1);
    const counts = streams.map((s, i) => drain(s.it).then((n) => [i, n]));
    const late = await ninth;
    const admitted = gpu.forwardsDone;
    assert.equal(late.slot, streams[0].slot, "the freed slot");
    // Its prefill goes in at the next turn, behind at most the ~3 forwards queued ahead.
    await late.first;
    assert.ok(
      gpu.forwardsDone - admitted <= 5,
      `first id ${gpu.forwardsDone - admitted} forwards after admission`,
    );
    assert.equal(await drain(late.it), 5);
    for (const [i, n] of await Promise.all(counts)) assert.equal(n, 12 + 2 * i);
    assert.ok(turnsAhead(gpu.forwards) <= 3, `${turnsAhead(gpu.forwards)} turns ahead`);
  } finally {
    gpu.stop();
  }
});

Deno.test("batch loop: the other streams keep decoding during a context shift's re-prefill", async () => {
  const gpu = scriptedGpu();
  const C = 24; // keep 12: a re-prefill of 3 chunks of 4
  const ctx = gpu.ctx(4, C, 4);
  const decoder = createBatchDecoder(ctx);
  try {
    const a = await start(decoder, ctx.pool, 5, { maxTokens: 24, stopIds: [] });
    await a.first;
    for (let i = 1; i < 9; i++) await a.it.next();
    // b arrives later, never shifts itself (3 + 20 − 1 < 24), and runs through a's shift.
    const b = await start(decoder, ctx.pool, 3, { maxTokens: 20, stopIds: [] });
    const [na, nb] = await Promise.all([drain(a.it, 9), drain(b.it)]);
    assert.deepEqual([na, nb], [24, 20]);
    // a fed position 23, then shifted: 12 tokens re-prefilled at 0, 4, 8 after its decodes.
    const firstDecode = gpu.forwards.findIndex((f) => f.kind === "decode");
    const shift = gpu.forwards
      .map((f, i) => [f, i] as const)
      .filter(([f, i]) => i > firstDecode && f.kind === "prefill" && f.slots[0] === a.slot);
    assert.deepEqual(shift.map(([f]) => [f.positions[0], f.T]), [[0, 4], [4, 4], [8, 4]]);
    // Each chunk of a's re-prefill is followed, in the same turn, by b's decode step at its next
    // position: b progresses by one token per chunk.
    const bPositions = shift.map(([, i]) => {
      const next = gpu.forwards[i + 1];
      assert.equal(next.kind, "decode");
      assert.deepEqual(next.slots, [b.slot], "only b decodes while a re-prefills");
      return next.positions[0];
    });
    assert.deepEqual(bPositions, [bPositions[0], bPositions[0] + 1, bPositions[0] + 2]);
    // After the shift a decodes again from position 12, beside b.
    const after = gpu.forwards[shift[2][1] + 2];
    assert.ok(after.kind === "decode" && after.slots.includes(a.slot));
    assert.equal(after.positions[after.slots.indexOf(a.slot)], 12);
  } finally {
    gpu.stop();
  }
});
