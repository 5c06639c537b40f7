/**
 * The architecture description shared by the compiler (which reads it from config.json) and the
 * runtime (which reads it from the artifact header). One record covers every supported family;
 * new families (Switch Transformer, DeepSeek) add fields here rather than new code paths.
 *
 * @module
 */

/** Model families the adapters understand. */
export type Family = "mixtral" | "qwen2_moe" | "qwen3_moe" | "olmoe";

/**
 * How tokens pick experts, exactly as transformers does it for the family.
 * All current families: softmax over all experts (in f32), top-k, optionally renormalise the
 * k weights to sum to one.
 */
export interface RoutingSpec {
  /** Router scoring function over the expert logits. */
  scoring: "softmax";
  /** Number of routed experts per layer. */
  numExperts: number;
  /** Experts chosen per token. */
  topK: number;
  /** Renormalise the top-k weights to sum to one (Mixtral: always; Qwen: `norm_topk_prob`). */
  normTopK: boolean;
}

/** Everything about the network's shape that the forward pass needs. */
export interface ModelConfig {
  /** Which adapter produced this (decides nothing by itself: the fields below do). */
  family: Family;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Width of each routed expert's hidden layer. */
  expertIntermediateSize: number;
  /** Width of the dense MLP in non-MoE layers (0 when every layer is MoE). */
  denseIntermediateSize: number;
  /** Width of the shared expert (0 when none). */
  sharedIntermediateSize: number;
  /** The shared expert's output is scaled by sigmoid(x · shared_expert_gate) (Qwen2-MoE). */
  sharedExpertGated: boolean;
  ropeTheta: number;
  rmsNormEps: number;
  maxPositions: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections have biases (Qwen2-MoE). */
  qkvBias: boolean;
  /**
   * RMSNorm on queries and keys before RoPE: "head" normalises each head over headDim (Qwen3-MoE),
   * "full" normalises the whole projection (OLMoE), "none" for neither.
   */
  qkNorm: "none" | "head" | "full";
  /** Expert activation; SwiGLU experts: down(act(gate x) * up x). */
  activation: "silu";
  routing: RoutingSpec;
  /** Per layer: "moe" or "dense" (Qwen2-MoE `decoder_sparse_step` / `mlp_only_layers`). */
  layerKinds: ("moe" | "dense")[];
  bosTokenId: number | null;
  eosTokenIds: number[];
}
