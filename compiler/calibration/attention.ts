/**
 * The streamed calibration's GQA attention block on float32 SIMD products (simd.ts): the q/k/v
 * projections, each head's scores q·kᵀ and its softmax-weighted sum of values, and the output
 * projection; the biases, q/k norms, clamps, RoPE, scale, window, sinks and softmax are the float64
 * reference's steps (compiler/reference/attention.ts `attentionBlock`) on those values.
 * attention_test.ts holds it to the float64 reference block within 1e-5 of the largest output.
 *
 * The block runs on one thread ({@link attendF32}) or as jobs on the worker pool
 * ({@link attendGrouped}):
 *
 * - one {@link AttentionGroupJob} per KV head: the projections of that KV head's query heads
 *   (the rows of attn_q, attn_k, attn_v it owns) and their attention, over every window of a
 *   block; it returns the heads' attention outputs [n, group · hd] per window;
 * - {@link LinearJob}s for the output projection, one per block of its output rows.
 *
 * Both give the same values: the SIMD product's value at (t, r) depends only on row t of the left
 * operand and row r of the right one (simd.ts), so splitting the weights by rows, or the queries
 * into row blocks, changes no value. Blocks the split does not cover (a q/k norm over the whole
 * projection, the T5 relative bias, MLA) run whole ({@link groupable}).
 *
 * @module
 */

import type { GqaAttentionSpec } from "../../schemas/model.ts";
import { prepareQkv, type ReferenceAttention } from "../reference/attention.ts";
import { addBias, softmax } from "../reference/math.ts";
import { matmulF32 } from "./simd.ts";

/** Float32 copies of the float64 reference's weights (exact: they were read as f32). */
const f32Copies = new WeakMap<Float64Array, Float32Array>();

/** A projection's weights: the float64 reference's, or float32 as read (the same values). */
export type ProjectionWeights = Float64Array | Float32Array;

/**
 * A GQA block as {@link ReferenceAttention}, its q/k/v/o projections possibly float32 as read
 * (the calibration reads them so, with no float64 copy; everything else is the reference's).
 */
export type AttentionF32 = Omit<ReferenceAttention, "q" | "k" | "v" | "o"> & {
  q: ProjectionWeights;
  k: ProjectionWeights;
  v: ProjectionWeights;
  o: ProjectionWeights;
};

/** The float32 values of a weight: itself when float32, else its copy (made once, then kept). */
export function f32Of(w: ProjectionWeights): Float32Array {
  if (w instanceof Float32Array) return w;
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
  w: ProjectionWeights,
  n: number,
  rows: number,
  cols: number,
): void {
  const y = new Float32Array(n * rows);
  matmulF32(y, Float32Array.from(x.subarray(0, n * cols)), f32Of(w), n, rows, cols);
  out.set(y);
}

/** Whether {@link attentionGroups} covers the block (else it runs whole on one thread). */
export function groupable(a: AttentionF32): boolean {
  return a.spec.qkNorm !== "full" && a.relativeBias === null;
}

/**
 * One KV head's share of an attention block over a list of windows (see the module doc): the
 * group's rows of the q/k/v biases and norms, its sink logits, and the block's RoPE.
 */
export interface AttentionGroupJob extends
  Pick<
    ReferenceAttention,
    "qBias" | "kBias" | "vBias" | "qNorm" | "kNorm" | "sinks" | "rope"
  > {
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
  a: AttentionF32,
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
  return { att: job.xs.map((x, i) => headsF32(job, x, job.ns[i])) };
}

/** An attention block's heads with float32 projection weights (the block, or one KV head's). */
export type HeadsF32 = Omit<AttentionGroupJob, "kind" | "xs" | "ns">;

/** Rows of query scores per product in {@link headsF32} (bounds its [rows, n] scratch). */
const SCORE_VALUES = 1 << 20;

/** Query rows per block at most (smaller blocks skip more of the keys a causal row cannot see). */
const QUERY_ROWS = 64;

