/**
 * The streamed calibration's GQA attention block split into jobs for the worker pool, with the
 * same values as the block on one thread (`attentionBlock` with {@link linearF32}):
 *
 * - one {@link AttentionGroupJob} per KV head: the q/k/v projections of that KV head's query
 *   heads (the rows of attn_q, attn_k, attn_v it owns), the per-head q/k norms, clamps and RoPE,
 *   and the float64 attention core, over every window of a block; it returns the heads'
 *   attention outputs [n, group · hd] per window;
 * - {@link LinearJob}s for the output projection, one per block of its output rows.
 *
 * Both are the reference's own code (compiler/reference/attention.ts `attentionBlock`) on a
 * block of one KV head whose float32 products see the same operands as the whole block's: the
 * SIMD product's value at (t, r) depends only on row t of the input and row r of the weights
 * (compiler/calibration/simd.ts), so splitting the weights by rows changes no value. Blocks the
 * split does not cover (a q/k norm over the whole projection, the T5 relative bias, MLA) run
 * whole ({@link groupable}).
 *
 * @module
 */

import type { GqaAttentionSpec } from "../../schemas/model.ts";
import { attentionBlock, type ReferenceAttention } from "../reference/attention.ts";
import type { ReferenceRope } from "../reference/rope.ts";
import { addBias } from "../reference/math.ts";
import { matmulF32 } from "./simd.ts";

/** Float32 copies of the float64 reference's weights (exact: they were read as f32). */
const f32Copies = new WeakMap<Float64Array, Float32Array>();

/** The float32 copy of a weight (made once, then kept with it). */
export function f32Of(w: Float64Array): Float32Array {
  let w32 = f32Copies.get(w);
  if (!w32) f32Copies.set(w, w32 = Float32Array.from(w));
  return w32;
}

/**
 * The reference's `matmul` signature on the float32 SIMD product (float64 in and out): x is
 * rounded to float32, the weights' float32 copy is used.
 */
export function linearF32(
  out: Float64Array,
  x: Float64Array,
  w: Float64Array,
  n: number,
  rows: number,
  cols: number,
): void {
  const y = new Float32Array(n * rows);
  matmulF32(y, Float32Array.from(x.subarray(0, n * cols)), f32Of(w), n, rows, cols);
  out.set(y);
}

/** Whether {@link attentionGroups} covers the block (else it runs whole on one thread). */
export function groupable(a: ReferenceAttention): boolean {
  return a.spec.qkNorm !== "full" && a.relativeBias === null;
}

/** One KV head's share of an attention block over a list of windows (see the module doc). */
export interface AttentionGroupJob {
  kind: "attention";
  /** The block's spec with `numHeads` the group's query heads and one KV head. */
  spec: GqaAttentionSpec;
  /** The windows' normed states [n_i, H], rounded to float32 (as the projections take them). */
  xs: Float32Array[];
  ns: number[];
  /** Float32 rows of attn_q [group · hd, H], attn_k and attn_v [hd, H] of the group. */
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  qBias: Float64Array | null;
  kBias: Float64Array | null;
  vBias: Float64Array | null;
  qNorm: Float64Array | null;
  kNorm: Float64Array | null;
  /** The group's sink logits. */
  sinks: Float64Array | null;
  rope: ReferenceRope | null;
}

/** The attention outputs of an {@link AttentionGroupJob}'s heads per window, [n_i, group · hd]. */
export interface AttentionGroupResult {
  att: Float64Array[];
}

/** out [n, rows] = x [n, cols] · wᵀ (w [rows, cols]) in float32: a block of a projection's rows. */
export interface LinearJob {
  kind: "linear";
  xs: Float32Array[];
  ns: number[];
  w: Float32Array;
  rows: number;
  cols: number;
}

/** A {@link LinearJob}'s outputs per input, [n_i, rows]. */
export interface LinearResult {
  ys: Float32Array[];
}

/**
 * The jobs of an attention block's KV heads over windows `hs` ([n_i, H] each): one per KV head
 * (see the module doc). The block must be {@link groupable}.
 */
export function attentionGroups(
  a: ReferenceAttention,
  hs: Float64Array[],
  ns: number[],
): AttentionGroupJob[] {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = a.spec;
  const g = nh / nkv;
  const H = a.q.length / (nh * hd);
  const xs = hs.map((h, i) => Float32Array.from(h.subarray(0, ns[i] * H)));
  const rows = (w: Float32Array, from: number, count: number) =>
    w.slice(from * hd * H, (from + count) * hd * H);
  const part = (b: Float64Array | null, from: number, count: number, width = hd) =>
    b ? b.slice(from * width, (from + count) * width) : null;
  const [q, k, v] = [f32Of(a.q), f32Of(a.k), f32Of(a.v)];
  return Array.from({ length: nkv }, (_, j) => ({
    kind: "attention" as const,
    spec: { ...a.spec, numHeads: g, numKvHeads: 1 },
    xs,
    ns,
    q: rows(q, j * g, g),
    k: rows(k, j, 1),
    v: rows(v, j, 1),
    qBias: part(a.qBias, j * g, g),
    kBias: part(a.kBias, j, 1),
    vBias: part(a.vBias, j, 1),
    qNorm: a.qNorm,
    kNorm: a.kNorm,
    sinks: part(a.sinks, j * g, g, 1),
    rope: a.rope,
  }));
}

