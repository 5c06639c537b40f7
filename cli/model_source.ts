/**
 * Opening what the user names on the command line: a checkpoint directory or an artifact file,
 * as a CPU reference model or a WebGPU engine.
 *
 * @module
 */

import type { WebGpuEngineOptions } from "../runtime/engine/mod.ts";
import type { Args, FlagSpec } from "./args.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { artifactToIR } from "../compiler/emit/mod.ts";
import type { ModelIR, TokenizerData } from "../compiler/ir.ts";
import {
  forward,
  prepareReference,
  type ReferenceModel,
  ReferenceSession,
} from "../compiler/reference/mod.ts";
import type { Engine, GenerateOptions } from "../runtime/api.ts";
import { sampleCpu } from "../runtime/kernels/sample.ts";
import { type Artifact, openArtifact } from "../schemas/artifact.ts";
import { InputError, UsageError } from "../schemas/errors.ts";
import type { ModelSpec } from "../schemas/model.ts";
import { createTokenizer, type Tokenizer } from "../runtime/tokenizer.ts";

/** Where a model runs. */
export type DeviceKind = "cpu" | "webgpu";

/** The `--max-binding BYTES` flag of the commands that run the WebGPU engine. */
export const MAX_BINDING_FLAG: FlagSpec = {
  type: "string",
  help: "WebGPU: largest buffer binding in bytes; larger matrices are split into row blocks",
  default: "the adapter's limits",
};

/** `--max-binding` as the engine's `maxBinding` option (undefined when absent). */
export function maxBindingOption(args: Args): number | undefined {
  return args.string("max-binding") === undefined
    ? undefined
    : args.int("max-binding", 0, 16, Number.MAX_SAFE_INTEGER);
}

/**
 * `--context` (WebGPU KV-cache length in tokens) as the engine options it sets; undefined when the
 * flag is absent. UsageError with another device.
 */
export function contextOption(
  args: Args,
  device: DeviceKind,
): Pick<WebGpuEngineOptions, "maxContext" | "contextFlag"> {
  if (args.string("context") === undefined) return {};
  if (device !== "webgpu") throw new UsageError("--context: applies to --device webgpu");
  return { maxContext: args.int("context", 0, 1, 2 ** 31), contextFlag: "--context" };
}

/** True when `path` is a directory (a checkpoint), false for a file (an artifact). */
export async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch (e) {
    throw new InputError(`cannot open: ${(e as Error).message.split("\n")[0]}`, path);
  }
}

/** The IR of a checkpoint directory or an artifact file. */
export async function openIR(path: string): Promise<{ ir: ModelIR; artifact: Artifact | null }> {
  if (await isDirectory(path)) return { ir: await loadCheckpoint(path), artifact: null };
  const artifact = await openArtifact(path);
  return { ir: await artifactToIR(artifact), artifact };
}

/** The tokenizer a model's material describes (byte-level when there is no tokenizer.json). */
export function tokenizerFor(spec: ModelSpec, tok: TokenizerData): Tokenizer {
  return createTokenizer(tok.tokenizerJson, tok.chatTemplate, {
    bos: spec.bosTokenId,
    eos: spec.eosTokenIds,
  });
}

/**
 * Wraps the float64 reference as an Engine. Sampling uses the GPU sampler's float64 twin, so a
 * seed picks the same tokens on both devices whenever their logits agree.
 */
