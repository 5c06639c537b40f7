/**
 * The WebGPU engine for encoder–decoder models (Switch Transformer): loaded by
 * createWebGpuEngine (engine/mod.ts) when the description has an encoder stack.
 *
 * Per request:
 *
 * 1. the encoder plan, one submission over the whole encoder input (at most `chunk` tokens):
 *    embed → each layer's blocks (bidirectional self-attention with the encoder's relative bias,
 *    dense or capacity-routed MoE ReLU feed-forward) → final norm → each decoder cross-attention
 *    block's keys and values, projected once from the encoder output;
 * 2. the decoder plans: embed → self-attention over the KV cache (causal relative bias) →
 *    cross-attention over those keys and values → feed-forward → final norm → the head (× its
 *    scale, d_model^-½ for T5's tied head). `logitsSeq2Seq` runs every decoder id in one forward
 *    (so the capacity routers count them together, as the reference's forwardSeq2Seq and
 *    transformers' forward do); `generateSeq2Seq` feeds one token per step from the decoder start
 *    token, the GPU sampler appending each id to the token buffer the next step embeds, and the ids
 *    read back every `readbackEvery` tokens.
 *
 * Relative position biases are expanded once at load into per-distance tables, one per stack
 * (kernels/relative_bias.ts); the encoder length rides in the Step uniform's `encoderLength` field.
 * Matmuls, norms, the embedding, routed-expert matmuls and the sampler are the decoder-only
 * engine's (PlanBuilder); routing with capacity, ReLU and the top-1 combine are
 * kernels/capacity.ts, attention kernels/seq2seq_attention.ts (one query: keys strided over
 * lanes; more: query tiles). In the tiled style a self-attention block's q, k and v are one
 * stacked projection whose packed rows the KV store and the attention read.
 *
 * @module
 */

import type { GenerateOptions } from "../api.ts";
import { DeviceError, LimitError, UsageError } from "../../schemas/errors.ts";
import type { ModelSpec, StackSpec } from "../../schemas/model.ts";
import { capacityRouteSource, reluSource, top1CombineSource } from "../kernels/capacity.ts";
import {
  bindKernel,
  type Dispatch,
  encodeDispatches,
  getKernel,
  mapStaging,
  prepareKernels,
  readIds,
  STEP_BYTES,
  storageBuffer,
} from "../kernels/kernel.ts";
import type { RoutingKey } from "../kernels/moe.ts";
import { embedSource } from "../kernels/ops.ts";
import { relativeBiasTable } from "../kernels/relative_bias.ts";
import { createSampler } from "../kernels/sample.ts";
import {
  kvStoreSource,
  type Seq2SeqAttentionKey,
  seq2seqAttentionSource,
  seq2seqAttentionTiledSource,
  seq2seqTiledGroups,
} from "../kernels/seq2seq_attention.ts";
import { weightBuffers } from "../kernels/weights.ts";
import { activationBytes, createActivations, createKvCache, type KvCache } from "./activations.ts";
import { deviceBytes } from "./context.ts";
import type { WebGpuEngine, WebGpuEngineOptions } from "./mod.ts";
import { type PendingDispatch, PlanBuilder, type PlanContext } from "./plan.ts";
import {
  type Seq2SeqAttentionWeights,
  type Seq2SeqDenseWeights,
  type Seq2SeqMoeWeights,
  type Seq2SeqStackWeights,
  uploadSeq2SeqWeights,
} from "./seq2seq_weights.ts";
import { profileDispatches } from "./profile.ts";
import { firstLaunches, handIds, readFirstId, warmUpShape } from "./stream.ts";
import type { EngineArtifact } from "./weights.ts";

/** The device the engine runs on, acquired by createWebGpuEngine. */
export interface Seq2SeqDevice {
  device: GPUDevice;
  f16: boolean;
  cpu: boolean;
  /** Destroy the device on dispose (it was not given by the caller). */
  owned: boolean;
}

/** Most tokens per forward by default (the encoder input and teacher-forced decoder ids). */
export function seq2seqChunk(spec: ModelSpec, opts: WebGpuEngineOptions): number {
  const byLogits = Math.floor(2 ** 26 / (spec.vocabSize * 4));
  return Math.max(1, Math.min(opts.prefillChunk ?? Math.max(16, Math.min(512, byLogits)), 4096));
}

