/**
 * The model in float64, read once from an IR: per layer its blocks, each with the weights of the
 * variant its description names. Reading checks every variant up front, so a description the
 * reference cannot run fails here with an UnsupportedError naming the variant.
 *
 * @module
 */

import type { BlockSpec, ModelSpec } from "../../schemas/model.ts";
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
  | { kind: "ffn"; norm: ReferenceNorm; ffn: ReferenceMoe | ReferenceDense };

/** One layer: its blocks in order and the multiplier of their outputs. */
export interface ReferenceLayer {
  blocks: ReferenceBlock[];
  residualScale: number;
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
  /** Number of attention blocks: the KV caches a session keeps. */
  attentionBlocks: number;
}

/**
 * Reads every tensor of `ir` once into float64, checking each shape against the description.
 * Throws InputError naming a missing or misshapen tensor, UnsupportedError naming a described
 * variant the reference does not implement.
 */
export async function prepareReference(ir: ModelIR): Promise<ReferenceModel> {
  const spec = ir.spec;
  if (spec.encoder) throw notImplemented("an encoder stack");
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
  };
  for (const [l, layer] of spec.decoder.layers.entries()) {
    const blocks: ReferenceBlock[] = [];
    for (const block of layer.blocks) blocks.push(await readBlock(block, model, l, weights));
    model.layers.push({ blocks, residualScale: layer.residualScale });
  }
  return model;
}

/** Reads one block of decoder layer `l`, registering its KV cache slot or MoE index. */
async function readBlock(
  block: BlockSpec,
  model: ReferenceModel,
  l: number,
  reader: WeightReader,
): Promise<ReferenceBlock> {
  const weights = reader.layer("decoder", l);
  switch (block.kind) {
    case "attention": {
      const norm = await readNorm(block.norm, weights, "attn_norm");
      const slot = model.attentionBlocks++;
      const attention = block.attention.kind === "mla"
        ? await readMla(block.attention, weights, slot)
        : await readAttention(block.attention, weights, slot);
      return { kind: "attention", norm, attention };
    }
    case "ffn": {
      const norm = await readNorm(block.norm, weights, "ffn_norm");
      if (block.ffn.kind === "dense") {
        return { kind: "ffn", norm, ffn: await readDense(block.ffn, weights) };
      }
      const place = { index: model.moe.length, stack: "decoder" as const, layer: l };
      const moe = await readMoe(block.ffn, weights, place);
      model.moe.push(moe);
      return { kind: "ffn", norm, ffn: moe };
    }
    case "cross_attention":
      throw notImplemented("cross-attention");
  }
}
