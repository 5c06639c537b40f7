/**
 * Hands out lazy tensor references into a checkpoint, checking each tensor's existence, float
 * dtype and shape, and remembering which tensors were used so that a leftover is an error.
 *
 * @module
 */

import { InputError, UnsupportedError } from "../../schemas/errors.ts";
import type { TensorRef } from "../ir.ts";
import { decodeFp8Rows, FP8_BLOCK, FP8_DTYPE, fp8ScaleName, fp8ScaleShape } from "./fp8.ts";
import { DTYPE_SIZES, FLOAT_DTYPES, type ReadOptions } from "./safetensors.ts";
import { checkMxfp4Pair, mxfp4Names, mxfp4Ref, type Mxfp4Slice } from "./mxfp4.ts";
import type { CheckpointStore } from "./store.ts";

/** Tensors a checkpoint may hold that are not weights (non-persistent buffers saved by old exports). */
const IGNORED_TENSORS = /(^|\.)rotary_emb\.inv_freq$/;

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Hands out TensorRefs for named tensors and records which ones were used. */
export class TensorClaims {
  private readonly used = new Map<string, string>();

  /**
   * `options` apply to every read of every ref handed out; `quantMethod` is config.json's
   * `quantization_config.quant_method` (null without one).
   */
  constructor(
    readonly store: CheckpointStore,
    readonly options: ReadOptions = {},
    readonly quantMethod: string | null = null,
  ) {}

  /** True when the checkpoint has this tensor. */
  has(name: string): boolean {
    return this.store.has(name);
  }

  /** Marks a tensor as accounted for without using it (e.g. a tied lm_head copy). */
  ignore(name: string): void {
    if (this.store.has(name) && !this.used.has(name)) this.used.set(name, "");
  }

  /**
   * Checks existence, float dtype and shape, and marks the tensor used; returns its dtype.
   * A tensor claimed again (a packed tensor, once per expert) is checked once.
   */
  private claim(name: string, shape: readonly number[]): string {
    const seen = this.used.get(name);
    if (seen) return seen;
    if (!this.store.has(name)) {
      throw new InputError(
        `tensor "${name}" missing (expected shape ${shapeText(shape)})`,
        this.store.dir,
      );
    }
    const info = this.store.info(name);
    const file = this.store.fileOf(name).path;
    if (info.dtype === FP8_DTYPE) return this.claimFp8(name, shape);
    if (!FLOAT_DTYPES.includes(info.dtype)) {
      throw new UnsupportedError(`${file}: tensor "${name}" has non-float dtype ${info.dtype}`);
    }
    if (!sameShape(info.shape, shape)) {
      throw new InputError(
        `tensor "${name}" has shape ${shapeText(info.shape)}, expected ${shapeText(shape)}`,
        file,
      );
    }
    this.used.set(name, info.dtype);
    return info.dtype;
  }

  /** Checks an F8_E4M3 weight and its `_scale_inv` block scales, marking both used. */
  private claimFp8(name: string, shape: readonly number[]): string {
    const info = this.store.info(name);
    const file = this.store.fileOf(name).path;
    if (shape.length !== 2) {
      throw new UnsupportedError(
        `${file}: tensor "${name}" is ${FP8_DTYPE} with shape ${
          shapeText(info.shape)
        }; only 2-D FP8 weights are supported`,
      );
    }
    if (!sameShape(info.shape, shape)) {
      throw new InputError(
        `tensor "${name}" has shape ${shapeText(info.shape)}, expected ${shapeText(shape)}`,
        file,
      );
    }
    const scale = fp8ScaleName(name);
    const want = fp8ScaleShape(shape[0], shape[1]);
    if (!this.store.has(scale)) {
      throw new InputError(
        `tensor "${name}" is ${FP8_DTYPE} but its block scales "${scale}" ${
          shapeText(want)
        } are missing`,
        file,
      );
    }
    const s = this.store.info(scale);
    if (s.dtype !== "F32" || !sameShape(s.shape, want)) {
      throw new InputError(
        `tensor "${scale}" is ${s.dtype} ${shapeText(s.shape)}, expected F32 ${
          shapeText(want)
        } (one scale per ${FP8_BLOCK}×${FP8_BLOCK} block of "${name}")`,
        this.store.fileOf(scale).path,
      );
    }
    this.used.set(scale, "F32");
    this.used.set(name, FP8_DTYPE);
    return FP8_DTYPE;
  }

