/**
 * ggml block formats written by `bench peer`: F16, Q8_0 and Q4_0 (32 weights per block along a
 * row). Encoders follow ggml's reference quantizers (`quantize_row_q8_0_ref`,
 * `quantize_row_q4_0_ref`); decoders give the values llama.cpp computes with.
 *
 * - Q8_0: f16 scale d = max|x| / 127, then 32 int8 q = round(x / d); w = q · d (34 bytes).
 * - Q4_0: m = the element of largest magnitude (signed), d = m / −8, q = min(15, trunc(x/d + 8.5)),
 *   byte j holds element j (low nibble) and element j + 16 (high nibble); w = (q − 8) · d (18 bytes).
 *
 * @module
 */

import { f16ToF32, f32BitsToF16, f32ToF16 } from "../../schemas/half.ts";

/** Weights per Q8_0 / Q4_0 block. */
export const QK = 32;

/** ggml tensor types used here, by their GGUF codes. */
export const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8 } as const;

/** A ggml tensor type name used here. */
export type GgmlTypeName = keyof typeof GGML_TYPE;

/** Bytes of one block and weights per block, by type. */
export const TYPE_LAYOUT: Readonly<
  Record<GgmlTypeName, { blockBytes: number; blockSize: number }>
> = {
  F32: { blockBytes: 4, blockSize: 1 },
  F16: { blockBytes: 2, blockSize: 1 },
  Q8_0: { blockBytes: 2 + QK, blockSize: QK },
  Q4_0: { blockBytes: 2 + QK / 2, blockSize: QK },
};

/** Bytes of `count` weights (a multiple of the block size) stored as `type`. */
export function typeBytes(type: GgmlTypeName, count: number): number {
  const { blockBytes, blockSize } = TYPE_LAYOUT[type];
  if (count % blockSize !== 0) {
    throw new RangeError(`${type}: ${count} weights are not a multiple of ${blockSize}`);
  }
  return (count / blockSize) * blockBytes;
}

/** Encodes `x` (length a multiple of the block size) as `type`. */
export function encode(type: GgmlTypeName, x: Float32Array): Uint8Array {
  const out = new Uint8Array(typeBytes(type, x.length));
  switch (type) {
    case "F32":
      out.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
      break;
    case "F16": {
      const bits = new Int32Array(x.buffer, x.byteOffset, x.length); // signed: stays a small int
      const h = new Uint16Array(out.buffer); // little-endian hosts only (x86-64, arm64)
      for (let i = 0; i < x.length; i++) h[i] = f32BitsToF16(bits[i]);
      break;
    }
    case "Q8_0":
      encodeQ8_0(x, out);
      break;
    case "Q4_0":
      encodeQ4_0(x, out);
      break;
  }
  return out;
}

/** Decodes `count` weights stored as `type` to float64 (what llama.cpp's dequantization gives). */
export function decode(type: GgmlTypeName, bytes: Uint8Array, count: number): Float64Array {
  const out = new Float64Array(count);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const { blockBytes } = TYPE_LAYOUT[type];
  for (let i = 0; i < count; i++) {
    if (type === "F32") out[i] = dv.getFloat32(4 * i, true);
    else if (type === "F16") out[i] = f16ToF32(dv.getUint16(2 * i, true));
    else {
      const b = Math.floor(i / QK), j = i % QK, base = b * blockBytes;
      const d = f16ToF32(dv.getUint16(base, true));
      if (type === "Q8_0") out[i] = dv.getInt8(base + 2 + j) * d;
      else {
        const byte = bytes[base + 2 + (j % 16)];
        out[i] = ((j < 16 ? byte & 15 : byte >> 4) - 8) * d;
      }
    }
  }
  return out;
}

function encodeQ8_0(x: Float32Array, out: Uint8Array): void {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const q = new Int8Array(out.buffer, out.byteOffset, out.byteLength);
  for (let b = 0, base = 0; b < x.length / QK; b++, base += 2 + QK) {
    let amax = 0;
    for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[b * QK + j]));
    const d = amax / 127;
    const id = d !== 0 ? 1 / d : 0;
    dv.setUint16(base, f32ToF16(d), true);
    for (let j = 0; j < QK; j++) q[base + 2 + j] = roundHalfAway(Math.fround(x[b * QK + j] * id));
  }
}

function encodeQ4_0(x: Float32Array, out: Uint8Array): void {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let b = 0, base = 0; b < x.length / QK; b++, base += 2 + QK / 2) {
    let amax = 0, max = 0;
    for (let j = 0; j < QK; j++) {
      const v = x[b * QK + j];
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d !== 0 ? Math.fround(1 / d) : 0;
    dv.setUint16(base, f32ToF16(d), true);
    for (let j = 0; j < QK / 2; j++) {
      const q0 = Math.min(15, Math.trunc(Math.fround(x[b * QK + j] * id) + 8.5));
      const q1 = Math.min(15, Math.trunc(Math.fround(x[b * QK + j + 16] * id) + 8.5));
      out[base + 2 + j] = q0 | (q1 << 4);
    }
  }
}

/** C's roundf: halves away from zero. */
function roundHalfAway(v: number): number {
  return v < 0 ? -Math.round(-v) : Math.round(v);
}
