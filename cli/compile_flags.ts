/**
 * Parsing of the storage flags shared by `compile`, `study` and `bench compile`:
 * `--expert-bits 2.5|f16…` and `--dense-bits 8|f16…` into the compiler's tagged unions, and
 * `--widths`.
 *
 * @module
 */

import type { FloatStorage } from "../schemas/artifact.ts";
import { UsageError } from "../schemas/errors.ts";
import { isQuantBits, QUANT_BITS, type QuantBits } from "../schemas/packing.ts";
import type { DenseStorage, ExpertStorage } from "../compiler/compile.ts";

const FLOATS: readonly FloatStorage[] = ["f32", "f16", "bf16"];

function asFloat(s: string): FloatStorage | null {
  return (FLOATS as readonly string[]).includes(s) ? s as FloatStorage : null;
}

/** Parses "2.5" | "3" | "f16"... as `--expert-bits` (an average in [2, 8] or a float type). */
export function parseExpertStorage(s: string, flag = "--expert-bits"): ExpertStorage {
  const storage = asFloat(s);
  if (storage) return { kind: "float", storage };
  const v = s.trim() === "" ? NaN : Number(s);
  if (!Number.isFinite(v) || v < 2 || v > 8) {
    throw new UsageError(`${flag} must be a number in [2, 8] or f32|f16|bf16 (got "${s}")`);
  }
  return { kind: "bits", average: v };
}

/** Parses "8" | "4" | "f16"... as `--dense-bits` (a supported width or a float type). */
export function parseDenseStorage(s: string, flag = "--dense-bits"): DenseStorage {
  const storage = asFloat(s);
  if (storage) return { kind: "float", storage };
  const v = s.trim() === "" ? NaN : Number(s);
  if (!isQuantBits(v)) {
    throw new UsageError(`${flag} must be 2, 3, 4, 8, f32, f16 or bf16 (got "${s}")`);
  }
  return { kind: "bits", bits: v };
}

/** Checks `--widths` values: each a supported width. */
export function parseWidths(values: readonly number[], flag = "--widths"): QuantBits[] {
  return values.map((b) => {
    if (!isQuantBits(b)) throw new UsageError(`${flag}: ${b} is not one of ${QUANT_BITS}`);
    return b;
  });
}
