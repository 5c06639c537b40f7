/**
 * Parsing of the storage flags shared by `compile`, `study` and `bench compile`:
 * `--expert-bits 2.5|f16…` and `--dense-bits 8|f16…` into the compiler's tagged unions, and
 * `--widths`.
 *
 * @module
 */

import type { FloatStorage } from "../schemas/artifact.ts";
import { UsageError } from "../schemas/errors.ts";
import {
  EXPERT_WIDTHS,
  type ExpertWidth,
  isExpertWidth,
  isQuantBits,
  MXFP4_WIDTH,
  widthName,
} from "../schemas/packing.ts";
import type { DenseStorage, ExpertStorage } from "../compiler/compile.ts";

const FLOATS: readonly FloatStorage[] = ["f32", "f16", "bf16"];

function asFloat(s: string): FloatStorage | null {
  return (FLOATS as readonly string[]).includes(s) ? s as FloatStorage : null;
}

/**
 * Parses "2.5" | "3" | "mxfp4" | "f16"... as `--expert-bits` (an average in [2, 8], "mxfp4" for
 * every expert in MXFP4 — the width {@link MXFP4_WIDTH} — or a float type).
 */
export function parseExpertStorage(s: string, flag = "--expert-bits"): ExpertStorage {
  const storage = asFloat(s);
  if (storage) return { kind: "float", storage };
  if (s.trim() === "mxfp4") return { kind: "bits", average: MXFP4_WIDTH };
  const v = s.trim() === "" ? NaN : Number(s);
  if (!Number.isFinite(v) || v < 2 || v > 8) {
    throw new UsageError(`${flag} must be a number in [2, 8], mxfp4 or f32|f16|bf16 (got "${s}")`);
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

/** Checks `--widths` values: each a supported expert width (MXFP4 as {@link MXFP4_WIDTH}). */
export function parseWidths(values: readonly number[], flag = "--widths"): ExpertWidth[] {
  return values.map((b) => {
    if (!isExpertWidth(b)) {
      throw new UsageError(`${flag}: ${b} is not one of ${EXPERT_WIDTHS.map(widthName)}`);
    }
    return b;
  });
}

/** Parses a width list such as "3,mxfp4" or "2,3,4" (`--widths`, `--levels`). */
export function parseWidthList(raw: string, flag: string): ExpertWidth[] {
  return parseWidths(
    raw.split(",").map((p) => {
      const t = p.trim();
      const v = t === "mxfp4" ? MXFP4_WIDTH : t === "" ? NaN : Number(t);
      if (!Number.isFinite(v)) throw new UsageError(`${flag}: "${p}" is not a width`);
      return v;
    }),
    flag,
  );
}
