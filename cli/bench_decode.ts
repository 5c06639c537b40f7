/**
 * `moeq bench decode <artifact> [--tokens N] [--prompt TEXT] [--iterations R] [--compare <float
 * artifact>] [--json]`: first the engine's first request after load and R more identical
 * requests (N tokens, readback every 8; R = 3 by default): time to first token and decode
 * ms/token of the first request, and the median (and min) of the others (runtime/rates.ts: TTFT
 * = request → first id, which includes the prefill, the first batch's steps and one readback;
 * decode = ids after the first batch over the time from the first id to the last). Run it in a
 * fresh process: the first request is the cold one. Then decode milliseconds per token swept
 * over readback batch sizes 1, 4, 8 and 16; the model's active bytes per token (dense weights + the top-k experts' packed bytes,
 * at the layer's mean expert size) and the bytes floor (active bytes ÷ the copy kernel's
 * bandwidth on the same device), with the ratio; the per-dispatch cost times the dispatches per
 * token (what bounds decode on small models); and, with --compare, the same for a float artifact
 * of the same model and the quantization speed-up.
 *
 * ms/token is (wall(N tokens) − wall(1 token)) / (N − 1) for the same batch size, which removes
 * the prefill and the first readback.
 *
 * @module
 */

import type { Args } from "./args.ts";
import { UsageError } from "../schemas/errors.ts";
import { isRoutedExpertMatrix, openArtifact, type TensorRecord } from "../schemas/artifact.ts";
import type { ModelSpec } from "../schemas/model.ts";
import { createWebGpuEngine, formatOf, type WebGpuEngine } from "../runtime/engine/mod.ts";
import { matrixBytes } from "../runtime/kernels/weights.ts";
import { copyBandwidth, dispatchOverhead } from "../runtime/bench/measure.ts";
import { maxBindingOption, tokenizerFor } from "./model_source.ts";
import { GenerationClock } from "../runtime/rates.ts";

const BATCHES = [1, 4, 8, 16];
/** Readback batch of the first-request and steady requests (the engine's default). */
const REQUEST_BATCH = 8;

/** TTFT and decode speed of one request, or a summary of several. */
export interface RequestFigures {
  ttftMs: number;
  /** null for a request of one id. */
  decodeMsPerToken: number | null;
}

/** Bytes a decode step reads, by part. */
export interface ActiveBytes {
  dense: number;
  experts: number;
  total: number;
}

/** What `bench decode` measured for one artifact. */
export interface DecodeResult {
  artifact: string;
  kernels: string;
  active: ActiveBytes;
  floorMs: number;
  dispatchesPerToken: number;
  dispatchBoundMs: number;
  /** The first request after load. */
  first: RequestFigures;
  /** Median and min over the next requests. */
  steady: { median: RequestFigures; min: RequestFigures; requests: number };
  /** First-request decode ms/token ÷ the steady median (1 = no cold penalty). */
  firstOverSteady: number | null;
  /** ms/token per readback batch size. */
  msPerToken: Record<number, number>;
  ratioToFloor: Record<number, number>;
}

/**
 * Active weight bytes per decoded token: every non-expert matrix in full except the embedding
 * (one row), plus per MoE block its top-k times the mean packed bytes of one of its experts.
 */
export function activeBytes(spec: ModelSpec, tensors: readonly TensorRecord[]): ActiveBytes {
  const topK = new Map<string, number>();
  spec.decoder.layers.forEach((layer, l) => {
    for (const block of layer.blocks) {
      if (block.kind === "ffn" && block.ffn.kind === "moe") {
        topK.set(`decoder/${l}`, block.ffn.topK);
      }
    }
  });
  let dense = 0;
  const perBlock = new Map<string, { bytes: number; experts: Set<number> }>();
  for (const t of tensors) {
    if (t.shape.length !== 2) continue;
    const b = matrixBytes(formatOf(t), t.shape[0], t.shape[1]);
    if (isRoutedExpertMatrix(t)) {
      const at = `${t.stack}/${t.layer}`;
      const block = perBlock.get(at) ?? { bytes: 0, experts: new Set<number>() };
      block.bytes += b;
      block.experts.add(t.expert);
      perBlock.set(at, block);
    } else if (t.role === "embed") {
      dense += b / t.shape[0];
    } else {
      dense += b;
    }
  }
  let experts = 0;
  for (const [at, block] of perBlock) experts += (topK.get(at)! * block.bytes) / block.experts.size;
  return { dense, experts, total: dense + experts };
}

