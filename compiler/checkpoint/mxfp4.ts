/**
 * MXFP4 tensors of a released checkpoint (gpt-oss): a matrix stored as `<base>_blocks` (U8,
 * `[E, R, G, 16]`: per expert E and output row R, G blocks of 32 weights along the input
 * dimension, two e2m1 codes per byte, low nibble first) and `<base>_scales` (U8 `[E, R, G]`, one
 * e8m0 exponent per block, bias 127), with config.json `quantization_config.quant_method =
 * "mxfp4"`. The packing spec's MXFP4 storage (schemas/packing.ts, scale type "e8m0") has the same
 * bytes, so {@link mxfp4Ref} hands out a TensorRef whose `readMxfp4` returns the released codes
 * and scales verbatim (stored without requantization) and whose `read`/`readRows` decode them
 * exactly as the runtime does (`dequantize`). Releases have input dimensions that are multiples
 * of 32; one that is not (a test fixture) pads its last block, as moeq's packing does, and the
 * padding codes are kept but never read.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import {
  dequantize,
  groupsPerRow,
  MXFP4_GROUP,
  type QuantizedTensor,
} from "../../schemas/packing.ts";
import type { TensorRef } from "../ir.ts";
import type { CheckpointStore } from "./store.ts";

/** The `quant_method` of MXFP4 releases. */
export const MXFP4_QUANT_METHOD = "mxfp4";

/** Bytes per 32-weight block of a `_blocks` tensor. */
const BLOCK_BYTES = MXFP4_GROUP / 2;

/**
 * config.json's `quantization_config.quant_method`, or null without a quantization_config.
 * A method other than "mxfp4" (the one moeq reads) is an UnsupportedError naming the field.
 */
export function quantMethodOf(config: Record<string, unknown>, file: string): string | null {
  const qc = config.quantization_config;
  if (qc === undefined || qc === null) return null;
  if (typeof qc !== "object" || Array.isArray(qc)) {
    throw new InputError('field "quantization_config" is not an object', file);
  }
  const method = (qc as Record<string, unknown>).quant_method;
  if (method !== MXFP4_QUANT_METHOD) {
    throw new UnsupportedError(
      `${file}: quantization_config.quant_method ${JSON.stringify(method)} is not read by moeq ` +
        `(only "${MXFP4_QUANT_METHOD}" releases)`,
    );
  }
  return method;
}

/** Where one [rows, cols] matrix sits in a `<base>_blocks` / `<base>_scales` pair. */
export interface Mxfp4Slice {
  /** The tensor name without `_blocks` / `_scales` (e.g. `model.layers.0.mlp.experts.down_proj`). */
  base: string;
  /** The expert (first dimension) it belongs to. */
  block: number;
  /** Its first row within the expert's R rows. */
  rowStart: number;
  /** Row stride: 1 for consecutive rows, 2 for gpt-oss's interleaved gate (even) / up (odd). */
  rowStep: number;
  /** Matrix shape [rows, cols]: rows output features, cols = G · 32 input features. */
  shape: readonly [number, number];
}

/** The blocks and scales tensor names of a base name. */
export function mxfp4Names(base: string): { blocks: string; scales: string } {
  return { blocks: `${base}_blocks`, scales: `${base}_scales` };
}

/**
 * Checks the pair behind `slice` (dtypes, shapes, the slice inside it, the quant method) and
 * returns the expert count E and rows per expert R. One-line InputError naming the tensor.
 */