  /**
   * A whole tensor of the given shape; `stored`: the shape it has in the checkpoint when that
   * differs only by unit dims (ERNIE's [1, E] correction bias read as [E]).
   */
  tensor(name: string, shape: readonly number[], stored: readonly number[] = shape): TensorRef {
    if (stored.reduce((a, b) => a * b, 1) !== shape.reduce((a, b) => a * b, 1)) {
      throw new Error(`claims.tensor: ${shapeText(stored)} cannot be read as ${shapeText(shape)}`);
    }
    const dtype = this.claim(name, stored);
    if (dtype === FP8_DTYPE) return this.fp8Ref(name, shape as [number, number]);
    const numel = shape.reduce((a, b) => a * b, 1);
    return this.ref(name, name, shape, dtype, 0, numel);
  }

  /**
   * Rows [rowStart, rowStart + rows) of block `block` of a packed `[blocks, blockRows, cols]`
   * tensor, as a [rows, cols] matrix.
   */
  packedRows(
    name: string,
    shape: readonly [number, number, number],
    block: number,
    rowStart: number,
    rows: number,
  ): TensorRef {
    const dtype = this.claim(name, shape);
    if (dtype === FP8_DTYPE) throw new Error("unreachable: 3-D FP8 refused by claimFp8");
    const [, blockRows, cols] = shape;
    return this.ref(
      `${name}[${block}, ${rowStart}:${rowStart + rows}, :]`,
      name,
      [rows, cols],
      dtype,
      (block * blockRows + rowStart) * cols,
      rows * cols,
    );
  }

  /**
   * A matrix released in MXFP4 (`<base>_blocks` and `<base>_scales`, checkpoint/mxfp4.ts): rows
   * `rowStart, rowStart + rowStep, …` of expert `block`. Both tensors are marked used.
   */
  mxfp4(slice: Mxfp4Slice): TensorRef {
    const { rowsPerExpert } = checkMxfp4Pair(this.store, slice, this.quantMethod);
    const { blocks, scales } = mxfp4Names(slice.base);
    this.used.set(blocks, "U8");
    this.used.set(scales, "U8");
    return mxfp4Ref(this.store, slice, rowsPerExpert);
  }

  /**
   * Columns `start + step·i` (i < shape[0]) of block `block` of a `[blocks, rows, cols]` tensor,
   * as the rows of a [shape[0], rows] matrix; for a `[blocks, cols]` tensor, as a vector
   * [shape[0]]. Read whole (the block is gathered and transposed in memory).
   */
  columns(
    name: string,
    c: { shape: readonly number[]; block: number; start: number; step: number },
    shape: readonly number[],
  ): TensorRef {
    const dtype = this.claim(name, c.shape);
    const [rows, cols] = c.shape.length === 3 ? [c.shape[1], c.shape[2]] : [1, c.shape[1]];
    const n = shape[0];
    if (c.start + c.step * (n - 1) >= cols || (shape.length === 2 && shape[1] !== rows)) {
      throw new Error(`columns of ${name} [${c.shape}] do not make [${shape}]`);
    }
    const store = this.store;
    const options = this.options;
    const read = async () => {
      const block = await store.readElements(name, c.block * rows * cols, rows * cols, options);
      const out = new Float32Array(n * rows);
      for (let i = 0; i < n; i++) {
        const col = c.start + c.step * i;
        for (let r = 0; r < rows; r++) out[i * rows + r] = block[r * cols + col];
      }
      return out;
    };
    const label = `${name}[${c.block}, ${c.shape.length === 3 ? ":, " : ""}${c.start}::${c.step}]ᵀ`;
    return { name: label, shape, dtype, read };
  }

