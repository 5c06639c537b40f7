import assert from "node:assert/strict";
import { agreeing, stats, summarize } from "./peer.ts";
import { decodeRate } from "./peer_child.ts";

Deno.test("stats: minimum and median (mean of the middle two for even counts)", () => {
  assert.deepEqual(stats([5, 1, 3]), { min: 1, median: 3 });
  assert.deepEqual(stats([4, 1, 3, 2]), { min: 1, median: 2.5 });
});

Deno.test("agreeing: the length of the common prefix", () => {
  assert.equal(agreeing([1, 2, 3, 4], [1, 2, 9, 4]), 2);
  assert.equal(agreeing([1, 2], [1, 2, 3]), 2);
  assert.equal(agreeing([7], [8]), 0);
});

Deno.test("decodeRate: ids after the first readback over the time since it", () => {
  // One id every 10 ms: 4 ids after the first in 40 ms = 100 tok/s.
  assert.equal(decodeRate([100, 110, 120, 130, 140]), 100);
  // Batches of 4 arriving every 20 ms (5 ms per token): the first batch is excluded.
  const at = [0, 0.01, 0.02, 0.03, 20, 20.01, 20.02, 20.03, 40, 40.01, 40.02, 40.03];
  assert.ok(Math.abs(decodeRate(at) - 8 / (40.03 - 0.03) * 1000) < 1e-9);
  assert.ok(Number.isNaN(decodeRate([5, 5.1])));
});

Deno.test("summarize: ratios of medians and greedy agreement against moeq", () => {
  const run = (engine: string, decode: number, prefill: number, ids: number[]) => ({
    engine,
    backend: "b",
    device: "d",
    loadMs: 1,
    firstMs: 1,
    prefillMs: 1,
    totalMs: 1,
    promptTokens: 4,
    tokens: 3,
    prefillTokS: prefill,
    decodeTokS: decode,
    ids,
  });
  const cell = (engine: "moeq" | "llama-vulkan", runs: ReturnType<typeof run>[]) => ({
    model: "m",
    precision: "f16" as const,
    engine,
    backend: "b",
    device: "d",
    runs,
    decode: stats(runs.map((r) => r.decodeTokS)),
    prefill: stats(runs.map((r) => r.prefillTokS)),
    loadMs: { min: 1, median: 1 },
  });
  const { json, table } = summarize([
    cell("moeq", [run("moeq", 90, 400, [1, 2, 3]), run("moeq", 110, 600, [1, 2, 3])]),
    cell("llama-vulkan", [run("l", 40, 100, [1, 2, 4]), run("l", 60, 300, [1, 2, 4])]),
  ], { runs: 2, promptTokens: 4, tokens: 3, threads: 2 });
  const rows = json.rows as Record<string, unknown>[];
  assert.equal(rows[1].moeq_over_decode, 2); // 100 / 50
  assert.equal(rows[1].moeq_over_prefill, 2.5); // 500 / 200
  assert.equal(rows[1].greedy_agree_tokens, 2);
  assert.equal(json.f16_greedy_agree, false);
  assert.match(table, /\| m \| f16 \| llama-vulkan \| 40\.0 \/ 50\.0 \| 100\.0 \/ 200\.0 \|/);
  assert.match(table, /DISAGREE/);
});
