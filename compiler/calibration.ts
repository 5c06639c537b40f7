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
 * @module
 */

import { forward, type MoeObserver, type ReferenceModel } from "./reference/mod.ts";
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
  const spec = model.spec;
  const context = opts.context ?? spec.maxPositions;
  const cap = opts.maxSamplesPerExpert ?? 512;
  if (ids.length < 2) throw new UsageError("calibration text needs at least 2 tokens");
  const H = spec.hiddenSize;
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
  // Windows as in evaluation, but every fed token counts (the last target is not needed).
  const plan = windows(ids.length + 1, context);
  let tokens = 0;
  for (let w = 0; w < plan.length; w++) {
    const { start, length } = plan[w];
    const chunk = ids.slice(start, start + length);
    forward(model, chunk, { observer });
    tokens += chunk.length;
    opts.onProgress?.(w + 1, plan.length);
    await Promise.resolve();
  }
  for (const row of samples) {
    for (const s of row) {
      s.inputs = s.inputs.slice(0, s.n * H);
      s.weights = s.weights.slice(0, s.n);
    }
  }
  return { tokens, counts, samples, ids: [...ids], context, memo: new Map() };
}
