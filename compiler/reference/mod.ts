/**
 * The CPU reference: a float64 forward pass over ModelIR that matches Hugging Face transformers,
 * with a KV-cache session, a calibration observer, and held-out bits-per-token evaluation.
 * It is the oracle the WebGPU runtime and the quantization passes are checked against.
 *
 * ```ts
 * const model = await prepareReference(await loadCheckpoint(dir));
 * const logits = forward(model, ids); // one Float64Array of vocabSize per position
 * const { bitsPerToken } = await evaluateReference(model, bytes, { context: 128 });
 * ```
 *
 * @module
 */

export {
  attention,
  forward,
  type ForwardOptions,
  matmul,
  mlp,
  type MoeObserver,
  prepareReference,
  type ReferenceDense,
  type ReferenceLayer,
  type ReferenceMlp,
  type ReferenceModel,
  type ReferenceMoe,
  ReferenceSession,
  rmsNorm,
  rope,
  ropeInvFreq,
  route,
  type Routing,
  silu,
  softmax,
} from "./forward.ts";
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
