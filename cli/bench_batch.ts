/**
 * `moeq bench batch <artifact> [--streams 1,2,4,8] [--tokens N] [--rounds R] [--context C]
 * [--json]`: continuous-batching throughput of the engine. Loads the artifact twice — a
 * multi-slot engine (parallel = the most streams) and a one-slot engine (today's loop) — then,
 * in R alternating rounds:
 *
 * - for each stream count S: S `generate` calls started together (distinct 8-token prompts,
 *   greedy, N tokens each, no stop ids) on the multi-slot engine; aggregate tok/s = S·N / wall
 *   (start to the last stream's end, prefill included), each stream's time to first token, and
 *   the aggregate decode rate by difference with a run of N/4 tokens (`decodeRate`);
 * - one stream alone on the one-slot engine and alone on the multi-slot engine (the cost of the
 *   slots for a single user).
 *
 * Reports the median over rounds (and the min), the ratio of each aggregate to the one-stream
 * figure, the TTFT p50/p99 over all streams of all rounds per stream count, and whether every
 * stream of the largest count yielded the one-slot engine's ids for its prompt.
 *
 * @module
 */

import type { Args } from "./args.ts";
import { UsageError } from "../schemas/errors.ts";
import { openArtifact } from "../schemas/artifact.ts";
import { createWebGpuEngine, type WebGpuEngine } from "../runtime/engine/mod.ts";
import { batchCeiling } from "./batch_ceiling.ts";

/** One stream count's figures. */
export interface BatchPoint {
  streams: number;
  /** Aggregate tok/s per round (wall clock, prefill included). */
  tokPerSecond: number[];
  median: number;
  /** median ÷ the one-stream median (of the multi-slot engine). */
  ratio: number;
  /**
   * Aggregate decode tok/s per round, by difference of an N- and a shorter run (prefill, TTFT and
   * the last readback cancel).
   */
  decodeTokPerSecond: number[];
  decodeMedian: number;
  /** decodeMedian ÷ the one-stream decode median. */
  decodeRatio: number;
  /** The structural ceiling of the ratio (cli/batch_ceiling.ts). */
  ceiling: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
}

/** What `bench batch` measured. */
export interface BatchResult {
  artifact: string;
  parallel: number;
  tokens: number;
  rounds: number;
  points: BatchPoint[];
  /** One stream alone: decode tok/s per round on the one-slot and on the multi-slot engine. */
  single: { oneSlot: number[]; multiSlot: number[]; ratio: number };
  /** Load time (artifact opened, engine created and warmed up), ms: multi-slot, one-slot. */
  loadMs: { multiSlot: number; oneSlot: number };
  /** The largest count's streams (last round) equal the one-slot engine's ids, prompt by prompt. */
  idsEqual: boolean;
}

/** The q-th quantile (nearest rank) of `xs`. */
export function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

const median = (xs: number[]) => quantile(xs, 0.5);

/** Median of the finite values (NaN when none). */
function finiteMedian(xs: number[]): number {
  const f = xs.filter(Number.isFinite);
  return f.length ? median(f) : NaN;
}

/**
 * S concurrent greedy streams of N tokens: aggregate tok/s (wall, prefill included), the wall
 * time (ms), each stream's TTFT (ms) and ids.
 */
async function runStreams(
  engine: WebGpuEngine,
  prompts: number[][],
  tokens: number,
): Promise<{ tokPerSecond: number; wallMs: number; ttft: number[]; ids: number[][] }> {
  const t0 = performance.now();
  const ttft: number[] = [];
  const ids = await Promise.all(prompts.map(async (p) => {
    const out: number[] = [];
    for await (const id of engine.generate(p, { maxTokens: tokens, stopIds: [] })) {
      if (out.length === 0) ttft.push(performance.now() - t0);
      out.push(id);
    }
    return out;
  }));
  const wallMs = performance.now() - t0;
  return { tokPerSecond: (prompts.length * tokens) / (wallMs / 1000), wallMs, ttft, ids };
}

