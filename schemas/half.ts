/**
 * IEEE half (f16) and bfloat16 conversions, shared by the checkpoint reader, the quantizers and
 * the runtime. Conversions to half round to nearest, ties to even.
 *
 * @module
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The arithmetic decode of {@link f16ToF32}, used once per pattern to fill its table. */
function f16ToF32Slow(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Every f16 pattern's value (each exactly representable in f32; NaN patterns read as NaN). */
const F16_VALUES = new Float32Array(65536);
for (let h = 0; h < 65536; h++) F16_VALUES[h] = f16ToF32Slow(h);

/** Decodes one IEEE binary16 bit pattern to a number (bits above the low 16 are ignored). */
export function f16ToF32(h: number): number {
  return F16_VALUES[h & 0xffff];
}

/** Encodes a number as an IEEE binary16 bit pattern (round to nearest even; overflow → ±Inf). */
export function f32ToF16(value: number): number {
  f32[0] = value;
  return f32BitsToF16(u32[0]);
}

/**
 * {@link f32ToF16} of the f32 with bit pattern `x` (an unsigned or signed 32-bit integer): for
 * casting whole f32 arrays through a Uint32Array view without a scratch round trip.
 */
export function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const a = x & 0x7fffffff;
  if (a >= 0x38800000) {
    // |x| ≥ 2^-14: an f16 normal, or beyond.
    if (a >= 0x47800000) return a > 0x7f800000 ? sign | 0x7e00 : sign | 0x7c00; // NaN, or ±Inf
    // Rebias the exponent (127 → 15) and round the mantissa to 10 bits, ties to even; a carry
    // out of the mantissa bumps the exponent, up to 0x7c00 (= Inf) from the largest binade.
    const r = a - 0x38000000;
    return sign | ((r + 0xfff + ((r >>> 13) & 1)) >>> 13);
  }
  // f16 subnormals and zeros.
  const e = (a >>> 23) - 112;
  if (e < -10) return sign;
  const mant = (a & 0x7fffff) | 0x800000;
  const shift = 14 - e;
  const half = 1 << (shift - 1);
  let r = mant >>> shift;
  const rem = mant & ((1 << shift) - 1);
  if (rem > half || (rem === half && (r & 1))) r++;
  return sign | r;
}

/** Decodes one bfloat16 bit pattern to a number. */
export function bf16ToF32(b: number): number {
  u32[0] = b << 16;
  return f32[0];
}

/** Rounds a number to the nearest f16 value (as a number). */
export function roundF16(value: number): number {
  return f16ToF32(f32ToF16(value));
}
