/**
 * Data-free `budget` costs: what an expert's quantization at a width costs, from the weights
 * alone (no calibration text), so `budget` runs on any checkpoint.
 *
 * The routed input of an expert is x = g ⊙ z, with g the weights of the block's input norm and z
 * the RMS-normalised hidden state (unit RMS per token). With no data, z is taken as isotropic, so
 * the error of an input-side matrix [I, H] is measured with its columns scaled by g:
 * ‖(W − Ŵ) diag(g)‖²_F (`normed`); the output matrix reads the activation's output, whose scale is
 * unknown without data, and counts as ‖W − Ŵ‖²_F. That error is multiplied by one of the
 * weight-only importances of the expert ({@link DataFreeImportance}):
 *
 * - "none": 1 (cost "normed"; cost "plain" is the unscaled squared Frobenius error, the old one);
 * - "router": ‖r_e ⊙ g‖₂, the router row's norm as it meets the normed input;
 * - "routing": E[w_e²], the expected squared mixing weight of the expert when isotropic inputs
 *   x = g ⊙ z (z ~ N(0, I), a fixed seeded sample) are routed: how often and how strongly the
 *   router would use the expert, the data-free stand-in for the calibrated cost's Σ w_t²; for a
 *   router the reference does not run (capacity, sigmoid...) the "router" importance instead.
 *
 * The errors are measured on a sample of each large matrix's rows ({@link sampledExpertError}),
 * so the costs read and quantize a small fraction of the experts (docs/STUDY.md measures which
 * cost predicts the damage best on shakespeare-moe).
 *
 * @module
 */

import type { MoeFfnSpec } from "../schemas/model.ts";
import { dequantize, type ExpertWidth, MXFP4_WIDTH } from "../schemas/packing.ts";
import type { ExpertIR } from "./ir.ts";
import { quantizeUnpacked, type QuantMethod } from "./quantize/mod.ts";
import { reconstruct } from "./quantize/common.ts";
import { quantizeMxfp4 } from "./quantize/mxfp4.ts";
import { mulberry32 } from "../schemas/prng.ts";
import type { ExpertWeights } from "./expert_weights.ts";
import { matrixNames, outputMatrix } from "./expert_weights.ts";
import { checkRouter, route } from "./reference/router.ts";

/** The weight-only importance that scales the data-free error. */
export type DataFreeImportance = "none" | "router" | "routing";

/**
 * A data-free cost: "plain" (squared Frobenius error, no importance), "normed" (input-norm-scaled
 * error, no importance), or the normed error × the importance "router" or "routing".
 */
export type DataFreeCost = "plain" | "normed" | "router" | "routing";

/** Names accepted for {@link DataFreeCost}. */
export const DATA_FREE_COSTS: readonly DataFreeCost[] = ["plain", "normed", "router", "routing"];

/**
 * Isotropic inputs routed per expert on average for the "routing" importance, unless that costs
 * more than {@link ROUTING_MACS} router multiply-adds (then fewer, but at least
 * {@link ROUTING_MIN_PER_EXPERT} per expert).
 */
const ROUTING_SAMPLES_PER_EXPERT = 256;
const ROUTING_MACS = 1 << 23;
const ROUTING_MIN_PER_EXPERT = 16;

/**
 * Σ over the expert's matrices of the squared quantization error, input-side matrices' columns
 * scaled by the input norm's weights `g` (length H) when given (see the module doc).
 */
export function normedWeightError(
  w: ExpertWeights,
  q: ExpertWeights,
  g: Float32Array | null,
): number {
  const out = outputMatrix(w.activation);
  const H = w.hidden;
  let err = 0;
  for (const name of matrixNames(w)) {
    const a = w.matrices[name]!, b = q.matrices[name]!;
    const scaled = g !== null && name !== out;
    for (let i = 0; i < a.length; i++) {
      const d = a[i] - b[i];
      const s = scaled ? g[i % H] : 1;
      err += d * d * s * s;
    }
  }
  return err;
}

/**
 * The importance of every expert of one MoE block from its router rows [E, H] and input norm
 * weights `g` (null: all ones).
 */
