/**
 * The streamed calibration's units of work, pure functions of their inputs so they can run on any
 * thread of the compiler's worker pool (compiler/parallel/) and give the same result there:
 *
 * - an expert job: one routed expert over every row routed to it (its block outputs), and with
 *   costs, its output error at each candidate width on its calibration sample and the outputs of
 *   its lowest-width version on the rows of the sensitivity forks;
 * - a head job: one vocabulary block's share of the scored rows' log-sum-exp;
 * - an attention job: one KV head's share of a GQA attention block, or a block of rows of its
 *   output projection (attention.ts).
 *
 * @module
 */

import type { ExpertWidth } from "../../schemas/packing.ts";
import type { MatrixName } from "../../schemas/model.ts";
import type { RawElements, RawLocation } from "../ir.ts";
import { readLocation } from "./raw_read.ts";
import { decodeRaw } from "../checkpoint/raw.ts";
import type { ExpertSample } from "../calibration.ts";
import { expertHessians, type ExpertWeights } from "../expert_weights.ts";
import { fakeQuantizeExpert } from "./fake_quant.ts";
import type { QuantMethod } from "../quantize/mod.ts";
import { type HeadBlock, headBlockF32, mlpF32 } from "./kernels.ts";
import {
  type AttentionGroupJob,
  type AttentionGroupResult,
  type LinearJob,
  type LinearResult,
  runAttentionGroup,
  runLinear,
} from "./attention.ts";
import { residentFits, runResidentExpertJob, runResidentHeadJob } from "./resident.ts";

/** The costs part of an {@link ExpertJob}. */
export interface ExpertCostRequest {
  widths: readonly ExpertWidth[];
  groupSize: number;
  quantizer: QuantMethod;
  /** The expert's calibration sample the output error is measured on. */
  sample: ExpertSample;
  /**
   * When sample row t is routed row `sampleRows[t]` (the same values), its full-precision output
   * is taken from the routed outputs instead of computed again.
   */
  sampleRows?: Int32Array;
  /** Rows of `routed` whose outputs are also wanted from the lowest-width expert. */
  forkRows: Int32Array;
}

/** One routed expert's work (see the module doc). */
export interface ExpertJob {
  kind: "expert";
  /** The expert; matrices given in `raw` are decoded where the job runs. */
  weights: ExpertWeights;
  /** Matrices as raw checkpoint bytes (compiler/checkpoint/raw.ts). */
  raw?: Partial<Record<MatrixName, RawElements>>;
  /** Matrices as the place of their raw bytes, read where the job runs (raw_read.ts). */
  located?: Partial<Record<MatrixName, RawLocation>>;
  /** Inputs routed to the expert, [n, H]. */
  routed: Float32Array;
  n: number;
  costs?: ExpertCostRequest;
}

/** What an {@link ExpertJob} gives back. */
export interface ExpertJobResult {
  /** Expert outputs of the routed rows, [n, H]. */
  routed: Float32Array;
  /** Output error (expert_error.ts `outputError`'s cost) at each width. */
  costs: number[];
  /** Outputs of the lowest-width expert on the fork rows, [forkRows, H]. */
  fork: Float32Array;
  /** Milliseconds spent on the costs (quantizing, the sample's outputs). */
  costMs: number;
}

/** One block of the head (see {@link headBlockF32}). */
export interface HeadJob {
  kind: "head";
  /** Scored rows [k, H], final-normed and scaled. */
  x: Float32Array;
  k: number;
  /** Head rows [a, a + n), [n, H], their raw checkpoint bytes, or where those lie. */
  rows: Float32Array | RawElements | RawLocation;
  n: number;
  a: number;
  bias: Float32Array | null;
  targets: Int32Array;
}

/** A calibration job. */
export type CalibrationJob = ExpertJob | HeadJob | AttentionGroupJob | LinearJob;

/** What a {@link CalibrationJob} gives back. */
export type CalibrationResult = ExpertJobResult | HeadBlock | AttentionGroupResult | LinearResult;

