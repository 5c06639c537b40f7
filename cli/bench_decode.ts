/**
 * `moeq bench decode <artifact> [--tokens N] [--prompt TEXT] [--compare <float artifact>] [--json]`:
 * decode milliseconds per token over a fixed prompt, swept over readback batch sizes 1, 4, 8
 * and 16; the model's active bytes per token (dense weights + the top-k experts' packed bytes,
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

const BATCHES = [1, 4, 8, 16];

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

async function measure(
  path: string,
  prompt: string,
  tokens: number,
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
    await wall(Math.min(8, tokens), 8); // warm-up
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
  const maxBinding = maxBindingOption(args);
  const results = [await measure(path, prompt, tokens, maxBinding)];
  if (compare) results.push(await measure(compare, prompt, tokens, maxBinding));
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
