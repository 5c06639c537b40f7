/**
 * An expert job (jobs.ts) with the expert resident in the SIMD kernels' memory (simd.ts): its
 * matrices are read from the checkpoint file into that memory when the job has their location
 * (else copied there from their raw bytes), widened from BF16 there, each group's min and
 * max found once, then at each candidate width the RTN kernel writes the quantized matrices beside
 * them and the forwards multiply by them in place. Nothing of the expert is copied in or out per
 * product or per width, which is what the general path (`matmulF32`, `rtnDecoded`) spends most of
 * its non-arithmetic time on.
 *
 * The arithmetic is the general path's, operation for operation: the same product kernel (same
 * summation order), the same activation code, the same RTN parameters and kernel. So the results
 * are bit for bit those of the general path (kernels_test.ts checks it); only where they are
 * computed differs. It takes asymmetric RTN with groups of a multiple of 4 values that tile both
 * matrix shapes, and hidden and intermediate sizes that are multiples of 4 ({@link residentFits});
 * anything else goes the general way.
 *
 * @module
 */

import type { MatrixName } from "../../schemas/model.ts";
import { MXFP4_WIDTH, type QuantBits } from "../../schemas/packing.ts";
import { matrixShape } from "../../schemas/tensors.ts";
import { matrixNames, matrixOf } from "../expert_weights.ts";
import { rtnParamsAt } from "./fake_quant.ts";
import { activateInPlace, addBias, type HeadBlock, reduceHeadLogits } from "./kernels.ts";
import { readLocation, readLocationInto } from "./raw_read.ts";
import {
  bf16At,
  bf16Into,
  bf16MinmaxInto,
  gemmAt,
  kernelAlloc,
  kernelF32,
  kernelMark,
  kernelRelease,
  minmaxAt,
  rtnFastAt,
} from "./simd.ts";
import {
  decodeInto,
  type ExpertJob,
  type ExpertJobResult,
  type HeadJob,
  sampleCost,
} from "./jobs.ts";

/** Whether {@link runResidentExpertJob} takes `job` (see the module doc). */
export function residentFits(job: ExpertJob): boolean {
  const { hidden: H, inter: I } = job.weights;
  if (H % 4 !== 0 || I % 4 !== 0 || H === 0 || I === 0) return false;
  const c = job.costs;
  if (!c) return true;
  const g = c.groupSize;
  return c.quantizer === "rtn" && g > 0 && g % 4 === 0 && H % g === 0 && I % g === 0 &&
    c.widths.every((b) => b !== MXFP4_WIDTH);
}

/** Byte addresses of a matrix's per-group regions and quantized values (see {@link run}). */
interface GroupRegions {
  mm: number;
  prm: number;
  prm32: number;
  flags: number;
  q: number;
  /** Groups. */
  n: number;
}

/** Byte addresses of an MLP's matrices in the kernel memory. */
type Matrices = Partial<Record<MatrixName, number>>;

/** Runs `job` (which {@link residentFits}) with its expert resident in the kernel memory. */
export function runResidentExpertJob(job: ExpertJob): ExpertJobResult {
  const mark = kernelMark();
  try {
    return run(job);
  } finally {
    kernelRelease(mark);
  }
}