/**
 * Tokens of the short run that {@link decodeRate} subtracts: a quarter of the long run's (at
 * least 2, fewer than `tokens`).
 */
export function shortTokens(tokens: number): number {
  return Math.min(tokens - 1, Math.max(2, Math.floor(tokens / 4)));
}

/**
 * The S streams' N-token run and their aggregate decode rate, by difference: S·(N − n) tokens ÷
 * (wall of N tokens − wall of n = {@link shortTokens}(N) tokens). Prefill, time to first token and
 * the last readback are in both runs and cancel, and ids handed out in readback bursts do not
 * skew it (a window between id arrivals does).
 */
async function decodeRate(
  engine: WebGpuEngine,
  prompts: number[][],
  tokens: number,
): Promise<Awaited<ReturnType<typeof runStreams>> & { decodeTokPerSecond: number }> {
  const n = shortTokens(tokens);
  const short = await runStreams(engine, prompts, n);
  const long = await runStreams(engine, prompts, tokens);
  const ms = long.wallMs - short.wallMs;
  return {
    ...long,
    decodeTokPerSecond: ms > 0 ? (prompts.length * (tokens - n)) / (ms / 1000) : NaN,
  };
}

/** Runs `bench batch`. */
export async function benchBatch(args: Args): Promise<void> {
  const file = args.positionals[1];
  if (!file) throw new UsageError("bench batch: give an artifact path");
  const streams = args.string("streams", "1,2,4,8").split(",").map((s) => {
    const v = Number(s);
    if (!Number.isInteger(v) || v < 1 || v > 64) {
      throw new UsageError(`--streams: "${s}" is not an integer in [1, 64]`);
    }
    return v;
  });
  const tokens = args.int("tokens", 32, 2, 4096);
  const rounds = args.int("rounds", 3, 1, 100);
  const context = args.int("context", 256, 16, 1 << 20);
  const json = args.flag("json");
  const log = (s: string) => {
    if (!json) console.error(s);
  };
  const parallel = Math.max(...streams);

  const artifact = await openArtifact(file);
  let multi: WebGpuEngine, one: WebGpuEngine;
  const loadMs = { multiSlot: 0, oneSlot: 0 };
  const ceilings = new Map(
    streams.map((S) => [S, batchCeiling(artifact.model, artifact.tensors, S).ceiling]),
  );
  try {
    // The one-slot engine first, on its own device (its load pays the same device start-up).
    log(`loading ${file} (parallel 1, then ${parallel}) ...`);
    let t = performance.now();
    one = await createWebGpuEngine(artifact, { maxContext: context });
    loadMs.oneSlot = performance.now() - t;
    t = performance.now();
    multi = await createWebGpuEngine(artifact, { parallel, maxContext: context });
    loadMs.multiSlot = performance.now() - t;
    log(
      `loaded in ${(loadMs.oneSlot / 1000).toFixed(1)} s (parallel 1), ${
        (loadMs.multiSlot / 1000).toFixed(1)
      } s (parallel ${parallel})`,
    );
  } finally {
    artifact.close();
  }
  const V = multi.model.vocabSize;
  // Distinct 8-token prompts (fixed ids spread over the vocabulary).
  const prompts = Array.from(
    { length: parallel },
    (_, s) => Array.from({ length: 8 }, (_, i) => (97 + 13 * s + 7 * i) % V),
  );
  const perStreams = new Map<number, { tps: number[]; dec: number[]; ttft: number[] }>();
  const single = { oneSlot: [] as number[], multiSlot: [] as number[] };
  let idsEqual = true;
  try {
    await runStreams(multi, prompts.slice(0, 1), 4); // first-use costs out of the rounds
    await runStreams(one, prompts.slice(0, 1), 4);
    for (let r = 0; r < rounds; r++) {
      single.oneSlot.push(
        (await decodeRate(one, prompts.slice(0, 1), tokens)).decodeTokPerSecond,
      );
      single.multiSlot.push(
        (await decodeRate(multi, prompts.slice(0, 1), tokens)).decodeTokPerSecond,
      );
      for (const S of streams) {
        const { tokPerSecond, decodeTokPerSecond, ttft, ids } = await decodeRate(
          multi,
          prompts.slice(0, S),
          tokens,
        );
        if (S === parallel && r === rounds - 1) {
          for (let i = 0; i < S; i++) {
            const alone = (await runStreams(one, [prompts[i]], tokens)).ids[0];
            idsEqual &&= alone.join() === ids[i].join();
          }
        }
        const p = perStreams.get(S) ?? { tps: [], dec: [], ttft: [] };
        p.tps.push(tokPerSecond);
        p.dec.push(decodeTokPerSecond);
        p.ttft.push(...ttft);
        perStreams.set(S, p);
        log(
          `round ${r + 1}: ${S} streams ${tokPerSecond.toFixed(2)} tok/s, decode ${
            decodeTokPerSecond.toFixed(2)
          }, TTFT p50 ${quantile(ttft, 0.5).toFixed(0)} ms, p99 ${
            quantile(ttft, 0.99).toFixed(0)
          } ms`,
        );
      }
    }
  } finally {
    one.dispose();
    multi.dispose();
  }
  const base = median(perStreams.get(streams[0])!.tps);
  const decodeBase = finiteMedian(perStreams.get(streams[0])!.dec);
  const result: BatchResult = {
    artifact: file,
    parallel,
    tokens,
    rounds,
    points: streams.map((S) => {
      const p = perStreams.get(S)!;
      return {
        streams: S,
        tokPerSecond: p.tps,
        median: median(p.tps),
        ratio: median(p.tps) / base,
        decodeTokPerSecond: p.dec,
        decodeMedian: finiteMedian(p.dec),
        decodeRatio: finiteMedian(p.dec) / decodeBase,
        ceiling: ceilings.get(S)! / ceilings.get(streams[0])!,
        ttftP50Ms: quantile(p.ttft, 0.5),
        ttftP99Ms: quantile(p.ttft, 0.99),
      };
    }),
    single: {
      ...single,
      ratio: finiteMedian(single.multiSlot) / finiteMedian(single.oneSlot),
    },
    idsEqual,
    loadMs,
  };
  if (json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  console.log(
    `${file}: ${tokens} tokens per stream, ${rounds} rounds, engine parallel ${parallel}`,
  );
  console.log(
    "streams  agg tok/s (median, min)  ×     decode tok/s (median, min)  ×      ceiling" +
      "  TTFT p50 ms  TTFT p99 ms",
  );
  const n2 = (x: number, w: number) => x.toFixed(2).padStart(w);
  for (const p of result.points) {
    console.log(
      `${String(p.streams).padStart(7)}  ${n2(p.median, 9)} ${
        n2(Math.min(...p.tokPerSecond), 9)
      }  ${n2(p.ratio, 5)}  ${n2(p.decodeMedian, 9)} ${
        n2(Math.min(...p.decodeTokPerSecond), 9)
      }     ${n2(p.decodeRatio, 5)}  ${n2(p.ceiling, 7)}  ${p.ttftP50Ms.toFixed(0).padStart(11)}  ${
        p.ttftP99Ms.toFixed(0).padStart(11)
      }`,
    );
  }
  const s = result.single;
  console.log(
    `one stream alone, decode: ${finiteMedian(s.oneSlot).toFixed(2)} tok/s on a one-slot engine, ${
      finiteMedian(s.multiSlot).toFixed(2)
    } on the parallel-${parallel} engine (× ${s.ratio.toFixed(3)})`,
  );
  console.log(
    `load: ${(loadMs.oneSlot / 1000).toFixed(1)} s one-slot, ${
      (loadMs.multiSlot / 1000).toFixed(1)
    } s parallel ${parallel}`,
  );
  console.log(
    `${parallel} streams' ids ${idsEqual ? "equal" : "DIFFER FROM"} the one-slot engine's`,
  );
}