/** Median and min of each field over requests (nulls dropped; null when all are null). */
export function summarize(
  requests: RequestFigures[],
): { median: RequestFigures; min: RequestFigures } {
  const pick = (f: (r: RequestFigures) => number | null) => {
    const v = requests.map(f).filter((x): x is number => x !== null).sort((a, b) => a - b);
    if (v.length === 0) return { median: null, min: null };
    const m = v.length >> 1;
    return { median: v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2, min: v[0] };
  };
  const ttft = pick((r) => r.ttftMs), decode = pick((r) => r.decodeMsPerToken);
  return {
    median: { ttftMs: ttft.median ?? NaN, decodeMsPerToken: decode.median },
    min: { ttftMs: ttft.min ?? NaN, decodeMsPerToken: decode.min },
  };
}

async function measure(
  path: string,
  prompt: string,
  tokens: number,
  repeats: number,
  maxBinding?: number,
): Promise<DecodeResult> {
  const artifact = await openArtifact(path);
  let engine: WebGpuEngine;
  let ids: number[];
  try {
    engine = await createWebGpuEngine(artifact, { maxBinding });
    const tokenizerJson = await artifact.readTokenizerJson();
    const chatTemplate = artifact.tokenizer.chatTemplate ?? null;
    ids = tokenizerFor(artifact.model, { tokenizerJson, chatTemplate }).encode(prompt);
  } finally {
    artifact.close();
  }
  try {
    if (ids.length === 0) throw new UsageError("bench decode: the prompt is empty");
    if (ids.length + tokens > engine.maxContext) {
      throw new UsageError(
        `bench decode: ${ids.length} prompt + ${tokens} tokens exceed the context ${engine.maxContext}`,
      );
    }
    const request = async (): Promise<RequestFigures> => {
      const clock = new GenerationClock();
      const opts = { maxTokens: tokens, readbackEvery: REQUEST_BATCH, stopIds: [] };
      for await (const _ of engine.generate(ids, opts)) clock.received();
      if (clock.tokens !== tokens) {
        throw new Error(`bench decode: generated ${clock.tokens} of ${tokens} tokens`);
      }
      const r = clock.rates()!;
      return { ttftMs: r.ttftMs, decodeMsPerToken: r.decodeMsPerToken };
    };
    // The first request comes before anything else touches the engine.
    const first = await request();
    const later: RequestFigures[] = [];
    for (let i = 0; i < repeats; i++) later.push(await request());
    const steady = { ...summarize(later), requests: repeats };
    const firstOverSteady = first.decodeMsPerToken !== null && steady.median.decodeMsPerToken
      ? first.decodeMsPerToken / steady.median.decodeMsPerToken
      : null;
    const active = activeBytes(engine.model, artifact.tensors);
    const copy = await copyBandwidth(engine.device, 16 * 1024 * 1024, 10);
    const overhead = await dispatchOverhead(engine.device);
    const wall = async (n: number, every: number) => {
      const t0 = performance.now();
      let got = 0;
      for await (
        const _ of engine.generate(ids, { maxTokens: n, readbackEvery: every, stopIds: [] })
      ) got++;
      if (got !== n) throw new Error(`bench decode: generated ${got} of ${n} tokens`);
      return performance.now() - t0;
    };
    const msPerToken: Record<number, number> = {};
    const ratioToFloor: Record<number, number> = {};
    const floorMs = active.total / copy.bytesPerSecond * 1000;
    for (const b of BATCHES) {
      const one = await wall(1, b);
      const all = await wall(tokens, b);
      msPerToken[b] = (all - one) / (tokens - 1);
      ratioToFloor[b] = msPerToken[b] / floorMs;
    }
    return {
      artifact: path,
      kernels: engine.kernels,
      active,
      floorMs,
      dispatchesPerToken: engine.dispatchesPerToken,
      dispatchBoundMs: engine.dispatchesPerToken * overhead,
      first,
      steady,
      firstOverSteady,
      msPerToken,
      ratioToFloor,
    };
  } finally {
    engine.dispose();
  }
}

