/**
 * Row-chunked quantization: a matrix is cut into fixed blocks of rows, each block is quantized on
 * its own (RTN, symmetric RTN and HQQ work per (row, group), so the codes, scales and zeros are
 * exactly those of quantizing the whole matrix) and packed, and the blocks are stitched back
 * together. The reconstruction error ‖W − Ŵ‖² and ‖W‖² are summed per block and then over the
 * blocks in order, so the figures do not depend on how many threads did the blocks.
 *
 * GPTQ couples columns through its Hessian but not rows either; it still runs whole-matrix here
 * (its Hessian is per matrix and large), see {@link isChunkable}.
 *
 * @module
 */

import { pack } from "../quantize/common.ts";
import { type QuantizeMatrixOptions, quantizeUnpacked } from "../quantize/mod.ts";
import {
  groupsPerRow,
  type QuantBits,
  type QuantizedTensor,
  type ScaleType,
  wordsPerRow,
} from "../../schemas/packing.ts";
import type { HqqParams } from "../quantize/hqq.ts";
import { rtnAsymmetricWithError } from "../quantize/rtn.ts";

/** Rows per block: fixed, so results never depend on the number of workers. */
export const CHUNK_ROWS = 512;

/** The serialisable quantizer options of one block (no Hessian: GPTQ is not chunked). */
export interface ChunkOptions {
  bits: QuantBits;
  groupSize: number;
  method: "rtn" | "rtn-sym" | "hqq";
  scaleType?: ScaleType;
  hqq?: HqqParams;
  name?: string;
}

/** One quantized block of rows, packed, with its error sums. */
export interface ChunkResult {
  codes: Uint32Array;
  scales: Uint16Array | Float32Array;
  zeros: Uint16Array | Float32Array;
  /** Σ (w − ŵ)² over the block, ŵ exactly as the runtime decodes it. */
  err: number;
  /** Σ w² over the block. */
  ref: number;
}

/** True when `method` can be quantized block by block (everything but GPTQ). */
export function isChunkable(method: string): method is ChunkOptions["method"] {
  return method === "rtn" || method === "rtn-sym" || method === "hqq";
}

/** The [start, end) row ranges of a matrix with `rows` rows. */
export function chunkRanges(rows: number): [number, number][] {
  const out: [number, number][] = [];
  for (let r = 0; r < rows; r += CHUNK_ROWS) out.push([r, Math.min(rows, r + CHUNK_ROWS)]);
  return out;
}

/** Quantizes one block `w` ([rows, cols], row-major) and packs it. */
export function quantizeChunk(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: ChunkOptions,
): ChunkResult {
  if (opts.method === "rtn") {
    // RTN computes the same sums while it rounds (one pass fewer over the block).
    const f = rtnAsymmetricWithError(w, rows, cols, {
      bits: opts.bits,
      groupSize: opts.groupSize,
      scaleType: opts.scaleType,
      name: opts.name,
    });
    const q = pack(f.u);
    return { codes: q.codes, scales: q.scales, zeros: q.zeros, err: f.err, ref: f.ref };
  }
  const u = quantizeUnpacked(w, rows, cols, opts as QuantizeMatrixOptions);
  // Error of the decoded values, f32 as the runtime computes them: (f32(q − zero)) · scale.
  const gpr = groupsPerRow(cols, u.groupSize);
  let err = 0;
  let ref = 0;
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < gpr; g++) {
      const scale = u.scales[r * gpr + g];
      const zero = u.zeros[r * gpr + g];
      const end = r * cols + Math.min((g + 1) * u.groupSize, cols);
      for (let i = r * cols + g * u.groupSize; i < end; i++) {
        const x = w[i];
        const d = x - Math.fround(Math.fround(u.codes[i] - zero) * scale);
        err += d * d;
        ref += x * x;
      }
    }
  }
  const q = pack(u);
  return { codes: q.codes, scales: q.scales, zeros: q.zeros, err, ref };
}

/** A whole quantized matrix assembled from blocks, plus its error sums. */
export interface AssembledTensor {
  tensor: QuantizedTensor;
  err: number;
  ref: number;
}

/** Allocates the output of a chunked quantization and returns a function storing each block. */
export function assembler(
  rows: number,
  cols: number,
  opts: ChunkOptions,
): { put(start: number, c: ChunkResult): void; finish(): AssembledTensor } {
  const scaleType = opts.scaleType ?? "f16";
  const wpr = wordsPerRow(cols, opts.bits);
  const gpr = groupsPerRow(cols, opts.groupSize);
  const codes = new Uint32Array(rows * wpr);
  const scales = scaleType === "f32" ? new Float32Array(rows * gpr) : new Uint16Array(rows * gpr);
  const zeros = scaleType === "f32" ? new Float32Array(rows * gpr) : new Uint16Array(rows * gpr);
  const parts = new Map<number, { err: number; ref: number }>();
  return {
    put(start, c) {
      codes.set(c.codes, start * wpr);
      scales.set(c.scales, start * gpr);
      zeros.set(c.zeros, start * gpr);
      parts.set(start, { err: c.err, ref: c.ref });
    },
    finish() {
      let err = 0;
      let ref = 0;
      for (const [start] of chunkRanges(rows)) {
        const p = parts.get(start);
        if (!p) throw new Error(`internal: block at row ${start} of ${opts.name} missing`);
        err += p.err;
        ref += p.ref;
      }
      const tensor: QuantizedTensor = {
        rows,
        cols,
        bits: opts.bits,
        groupSize: opts.groupSize,
        scaleType,
        codes,
        scales,
        zeros,
      };
      return { tensor, err, ref };
    },
  };
}

/** Quantizes a whole matrix block by block on this thread (the single-thread path). */
export function quantizeChunked(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: ChunkOptions,
): AssembledTensor {
  const out = assembler(rows, cols, opts);
  for (const [a, b] of chunkRanges(rows)) {
    out.put(a, quantizeChunk(w.subarray(a * cols, b * cols), b - a, cols, opts));
  }
  return out.finish();
}
