/**
 * Non-quantized storage types: casting an f32 matrix to f16 or bf16 bit patterns (round to
 * nearest, ties to even) and decoding them back to f32.
 *
 * @module
 */

import { LimitError, UsageError } from "../../schemas/errors.ts";
import { bf16ToF32, f16ToF32, f32BitsToF16 } from "../../schemas/half.ts";

/** A 16-bit float storage type. */
export type HalfType = "f16" | "bf16";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Encodes a number as a bfloat16 bit pattern: f32 rounded to nearest even; NaN stays NaN. */
export function f32ToBf16(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff; // quiet NaN
  const lsb = (x >>> 16) & 1;
  return ((x + 0x7fff + lsb) >>> 16) & 0xffff;
}

/**
 * Casts f32 values to f16 or bf16 bit patterns. A finite value that overflows f16 (|x| ≥ 65520)
 * is a LimitError naming `name` and the index (plus `offset`, where `w` is a block of a larger
 * tensor); non-finite values are kept as they are.
 */
export function castMatrix(
  w: Float32Array,
  type: HalfType,
  name = "matrix",
  offset = 0,
): Uint16Array {
  const out = new Uint16Array(w.length);
  if (type === "bf16") {
    // f32 bit patterns, rounded to nearest even in integer arithmetic (same as f32ToBf16).
    const bits = new Uint32Array(w.buffer, w.byteOffset, w.length);
    for (let i = 0; i < w.length; i++) {
      const x = bits[i];
      out[i] = (x & 0x7fffffff) > 0x7f800000
        ? ((x >>> 16) | 0x40) & 0xffff
        : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
    }
  } else if (type === "f16") {
    // From the f32 bit patterns, as f32ToF16 would after its own f32 round trip.
    const bits = new Uint32Array(w.buffer, w.byteOffset, w.length);
    for (let i = 0; i < w.length; i++) {
      const x = bits[i];
      const h = f32BitsToF16(x);
      if ((h & 0x7fff) === 0x7c00 && (x & 0x7f800000) !== 0x7f800000) {
        throw new LimitError(
          `${name}: value ${w[i]} at index ${offset + i} overflows f16; store it as bf16`,
        );
      }
      out[i] = h;
    }
  } else {
    throw new UsageError(`${name}: unknown half type ${type}`);
  }
  return out;
}

/** Decodes f16 or bf16 bit patterns to f32. */
export function decodeMatrix(bits: Uint16Array, type: HalfType): Float32Array {
  const out = new Float32Array(bits.length);
  const decode = type === "bf16" ? bf16ToF32 : f16ToF32;
  if (type !== "bf16" && type !== "f16") throw new UsageError(`unknown half type ${type}`);
  for (let i = 0; i < bits.length; i++) out[i] = decode(bits[i]);
  return out;
}
