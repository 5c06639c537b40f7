/**
 * FP8 checkpoints (DeepSeek-V3, Kimi, GLM-4.5 releases): a weight `W` stored as `F8_E4M3`
 * (float8_e4m3fn: 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities, S.1111.111
 * is NaN) beside `W_scale_inv`, one F32 per 128 × 128 block ([⌈rows/128⌉, ⌈cols/128⌉]); the weight
 * is code · scale_inv of its block. Reads go by row blocks (the codes of the rows asked for and
 * the scale rows covering them), never the whole matrix; each value is the exact product rounded
 * once to f32.
 *
 * @module
 */

/** The block edge of `weight_scale_inv`. */
export const FP8_BLOCK = 128;

/** The FP8 storage dtype moeq reads. */
export const FP8_DTYPE = "F8_E4M3";

/** The scale tensor's name for an FP8 weight. */
export function fp8ScaleName(weight: string): string {
  return `${weight}_scale_inv`;
}

/** The shape `weight_scale_inv` must have for a [rows, cols] weight. */
export function fp8ScaleShape(rows: number, cols: number): [number, number] {
  return [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)];
}

/** The value of every float8_e4m3fn code (NaN for the two NaN codes). */
export const E4M3_VALUES: Float64Array = (() => {
  const table = new Float64Array(256);
  for (let c = 0; c < 256; c++) {
    const sign = c & 0x80 ? -1 : 1;
    const e = (c >> 3) & 0xf, m = c & 7;
    if (e === 0xf && m === 7) table[c] = NaN;
    else if (e === 0) table[c] = sign * (m / 8) * 2 ** -6;
    else table[c] = sign * (1 + m / 8) * 2 ** (e - 7);
  }
  return table;
})();

/**
 * Decodes rows [r0, r0 + codes.length / cols) of an FP8 weight: `scales` holds the scale rows
 * ⌊r0/128⌋ .. of the block grid (each ⌈cols/128⌉ wide). Returns the values and the index of the
 * first NaN code (−1 if none).
 */
export function decodeFp8Rows(
  codes: Uint8Array,
  scales: Float32Array,
  r0: number,
  cols: number,
): { values: Float32Array; nanAt: number } {
  const n = codes.length / cols;
  const blocksPerRow = Math.ceil(cols / FP8_BLOCK);
  const firstBlockRow = Math.floor(r0 / FP8_BLOCK);
  const values = new Float32Array(codes.length);
  let nanAt = -1;
  for (let r = 0; r < n; r++) {
    const srow = (Math.floor((r0 + r) / FP8_BLOCK) - firstBlockRow) * blocksPerRow;
    for (let c = 0; c < cols; c++) {
      const v = E4M3_VALUES[codes[r * cols + c]];
      if (Number.isNaN(v) && nanAt < 0) nanAt = r * cols + c;
      values[r * cols + c] = v * scales[srow + Math.floor(c / FP8_BLOCK)];
    }
  }
  return { values, nanAt };
}

/** The float8_e4m3fn code nearest to `x` (ties to even mantissa; saturates at ±448). */
export function encodeE4M3(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.min(Math.abs(x), 448);
  let best = 0, bestErr = Infinity;
  for (let c = 0; c < 0x7f; c++) {
    const err = Math.abs(E4M3_VALUES[c] - a);
    if (err < bestErr || (err === bestErr && (c & 1) === 0)) [best, bestErr] = [c, err];
  }
  return sign | best;
}
