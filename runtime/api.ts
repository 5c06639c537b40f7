/**
 * The contract between the runtime's engines (WebGPU, and the CPU reference the CLI can plug in)
 * and their users (CLI `run`/`eval`, `serve`, library callers).
 *
 * @module
 */

import type { ModelSpec } from "../schemas/model.ts";

/** Sampling and stopping options for `generate`. */
export interface GenerateOptions {
  /** Tokens to generate at most (default 64). */
  maxTokens?: number;
  /** 0 = greedy (default). */
  temperature?: number;
  /** Keep the k most likely tokens (0 = off). */
  topK?: number;
  /** Nucleus sampling mass (1 = off). */
  topP?: number;
  /** RNG seed; the same seed and options give the same tokens. */
  seed?: number;
  /** Stop tokens (default: the model's EOS ids). The stop token itself is yielded. */
  stopIds?: number[];
  /** Decode steps between token readbacks (default 8). */
  readbackEvery?: number;
  /** Cancels generation (the iterator ends early). */
  signal?: AbortSignal;
}

/** What an engine is doing at one moment ({@link Engine.stats}). */
export interface EngineStats {
  /** Sequence slots: {@link Engine.parallel} (1 for a one-sequence engine). */
  slots: number;
  /** Slots in use: `generate` calls prefilling or decoding, and `logits` calls running. */
  active: number;
  /** Calls waiting inside the engine for a free slot (first come, first served). */
  waiting: number;
  /** Of the active `generate` calls, those prefilling (a prompt, or a context shift's tokens). */
  prefilling: number;
}

/** A loaded model ready to run. */
export interface Engine {
  /** The model description (schemas/model.ts). */
  readonly model: ModelSpec;
  /**
   * How many `generate` calls advance together (continuous batching slots). Absent or 1: one at a
   * time. Calls beyond this many wait inside the engine, first come first served, for a free slot;
   * a caller that needs to refuse work (a server's 429) admits at most this many itself.
   */
  readonly parallel?: number;
  /** Logits for every position of `ids`: one Float32Array of vocabSize per position. */
  logits(ids: number[]): Promise<Float32Array[]>;
  /**
   * Prefills `promptIds` then yields generated ids one by one. May be called concurrently (see
   * {@link Engine.parallel}); each call streams its own ids, and aborting its `signal` (or
   * returning from the iterator) frees its slot at the next step.
   */
  generate(promptIds: number[], options?: GenerateOptions): AsyncGenerator<number>;
  /**
   * Encoder–decoder models: runs the encoder over `encoderIds` once, then yields decoder ids one
   * by one, starting from the model's decoder start token (which is not yielded). Present on
   * engines that run encoder–decoder models. Single-stream: encoder–decoder models are not
   * batched, whatever {@link Engine.parallel} says; concurrent calls run one after the other.
   */
  generateSeq2Seq?(encoderIds: number[], options?: GenerateOptions): AsyncGenerator<number>;
  /**
   * Encoder–decoder models: the encoder over `encoderIds`, then the decoder over `decoderIds`
   * (positions 0.., routed together in one forward): one Float32Array of vocabSize per decoder
   * position. Present on engines that run encoder–decoder models.
   */
  logitsSeq2Seq?(encoderIds: number[], decoderIds: number[]): Promise<Float32Array[]>;
  /**
   * The engine's own counts of its slots and calls, read at the moment of the call (a server's
   * `/health` reports them). Optional: engines without slots may leave it out.
   */
  stats?(): EngineStats;
  /** Frees GPU memory; the engine is unusable afterwards. */
  dispose(): void;
}