/** Output damage (seen / n) · Σ_t w_t² ‖y_q,t − y_t‖² (expert_error.ts), from float32 outputs. */
export function sampleCost(
  y: Float32Array,
  yq: Float32Array,
  sample: ExpertSample,
  H: number,
): number {
  let cost = 0;
  for (let t = 0; t < sample.n; t++) {
    let e = 0;
    for (let i = t * H; i < (t + 1) * H; i++) {
      const d = yq[i] - y[i];
      e += d * d;
    }
    const w = sample.weights[t];
    cost += w * w * e;
  }
  return sample.n > 0 ? (cost * sample.seen) / sample.n : 0;
}

/** Rows `rows` of x [*, H], gathered: [rows.length, H]. */
function gather(x: Float32Array, rows: Int32Array, H: number): Float32Array {
  const out = new Float32Array(rows.length * H);
  rows.forEach((r, j) => out.set(x.subarray(r * H, (r + 1) * H), j * H));
  return out;
}

/**
 * Buffers reused by this thread's jobs, by name: an expert's decoded and quantized matrices are
 * tens of MB each, and allocating (and collecting) them per job cost more than using them.
 */
const scratch = new Map<string, Float32Array>();

/** The reused buffer `key` of exactly `values` values (contents undefined). */
function scratchOf(key: string, values: number): Float32Array {
  let a = scratch.get(key);
  if (!a || a.length !== values) scratch.set(key, a = new Float32Array(values));
  return a;
}

/**
 * `decodeRaw(raw)` into `into` for BF16 (a 16-bit shift per value) when every value is finite;
 * else, and for other dtypes, `decodeRaw` itself (its error, or zeros for non-finite values).
 */
export function decodeInto(raw: RawElements, into: Float32Array): Float32Array {
  const n = raw.bytes.byteLength >>> 1;
  if (raw.dtype !== "BF16" || into.length !== n || raw.bytes.byteOffset % 2 !== 0) {
    return decodeRaw(raw);
  }
  const src = new Uint16Array(raw.bytes.buffer, raw.bytes.byteOffset, n);
  const bits = new Uint32Array(into.buffer, into.byteOffset, n);
  let exp = 0;
  for (let i = 0; i < n; i++) {
    const h = src[i];
    bits[i] = h << 16;
    exp |= ((h & 0x7f80) + 0x80) & 0x8000; // 0x8000 exactly when the exponent is all ones
  }
  return exp === 0 ? into : decodeRaw(raw);
}

/**
 * Runs an expert job on this thread: with the expert resident in the kernel memory (resident.ts)
 * when it fits, else on the general kernels (`resident` false forces those; the same values).
 */
export function runExpertJob(job: ExpertJob, resident = residentFits(job)): ExpertJobResult {
  if (resident) return runResidentExpertJob(job);
  const w: ExpertWeights = { ...job.weights, matrices: { ...job.weights.matrices } };
  const raws = { ...job.raw };
  for (const [name, loc] of Object.entries(job.located ?? {})) {
    if (loc) raws[name as MatrixName] = readLocation(loc);
  }
  for (const [name, raw] of Object.entries(raws)) {
    if (!raw) continue;
    const [rows, cols] = name === "down" ? [w.hidden, w.inter] : [w.inter, w.hidden];
    w.matrices[name as MatrixName] = decodeInto(raw, scratchOf(`w.${name}`, rows * cols));
  }
  const H = w.hidden;
  const routed = mlpF32(w, job.routed, job.n);
  const c = job.costs;
  if (!c) return { routed, costs: [], fork: new Float32Array(0), costMs: 0 };
  const t0 = performance.now();
  const { sample, forkRows, sampleRows } = c;
  const inputs = sample.inputs.subarray(0, sample.n * H);
  const hessians = c.quantizer === "gptq" && sample.n > 0 ? expertHessians(w, sample) : undefined;
  const y = sample.n === 0
    ? null
    : sampleRows && sampleRows.length === sample.n
    ? gather(routed, sampleRows, H)
    : mlpF32(w, inputs, sample.n);
  const costs: number[] = [];
  let fork: Float32Array = new Float32Array(0);
  for (const [i, b] of c.widths.entries()) {
    const wantFork = i === 0 && forkRows.length > 0;
    if (!y && !wantFork) {
      costs.push(0);
      continue;
    }
    const q = fakeQuantizeExpert(
      w,
      b,
      c.groupSize,
      c.quantizer,
      hessians,
      (name, values) => scratchOf(`q.${name}`, values),
    );
    costs.push(y ? sampleCost(y, mlpF32(q, inputs, sample.n), sample, H) : 0);
    if (wantFork) fork = mlpF32(q, gather(job.routed, forkRows, H), forkRows.length);
  }
  return { routed, costs, fork, costMs: performance.now() - t0 };
}