function run(job: ExpertJob): ExpertJobResult {
  const w = job.weights;
  const { hidden: H, inter: I, activation } = w;
  const names = matrixNames(w);
  const shape = (name: MatrixName) => matrixShape(name, I, H) as [number, number];
  const weights: Matrices = {};
  const c = job.costs;
  // With costs, each group's [min, max] (`minmax`), found while BF16 is widened when it can be.
  const minmax: Matrices = {};
  const fused = c !== undefined && c.groupSize % 8 === 0;
  for (const name of names) {
    const [rows, cols] = shape(name);
    const at = kernelAlloc(rows * cols);
    const mm = c ? kernelAlloc(2 * (rows * cols) / c.groupSize) : 0;
    const loc = job.located?.[name];
    const raw = loc && !(loc.dtype === "BF16" && loc.length === 2 * rows * cols)
      ? readLocation(loc)
      : job.raw?.[name];
    const bf16 = loc && !raw
      ? (view: Uint8Array) => readLocationInto(loc, view)
      : raw?.dtype === "BF16" && raw.bytes.byteLength === 2 * rows * cols
      ? (view: Uint8Array) => view.set(raw.bytes)
      : null;
    let found = false;
    let widened = false;
    if (bf16 && fused) found = widened = bf16MinmaxInto(bf16, at, rows * cols, mm, c.groupSize);
    else if (bf16) widened = bf16Into(bf16, at, rows * cols);
    // Else other dtypes, non-finite values (decodeRaw's error, or zeros), decoded matrices.
    // A located BF16 matrix is read again for decodeRaw's error or zeros (a rare path).
    if (!widened) {
      const view = kernelF32(at, rows * cols);
      const values = raw
        ? decodeInto(raw, view)
        : loc
        ? decodeInto(readLocation(loc), view)
        : matrixOf(w, name);
      if (values !== view) view.set(values);
    }
    if (c && !found) minmaxAt(at, mm, (rows * cols) / c.groupSize, c.groupSize);
    weights[name] = at;
    minmax[name] = mm;
  }

  /** Rows [n, H] placed in the kernel memory, padded to an even count with a zero row. */
  const place = (x: Float32Array, n: number): number => {
    const np = n + (n & 1);
    const at = kernelAlloc(np * H);
    const view = kernelF32(at, np * H);
    view.set(x.subarray(0, n * H));
    view.fill(0, n * H);
    return at;
  };

  /**
   * The MLP with matrices `m` over the n rows at `x`: `use` gets its outputs [n, H] (a view of the
   * kernel memory, valid during the call) and what it returns is returned.
   */
  const forward = <T>(m: Matrices, x: number, n: number, use: (y: Float32Array) => T): T => {
    if (n === 0) return use(new Float32Array(0));
    const mark = kernelMark();
    try {
      const np = n + (n & 1);
      const upAt = kernelAlloc(np * I);
      gemmAt(x, m.up!, upAt, np, I, H);
      const up = kernelF32(upAt, n * I);
      addBias(up, w.biases.up, n);
      let act = upAt;
      if (activation.kind === "relu") activateInPlace(activation, up, null);
      else {
        const gateAt = kernelAlloc(np * I);
        gemmAt(x, m.gate!, gateAt, np, I, H);
        const gate = kernelF32(gateAt, n * I);
        addBias(gate, w.biases.gate, n);
        activateInPlace(activation, kernelF32(upAt, n * I), gate);
        act = gateAt;
      }
      const out = names[names.length - 1];
      const yAt = kernelAlloc(np * H);
      gemmAt(act, m[out]!, yAt, np, H, I);
      const y = kernelF32(yAt, n * H);
      addBias(y, w.biases[out], n);
      return use(y);
    } finally {
      kernelRelease(mark);
    }
  };
  const copy = (y: Float32Array) => y.slice();

  const routed = forward(weights, place(job.routed, job.n), job.n, copy);
  if (!c) return { routed, costs: [], fork: new Float32Array(0), costMs: 0 };
  const t0 = performance.now();
  const { sample, forkRows, sampleRows } = c;
  let y: Float32Array | null = null;
  if (sample.n > 0) {
    if (sampleRows && sampleRows.length === sample.n) {
      y = new Float32Array(sample.n * H);
      sampleRows.forEach((r, j) => y!.set(routed.subarray(r * H, (r + 1) * H), j * H));
    }
  }
  // The sample's rows, then the fork rows: the lowest width runs over both at once (a row's
  // outputs do not depend on the other rows: the same values as two forwards).
  const f = forkRows.length;
  const rows = new Float32Array((sample.n + f) * H);
  rows.set(sample.inputs.subarray(0, sample.n * H));
  forkRows.forEach((r, j) => rows.set(job.routed.subarray(r * H, (r + 1) * H), (sample.n + j) * H));
  const inputs = place(rows, sample.n + f);
  if (sample.n > 0 && !y) y = forward(weights, inputs, sample.n, copy);

  // The quantized matrices and parameters, reused per width.
  const groups: Partial<Record<MatrixName, GroupRegions>> = {};
  for (const name of names) {
    const [rows, cols] = shape(name);
    const n = (rows * cols) / c.groupSize;
    groups[name] = {
      mm: minmax[name]!,
      prm: kernelAlloc(6 * n),
      prm32: kernelAlloc(4 * n),
      flags: kernelAlloc(n),
      q: kernelAlloc(rows * cols),
      n,
    };
  }
  const costs: number[] = [];
  let fork: Float32Array = new Float32Array(0);
  for (const [i, b] of c.widths.entries()) {
    const wantFork = i === 0 && forkRows.length > 0;
    if (!y && !wantFork) {
      costs.push(0);
      continue;
    }
    const quantized: Matrices = {};
    for (const name of names) {
      const [rows, cols] = shape(name);
      const g = groups[name]!;
      rtnParamsAt(
        g.mm,
        g.prm,
        g.prm32,
        g.flags,
        g.n,
        b as QuantBits,
        () => kernelF32(weights[name]!, rows * cols).slice(),
        cols,
        name,
      );
      const qmax = (1 << (b as number)) - 1;
      rtnFastAt(weights[name]!, g.q, g.prm32, g.prm, g.flags, g.n, c.groupSize, qmax);
      quantized[name] = g.q;
    }
    // Without y the sample is empty: the fork rows are the first rows at `inputs`.
    const wanted = (y ? sample.n : 0) + (wantFork ? f : 0);
    costs.push(forward(quantized, inputs, wanted, (yq) => {
      if (wantFork) fork = yq.slice((wanted - f) * H);
      return y ? sampleCost(y, yq, sample, H) : 0;
    }));
  }
  return { routed, costs, fork, costMs: performance.now() - t0 };
}

