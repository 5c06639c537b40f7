/**
 * Family adapters: map a checkpoint's tensor names onto ModelIR, checking that every expected
 * tensor exists with the expected shape and that nothing unexpected is left over.
 *
 * Supported layouts per layer (picked per layer by which names are present):
 * - classic experts: one tensor per expert and projection
 *   (Mixtral `block_sparse_moe.experts.E.w1/w3/w2`, Qwen/OLMoE `mlp.experts.E.gate_proj/up_proj/down_proj`);
 * - packed experts (transformers v5): `mlp.experts.gate_up_proj [E, 2I, H]` (gate rows first, then
 *   up) and `mlp.experts.down_proj [E, H, I]`, each expert read as a row slice.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import type {
  AttentionIR,
  DenseFfnIR,
  ExpertIR,
  LayerIR,
  MlpIR,
  ModelIR,
  MoeIR,
  TensorRef,
  TokenizerData,
} from "../ir_legacy.ts";
import type { ModelConfig } from "../../schemas/model_legacy.ts";
import { FLOAT_DTYPES, type ReadOptions } from "./safetensors.ts";
import type { CheckpointStore } from "./store.ts";

/** Tensors a checkpoint may hold that are not weights (non-persistent buffers saved by old exports). */
const IGNORED_TENSORS = /(^|\.)rotary_emb\.inv_freq$/;

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Hands out TensorRefs for named tensors and records which ones were used. */
export class TensorClaims {
  private readonly used = new Set<string>();

  /** `options` apply to every read of every ref handed out. */
  constructor(readonly store: CheckpointStore, readonly options: ReadOptions = {}) {}

  /** True when the checkpoint has this tensor. */
  has(name: string): boolean {
    return this.store.has(name);
  }

  /** Marks a tensor as accounted for without using it (e.g. a tied lm_head). */
  ignore(name: string): void {
    if (this.store.has(name)) this.used.add(name);
  }

  /** Checks existence, float dtype and shape, and marks the tensor used. Returns its dtype. */
  private claim(name: string, shape: readonly number[]): string {
    if (!this.store.has(name)) {
      throw new InputError(
        `tensor "${name}" missing (expected shape ${shapeText(shape)})`,
        this.store.dir,
      );
    }
    const info = this.store.info(name);
    const file = this.store.fileOf(name).path;
    if (!FLOAT_DTYPES.includes(info.dtype)) {
      throw new UnsupportedError(`${file}: tensor "${name}" has non-float dtype ${info.dtype}`);
    }
    if (!sameShape(info.shape, shape)) {
      throw new InputError(
        `tensor "${name}" has shape ${shapeText(info.shape)}, expected ${shapeText(shape)}`,
        file,
      );
    }
    this.used.add(name);
    return info.dtype;
  }

  /** A whole tensor of the given shape. */
  tensor(name: string, shape: readonly number[]): TensorRef {
    const dtype = this.claim(name, shape);
    const numel = shape.reduce((a, b) => a * b, 1);
    return this.ref(name, name, shape, dtype, 0, numel);
  }

  /**
   * Slices of a packed `[n, rows, cols]` tensor: `parts` lists [rowStart, rowCount] within each
   * of the n blocks; returns refs[block][part], each of shape [rowCount, cols].
   */
  packed(
    name: string,
    shape: readonly [number, number, number],
    parts: readonly (readonly [number, number])[],
  ): TensorRef[][] {
    const dtype = this.claim(name, shape);
    const [n, rows, cols] = shape;
    return Array.from({ length: n }, (_, b) =>
      parts.map(([r0, count]) =>
        this.ref(
          `${name}[${b}, ${r0}:${r0 + count}, :]`,
          name,
          [count, cols],
          dtype,
          (b * rows + r0) * cols,
          count * cols,
        )
      ));
  }

  private ref(
    label: string,
    name: string,
    shape: readonly number[],
    dtype: string,
    start: number,
    count: number,
  ): TensorRef {
    const store = this.store;
    const options = this.options;
    const cols = shape.length === 2 ? shape[1] : 0;
    const rowRange = (r0: number, n: number) => {
      if (
        !cols || !Number.isSafeInteger(r0) || !Number.isSafeInteger(n) || r0 < 0 || n < 0 ||
        r0 + n > shape[0]
      ) {
        throw new RangeError(`rows [${r0}, ${r0 + n}) outside ${label} [${shape}]`);
      }
      return [start + r0 * cols, n * cols];
    };
    return {
      name: label,
      shape,
      dtype,
      read: () => store.readElements(name, start, count, options),
      readRows: (r0, n) => {
        const [s, c] = rowRange(r0, n);
        return store.readElements(name, s, c, options);
      },
      readRawRows: async (r0, n) => {
        const [s, c] = rowRange(r0, n);
        return {
          bytes: await store.readBytes(name, s, c),
          dtype,
          name,
          file: store.fileOf(name).path,
          start: s,
          allowNonFinite: options.allowNonFinite ?? false,
        };
      },
    };
  }

  /** InputError naming the first tensor that no adapter claimed. */
  checkAllUsed(family: string): void {
    for (const name of this.store.names()) {
      if (!this.used.has(name) && !IGNORED_TENSORS.test(name)) {
        throw new InputError(
          `unexpected tensor "${name}" (not part of this ${family} model)`,
          this.store.fileOf(name).path,
        );
      }
    }
  }
}