/**
 * The heads' attention outputs [n, nh · hd] (before the output projection) over one window of
 * states x [n, H] at positions 0..n−1, as `attentionBlock` computes them (compiler/reference/
 * attention.ts) except that the products are float32 SIMD ones: the q/k/v projections, each
 * head's scores q·kᵀ and its weighted sum of values. Biases, q/k norms, clamps, RoPE, the scale,
 * window, sinks and softmax are the reference's float64 steps on those values; the softmax
 * weights are rounded to float32 for the value product. Queries go in row blocks of about
 * `scoreValues` / n rows (the same values whatever the blocks).
 */
export function headsF32(
  a: HeadsF32,
  x: Float32Array,
  n: number,
  scoreValues = SCORE_VALUES,
): Float64Array {
  const { q, k, v } = projectQkv(a, x, n);
  return attendHeads(a, q, k, v, n, scoreValues);
}

/** The q/k/v projections of rows x [n, H] (float32 products, float64 out, biases added). */
function projectQkv(a: HeadsF32, x: Float32Array, n: number) {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = a.spec;
  const H = x.length / n;
  const project = (w: Float32Array, rows: number, bias: Float64Array | null) => {
    const y = new Float32Array(n * rows);
    matmulF32(y, x, w, n, rows, H);
    const out = new Float64Array(n * rows);
    out.set(y);
    if (bias) addBias(out, bias, n);
    return out;
  };
  return {
    q: project(a.q, nh * hd, a.qBias),
    k: project(a.k, nkv * hd, a.kBias),
    v: project(a.v, nkv * hd, a.vBias),
  };
}

/**
 * {@link headsF32} after the projections: q [n, nh · hd], k, v [n, nkv · hd] of one window (its
 * rows at positions 0..n−1), prepared in place (norms, clamps, RoPE), then attended.
 */
function attendHeads(
  a: HeadsF32,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  n: number,
  scoreValues = SCORE_VALUES,
): Float64Array {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = a.spec;
  const qDim = nh * hd, kvDim = nkv * hd;
  prepareQkv(a, q, k, v, n, 0);

  const att = new Float64Array(n * qDim);
  const group = nh / nkv;
  const window = a.spec.slidingWindow;
  // Row blocks of at most QUERY_ROWS: causal rows t0.. see keys below t0 + rows only.
  const step = Math.max(1, Math.min(n, QUERY_ROWS, Math.floor(scoreValues / n)));
  const qh = new Float32Array(step * hd);
  const kh = new Float32Array(n * hd);
  const vt = new Float32Array(hd * n);
  const scores = new Float32Array(step * n);
  const p = new Float32Array(step * n);
  const row = new Float64Array(n + 1);
  const oh = new Float32Array(step * hd);
  const vkBuf = new Float32Array(hd * n);
  for (let h = 0; h < nh; h++) {
    const ko = Math.floor(h / group) * hd;
    if (h % group === 0) {
      // This KV head's keys [n, hd] and values transposed [hd, n].
      for (let j = 0; j < n; j++) {
        for (let i = 0; i < hd; i++) {
          kh[j * hd + i] = k[j * kvDim + ko + i];
          vt[i * n + j] = v[j * kvDim + ko + i];
        }
      }
    }
    for (let t0 = 0; t0 < n; t0 += step) {
      const rows = Math.min(step, n - t0);
      for (let r = 0; r < rows; r++) {
        for (let i = 0; i < hd; i++) qh[r * hd + i] = q[(t0 + r) * qDim + h * hd + i];
      }
      // Causal rows [t0, t0 + rows) see keys below t0 + rows only.
      const keys = a.spec.causal ? t0 + rows : n;
      matmulF32(scores, qh, kh, rows, keys, hd);
      p.fill(0, 0, rows * keys);
      for (let r = 0; r < rows; r++) {
        const t = t0 + r;
        const nKeys = a.spec.causal ? t + 1 : n;
        const first = window ? Math.max(0, nKeys - window) : 0;
        for (let j = first; j < nKeys; j++) row[j] = scores[r * keys + j] * a.spec.scale;
        if (a.sinks) {
          row[nKeys] = a.sinks[h];
          softmax(row.subarray(first, nKeys + 1));
        } else {
          softmax(row.subarray(first, nKeys));
        }
        for (let j = first; j < nKeys; j++) p[r * keys + j] = row[j];
      }
      // Values transposed to the keys in view: [hd, keys].
      const vk = keys === n ? vt : compactRows(vt, hd, n, keys, vkBuf);
      matmulF32(oh, p, vk, rows, hd, keys);
      for (let r = 0; r < rows; r++) {
        for (let i = 0; i < hd; i++) att[(t0 + r) * qDim + h * hd + i] = oh[r * hd + i];
      }
    }
  }
  return att;
}