/** Runs an {@link AttentionGroupJob} on this thread. */
export function runAttentionGroup(job: AttentionGroupJob): AttentionGroupResult {
  const { spec, xs, ns } = job;
  const hd = spec.headDim;
  const width = spec.numHeads * hd;
  // The reference block with the group's weights as markers its projections look up; the output
  // projection is left out (an identity: the attention outputs come back as they are).
  const marker = { q: new Float64Array(0), k: new Float64Array(0), v: new Float64Array(0) };
  const o = new Float64Array(0);
  const byMarker = new Map<Float64Array, Float32Array>([[marker.q, job.q], [marker.k, job.k], [
    marker.v,
    job.v,
  ]]);
  const linear = (
    out: Float64Array,
    x: Float64Array,
    w: Float64Array,
    n: number,
    rows: number,
    cols: number,
  ) => {
    if (w === o) {
      out.set(x.subarray(0, n * cols));
      return;
    }
    const y = new Float32Array(n * rows);
    matmulF32(y, Float32Array.from(x.subarray(0, n * cols)), byMarker.get(w)!, n, rows, cols);
    out.set(y);
  };
  const a: ReferenceAttention = {
    spec,
    ...marker,
    o,
    oBias: null,
    qBias: job.qBias,
    kBias: job.kBias,
    vBias: job.vBias,
    qNorm: job.qNorm,
    kNorm: job.kNorm,
    sinks: job.sinks,
    rope: job.rope,
    relativeBias: null,
    cacheSlot: 0,
  };
  const att = xs.map((x, i) => {
    const n = ns[i];
    const out = new Float64Array(n * width);
    const cache = { keys: new Float64Array(n * hd), values: new Float64Array(n * hd) };
    attentionBlock(out, Float64Array.from(x), n, a, cache, 0, linear);
    return out;
  });
  return { att };
}

/** Runs a {@link LinearJob} on this thread. */
export function runLinear(job: LinearJob): LinearResult {
  return {
    ys: job.xs.map((x, i) => {
      const y = new Float32Array(job.ns[i] * job.rows);
      matmulF32(y, x, job.w, job.ns[i], job.rows, job.cols);
      return y;
    }),
  };
}

/**
 * The output projection's jobs over the heads' outputs `atts` ([n_i, nh · hd] each, rounded to
 * float32 as the projection takes them): `parts` blocks of attn_o's rows.
 */
export function outputJobs(
  a: ReferenceAttention,
  atts: Float64Array[],
  ns: number[],
  parts: number,
): LinearJob[] {
  const cols = a.spec.numHeads * a.spec.headDim;
  const H = a.o.length / cols;
  const xs = atts.map((x) => Float32Array.from(x));
  const o = f32Of(a.o);
  const step = Math.ceil(H / Math.max(1, parts));
  const jobs: LinearJob[] = [];
  for (let r = 0; r < H; r += step) {
    const rows = Math.min(step, H - r);
    jobs.push({ kind: "linear", xs, ns, w: o.slice(r * cols, (r + rows) * cols), rows, cols });
  }
  return jobs;
}

/** Where {@link attendGrouped} runs its jobs (the worker pool, or this thread in tests). */
export interface AttentionRunner {
  /** Output-projection blocks to make. */
  readonly lanes: number;
  runCalibration(job: AttentionGroupJob): Promise<AttentionGroupResult>;
  runCalibration(job: LinearJob): Promise<LinearResult>;
}

/**
 * A {@link groupable} GQA block over windows `hs` ([n_i, H] each) as jobs on `runner`: the KV
 * heads' jobs, their outputs placed side by side, then `runner.lanes` blocks of the output
 * projection and its bias (float64). The same values as `attentionBlock` with {@link linearF32}
 * per window, whatever the runner.
 */
export async function attendGrouped(
  a: ReferenceAttention,
  hs: Float64Array[],
  ns: number[],
  runner: AttentionRunner,
): Promise<Float64Array[]> {
  const { numHeads: nh, headDim: hd } = a.spec;
  const qDim = nh * hd;
  const H = a.q.length / qDim;
  const atts = ns.map((n) => new Float64Array(n * qDim));
  await Promise.all(
    attentionGroups(a, hs, ns).map(async (job, j) => {
      const { att } = await runner.runCalibration(job);
      // Group j's heads are columns [j · w, (j + 1) · w) of the heads' outputs.
      const w = job.spec.numHeads * hd;
      att.forEach((part, i) => {
        for (let t = 0; t < ns[i]; t++) {
          atts[i].set(part.subarray(t * w, (t + 1) * w), t * qDim + j * w);
        }
      });
    }),
  );
  const outs = ns.map((n) => new Float64Array(n * H));
  const jobs = outputJobs(a, atts, ns, runner.lanes);
  const firsts = jobs.map((_, i) => jobs.slice(0, i).reduce((s, j) => s + j.rows, 0));
  await Promise.all(jobs.map(async (job, k) => {
    const { ys } = await runner.runCalibration(job);
    ys.forEach((y, i) => {
      for (let t = 0; t < ns[i]; t++) {
        outs[i].set(y.subarray(t * job.rows, (t + 1) * job.rows), t * H + firsts[k]);
      }
    });
  }));
  if (a.oBias) outs.forEach((o, i) => addBias(o, a.oBias!, ns[i]));
  return outs;
}
