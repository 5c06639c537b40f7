/**
 * Weight quantizers producing moeq's packed format (`schemas/packing.ts`): min-max and symmetric
 * round-to-nearest, HQQ (calibration-free zero optimisation) and GPTQ (Hessian-aware error
 * feedback), plus f16/bf16 casts for non-quantized storage.
 *
 * @example
 * ```ts
 * const t = quantizeMatrix(w, rows, cols, { bits: 4, groupSize: 64, method: "hqq" });
 * const err = relativeError(w, dequantize(t));
 * ```
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import type { QuantBits, QuantizedTensor, ScaleType } from "../../schemas/packing.ts";
import { pack, type UnpackedQuant } from "./common.ts";
import { gptq } from "./gptq.ts";
import { hqq, type HqqParams } from "./hqq.ts";
import { rtnAsymmetric, rtnSymmetric } from "./rtn.ts";

export {
  checkMatrix,
  codeOf,
  decodeCode,
  minMaxParams,
  pack,
  type QuantOptions,
  reconstruct,
  relativeError,
  roundToStorage,
  squaredError,
  type UnpackedQuant,
} from "./common.ts";
export { rtnAsymmetric, rtnSymmetric } from "./rtn.ts";
export { hqq, type HqqOptions, type HqqParams, shrinkLp } from "./hqq.ts";
export {
  choleskyLower,
  gptq,
  type GptqOptions,
  HessianAccumulator,
  invertLower,
  upperCholeskyOfInverse,
} from "./gptq.ts";
export { castMatrix, decodeMatrix, f32ToBf16, type HalfType } from "./cast.ts";

/** Quantization methods of {@link quantizeMatrix}. */
export type QuantMethod = "rtn" | "rtn-sym" | "hqq" | "gptq";

/** All methods, for CLI validation. */
export const QUANT_METHODS: readonly QuantMethod[] = ["rtn", "rtn-sym", "hqq", "gptq"];

/** Options of {@link quantizeMatrix}. */
export interface QuantizeMatrixOptions {
  /** Code width. */
  bits: QuantBits;
  /** Columns per group: a multiple of 32, or `cols` (per-channel). */
  groupSize: number;
  /** Which quantizer. */
  method: QuantMethod;
  /** Storage type of scales and zeros; default "f16". */
  scaleType?: ScaleType;
  /** GPTQ only (required there): H = 2·XᵀX/n, [cols, cols] (see `HessianAccumulator`). */
  hessian?: Float64Array;
  /** GPTQ dampening fraction of the mean diagonal; default 0.01. */
  dampPercent?: number;
  /** HQQ solver parameters; defaults are the reference's. */
  hqq?: HqqParams;
  /** Tensor name for error messages. */
  name?: string;
}

/** Quantizes W [rows, cols] (row-major f32, rows = output features) without packing. */
export function quantizeUnpacked(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: QuantizeMatrixOptions,
): UnpackedQuant {
  const base = {
    bits: opts.bits,
    groupSize: opts.groupSize,
    scaleType: opts.scaleType,
    name: opts.name,
  };
  switch (opts.method) {
    case "rtn":
      return rtnAsymmetric(w, rows, cols, base);
    case "rtn-sym":
      return rtnSymmetric(w, rows, cols, base);
    case "hqq":
      return hqq(w, rows, cols, { ...base, ...opts.hqq });
    case "gptq":
      if (!opts.hessian) {
        throw new UsageError(`${opts.name ?? "matrix"}: method gptq needs a Hessian`);
      }
      return gptq(w, rows, cols, { ...base, hessian: opts.hessian, dampPercent: opts.dampPercent });
    default:
      throw new UsageError(`${opts.name ?? "matrix"}: unknown quantization method ${opts.method}`);
  }
}

/** Quantizes W [rows, cols] (row-major f32, rows = output features) into the packed format. */
export function quantizeMatrix(
  w: Float32Array,
  rows: number,
  cols: number,
  opts: QuantizeMatrixOptions,
): QuantizedTensor {
  return pack(quantizeUnpacked(w, rows, cols, opts));
}