function attention(c: TensorClaims, cfg: ModelConfig, p: string): AttentionIR {
  const H = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKvHeads * cfg.headDim;
  const a: AttentionIR = {
    q: c.tensor(`${p}.q_proj.weight`, [q, H]),
    k: c.tensor(`${p}.k_proj.weight`, [kv, H]),
    v: c.tensor(`${p}.v_proj.weight`, [kv, H]),
    o: c.tensor(`${p}.o_proj.weight`, [H, q]),
  };
  if (cfg.qkvBias) {
    a.qBias = c.tensor(`${p}.q_proj.bias`, [q]);
    a.kBias = c.tensor(`${p}.k_proj.bias`, [kv]);
    a.vBias = c.tensor(`${p}.v_proj.bias`, [kv]);
  }
  if (cfg.qkNorm === "head") {
    a.qNorm = c.tensor(`${p}.q_norm.weight`, [cfg.headDim]);
    a.kNorm = c.tensor(`${p}.k_norm.weight`, [cfg.headDim]);
  } else if (cfg.qkNorm === "full") {
    a.qNorm = c.tensor(`${p}.q_norm.weight`, [q]);
    a.kNorm = c.tensor(`${p}.k_norm.weight`, [kv]);
  }
  return a;
}

/** A SwiGLU MLP of width I stored as three Linear weights with the given names. */
function mlp(
  c: TensorClaims,
  H: number,
  I: number,
  names: { gate: string; up: string; down: string },
): MlpIR {
  return {
    gate: c.tensor(names.gate, [I, H]),
    up: c.tensor(names.up, [I, H]),
    down: c.tensor(names.down, [H, I]),
  };
}

function moe(c: TensorClaims, cfg: ModelConfig, layer: number): MoeIR {
  const H = cfg.hiddenSize;
  const I = cfg.expertIntermediateSize;
  const E = cfg.routing.numExperts;
  const p = `model.layers.${layer}`;
  const packedGateUp = `${p}.mlp.experts.gate_up_proj`;
  let router: TensorRef;
  let experts: ExpertIR[];

  if (c.has(packedGateUp)) {
    router = c.tensor(`${p}.mlp.gate.weight`, [E, H]);
    const gateUp = c.packed(packedGateUp, [E, 2 * I, H], [[0, I], [I, I]]);
    const down = c.packed(`${p}.mlp.experts.down_proj`, [E, H, I], [[0, H]]);
    experts = gateUp.map(([gate, up], e) => ({
      layer,
      index: e,
      gate,
      up,
      down: down[e][0],
    }));
  } else if (cfg.family === "mixtral") {
    router = c.tensor(`${p}.block_sparse_moe.gate.weight`, [E, H]);
    experts = Array.from({ length: E }, (_, e) => {
      const q = `${p}.block_sparse_moe.experts.${e}`;
      const m = mlp(c, H, I, {
        gate: `${q}.w1.weight`,
        up: `${q}.w3.weight`,
        down: `${q}.w2.weight`,
      });
      return { layer, index: e, ...m };
    });
  } else {
    router = c.tensor(`${p}.mlp.gate.weight`, [E, H]);
    experts = Array.from({ length: E }, (_, e) => {
      const q = `${p}.mlp.experts.${e}`;
      const m = mlp(c, H, I, {
        gate: `${q}.gate_proj.weight`,
        up: `${q}.up_proj.weight`,
        down: `${q}.down_proj.weight`,
      });
      return { layer, index: e, ...m };
    });
  }

  const block: MoeIR = { kind: "moe", router, experts };
  if (cfg.sharedIntermediateSize > 0) {
    const q = `${p}.mlp.shared_expert`;
    block.shared = mlp(c, H, cfg.sharedIntermediateSize, {
      gate: `${q}.gate_proj.weight`,
      up: `${q}.up_proj.weight`,
      down: `${q}.down_proj.weight`,
    });
    if (cfg.sharedExpertGated) {
      block.sharedGate = c.tensor(`${p}.mlp.shared_expert_gate.weight`, [1, H]);
    }
  }
  return block;
}

function dense(c: TensorClaims, cfg: ModelConfig, layer: number): DenseFfnIR {
  const p = `model.layers.${layer}.mlp`;
  return {
    kind: "dense",
    mlp: mlp(c, cfg.hiddenSize, cfg.denseIntermediateSize, {
      gate: `${p}.gate_proj.weight`,
      up: `${p}.up_proj.weight`,
      down: `${p}.down_proj.weight`,
    }),
  };
}

/**
 * Builds the ModelIR of a checkpoint whose config has been parsed. Every tensor the config implies
 * must be present with the right shape; every tensor present must be used.
 */
export function buildModelIR(
  store: CheckpointStore,
  cfg: ModelConfig,
  tokenizer: TokenizerData,
  options: ReadOptions = {},
): ModelIR {
  const c = new TensorClaims(store, options);
  const H = cfg.hiddenSize;
  const embed = c.tensor("model.embed_tokens.weight", [cfg.vocabSize, H]);
  let lmHead: TensorRef;
  if (cfg.tieWordEmbeddings) {
    lmHead = embed;
    c.ignore("lm_head.weight");
  } else {
    lmHead = c.tensor("lm_head.weight", [cfg.vocabSize, H]);
  }
  const finalNorm = c.tensor("model.norm.weight", [H]);
  const layers: LayerIR[] = cfg.layerKinds.map((kind, i) => {
    const p = `model.layers.${i}`;
    return {
      index: i,
      inputNorm: c.tensor(`${p}.input_layernorm.weight`, [H]),
      attention: attention(c, cfg, `${p}.self_attn`),
      postAttentionNorm: c.tensor(`${p}.post_attention_layernorm.weight`, [H]),
      ffn: kind === "moe" ? moe(c, cfg, i) : dense(c, cfg, i),
    };
  });
  c.checkAllUsed(cfg.family);
  return { config: cfg, embed, layers, finalNorm, lmHead, tokenizer, source: store.dir };
}