/** The first `cols` columns of m [rows, stride], contiguous, in `into` (returns its view). */
function compactRows(
  m: Float32Array,
  rows: number,
  stride: number,
  cols: number,
  into: Float32Array,
): Float32Array {
  const out = into.subarray(0, rows * cols);
  for (let r = 0; r < rows; r++) out.set(m.subarray(r * stride, r * stride + cols), r * cols);
  return out;
}

/**
 * A GQA block without a relative bias over one window h [n, H] (float64 states), on this thread:
 * {@link headsF32} over the whole block, then the output projection (float32) and its bias.
 * The same values as {@link attendGrouped}.
 */
export function attendF32(a: AttentionF32, h: Float64Array, n: number): Float64Array {
  return attendWindows(a, [h], [n])[0];
}

/** Rows per batch of {@link attendWindows}' projections (at least one whole window). */
const BATCH_ROWS = 512;

/**
 * Shared buffers kept for the next attention block: fresh buffers of tens of MB cost more in
 * page faults than their copies (a 72 MB copy into fresh memory took 0.26 s here), and every
 * block's projections have the same shapes.
 */
const spare: SharedArrayBuffer[] = [];

/** Bytes of {@link spare} buffers kept at most. */
const SPARE_BYTES = 160 << 20;

/** A float32 array of `values` in a shared buffer, a spare one when one fits. */
function sharedF32(values: number): Float32Array {
  let best = -1;
  for (let i = 0; i < spare.length; i++) {
    const b = spare[i].byteLength;
    if (b >= values * 4 && (best < 0 || b < spare[best].byteLength)) best = i;
  }
  const buf = best >= 0 ? spare.splice(best, 1)[0] : new SharedArrayBuffer(values * 4);
  return new Float32Array(buf, 0, values);
}

/** Gives the buffers of {@link sharedF32} arrays back (kept while under {@link SPARE_BYTES}). */
function releaseShared(arrays: Float32Array[]): void {
  for (const a of arrays) {
    const buf = a.buffer as SharedArrayBuffer;
    const kept = spare.reduce((s, b) => s + b.byteLength, 0);
    if (!spare.includes(buf) && kept + buf.byteLength <= SPARE_BYTES) spare.push(buf);
  }
}

/** Lets the shared buffers kept for the next block go (call when no block follows). */
export function dropSharedBuffers(): void {
  spare.length = 0;
}

/** The batches of {@link attendWindows}: windows [i, j) of up to {@link BATCH_ROWS} rows. */
function batches(ns: number[]): [number, number][] {
  const out: [number, number][] = [];
  for (let i = 0; i < ns.length;) {
    let j = i, rows = 0;
    while (j < ns.length && (j === i || rows + ns[j] <= BATCH_ROWS)) rows += ns[j++];
    out.push([i, j]);
    i = j;
  }
  return out;
}

/** A batch's states [rows, H] in float32, windows side by side (in a shared buffer if asked). */
function batchRows(
  hs: Float64Array[],
  ns: number[],
  [i, j]: [number, number],
  H: number,
  shared = false,
): Float32Array {
  let rows = 0;
  for (let w = i; w < j; w++) rows += ns[w];
  const x = shared ? sharedF32(rows * H) : new Float32Array(rows * H);
  for (let w = i, at = 0; w < j; at += ns[w++]) x.set(hs[w].subarray(0, ns[w] * H), at * H);
  return x;
}

/** A batch's heads' outputs [rows, nh · hd] from its projections, each window attended alone. */
function attendBatch(
  heads: HeadsF32,
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  ns: number[],
  [i, j]: [number, number],
  att: Float32Array,
): Float32Array {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = heads.spec;
  const qDim = nh * hd, kvDim = nkv * hd;
  for (let w = i, at = 0; w < j; at += ns[w++]) {
    const n = ns[w];
    const part = (m: Float64Array, d: number) => m.subarray(at * d, (at + n) * d);
    att.set(attendHeads(heads, part(q, qDim), part(k, kvDim), part(v, kvDim), n), at * qDim);
  }
  return att;
}