export function checkMxfp4Pair(
  store: CheckpointStore,
  slice: Mxfp4Slice,
  quantMethod: string | null,
): { experts: number; rowsPerExpert: number } {
  const { blocks, scales } = mxfp4Names(slice.base);
  const [rows, cols] = slice.shape;
  if (!store.has(blocks)) {
    throw new InputError(`tensor "${blocks}" missing (MXFP4 matrix ${rows}x${cols})`, store.dir);
  }
  const file = store.fileOf(blocks).path;
  const bad = (msg: string): never => {
    throw new InputError(msg, file);
  };
  if (quantMethod !== MXFP4_QUANT_METHOD) {
    bad(
      `tensor "${blocks}" is MXFP4 but config.json has no quantization_config.quant_method ` +
        `"${MXFP4_QUANT_METHOD}"`,
    );
  }
  if (!store.has(scales)) bad(`tensor "${blocks}" has no scales tensor "${scales}"`);
  const bi = store.info(blocks), si = store.info(scales);
  if (bi.dtype !== "U8") bad(`tensor "${blocks}" has dtype ${bi.dtype}, MXFP4 blocks are U8`);
  if (si.dtype !== "U8") bad(`tensor "${scales}" has dtype ${si.dtype}, e8m0 scales are U8`);
  const G = groupsPerRow(cols, MXFP4_GROUP);
  const [E, R, g, b] = bi.shape;
  if (bi.shape.length !== 4 || b !== BLOCK_BYTES || g !== G) {
    bad(
      `tensor "${blocks}" has shape [${bi.shape}], expected [E, R, ${G}, 16] for ${cols} input ` +
        `features`,
    );
  }
  if (si.shape.length !== 3 || si.shape[0] !== E || si.shape[1] !== R || si.shape[2] !== G) {
    bad(
      `tensor "${scales}" has shape [${si.shape}], its blocks "${blocks}" need [${E}, ${R}, ${G}]`,
    );
  }
  const last = slice.rowStart + (rows - 1) * slice.rowStep;
  if (!(slice.block >= 0 && slice.block < E) || slice.rowStart < 0 || last >= R) {
    bad(
      `tensor "${blocks}" [${bi.shape}] has no expert ${slice.block} rows ` +
        `${slice.rowStart}..${last} (step ${slice.rowStep})`,
    );
  }
  return { experts: E, rowsPerExpert: R };
}

/**
 * A lazy reference to an MXFP4 matrix of a checkpoint (see the module doc); the pair must have
 * passed {@link checkMxfp4Pair}. A scale byte of 255 (NaN) is an InputError naming the tensor.
 */
export function mxfp4Ref(store: CheckpointStore, slice: Mxfp4Slice, R: number): TensorRef {
  const { blocks, scales } = mxfp4Names(slice.base);
  const [rows, cols] = slice.shape;
  const G = groupsPerRow(cols, MXFP4_GROUP);
  const label = `${slice.base}[${slice.block}, ${slice.rowStart}::${slice.rowStep}][:${rows}]`;
  const readPart = async (r0: number, n: number): Promise<QuantizedTensor> => {
    if (!Number.isSafeInteger(r0) || !Number.isSafeInteger(n) || r0 < 0 || n < 0 || r0 + n > rows) {
      throw new RangeError(`rows [${r0}, ${r0 + n}) outside ${label} [${rows}, ${cols}]`);
    }
    const codes = new Uint8Array(n * G * BLOCK_BYTES);
    const sc = new Uint8Array(n * G);
    if (n > 0) {
      // The source rows of this part span [first, first + span) of the expert: read them at once.
      const first = slice.rowStart + r0 * slice.rowStep;
      const span = (n - 1) * slice.rowStep + 1;
      const base = slice.block * R + first;
      const b = await store.readU8(blocks, base * G * BLOCK_BYTES, span * G * BLOCK_BYTES);
      const s = await store.readU8(scales, base * G, span * G);
      for (let i = 0; i < n; i++) {
        const src = i * slice.rowStep;
        codes.set(
          b.subarray(src * G * BLOCK_BYTES, (src + 1) * G * BLOCK_BYTES),
          i * G * BLOCK_BYTES,
        );
        sc.set(s.subarray(src * G, (src + 1) * G), i * G);
      }
      const nan = sc.indexOf(255);
      if (nan >= 0) {
        const row = first + Math.floor(nan / G) * slice.rowStep;
        throw new InputError(
          `tensor "${scales}" has the NaN scale 255 at [${slice.block}, ${row}, ${nan % G}]`,
          store.fileOf(scales).path,
        );
      }
    }
    return {
      rows: n,
      cols,
      bits: 4,
      groupSize: MXFP4_GROUP,
      scaleType: "e8m0",
      codes: new Uint32Array(codes.buffer),
      scales: sc,
      zeros: new Uint8Array(0),
    };
  };
  return {
    name: label,
    shape: slice.shape,
    dtype: "MXFP4",
    read: async () => dequantize(await readPart(0, rows)),
    readRows: async (r0, n) => dequantize(await readPart(r0, n)),
    readMxfp4: () => readPart(0, rows),
  };
}