/**
 * Runs a head job on this thread: raw BF16 rows in the kernel memory (resident.ts) unless
 * `resident` is false or they do not fit there; the same values either way.
 */
export function runHeadJob(job: HeadJob, resident = true): HeadBlock {
  const done = resident ? runResidentHeadJob(job) : null;
  if (done) return done;
  const raw = job.rows instanceof Float32Array || !("offset" in job.rows)
    ? job.rows
    : readLocation(job.rows);
  const rows = raw instanceof Float32Array
    ? raw
    : decodeInto(raw, scratchOf("head", raw.bytes.byteLength >>> 1));
  return headBlockF32(job.x, job.k, rows, job.n, job.a, job.bias, job.targets);
}

/** Runs any calibration job on this thread. */
export function runCalibrationJob(job: CalibrationJob): CalibrationResult {
  switch (job.kind) {
    case "expert":
      return runExpertJob(job);
    case "head":
      return runHeadJob(job);
    case "attention":
      return runAttentionGroup(job);
    case "linear":
      return runLinear(job);
  }
}

/**
 * Buffers of a job that can be moved to a worker instead of copied: the routed rows, which the
 * calibration pass builds for the job, and raw bytes read for it (decoded weights and head rows
 * may be the IR's own storage, so they are copied).
 */
export function calibrationJobTransfers(job: CalibrationJob): ArrayBuffer[] {
  const arrays: ArrayBufferView[] = job.kind === "expert"
    ? [job.routed, ...Object.values(job.raw ?? {}).flatMap((r) => r ? [r.bytes] : [])]
    : job.kind === "attention"
    ? [job.q, job.k, job.v]
    : job.kind === "linear"
    ? [job.w]
    : job.rows instanceof Float32Array || "offset" in job.rows
    ? []
    : [job.rows.bytes];
  const whole = arrays.filter((a) =>
    a.buffer instanceof ArrayBuffer && a.byteOffset === 0 && a.byteLength === a.buffer.byteLength
  );
  return [...new Set(whole.map((a) => a.buffer as ArrayBuffer))];
}

/** Buffers of a result to move back. */
export function calibrationResultTransfers(r: CalibrationResult): ArrayBuffer[] {
  const arrays: ArrayBufferView[] = "routed" in r
    ? [r.routed, r.fork]
    : "att" in r
    ? r.att
    : "ys" in r
    ? r.ys
    : [r.max, r.sum, r.target];
  return [...new Set(arrays.map((a) => a.buffer))].filter((b): b is ArrayBuffer =>
    b instanceof ArrayBuffer
  );
}

/** Something that runs calibration jobs: the worker pool, or {@link inlineCalibration}. */
export interface CalibrationRunner {
  /** Jobs worth keeping in flight. */
  readonly lanes: number;
  runCalibration(job: ExpertJob): Promise<ExpertJobResult>;
  runCalibration(job: HeadJob): Promise<HeadBlock>;
  runCalibration(job: AttentionGroupJob): Promise<AttentionGroupResult>;
  runCalibration(job: LinearJob): Promise<LinearResult>;
}

/** Runs the jobs on this thread, one at a time as they are awaited. */
export const inlineCalibration: CalibrationRunner = {
  lanes: 1,
  runCalibration:
    ((job: CalibrationJob) =>
      Promise.resolve().then(() => runCalibrationJob(job))) as CalibrationRunner["runCalibration"],
};