/** A batch's outputs y [rows, H] per window, float64, with the output bias. */
function batchOutputs(
  a: AttentionF32,
  y: Float32Array,
  ns: number[],
  [i, j]: [number, number],
  H: number,
): Float64Array[] {
  const outs: Float64Array[] = [];
  for (let w = i, at = 0; w < j; at += ns[w++]) {
    const out = new Float64Array(ns[w] * H);
    out.set(y.subarray(at * H, (at + ns[w]) * H));
    if (a.oBias) addBias(out, a.oBias, ns[w]);
    outs.push(out);
  }
  return outs;
}

/**
 * {@link attendF32} over several windows (hs[i] [ns[i], H]), the same values: the projections
 * run over batches of whole windows' rows (up to {@link BATCH_ROWS}, or one larger window), so a
 * projection's weights are placed in the kernel memory once per batch, not once per window (the
 * sensitivity forks add a 32-token window per earlier MoE layer); each window is attended on its
 * own. A row's projection does not depend on the other rows (simd.ts), hence the same values.
 */
export function attendWindows(a: AttentionF32, hs: Float64Array[], ns: number[]): Float64Array[] {
  const { numHeads: nh, headDim: hd } = a.spec;
  const qDim = nh * hd;
  const H = a.q.length / qDim;
  const heads = wholeHeads(a);
  return batches(ns).flatMap((batch) => {
    const x = batchRows(hs, ns, batch, H);
    const rows = x.length / H;
    const { q, k, v } = projectQkv(heads, x, rows);
    const att = attendBatch(heads, q, k, v, ns, batch, new Float32Array(rows * qDim));
    const y = new Float32Array(rows * H);
    matmulF32(y, att, f32Of(a.o), rows, H, qDim);
    return batchOutputs(a, y, ns, batch, H);
  });
}

/** [from, to) of `parts` near-equal blocks of `count` rows, in multiples of 4 where possible. */
function rowBlocks(count: number, parts: number): [number, number][] {
  const step = Math.max(4, Math.ceil(count / parts / 4) * 4);
  const out: [number, number][] = [];
  for (let r = 0; r < count; r += step) out.push([r, Math.min(count, r + step)]);
  return out;
}

/**
 * Several projections' weights ([outs_i, cols] each) cut into `parts` jobs' shares: share p
 * stacks block p of every weight's rows, in a shared buffer (jobs read it in place, so one copy
 * serves every batch of a block); `blocks[i][p]` is that block of weight i.
 */
interface SplitWeights {
  cols: number;
  outs: number[];
  blocks: [number, number][][];
  shares: { w: Float32Array; rows: number }[];
}

/** {@link SplitWeights} of `ws` in `parts` shares (empty shares left out). */
function splitWeights(ws: Float32Array[], cols: number, parts: number): SplitWeights {
  const outs = ws.map((w) => w.length / cols);
  const blocks = outs.map((o) => rowBlocks(o, parts));
  const shares: SplitWeights["shares"] = [];
  for (let p = 0; p < parts; p++) {
    const rows = blocks.reduce((s, b) => s + (b[p] ? b[p][1] - b[p][0] : 0), 0);
    if (rows === 0) break;
    const w = sharedF32(rows * cols);
    let at = 0;
    ws.forEach((m, i) => {
      const b = blocks[i][p];
      if (!b) return;
      w.set(m.subarray(b[0] * cols, b[1] * cols), at);
      at += (b[1] - b[0]) * cols;
    });
    shares.push({ w, rows });
  }
  return { cols, outs, blocks, shares };
}

/**
 * The products y_i = x · w_iᵀ of the batch rows x [rows, cols] (in a shared buffer: the jobs
 * read it in place) with split weights, one job a share on `runner`; returns each weight's y_i
 * [rows, outs_i].
 */