  private ref(
    label: string,
    name: string,
    shape: readonly number[],
    dtype: string,
    start: number,
    count: number,
  ): TensorRef {
    const store = this.store;
    const options = this.options;
    const cols = shape.length === 2 ? shape[1] : 0;
    const rowRange = (r0: number, n: number) => {
      if (
        !cols || !Number.isSafeInteger(r0) || !Number.isSafeInteger(n) || r0 < 0 || n < 0 ||
        r0 + n > shape[0]
      ) {
        throw new RangeError(`rows [${r0}, ${r0 + n}) outside ${label} [${shape}]`);
      }
      return [start + r0 * cols, n * cols];
    };
    return {
      name: label,
      shape,
      dtype,
      read: () => store.readElements(name, start, count, options),
      readRows: (r0, n) => {
        const [s, c] = rowRange(r0, n);
        return store.readElements(name, s, c, options);
      },
      readRawRows: async (r0, n) => {
        const [s, c] = rowRange(r0, n);
        return {
          bytes: await store.readBytes(name, s, c),
          dtype,
          name,
          file: store.fileOf(name).path,
          start: s,
          allowNonFinite: options.allowNonFinite ?? false,
        };
      },
      locateRawRows: (r0, n) => {
        const [s, c] = rowRange(r0, n);
        const t = store.info(name);
        const size = DTYPE_SIZES[t.dtype];
        if (!FLOAT_DTYPES.includes(t.dtype) || !size) {
          throw new UnsupportedError(`tensor "${name}" has dtype ${t.dtype}, not a float dtype`);
        }
        return {
          path: store.fileOf(name).path,
          offset: t.begin + s * size,
          length: c * size,
          dtype,
          name,
          start: s,
          allowNonFinite: options.allowNonFinite ?? false,
        };
      },
    };
  }

  /** An FP8 weight read by row blocks: the codes of the rows and the scale rows covering them. */
  private fp8Ref(name: string, shape: [number, number]): TensorRef {
    const store = this.store;
    const [rows, cols] = shape;
    const scale = fp8ScaleName(name);
    const blocksPerRow = fp8ScaleShape(rows, cols)[1];
    const allowNonFinite = this.options.allowNonFinite ?? false;
    const readRows = async (r0: number, n: number): Promise<Float32Array> => {
      if (
        !Number.isSafeInteger(r0) || !Number.isSafeInteger(n) || r0 < 0 || n < 0 || r0 + n > rows
      ) {
        throw new RangeError(`rows [${r0}, ${r0 + n}) outside ${name} [${shape}]`);
      }
      if (n === 0) return new Float32Array(0);
      const codes = await store.readBytes(name, r0 * cols, n * cols);
      const b0 = Math.floor(r0 / FP8_BLOCK), b1 = Math.floor((r0 + n - 1) / FP8_BLOCK);
      const scales = await store.readElements(
        scale,
        b0 * blocksPerRow,
        (b1 - b0 + 1) * blocksPerRow,
      );
      const { values, nanAt } = decodeFp8Rows(codes, scales, r0, cols);
      if (nanAt >= 0) {
        if (!allowNonFinite) {
          throw new InputError(
            `tensor "${name}" has a NaN ${FP8_DTYPE} code at element ${r0 * cols + nanAt}`,
            store.fileOf(name).path,
          );
        }
        for (let i = 0; i < values.length; i++) if (Number.isNaN(values[i])) values[i] = 0;
      }
      return values;
    };
    return { name, shape, dtype: FP8_DTYPE, read: () => readRows(0, rows), readRows };
  }

  /** InputError naming the first tensor that was not claimed. */
  checkAllUsed(family: string): void {
    for (const name of this.store.names()) {
      if (!this.used.has(name) && !IGNORED_TENSORS.test(name)) {
        throw new InputError(
          `unexpected tensor "${name}" (not part of this ${family} model)`,
          this.store.fileOf(name).path,
        );
      }
    }
  }
}