export function referenceEngine(model: ReferenceModel): Engine {
  return {
    model: model.spec,
    logits(ids: number[]) {
      return Promise.resolve(forward(model, ids).map((row) => Float32Array.from(row)));
    },
    async *generate(prompt: number[], opts: GenerateOptions = {}) {
      const context = model.spec.maxPositions;
      if (prompt.length === 0) throw new UsageError("generate: the prompt is empty");
      if (prompt.length > context) {
        throw new UsageError(
          `generate: the prompt has ${prompt.length} tokens, the context ${context}`,
        );
      }
      const session = new ReferenceSession(model);
      const stop = new Set(opts.stopIds ?? model.spec.eosTokenIds);
      const max = opts.maxTokens ?? 64;
      const params = {
        temperature: opts.temperature ?? 0,
        topK: opts.topK ?? 0,
        topP: opts.topP ?? 1,
        seed: opts.seed ?? 0,
      };
      // Context shifting, the same rule as the WebGPU engine (runtime/engine/generation.ts): when the next
      // token would be fed at position `context`, the last ⌊context/2⌋ tokens are re-prefilled
      // from position 0 and decoding continues after them.
      const keep = Math.max(1, Math.floor(context / 2));
      const history = [...prompt];
      let logits = session.feed(prompt);
      let row = logits[logits.length - 1];
      for (let i = 0; i < max; i++) {
        if (opts.signal?.aborted) return;
        const id = sampleCpu(Float32Array.from(row), params, i);
        yield id;
        if (stop.has(id)) return;
        history.push(id);
        if (session.position >= context) {
          session.reset();
          logits = session.feed(history.slice(-keep));
          row = logits[logits.length - 1];
        } else {
          row = session.step(id);
        }
        await Promise.resolve();
      }
    },
    generateSeq2Seq: model.encoder ? (ids, opts) => generateSeq2Seq(model, ids, opts) : undefined,
    dispose() {},
  };
}

/**
 * Seq2seq generation on the reference: the encoder once, then the decoder from its start token
 * with the KV cache, one token per step (so the capacity router never refuses a decoder token,
 * as in transformers' cached generate), until a stop id, `maxTokens` or the model's positions.
 */
async function* generateSeq2Seq(
  model: ReferenceModel,
  encoderIds: number[],
  opts: GenerateOptions = {},
): AsyncGenerator<number> {
  if (encoderIds.length === 0) throw new UsageError("generate: the encoder input is empty");
  const session = new ReferenceSession(model);
  session.encode(encoderIds);
  const stop = new Set(opts.stopIds ?? model.spec.eosTokenIds);
  const max = Math.min(opts.maxTokens ?? 64, model.spec.maxPositions - 1);
  const params = {
    temperature: opts.temperature ?? 0,
    topK: opts.topK ?? 0,
    topP: opts.topP ?? 1,
    seed: opts.seed ?? 0,
  };
  let row = session.step(model.spec.decoderStartTokenId!);
  for (let i = 0; i < max; i++) {
    if (opts.signal?.aborted) return;
    const id = sampleCpu(Float32Array.from(row), params, i);
    yield id;
    if (stop.has(id)) return;
    if (i + 1 < max) row = session.step(id);
    await Promise.resolve();
  }
}

/** A model opened for running (see {@link openEngine}). */
export interface OpenedModel {
  engine: Engine;
  tokenizer: Tokenizer;
  /** The model description. */
  spec: ModelSpec;
  /** The float64 reference behind a CPU engine (its logits unrounded); null on WebGPU. */
  reference: ReferenceModel | null;
}

/** Opens a model for running: the reference on the CPU, or the WebGPU engine (artifacts only). */
export async function openEngine(
  path: string,
  device: DeviceKind,
  opts: Pick<
    WebGpuEngineOptions,
    "f16" | "maxContext" | "contextFlag" | "maxBinding" | "parallel"
  > = {},
): Promise<OpenedModel> {
  const { ir, artifact } = await openIR(path);
  const tokenizer = tokenizerFor(ir.spec, ir.tokenizer);
  if (device === "cpu") {
    const reference = await prepareReference(ir);
    return { engine: referenceEngine(reference), tokenizer, spec: ir.spec, reference };
  }
  if (!artifact) {
    throw new UsageError(
      `${path}: --device webgpu runs compiled artifacts; compile it first or use --device cpu`,
    );
  }
  const { createWebGpuEngine } = await import("../runtime/engine/mod.ts");
  const engine = await createWebGpuEngine(artifact, opts);
  return { engine, tokenizer, spec: ir.spec, reference: null };
}
