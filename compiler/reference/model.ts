/**
 * The model in float64, read once from an IR: per layer its blocks, each with the weights of the
 * variant its description names. Reading checks every variant up front, so a description the
 * reference cannot run fails here with an UnsupportedError naming the variant.
 *
 * @module
 */

import type { BlockSpec, ModelSpec, StackName, StackSpec } from "../../schemas/model.ts";
import type { ModelIR } from "../ir.ts";
import { readAttention, type ReferenceAttention } from "./attention.ts";
import { notImplemented } from "./math.ts";
import { readMla, type ReferenceMla } from "./mla.ts";
import { readDense, readMoe, type ReferenceDense, type ReferenceMoe } from "./moe.ts";
import { readNorm, type ReferenceNorm } from "./norms.ts";
import { WeightReader } from "./weights.ts";

/** A pre-norm residual block: x += residualScale · body(norm(x)). */
export type ReferenceBlock =
  | { kind: "attention"; norm: ReferenceNorm; attention: ReferenceAttention | ReferenceMla }
  /** Attention over the encoder output; `attention.cacheSlot` indexes the session's cross K/V. */
  | { kind: "cross_attention"; norm: ReferenceNorm; attention: ReferenceAttention }
  | { kind: "ffn"; norm: ReferenceNorm; ffn: ReferenceMoe | ReferenceDense };

/** One layer: its blocks in order and the multiplier of their outputs. */
export interface ReferenceLayer {
  blocks: ReferenceBlock[];
  residualScale: number;
}

/** A stack of layers with its final norm (the encoder of an encoder–decoder model). */
export interface ReferenceStack {
  layers: ReferenceLayer[];
  finalNorm: ReferenceNorm;
}

/** A whole model held in float64, ready for `forward` and `ReferenceSession`. */
export interface ReferenceModel {
  spec: ModelSpec;
  /** [V, H] */
  embed: Float64Array;
  /** The decoder's layers. */
  layers: ReferenceLayer[];
  finalNorm: ReferenceNorm;
  /** [V, H] (the same array as `embed` when tied). */
  lmHead: Float64Array;
  /** [V], when the head has a bias. */
  lmHeadBias: Float64Array | null;
  /**
   * Every MoE block, in compiler/ir.ts `moeLayers` order (the observer's `moeLayer` index); the
   * same objects the layers hold, so swapping an expert here changes the forward pass.
   */
  moe: ReferenceMoe[];
  /** Number of decoder attention blocks: the KV caches a session keeps. */
  attentionBlocks: number;
  /** The encoder; null for decoder-only models. */
  encoder: ReferenceStack | null;
  /** Number of cross-attention blocks: the encoder K/V sets a session keeps. */
  crossBlocks: number;
}

/**
 * Reads every tensor of `ir` once into float64, checking each shape against the description.
 * Throws InputError naming a missing or misshapen tensor, UnsupportedError naming a described
 * variant the reference does not implement.
 */
export async function prepareReference(ir: ModelIR): Promise<ReferenceModel> {
  const spec = ir.spec;
  const weights = new WeightReader(ir);
  const top = weights.layer("decoder", -1);
  const embed = await top.read("embed");
  const model: ReferenceModel = {
    spec,
    embed,
    layers: [],
    finalNorm: await readNorm(spec.decoder.finalNorm, top, "final_norm"),
    lmHead: spec.head.tied ? embed : await top.read("lm_head"),
    lmHeadBias: spec.head.bias ? await top.read("lm_head_bias") : null,
    moe: [],
    attentionBlocks: 0,
    encoder: null,
    crossBlocks: 0,
  };
  // Encoder first: ReferenceModel.moe follows compiler/ir.ts moeLayers order.
  if (spec.encoder) {
    model.encoder = {
      layers: await readLayers(spec.encoder, "encoder", model, weights),
      finalNorm: await readNorm(spec.encoder.finalNorm, weights.layer("encoder", -1), "final_norm"),
    };
  }
  model.layers = await readLayers(spec.decoder, "decoder", model, weights);
  return model;
}

/** Reads the layers of one stack. */
async function readLayers(
  s: StackSpec,
  stack: StackName,
  model: ReferenceModel,
  weights: WeightReader,
): Promise<ReferenceLayer[]> {
  const layers: ReferenceLayer[] = [];
  for (const [l, layer] of s.layers.entries()) {
    const blocks: ReferenceBlock[] = [];
    for (const block of layer.blocks) blocks.push(await readBlock(block, model, stack, l, weights));
    layers.push({ blocks, residualScale: layer.residualScale });
  }
  return layers;
}

/**
 * Reads one block of layer `l` of a stack, registering its KV cache slot (decoder self-attention
 * and cross-attention; an encoder's slot is its index in the stack) or MoE index.
 */
async function readBlock(
  block: BlockSpec,
  model: ReferenceModel,
  stack: StackName,
  l: number,
  reader: WeightReader,
): Promise<ReferenceBlock> {
  const weights = reader.layer(stack, l);
  switch (block.kind) {
    case "attention": {
      const norm = await readNorm(block.norm, weights, "attn_norm");
      const a = block.attention;
      const slot = stack === "decoder" ? model.attentionBlocks++ : l;
      if (a.kind === "mla") {
        if (stack !== "decoder") throw notImplemented("MLA in an encoder");
        return { kind: "attention", norm, attention: await readMla(a, weights, slot) };
      }
      const position = a.position;
      const owner = position.kind === "relative_bias"
        ? reader.layer(stack, position.ownerLayer)
        : undefined;
      const attention = await readAttention(a, weights, slot, { owner });
      return { kind: "attention", norm, attention };
    }
    case "cross_attention": {
      const norm = await readNorm(block.norm, weights, "cross_norm");
      const attention = await readAttention(block.attention, weights, model.crossBlocks++, {
        prefix: "cross",
      });
      return { kind: "cross_attention", norm, attention };
    }
    case "ffn": {
      const norm = await readNorm(block.norm, weights, "ffn_norm");
      if (block.ffn.kind === "dense") {
        return { kind: "ffn", norm, ffn: await readDense(block.ffn, weights) };
      }
      const place = { index: model.moe.length, stack, layer: l };
      const moe = await readMoe(block.ffn, weights, place);
      model.moe.push(moe);
      return { kind: "ffn", norm, ffn: moe };
    }
  }
}