async function projectOnPool(
  runner: ProjectionRunner,
  x: Float32Array,
  rows: number,
  split: SplitWeights,
): Promise<Float32Array[]> {
  const { cols, outs, blocks, shares } = split;
  const ys = outs.map((o) => new Float32Array(rows * o));
  await Promise.all(shares.map(async ({ w, rows: width }, p) => {
    const job: LinearJob = { kind: "linear", xs: [x], ns: [rows], w, rows: width, cols };
    const y = (await runner.runCalibration(job)).ys[0];
    // Columns [c, c + to − from) of y are rows [from, to) of weight i's outputs.
    let c = 0;
    blocks.forEach((b, i) => {
      if (!b[p]) return;
      const [from, to] = b[p];
      for (let t = 0; t < rows; t++) {
        ys[i].set(y.subarray(t * width + c, t * width + c + to - from), t * outs[i] + from);
      }
      c += to - from;
    });
  }));
  return ys;
}

/** Where {@link attendWindowsPooled} runs its projection jobs. */
export interface ProjectionRunner {
  /** Jobs worth keeping in flight. */
  readonly lanes: number;
  runCalibration(job: LinearJob): Promise<LinearResult>;
}

/**
 * {@link attendWindows} with the q/k/v and o projections as jobs on `runner` (`parts` blocks of
 * each projection's rows a batch, default half the runner's lanes: one per pool worker), the
 * same values: a product's value at (t, r) depends only on row t of x and row r of the weight
 * (simd.ts). This thread attends each batch's windows as soon as their projections are back,
 * while the next batch's q/k/v and the previous batch's o projections run on the pool. The
 * operands the jobs read (the states, the weights' shares) are in shared buffers, reused by the
 * next block.
 */
export async function attendWindowsPooled(
  a: AttentionF32,
  hs: Float64Array[],
  ns: number[],
  runner: ProjectionRunner,
  parts = Math.max(1, Math.ceil(runner.lanes / 2)),
): Promise<Float64Array[]> {
  const { numHeads: nh, headDim: hd } = a.spec;
  const qDim = nh * hd;
  const H = a.q.length / qDim;
  const heads = wholeHeads(a);
  const qkv = splitWeights([heads.q, heads.k, heads.v], H, parts);
  const o = splitWeights([f32Of(a.o)], qDim, parts);
  const all = batches(ns);
  /** Batch b's q/k/v projections (float64, biases added) and its row count. */
  const project = async (b: number) => {
    const x = batchRows(hs, ns, all[b], H, true);
    const rows = x.length / H;
    const ys = await projectOnPool(runner, x, rows, qkv);
    releaseShared([x]);
    const [q, k, v] = ys.map((y, i) => {
      const out = Float64Array.from(y);
      const bias = [heads.qBias, heads.kBias, heads.vBias][i];
      if (bias) addBias(out, bias, rows);
      return out;
    });
    return { q, k, v, rows };
  };
  // Promises awaited later are marked handled now: a failed job is thrown where it is awaited.
  const early = <T>(p: Promise<T>): Promise<T> => (p.catch(() => {}), p);
  const outputs: Promise<Float64Array[]>[] = [];
  let next = all.length > 0 ? early(project(0)) : null;
  for (let b = 0; b < all.length; b++) {
    const { q, k, v, rows } = await next!;
    next = b + 1 < all.length ? early(project(b + 1)) : null;
    const att = sharedF32(rows * qDim);
    attendBatch(heads, q, k, v, ns, all[b], att);
    outputs.push(early(
      projectOnPool(runner, att, rows, o).then(([y]) => {
        releaseShared([att]);
        return batchOutputs(a, y, ns, all[b], H);
      }),
    ));
  }
  const outs = (await Promise.all(outputs)).flat();
  releaseShared([...qkv.shares, ...o.shares].map((share) => share.w));
  return outs;
}

/** The whole block as {@link HeadsF32}. */
export function wholeHeads(a: AttentionF32): HeadsF32 {
  return {
    spec: a.spec,
    q: f32Of(a.q),
    k: f32Of(a.k),
    v: f32Of(a.v),
    qBias: a.qBias,
    kBias: a.kBias,
    vBias: a.vBias,
    qNorm: a.qNorm,
    kNorm: a.kNorm,
    sinks: a.sinks,
    rope: a.rope,
  };
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
  a: AttentionF32,
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
  a: AttentionF32,
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