/**
 * A head job whose rows are raw BF16 bytes (or their place in the file, read straight into the
 * kernel memory), widened there and multiplied there (`headBlockF32`'s values bit for bit); null, having done nothing, when the
 * rows are not BF16, hold a non-finite value or the hidden size is not a multiple of 4.
 */
export function runResidentHeadJob(job: HeadJob): HeadBlock | null {
  const { k, n, rows } = job;
  const H = job.x.length / k;
  if (rows instanceof Float32Array || rows.dtype !== "BF16" || H % 4 !== 0 || k === 0) return null;
  const located = "offset" in rows;
  if ((located ? rows.length : rows.bytes.byteLength) !== 2 * n * H) return null;
  const mark = kernelMark();
  try {
    const kp = k + (k & 1), np = Math.ceil(n / 4) * 4;
    const rowsAt = kernelAlloc(np * H);
    const widened = located
      ? bf16Into((view) => readLocationInto(rows, view), rowsAt, n * H)
      : bf16At(rows.bytes, rowsAt, n * H);
    if (!widened) return null;
    kernelF32(rowsAt + n * H * 4, (np - n) * H).fill(0);
    const xAt = kernelAlloc(kp * H);
    const x = kernelF32(xAt, kp * H);
    x.set(job.x.subarray(0, k * H));
    x.fill(0, k * H);
    const logitsAt = kernelAlloc(kp * np);
    gemmAt(xAt, rowsAt, logitsAt, kp, np, H);
    const logits = kernelF32(logitsAt, kp * np);
    return reduceHeadLogits(logits, np, k, n, job.a, job.bias, job.targets);
  } finally {
    kernelRelease(mark);
  }
}
