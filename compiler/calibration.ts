/**
 * Calibration: run the float64 reference forward pass over a little text and record, per routed
 * expert of every MoE layer, how often it is chosen and a bounded sample of the hidden states
 * routed to it (with their mixing weights). The frequency pass, the `budget` allocator's output-error costs and GPTQ
 * all read this one record, so calibration data is collected once.
 *
 * Memory is bounded: at most `maxSamplesPerExpert` input rows are kept per expert (reservoir
 * sampling, seeded, so compiles are reproducible).
 *
 * Tables are indexed by MoE layer (the position in `moeLayers(ir)` and `ReferenceModel.moe`).
 *
 * Decoder-only models calibrate on token ids in windows ({@link calibrate}); encoder–decoder
 * models on teacher-forced examples ({@link calibrateSpans}), which route tokens through the MoE
 * layers of both stacks.
 *
 * @module
 */

import {
  evaluateReference,
  evaluateSpans,
  forward,
  forwardSeq2Seq,
  type MoeObserver,
  type ReferenceModel,
  type Span,
} from "./reference/mod.ts";
import { windows } from "./reference/eval.ts";
import { mulberry32 } from "../schemas/prng.ts";
import { UsageError } from "../schemas/errors.ts";

/** A bounded sample of the inputs routed to one expert. */
export interface ExpertSample {
  /** Rows kept. */
  n: number;
  /** Tokens routed to this expert in all (≥ n). */
  seen: number;
  /** n × hidden, row-major: the normalised hidden states the expert saw. */
  inputs: Float32Array;
  /** n: the router's mixing weight of this expert for each kept row. */
  weights: Float32Array;
}

/** What {@link calibrate} collected. */
export interface CalibrationData {
  /** Tokens run through the model. */
  tokens: number;
  /** counts[moeLayer][expert]: tokens routed to that expert. */
  counts: number[][];
  /** samples[moeLayer][expert]. */
  samples: ExpertSample[][];
  /** The calibration token ids and window length (the `budget` layer probe re-runs them). */
  ids: readonly number[];
  context: number;
  /** The examples of an encoder–decoder model's calibration (`ids` is empty then); else null. */
  spans: readonly Span[] | null;
  /**
   * Results derived from this calibration that do not depend on the target (the budget costs
   * per quantizer), kept so a study compiling many variants computes them once.
   */
  memo: Map<string, unknown>;
}

/** Options of {@link calibrate}. */
export interface CalibrateOptions {
  /** Window length (default: the model's max positions). */
  context?: number;
  /** Rows kept per expert (default 512). */
  maxSamplesPerExpert?: number;
  /** Reservoir seed (default 0). */
  seed?: number;
  /** Progress: (windows done, windows in all). */
  onProgress?: (done: number, total: number) => void;
}

/** Runs `ids` through the reference model in non-overlapping windows, recording routing. */
export async function calibrate(
  model: ReferenceModel,
  ids: readonly number[],
  opts: CalibrateOptions = {},
): Promise<CalibrationData> {
  const context = opts.context ?? model.spec.maxPositions;
  if (ids.length < 2) throw new UsageError("calibration text needs at least 2 tokens");
  const record = recorder(model, opts);
  // Windows as in evaluation, but every fed token counts (the last target is not needed).
  const plan = windows(ids.length + 1, context);
  let tokens = 0;
  for (let w = 0; w < plan.length; w++) {
    const { start, length } = plan[w];
    const chunk = ids.slice(start, start + length);
    forward(model, chunk, { observer: record.observer });
    tokens += chunk.length;
    opts.onProgress?.(w + 1, plan.length);
    await Promise.resolve();
  }
  return { tokens, ...record.finish(), ids: [...ids], context, spans: null, memo: new Map() };
}

/**
 * Runs every example through an encoder–decoder reference model teacher-forced (encoder
 * `inputIds`, decoder [decoder start] + labels[:−1]), recording routing in both stacks.
 */
export async function calibrateSpans(
  model: ReferenceModel,
  spans: readonly Span[],
  opts: CalibrateOptions = {},
): Promise<CalibrationData> {
  if (spans.length === 0) throw new UsageError("calibration needs at least one example");
  const start = model.spec.decoderStartTokenId;
  if (start === null) throw new UsageError("calibration examples need an encoder–decoder model");
  const record = recorder(model, opts);
  let tokens = 0;
  for (const [i, s] of spans.entries()) {
    const decoder = [start, ...s.labels.slice(0, -1)];
    forwardSeq2Seq(model, s.inputIds, decoder, { observer: record.observer });
    tokens += s.inputIds.length + decoder.length;
    opts.onProgress?.(i + 1, spans.length);
    await Promise.resolve();
  }
  return {
    tokens,
    ...record.finish(),
    ids: [],
    context: model.spec.maxPositions,
    spans: [...spans],
    memo: new Map(),
  };
}

/** The reference's bits per token on the calibration set (windows of ids, or the examples). */
export async function calibrationBits(
  model: ReferenceModel,
  calib: Pick<CalibrationData, "ids" | "context" | "spans">,
): Promise<number> {
  if (calib.spans) {
    const start = model.spec.decoderStartTokenId!;
    const run = (e: number[], d: number[]) => forwardSeq2Seq(model, e, d);
    return (await evaluateSpans(run, calib.spans, start)).bitsPerToken;
  }
  return (await evaluateReference(model, calib.ids, { context: calib.context })).bitsPerToken;
}

/** The routing observer of a calibration and the tables it fills. */
function recorder(model: ReferenceModel, opts: CalibrateOptions) {
  const cap = opts.maxSamplesPerExpert ?? 512;
  const H = model.spec.hiddenSize;
  const counts = model.moe.map((m) => new Array<number>(m.experts.length).fill(0));
  const samples: ExpertSample[][] = model.moe.map((m) =>
    m.experts.map(() => ({
      n: 0,
      seen: 0,
      inputs: new Float32Array(cap * H),
      weights: new Float32Array(cap),
    }))
  );
  const rng = mulberry32(opts.seed ?? 0);
  const observer: MoeObserver = (moeLayer, _pos, h, experts, weights) => {
    for (let j = 0; j < experts.length; j++) {
      const e = experts[j];
      counts[moeLayer][e]++;
      const s = samples[moeLayer][e];
      s.seen++;
      let slot = s.n < cap ? s.n++ : Math.floor(rng() * s.seen);
      if (slot >= cap) slot = -1;
      if (slot >= 0) {
        s.inputs.set(h.subarray(0, H), slot * H);
        s.weights[slot] = weights[j];
      }
    }
  };
  const finish = () => {
    for (const row of samples) {
      for (const s of row) {
        s.inputs = s.inputs.slice(0, s.n * H);
        s.weights = s.weights.slice(0, s.n);
      }
    }
    return { counts, samples };
  };
  return { observer, finish };
}