/** Runs `bench decode`. */
export async function benchDecode(args: Args): Promise<void> {
  const path = args.positionals[1];
  if (!path) throw new UsageError("bench decode: give the artifact path");
  const tokens = args.int("tokens", 64, 2, 1 << 16);
  const prompt = args.string("prompt", "ROMEO:")!;
  const compare = args.string("compare");
  const iterations = args.string("iterations", "auto");
  const repeats = iterations === "auto" ? 3 : args.int("iterations", 3, 1, 1000);
  const maxBinding = maxBindingOption(args);
  const results = [await measure(path, prompt, tokens, repeats, maxBinding)];
  if (compare) results.push(await measure(compare, prompt, tokens, repeats, maxBinding));
  const speedup = results.length === 2
    ? Object.fromEntries(
      BATCHES.map((b) => [b, results[1].msPerToken[b] / results[0].msPerToken[b]]),
    )
    : null;
  if (args.flag("json")) {
    console.log(JSON.stringify({ tokens, prompt, results, quantization_speedup: speedup }));
    return;
  }
  for (const r of results) {
    console.log(`${r.artifact} (${r.kernels} kernels)`);
    console.log(
      `  active bytes/token ${(r.active.total / 1024).toFixed(1)} KiB (dense ${
        (r.active.dense / 1024).toFixed(1)
      }, experts ${(r.active.experts / 1024).toFixed(1)}); floor ${r.floorMs.toFixed(4)} ms`,
    );
    console.log(
      `  ${r.dispatchesPerToken} dispatches/token × empty-dispatch cost = ${
        r.dispatchBoundMs.toFixed(2)
      } ms/token`,
    );
    const ms = (x: number | null) => (x === null ? "n/a" : x.toFixed(2));
    console.log(
      `  requests of ${tokens} tokens, readback every ${REQUEST_BATCH}: TTFT = request → first id;` +
        ` decode = ms per id after the first batch`,
    );
    console.log("                      TTFT ms  decode ms/token");
    const row = (name: string, f: RequestFigures) =>
      console.log(
        `  ${name.padEnd(18)} ${f.ttftMs.toFixed(1).padStart(8)} ${
          ms(f.decodeMsPerToken).padStart(16)
        }`,
      );
    row("first request", r.first);
    row(`steady median (${r.steady.requests})`, r.steady.median);
    row("steady min", r.steady.min);
    console.log(
      `  first ÷ steady decode: ${
        r.firstOverSteady === null ? "n/a" : r.firstOverSteady.toFixed(3)
      }`,
    );
    console.log("  batch  ms/token  ÷floor");
    for (const b of BATCHES) {
      console.log(
        `  ${String(b).padStart(5)} ${r.msPerToken[b].toFixed(2).padStart(9)} ${
          r.ratioToFloor[b].toFixed(1).padStart(7)
        }`,
      );
    }
  }
  if (speedup) {
    console.log(
      `quantization speed-up (float ms ÷ quantized ms): ${
        BATCHES.map((b) => `batch ${b}: ${speedup[b].toFixed(2)}×`).join(", ")
      }`,
    );
  }
}
