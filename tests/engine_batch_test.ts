/**
 * Continuous batching (engine option `parallel`): every stream of a multi-slot engine yields
 * exactly the ids a one-sequence engine yields for the same prompt and options, whatever runs
 * beside it — concurrent and staggered arrivals (also inside another stream's readback window,
 * and while all 8 slots decode), more calls than slots, different prompt
 * lengths, max tokens and readback batches, a cancellation and an early return mid-stream, stop
 * ids, context shifts in some slots, sampled streams beside greedy ones — and ids come back in
 * batches for all slots together.
 */
import assert from "node:assert/strict";
import {
  LimitError,
  loadModel,
  openArtifact,
  readbackCount,
  UsageError,
  type WebGpuEngine,
} from "../runtime/mod.ts";
import type { GenerateOptions } from "../runtime/api.ts";
import { perTokenBytes } from "../runtime/engine/context.ts";
import { collect, compileF32, relErr } from "./engine_helpers.ts";

const MAX_CONTEXT = 24; // small: long generations shift their context (keep 12)
const CHUNK = 8; // long prompts and re-prefills take several chunks, between the others' steps
const SLOTS = 8; // at most the chunk

/** Byte-level prompts of the Shakespeare model (vocab 256, bos 2) of several lengths. */
const PROMPTS = ["ROMEO:", "To be", "KING HENRY:\nNow", "O", "JULIET:\nWhat"].map(
  (t) => [2, ...new TextEncoder().encode(t)],
);

interface Case {
  prompt: number[];
  options: GenerateOptions;
}

const CASES: Case[] = [
  { prompt: PROMPTS[0], options: { maxTokens: 30, stopIds: [] } }, // shifts twice
  { prompt: PROMPTS[1], options: { maxTokens: 9, stopIds: [], readbackEvery: 4 } },
  { prompt: PROMPTS[2], options: { maxTokens: 14, stopIds: [] } }, // 16-token prompt: shifts
  { prompt: PROMPTS[3], options: { maxTokens: 17, temperature: 0.8, topK: 20, seed: 7 } },
  { prompt: PROMPTS[4], options: { maxTokens: 12, stopIds: [], readbackEvery: 3 } },
  { prompt: PROMPTS[1], options: { maxTokens: 20, temperature: 1, topP: 0.9, seed: 3 } },
];

const path = await compileF32("testdata/shakespeare-moe");
const opts = { maxContext: MAX_CONTEXT, prefillChunk: CHUNK };
let single: WebGpuEngine | undefined, multi: WebGpuEngine | undefined;
/** The one-sequence engine's ids per case (computed once). */
const expected: number[][] = [];

async function engines(): Promise<{ single: WebGpuEngine; multi: WebGpuEngine }> {
  single ??= await loadModel(path, opts);
  multi ??= await loadModel(path, { ...opts, parallel: SLOTS });
  if (expected.length === 0) {
    for (const c of CASES) expected.push(await collect(single.generate(c.prompt, c.options)));
  }
  return { single, multi };
}

Deno.test({
  name: "batch: concurrent streams (more calls than slots) equal the one-sequence engine",
  async fn() {
    const { multi } = await engines();
    assert.equal(multi.parallel, SLOTS);
    const calls = [...CASES.keys(), ...CASES.keys()]; // 12 calls for 8 slots
    const before = readbackCount();
    const got = await Promise.all(
      calls.map((i) => collect(multi.generate(CASES[i].prompt, CASES[i].options))),
    );
    const readbacks = readbackCount() - before;
    got.forEach((ids, k) => assert.deepEqual(ids, expected[calls[k]], `call ${k}`));
    assert.ok(expected[0].length === 30 && expected[2].length === 14, "the shift cases ran long");
    // Ids come back in batches for all slots together: fewer readbacks than one per batch of
    // each stream (a stream's batch is at most its readbackEvery).
    const total = got.reduce((n, ids) => n + ids.length, 0);
    const perStream = calls.reduce(
      (n, i, k) => n + Math.ceil(got[k].length / (CASES[i].options.readbackEvery ?? 8)),
      0,
    );
    assert.ok(readbacks < perStream, `${readbacks} readbacks for ${total} ids (${perStream})`);
  },
});