export function expertImportance(
  kind: DataFreeImportance,
  spec: MoeFfnSpec,
  router: Float32Array,
  g: Float32Array | null,
  seed = 0,
): number[] {
  const E = spec.numExperts;
  const H = router.length / E;
  const gain = (c: number) => (g ? g[c] : 1);
  if (kind === "none") return new Array<number>(E).fill(1);
  let rule: ReturnType<typeof checkRouter> | null = null;
  try {
    if (kind === "routing") rule = checkRouter(spec.router);
  } catch {
    rule = null; // a router the reference cannot run: the router norm stands in
  }
  if (!rule) {
    return Array.from({ length: E }, (_, e) => {
      let s = 0;
      for (let c = 0; c < H; c++) s += (router[e * H + c] * gain(c)) ** 2;
      return Math.sqrt(s);
    });
  }
  // "routing": route N isotropic inputs, average w² per expert.
  const rng = mulberry32(seed + 1);
  const perExpert = (k: number) => Math.ceil((k * E) / spec.topK);
  const n = Math.min(
    perExpert(ROUTING_SAMPLES_PER_EXPERT),
    Math.max(perExpert(ROUTING_MIN_PER_EXPERT), Math.floor(ROUTING_MACS / (E * H))),
  );
  const x = new Float64Array(H);
  const logits = new Float64Array(E);
  const share = new Array<number>(E).fill(0);
  for (let t = 0; t < n; t++) {
    for (let c = 0; c < H; c += 2) {
      const u = Math.max(rng(), 1e-12), v = rng();
      const r = Math.sqrt(-2 * Math.log(u));
      x[c] = r * Math.cos(2 * Math.PI * v) * gain(c);
      if (c + 1 < H) x[c + 1] = r * Math.sin(2 * Math.PI * v) * gain(c + 1);
    }
    for (let e = 0; e < E; e++) {
      let s = 0;
      for (let c = 0; c < H; c++) s += router[e * H + c] * x[c];
      logits[e] = s;
    }
    const r = route(logits, spec.topK, rule);
    r.experts.forEach((e, j) => share[e] += r.weights[j] * r.weights[j]);
  }
  // A floor so an expert the sample never picked still ranks by its error.
  const floor = 0.5 / n;
  return share.map((s) => Math.max(s / n, floor));
}

/** Matrices with at most this many values are measured whole; larger ones on sampled rows. */
const WHOLE_MATRIX_VALUES = 1 << 20;
/** Rows sampled from a larger matrix, in blocks of {@link SAMPLE_BLOCK} evenly spaced. */
const SAMPLE_ROWS = 16;
const SAMPLE_BLOCK = 8;

/** Row blocks [start, count] a data-free cost reads from a matrix of `rows` × `cols`. */
export function sampledRows(rows: number, cols: number): [number, number][] {
  if (rows * cols <= WHOLE_MATRIX_VALUES || rows <= SAMPLE_ROWS) return [[0, rows]];
  const blocks = SAMPLE_ROWS / SAMPLE_BLOCK;
  const stride = Math.floor(rows / blocks);
  return Array.from({ length: blocks }, (_, i) => [
    Math.min(rows - SAMPLE_BLOCK, i * stride + Math.floor((stride - SAMPLE_BLOCK) / 2)),
    SAMPLE_BLOCK,
  ]);
}

/**
 * The data-free error of one expert at every width in `widths` ({@link normedWeightError}, or
 * the plain Frobenius error when `g` is null), measured on the rows {@link sampledRows} picks and
 * scaled up by rows / sampled rows: quantization groups run along a row, so a row's error does
 * not depend on the others and the sampled rows' sum, scaled, estimates the whole matrix's
 * (exact when every row is read, as for small matrices).
 */
export async function sampledExpertError(
  expert: ExpertIR,
  widths: readonly ExpertWidth[],
  groupSize: number,
  method: QuantMethod,
  g: Float32Array | null,
): Promise<number[]> {
  const out = outputMatrix(expert.activation);
  const err = widths.map(() => 0);
  for (const m of expert.matrices) {
    const [rows, cols] = m.weight.shape;
    const blocks = sampledRows(rows, cols);
    const whole = blocks.length === 1 && blocks[0][1] === rows;
    const scaled = g !== null && m.name !== out;
    let taken = 0;
    const part = widths.map(() => 0);
    for (const [start, count] of blocks) {
      const values = whole || !m.weight.readRows
        ? (await m.weight.read()).subarray(start * cols, (start + count) * cols)
        : await m.weight.readRows(start, count);
      taken += count;
      widths.forEach((bits, k) => {
        const q = bits === MXFP4_WIDTH
          ? dequantize(quantizeMxfp4(values, count, cols, m.weight.name))
          : reconstruct(quantizeUnpacked(values, count, cols, { bits, groupSize, method }));
        let s = 0;
        for (let i = 0; i < values.length; i++) {
          const d = values[i] - q[i];
          const w = scaled ? g![i % cols] : 1;
          s += d * d * w * w;
        }
        part[k] += s;
      });
    }
    part.forEach((s, k) => err[k] += (s * rows) / taken);
  }
  return err;
}
