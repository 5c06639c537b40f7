/**
 * The CPU reference: a float64 forward pass over ModelIR that matches Hugging Face transformers,
 * with a KV-cache session, a calibration observer, and held-out bits-per-token evaluation.
 * It is the oracle the WebGPU runtime and the quantization passes are checked against. Each
 * block variant of the description (schemas/model.ts) is implemented once, in a file of its own
 * (norms, rope, attention, router, mlp, moe); the session picks them per block.
 *
 * ```ts
 * const model = await prepareReference(await loadCheckpoint(dir));
 * const logits = forward(model, ids); // one Float64Array of vocabSize per position
 * const { bitsPerToken } = await evaluateReference(model, bytes, { context: 128 });
 * ```
 *
 * @module
 */

export { attention, attentionBlock, type KvCache, type ReferenceAttention } from "./attention.ts";
export { matmul, sigmoid, silu, softmax } from "./math.ts";
export { mlp, type ReferenceMlp } from "./mlp.ts";
export {
  prepareReference,
  type ReferenceBlock,
  type ReferenceLayer,
  type ReferenceModel,
  type ReferenceStack,
} from "./model.ts";
export { type MoeObserver, type ReferenceDense, type ReferenceMoe } from "./moe.ts";
export { type ReferenceNorm, rmsNorm } from "./norms.ts";
export { rope, ropeInvFreq } from "./rope.ts";
export { route, type Routing } from "./router.ts";
export { forward, type ForwardOptions, forwardSeq2Seq, ReferenceSession } from "./session.ts";
export { encode } from "./encoder.ts";
export { crossAttentionBlock, crossKv } from "./cross_attention.ts";
export { capacityRoutes } from "./capacity.ts";
export { relativeBucket } from "./relative_bias.ts";
export {
  crossEntropyBits,
  type EvalResult,
  type EvaluateOptions,
  evaluateReference,
  evaluateWindows,
  type EvalWindow,
  type WindowLogits,
  windows,
} from "./eval.ts";
export { evaluateSpans, parseSpans, type Span, type SpanEval } from "./spans.ts";