/** A description whose decoder holds both stacks' layers (activation widths over both). */
function bothStacks(spec: ModelSpec): ModelSpec {
  const asSelf = (s: StackSpec) =>
    s.layers.map((l) => ({
      ...l,
      blocks: l.blocks.map((b) =>
        b.kind === "cross_attention" ? { ...b, kind: "attention" as const } : b
      ),
    }));
  return {
    ...spec,
    encoder: null,
    decoder: { ...spec.decoder, layers: [...asSelf(spec.encoder!), ...asSelf(spec.decoder)] },
  };
}

/** Creates the engine of an encoder–decoder artifact on an acquired device. */
export async function createSeq2SeqEngine(
  artifact: EngineArtifact,
  gpu: Seq2SeqDevice,
  opts: WebGpuEngineOptions,
): Promise<WebGpuEngine> {
  const { device } = gpu;
  const spec = artifact.model;
  const H = spec.hiddenSize, V = spec.vocabSize;
  const maxContext = opts.maxContext ?? Math.min(spec.maxPositions || 4096, 4096);
  const chunk = seq2seqChunk(spec, opts);
  const tiled = (opts.kernels ?? (gpu.cpu ? "tiled" : "classic")) === "tiled";
  const tokenTile = opts.prefillTile ?? (tiled ? 8 : 4);
  device.pushErrorScope("validation");
  device.pushErrorScope("out-of-memory");

  const weights = await uploadSeq2SeqWeights(device, artifact, { fuse: tiled });
  const acts = createActivations(device, bothStacks(spec), chunk, maxContext);
  const f32 = (floats: number, label: string) => storageBuffer(device, floats * 4, label);
  const encTokens = storageBuffer(device, chunk * 4, "encoder.tokens");
  const kvWidth = (w: Seq2SeqAttentionWeights) => w.spec.numKvHeads * w.spec.headDim;
  const step = device.createBuffer({
    label: "step",
    size: STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  const sampler = createSampler(device, V);

  // Relative-bias tables by owner: the encoder's over ±chunk, the decoder's over maxContext.
  const biases = new Map<string, GPUBuffer>();
  const biasOf = (w: Seq2SeqAttentionWeights, span: number): GPUBuffer | undefined => {
    const rb = w.relativeBias;
    if (!rb) return undefined;
    let buf = biases.get(rb.key);
    if (!buf) {
      const data = relativeBiasTable(rb.table, rb.spec, w.spec.numHeads, span);
      buf = storageBuffer(device, data.byteLength, `relative_bias.${rb.key}`, data);
      biases.set(rb.key, buf);
    }
    return buf;
  };

  const ctx: PlanContext = {
    spec,
    weights: null as never, // blocks here read their own weights; PlanBuilder never does
    acts,
    caches: new Map(),
    ropes: new Map(),
    step,
    tiled,
    rowTile: opts.rowTile ?? 8,
    threadsPerRow: opts.threadsPerRow ?? (gpu.cpu ? 16 : 64),
    chunk,
  };

  // Buffers each attention block reads: the encoder's own K/V (shared by its layers, used at
  // once), the decoder's caches and the cross-attention K/V, one per block.
  const encKv: KvCache = { keys: f32(0, "encoder.k"), values: f32(0, "encoder.v") };
  let encKvWidth = 0;
  for (const l of weights.encoder.layers) {
    for (const b of l.blocks) {
      if (b.kind === "attention") encKvWidth = Math.max(encKvWidth, kvWidth(b));
    }
  }
  encKv.keys = f32(chunk * encKvWidth, "encoder.k");
  encKv.values = f32(chunk * encKvWidth, "encoder.v");
  const selfCaches = new Map<Seq2SeqAttentionWeights, KvCache>();
  const crossKv = new Map<Seq2SeqAttentionWeights, KvCache>();
  weights.decoder.layers.forEach((l, i) =>
    l.blocks.forEach((b, j) => {
      if (b.kind === "attention") {
        selfCaches.set(b, createKvCache(device, b.spec, maxContext, `kv.${i}.${j}`));
      } else if (b.kind === "cross_attention") {
        crossKv.set(b, {
          keys: f32(chunk * kvWidth(b), `cross.${i}.${j}.k`),
          values: f32(chunk * kvWidth(b), `cross.${i}.${j}.v`),
        });
      }
    })
  );

  /** Attention block: norm → q (k, v) → attention over its keys → output added to the residual. */
  function attention(plan: PlanBuilder, w: Seq2SeqAttentionWeights, rs: number, encoder: boolean) {
    const a = w.spec;
    const qWidth = a.numHeads * a.headDim, width = kvWidth(w);
    plan.preNorm(w.norm, w.normWeight);
    const kv = w.kind === "cross_attention"
      ? crossKv.get(w)!
      : encoder
      ? encKv
      : selfCaches.get(w)!;
    const store = { kCache: kv.keys, vCache: kv.values };
    let q = acts.q, qStride = qWidth;
    if (w.qkv) {
      // One [q | k | v] projection; k and v go to the keys' rows from the packed rows.
      qStride = qWidth + 2 * width;
      q = acts.qkv;
      plan.matmul(w.qkv, acts.normed, acts.qkv);
      const packed = { stride: qStride, kOffset: qWidth };
      plan.elementwise(kvStoreSource(width, packed), { qkv: acts.qkv, ...store }, width);
    } else {
      plan.matmul(w.q, acts.normed, acts.q);
      if (w.kind === "attention" && encoder) {
        // The encoder's keys are this forward's rows 0..T − 1: projected in place.
        plan.matmul(w.k, acts.normed, kv.keys);
        plan.matmul(w.v, acts.normed, kv.values);
      } else if (w.kind === "attention") {
        plan.matmul(w.k, acts.normed, acts.k);
        plan.matmul(w.v, acts.normed, acts.v);
        plan.elementwise(kvStoreSource(width), { k: acts.k, v: acts.v, ...store }, width);
      }
    }
    const span = encoder ? chunk : maxContext;
    const bias = w.kind === "attention" ? biasOf(w, span) : undefined;
    const key: Seq2SeqAttentionKey = {
      numHeads: a.numHeads,
      numKvHeads: a.numKvHeads,
      headDim: a.headDim,
      scale: a.scale,
      keys: w.kind === "attention" && !encoder ? "causal" : "all",
      bias: bias ? { bidirectional: w.relativeBias!.spec.bidirectional, span } : null,
      qStride,
    };
    const buffers: Record<string, GPUBuffer> = {
      q,
      kCache: kv.keys,
      vCache: kv.values,
      out: acts.attention,
    };
    if (bias) buffers.bias = bias;
    // One query: keys strided over lanes; more: query tiles that load each key once.
    const none: [number, number, number] = [0, 0, 0];
    plan.dispatch(seq2seqAttentionSource(key), buffers, (T) => T === 1 ? [a.numHeads, 1, 1] : none);
    if (plan.prefill) {
      plan.dispatch(
        seq2seqAttentionTiledSource(key),
        buffers,
        (T) => T > 1 ? seq2seqTiledGroups(key, T) : none,
      );
    }
    plan.matmul(w.o, acts.attention, acts.hidden, { accumulate: true, scale: rs });
  }

  /** Dense ReLU MLP: norm → up → ReLU → down added to the residual. */
  function dense(plan: PlanBuilder, w: Seq2SeqDenseWeights, rs: number) {
    const I = w.spec.mlp.intermediate;
    plan.preNorm(w.norm, w.normWeight);
    plan.matmul(w.up, acts.normed, acts.mlpGate);
    plan.elementwise(reluSource(I), { x: acts.mlpGate }, I);
    plan.matmul(w.down, acts.mlpGate, acts.hidden, { accumulate: true, scale: rs });
  }

  /** Capacity-routed MoE: router → top-1 with capacity → experts' up, ReLU, down → combine. */
  function moe(plan: PlanBuilder, w: Seq2SeqMoeWeights, rs: number) {
    const E = w.spec.numExperts, I = w.spec.expert.intermediate;
    const routing: RoutingKey = { numExperts: E, topK: 1, normTopK: false, scale: 1 };
    plan.preNorm(w.norm, w.normWeight);
    plan.matmul(w.router, acts.normed, acts.routerLogits);
    plan.dispatch(
      capacityRouteSource({ numExperts: E, capacity: w.capacity, listCapacity: chunk }),
      {
        routerLogits: acts.routerLogits,
        expertIds: acts.expertIds,
        expertWeights: acts.expertWeights,
        routes: acts.routes,
      },
      () => [1, 1, 1],
    );
    plan.expertMatmuls(w.up, acts.normed, acts.mlpGate, "token", routing);
    plan.elementwise(reluSource(I), { x: acts.mlpGate }, I);
    plan.expertMatmuls(w.down, acts.mlpGate, acts.expertOut, "slot", routing);
    plan.elementwise(
      top1CombineSource(H, E, rs),
      {
        x: acts.hidden,
        expertOut: acts.expertOut,
        expertIds: acts.expertIds,
        expertWeights: acts.expertWeights,
      },
      H,
    );
  }

  function layers(plan: PlanBuilder, stack: Seq2SeqStackWeights, encoder: boolean) {
    for (const layer of stack.layers) {
      for (const b of layer.blocks) {
        if (b.kind === "moe") moe(plan, b, layer.residualScale);
        else if (b.kind === "dense") dense(plan, b, layer.residualScale);
        else attention(plan, b, layer.residualScale, encoder);
      }
    }
  }

  function embed(plan: PlanBuilder, tokens: GPUBuffer) {
    const e = weights.embed;
    plan.elementwise(
      embedSource(e.format, H, spec.embedScale),
      { tokens, ...weightBuffers(e), out: acts.hidden },
      H,
    );
  }

  function encoderPlan(): PendingDispatch[] {
    const plan = new PlanBuilder(ctx, tokenTile, true);
    embed(plan, encTokens);
    layers(plan, weights.encoder, true);
    plan.preNorm(spec.encoder!.finalNorm, weights.encoder.finalNorm);
    for (const [w, kv] of crossKv) {
      plan.matmul(w.k, acts.normed, kv.keys);
      plan.matmul(w.v, acts.normed, kv.values);
    }
    return plan.dispatches;
  }

  function decoderPlan(tile: number): PendingDispatch[] {
    const plan = new PlanBuilder(ctx, tile, tile > 1);
    embed(plan, acts.tokens);
    layers(plan, weights.decoder, false);
    plan.preNorm(spec.decoder.finalNorm, weights.decoder.finalNorm);
    plan.matmul(weights.head, acts.normed, acts.logits, { scale: spec.head.scale });
    return plan.dispatches;
  }

  const pending = [encoderPlan(), decoderPlan(tokenTile), decoderPlan(1)];
  await Promise.all([prepareKernels(device, pending.flat().map((p) => p.src)), sampler.ready]);
  const bind = (list: PendingDispatch[]): Dispatch[] =>
    list.map((p) => {
      const kernel = getKernel(device, p.src);
      return { kernel, bindGroup: bindKernel(device, kernel, p.buffers), groups: p.groups };
    });
  const [encoderDispatches, prefillDispatches, decodeDispatches] = pending.map(bind);
  const oom = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  if (oom) throw new LimitError(`GPU out of memory while loading ${artifact.path}: ${oom.message}`);
  if (invalid) {
    throw new DeviceError(
      `WebGPU validation failed while loading ${artifact.path}: ${invalid.message}`,
    );
  }

  const samplerState = storageBuffer(device, 8, "sampler.state");
  const stepData = new Uint32Array(4);
  let encoderLength = 0;

  /** Encodes one forward of T tokens at position pos0 (then `after`), submits it. */
  function submit(
    T: number,
    pos0: number,
    list: Dispatch[],
    after?: (e: GPUCommandEncoder) => void,
  ) {
    stepData.set([T, pos0, 0, encoderLength]);
    device.queue.writeBuffer(step, 0, stepData);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encodeDispatches(pass, list, T);
    pass.end();
    after?.(enc);
    device.queue.submit([enc.finish()]);
  }

  const checkIds = (ids: number[], what: string, most: number) => {
    if (ids.length === 0) throw new UsageError(`${what}: no input ids`);
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new UsageError(`${what}: token id ${id} is outside the vocabulary [0, ${V})`);
      }
    }
    if (ids.length > most) {
      throw new LimitError(`${what}: ${ids.length} tokens exceed the engine's ${most}`);
    }
  };

  /** Runs the encoder over `ids`: the cross-attention keys and values are then ready. */
  function encode(ids: number[]) {
    encoderLength = ids.length;
    device.queue.writeBuffer(encTokens, 0, new Uint32Array(ids));
    submit(ids.length, 0, encoderDispatches);
  }

  let busy = false;
  let closed = false;
  const enter = () => {
    if (closed) throw new UsageError("the engine was disposed");
    if (busy) throw new UsageError("the engine is busy with another request");
    busy = true;
  };

  async function logitsSeq2Seq(encoderIds: number[], decoderIds: number[]) {
    checkIds(encoderIds, "encoder ids", chunk);
    checkIds(decoderIds, "decoder ids", Math.min(chunk, maxContext));
    enter();
    try {
      const n = decoderIds.length;
      encode(encoderIds);
      device.queue.writeBuffer(acts.tokens, 0, new Uint32Array(decoderIds));
      const staging = device.createBuffer({
        size: n * V * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      submit(n, 0, prefillDispatches, (enc) => {
        enc.copyBufferToBuffer(acts.logits, 0, staging, 0, n * V * 4);
      });
      const bytes = await mapStaging(staging, n * V * 4);
      staging.destroy();
      const all = new Float32Array(bytes.buffer, bytes.byteOffset, n * V);
      return Array.from({ length: n }, (_, i) => all.slice(i * V, (i + 1) * V));
    } finally {
      busy = false;
    }
  }

  async function* generateSeq2Seq(
    encoderIds: number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<number> {
    checkIds(encoderIds, "generate", chunk);
    const start = spec.decoderStartTokenId;
    if (start === null) throw new UsageError("generate: the model has no decoder start token");
    const max = Math.min(options.maxTokens ?? 64, maxContext);
    const every = Math.max(1, Math.min(max, Math.floor(options.readbackEvery ?? 8)));
    const stop = new Set(options.stopIds ?? spec.eosTokenIds);
    const params = {
      temperature: options.temperature ?? 0,
      topK: options.topK ?? 0,
      topP: options.topP ?? 1,
      seed: options.seed ?? 0,
    };
    if (max <= 0) return;
    enter();
    const staging = device.createBuffer({
      size: every * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      encode(encoderIds);
      device.queue.writeBuffer(acts.tokens, 0, new Uint32Array([start]));
      // Token i (0-based) is sampled after feeding position i and lands at tokens[i + 1].
      let produced = 0;
      let yielded = 0;
      let firstId: Promise<Uint32Array> | undefined;
      while (yielded < max) {
        const target = Math.min(max, yielded + every);
        while (produced < target) {
          if (options.signal?.aborted) return;
          const pos = produced;
          submit(1, pos, decodeDispatches, (enc) => {
            device.queue.writeBuffer(samplerState, 0, new Uint32Array([pos, pos + 1]));
            sampler.encode(
              enc,
              acts.logits,
              acts.tokens,
              { buffer: samplerState, offset: 0 },
              params,
            );
          });
          produced++;
          // The first id is read back on its own, behind its step (stream.ts).
          if (produced === 1) firstId = readFirstId(device, acts.tokens, 1);
        }
        if (yielded === 0) {
          if (yield* handIds(await firstId!, stop, options.signal)) return;
          yielded = 1;
        }
        const count = produced - yielded;
        if (count === 0) continue;
        const got = await readIds(device, acts.tokens, 1 + yielded, count, staging);
        if (yield* handIds(got, stop, options.signal)) return;
        yielded += got.length;
      }
    } finally {
      staging.destroy();
      busy = false;
    }
  }

  // Warm-up: every pipeline runs once with step values that stop lavapipe re-specialising it
  // (stream.ts): the encoder on warm.tokens, then the first launch of each pipeline of the
  // decoder's prefill on warm.tokens and of a decode step at warm.position.
  const warm = warmUpShape(chunk, maxContext);
  encode(new Array(warm.tokens).fill(0));
  const warmed = new Set<GPUComputePipeline>();
  submit(warm.tokens, 0, firstLaunches(warmed, prefillDispatches, warm.tokens));
  submit(1, warm.position, firstLaunches(warmed, decodeDispatches, 1), (enc) => {
    device.queue.writeBuffer(samplerState, 0, new Uint32Array([0, 1]));
    sampler.encode(enc, acts.logits, acts.tokens, { buffer: samplerState, offset: 0 }, {
      temperature: 1,
      topK: 0,
      topP: 0.9,
      seed: 0,
    });
  });
  await device.queue.onSubmittedWorkDone();

  const needsEncoder = (what: string) =>
    new UsageError(`${what}: an encoder–decoder model runs through ${what}Seq2Seq`);
  return {
    model: spec,
    device,
    f16: gpu.f16,
    maxContext,
    weightBytes: weights.bytes,
    deviceBytes: deviceBytes(
      spec,
      weights.bytes,
      activationBytes(bothStacks(spec), chunk),
      maxContext,
    ),
    kernels: tiled ? "tiled" : "classic",
    parallel: 1,
    kvCacheBytes: [...selfCaches.values()].reduce((s, c) => s + c.keys.size + c.values.size, 0),
    dispatchesPerToken: decodeDispatches.length,
    prefillChunk: chunk,
    logits: () => Promise.reject(needsEncoder("logits")),
    // deno-lint-ignore require-yield
    async *generate() {
      throw needsEncoder("generate");
    },
    logitsSeq2Seq,
    generateSeq2Seq,
    async profileKernels(T: number, repeats = 5) {
      if (T < 1 || T > chunk) throw new UsageError(`profileKernels: T must be in [1, ${chunk}]`);
      encoderLength = Math.max(encoderLength, 1);
      const plan = T === 1 ? decodeDispatches : prefillDispatches;
      return await profileDispatches(device, plan, repeats, (list) => submit(T, 0, list));
    },
    dispose() {
      if (closed) return;
      closed = true;
      sampler.dispose();
      if (gpu.owned) device.destroy();
    },
  };
}