Deno.test({
  name: "batch: staggered arrivals, a cancellation and an early return mid-stream, stop ids",
  async fn() {
    const { multi } = await engines();
    const results: Promise<number[]>[] = [];
    // Stream 0 runs alone for a while; the others arrive while it decodes.
    const first = multi.generate(CASES[0].prompt, CASES[0].options);
    const head: number[] = [];
    for (let i = 0; i < 10; i++) head.push((await first.next()).value as number);
    results.push(collect(first).then((rest) => [...head, ...rest]));
    // A stream cancelled by its signal after 5 ids: its ids so far are a prefix.
    const abort = new AbortController();
    const cancelled = (async () => {
      const ids: number[] = [];
      for await (
        const id of multi.generate(CASES[2].prompt, { ...CASES[2].options, signal: abort.signal })
      ) {
        ids.push(id);
        if (ids.length === 5) abort.abort();
      }
      return ids;
    })();
    // A stream whose caller stops reading after 3 ids (iterator return).
    const returned = (async () => {
      const ids: number[] = [];
      for await (const id of multi.generate(CASES[4].prompt, CASES[4].options)) {
        ids.push(id);
        if (ids.length === 3) break;
      }
      return ids;
    })();
    // Stop ids: the reference's 7th id ends the stream at its first occurrence.
    const ref = expected[1];
    const stopId = ref[6];
    const stopped = collect(
      multi.generate(CASES[1].prompt, { ...CASES[1].options, stopIds: [stopId] }),
    );
    // Later arrivals take the freed slots.
    await cancelled;
    results.push(collect(multi.generate(CASES[3].prompt, CASES[3].options)));
    results.push(collect(multi.generate(CASES[5].prompt, CASES[5].options)));

    const [a, b, c] = await Promise.all(results);
    assert.deepEqual(a, expected[0]);
    assert.deepEqual(b, expected[3]);
    assert.deepEqual(c, expected[5]);
    assert.deepEqual(await cancelled, expected[2].slice(0, 5));
    assert.deepEqual(await returned, expected[4].slice(0, 3));
    assert.deepEqual(await stopped, ref.slice(0, ref.indexOf(stopId) + 1));
    // Every slot is free again, and a slot used by a cancelled stream serves a new one.
    const again = await collect(multi.generate(CASES[2].prompt, CASES[2].options));
    assert.deepEqual(again, expected[2]);
  },
});

Deno.test({
  name: "batch: arrivals in the middle of a readback window, beside a stream's context shifts",
  async fn() {
    const { multi } = await engines();
    // Case 0 shifts twice (prompt 7, 30 tokens, context 24); the others arrive after its 3rd
    // id, inside its 8-id readback window, and run through its shifts' re-prefills.
    const first = multi.generate(CASES[0].prompt, CASES[0].options);
    const head: number[] = [];
    for (let i = 0; i < 3; i++) head.push((await first.next()).value as number);
    const late = [1, 4, 5].map((i) => collect(multi.generate(CASES[i].prompt, CASES[i].options)));
    // One more arrives after the next id of case 0 (another point in its window).
    const next = (await first.next()).value as number;
    const last = collect(multi.generate(CASES[2].prompt, CASES[2].options));
    const rest = collect(first);
    assert.deepEqual([...head, next, ...await rest], expected[0]);
    const got = await Promise.all(late);
    [1, 4, 5].forEach((c, k) => assert.deepEqual(got[k], expected[c], `case ${c}`));
    assert.deepEqual(await last, expected[2]);
  },
});

Deno.test({
  name: "batch: a call arriving while all 8 slots decode waits, then equals the one-slot engine",
  async fn() {
    const { multi } = await engines();
    const long = { maxTokens: 18, stopIds: [] }; // still running when the 8th starts
    const calls = PROMPTS.flatMap((p) => [p, p.slice(0, -1)]).slice(0, SLOTS);
    const want = await Promise.all(calls.map((p) => collect(single!.generate(p, long))));
    const its = calls.map((p) => multi.generate(p, long));
    // Every stream has its first id: all 8 slots decode.
    const heads = await Promise.all(its.map(async (it) => (await it.next()).value as number));
    assert.deepEqual(multi.stats!(), { slots: SLOTS, active: SLOTS, waiting: 0, prefilling: 0 });
    const ninth = collect(multi.generate(CASES[4].prompt, CASES[4].options));
    await new Promise((r) => setTimeout(r, 0));
    assert.equal(multi.stats!().waiting, 1, "the ninth call waits for a slot");
    const rests = await Promise.all(its.map((it) => collect(it)));
    rests.forEach((ids, k) => assert.deepEqual([heads[k], ...ids], want[k], `stream ${k}`));
    assert.deepEqual(await ninth, expected[4]);
    assert.deepEqual(multi.stats!(), { slots: SLOTS, active: 0, waiting: 0, prefilling: 0 });
  },
});

Deno.test({
  name: "batch: logits on a multi-slot engine, beside a running stream, equal the single engine's",
  async fn() {
    const { single, multi } = await engines();
    const running = collect(multi.generate(CASES[0].prompt, CASES[0].options));
    const ids = PROMPTS[2].slice(0, 12);
    const [a, b] = await Promise.all([multi.logits(ids), single.logits(ids)]);
    assert.ok(relErr(a, b) === 0, `logits differ: ${relErr(a, b)}`);
    assert.deepEqual(await running, expected[0]);
  },
});

Deno.test("batch: bad parallel values are usage errors; slots beyond the device a limit error", async () => {
  try {
    // A memory that holds one slot's context but not four.
    const artifact = await openArtifact(path);
    const p = perTokenBytes(artifact.model);
    artifact.close();
    const memoryBytes = 2 * 128 * (p.kv + p.other);
    await assert.rejects(
      () => loadModel(path, { parallel: 4, maxContext: 128, prefillChunk: CHUNK, memoryBytes }),
      (e: Error) => e instanceof LimitError && /× 4 slots\): 128 tokens need/.test(e.message),
    );
    await assert.rejects(() => loadModel(path, { ...opts, parallel: 0 }), UsageError);
    await assert.rejects(() => loadModel(path, { ...opts, parallel: 1.5 }), UsageError);
    await assert.rejects(() => loadModel(path, { ...opts, parallel: CHUNK + 1 }), /parallel/);
  } finally {
    single?.dispose();
    multi?.dispose();
    await Deno.remove(path);
  }
});
