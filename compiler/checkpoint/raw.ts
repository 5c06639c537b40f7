/**
 * Decoding raw tensor bytes read by `TensorRef.readRawRows` (compiler/ir.ts): exactly what the
 * safetensors reader's `readElements` returns for the same elements, non-finite handling and
 * error messages included. Kept free of I/O so worker threads can run it.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import type { RawElements } from "../ir.ts";
import { decodeFloats } from "./safetensors.ts";

/**
 * Decodes `raw` to f32. A NaN/±Inf is an InputError naming the file, tensor and element, or
 * reads as 0 when `raw.allowNonFinite`.
 */
export function decodeRaw(raw: RawElements): Float32Array {
  let values: Float32Array;
  let bad = false;
  if (raw.dtype === "BF16") {
    // bf16 → f32 is a 16-bit shift; a bf16 is non-finite when its exponent bits are all ones.
    const n = raw.bytes.byteLength >>> 1;
    const src = new Uint16Array(raw.bytes.buffer, raw.bytes.byteOffset, n);
    values = new Float32Array(n);
    const bits = new Uint32Array(values.buffer);
    let exp = 0;
    for (let i = 0; i < n; i++) {
      const h = src[i];
      bits[i] = h << 16;
      exp |= ((h & 0x7f80) + 0x80) & 0x8000; // 0x8000 exactly when the exponent is 0xff
    }
    bad = exp !== 0;
  } else {
    values = decodeFloats(raw.bytes, raw.dtype);
    // One fast pass: x − x is 0 for finite x and NaN otherwise.
    let probe = 0;
    for (let i = 0; i < values.length; i++) probe += values[i] - values[i];
    bad = probe !== 0;
  }
  if (!bad) return values;
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      if (raw.allowNonFinite) {
        values[i] = 0;
        continue;
      }
      throw new InputError(
        `tensor "${raw.name}" has a non-finite value (${values[i]}) at element ${raw.start + i}`,
        raw.file,
      );
    }
  }
  return values;
}
