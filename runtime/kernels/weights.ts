/**
 * Weight matrices on the GPU: the storage formats, how a matrix is laid out in its buffers, the
 * upload, the binding names, and the one place where stored weights are decoded to f32 in WGSL.
 * Every kernel that reads weights (the classic matmul, the tiled matmul, the embedding lookup)
 * decodes through the snippets of this module.
 *
 * Layout: f32 rows are padded with zeros to a multiple of 4 values (so a row can be read as
 * vec4s); f16 and bf16 values are packed two per u32 word, rows padded to whole words; quantized
 * matrices keep the packed codes, scales and zeros of schemas/packing.ts verbatim (MXFP4: its
 * codes and e8m0 scale bytes, packed four per u32 word; no zeros).
 *
 * @module
 */

import {
  BLOCK_CODES,
  groupsPerRow,
  isMxfp4,
  PARAM_BYTES,
  type QuantBits,
  type QuantizedTensor,
  type ScaleType,
  wordsPerRow,
} from "../../schemas/packing.ts";
import { type BindingDecl, type BindingList, bytesOf, filledStorageBuffer, u } from "./kernel.ts";

/** How a weight matrix is stored on the GPU. */
export type WeightFormat =
  | { kind: "f32" }
  | { kind: "f16" }
  | { kind: "bf16" }
  | { kind: "q"; bits: QuantBits; groupSize: number; scaleType: ScaleType };

/** A short stable name for a format, e.g. "f16", "q3g64f16" or "mxfp4". */
export function formatName(f: WeightFormat): string {
  if (f.kind === "q" && isMxfp4(f)) return "mxfp4";
  return f.kind === "q" ? `q${f.bits}g${f.groupSize}${f.scaleType}` : f.kind;
}

/**
 * One matrix as read from the artifact: float storage as raw little-endian element bytes
 * (rows × cols of f32, f16 or bf16), or a packed quantized tensor.
 */
export type HostMatrix = { raw: Uint8Array } | QuantizedTensor;

/** A matrix, or matrices of one format and width stacked row-wise ([gate; up], [q; k; v]). */
export type StackedRows = HostMatrix | readonly HostMatrix[];

/** Several matrices of one format and shape, resident on the GPU back to back. */
export interface WeightSet {
  format: WeightFormat;
  rows: number;
  cols: number;
  /** Number of matrices. */
  count: number;
  /**
   * In {@link weightBindings} order: float formats [weights]; quantized [weights, scales, zeros];
   * MXFP4 [weights, scales].
   */
  buffers: GPUBuffer[];
  /** Bytes on the GPU. */
  bytes: number;
}

/** Where one matrix's elements sit in its buffers. */
export interface WeightLayout {
  /**
   * Row stride in storage elements: f32 values for f32 (a multiple of 4), u32 words otherwise.
   */
  rowStride: number;
  /** Storage elements per matrix (matrices of a set follow each other). */
  matrixStride: number;
  /** Quantized: scale (and zero) groups per row; 0 otherwise. */
  groupsPerRow: number;
  /** Quantized: scales (and zeros) per matrix; 0 otherwise. */
  groupStride: number;
}

/** The layout of a [rows, cols] matrix stored in `format`. */
export function weightLayout(format: WeightFormat, rows: number, cols: number): WeightLayout {
  switch (format.kind) {
    case "f32": {
      const rowStride = Math.ceil(cols / 4) * 4;
      return { rowStride, matrixStride: rows * rowStride, groupsPerRow: 0, groupStride: 0 };
    }
    case "f16":
    case "bf16": {
      const rowStride = Math.ceil(cols / 2);
      return { rowStride, matrixStride: rows * rowStride, groupsPerRow: 0, groupStride: 0 };
    }
    case "q": {
      const rowStride = wordsPerRow(cols, format.bits);
      const gpr = groupsPerRow(cols, format.groupSize);
      return {
        rowStride,
        matrixStride: rows * rowStride,
        groupsPerRow: gpr,
        groupStride: rows * gpr,
      };
    }
  }
}

/** Bytes of one matrix on the GPU (padding included). */
export function matrixBytes(format: WeightFormat, rows: number, cols: number): number {
  const l = weightLayout(format, rows, cols);
  if (format.kind !== "q") return l.matrixStride * 4;
  const params = isMxfp4(format) ? 1 : 2;
  return l.matrixStride * 4 + params * l.groupStride * PARAM_BYTES[format.scaleType];
}

/**
 * Byte sizes of the buffers {@link uploadWeightSet} creates for `count` [rows, cols] matrices,
 * in {@link weightBindings} order, as allocated (kernel.ts `storageBuffer` rounds up to 16 bytes):
 * each is one binding, so each must fit the device's binding and buffer limits.
 */
export function weightSetBufferBytes(
  format: WeightFormat,
  rows: number,
  cols: number,
  count: number,
): number[] {
  const l = weightLayout(format, rows, cols);
  const alloc = (bytes: number) => Math.max(16, Math.ceil(bytes / 16) * 16);
  const codes = alloc(count * l.matrixStride * 4);
  if (format.kind !== "q") return [codes];
  if (isMxfp4(format)) return [codes, alloc(Math.ceil((count * l.groupStride) / 4) * 4 + 4)];
  const params = alloc(
    format.scaleType === "f16" ? (count * l.groupStride + 2) * 2 : count * l.groupStride * 4,
  );
  return [codes, params, params];
}

/** Whether a set of `count` [rows, cols] matrices fits bindings of at most `limit` bytes. */
export function weightSetFits(
  format: WeightFormat,
  rows: number,
  cols: number,
  count: number,
  limit: number,
): boolean {
  return weightSetBufferBytes(format, rows, cols, count).every((b) => b <= limit);
}

/**
 * The most rows of a [·, cols] matrix one weight set can hold with every binding within `limit`
 * bytes (0 when not even one row fits).
 */
export function rowsPerBinding(format: WeightFormat, cols: number, limit: number): number {
  // The codes (or values) buffer is the largest per row; the others and padding may take a few
  // rows off.
  let rows = Math.floor(limit / (weightLayout(format, 1, cols).rowStride * 4));
  while (rows > 0 && !weightSetFits(format, rows, cols, 1, limit)) rows--;
  return rows;
}

/**
 * Rows r0 ≤ r < r1 of a host matrix stored in `format` (views where possible): a row block of
 * a matrix that is split across several weight sets.
 */
export function sliceRows(
  m: HostMatrix,
  format: WeightFormat,
  cols: number,
  r0: number,
  r1: number,
): HostMatrix {
  if ("raw" in m) {
    const rowBytes = cols * (format.kind === "f32" ? 4 : 2);
    return { raw: m.raw.subarray(r0 * rowBytes, r1 * rowBytes) };
  }
  const wpr = wordsPerRow(cols, m.bits);
  const gpr = groupsPerRow(cols, m.groupSize);
  return {
    ...m,
    rows: r1 - r0,
    codes: m.codes.subarray(r0 * wpr, r1 * wpr),
    scales: m.scales.subarray(r0 * gpr, r1 * gpr),
    zeros: m.zeros.length === 0 ? m.zeros : m.zeros.subarray(r0 * gpr, r1 * gpr),
  };
}

/**
 * Uploads matrices of one format and shape as a {@link WeightSet}. Float rows are padded to the
 * layout's row stride with zeros; quantized codes are copied verbatim (their layout is already
 * the kernels'), scales and zeros concatenated.
 */
export function uploadWeightSet(
  device: GPUDevice,
  format: WeightFormat,
  rows: number,
  cols: number,
  mats: readonly StackedRows[],
  label = formatName(format),
): WeightSet {
  const l = weightLayout(format, rows, cols);
  const n = mats.length;
  const bytes = n * matrixBytes(format, rows, cols);
  const parts = mats.map((m) => Array.isArray(m) ? m as readonly HostMatrix[] : [m as HostMatrix]);
  /**
   * A buffer of `size` bytes holding part(p) of matrix i's row parts, one after the other from
   * byte i · stride (written in place: no staging array, no stacked copy).
   */
  const stacked = (
    size: number,
    stride: number,
    what: string,
    part: (m: HostMatrix) => ArrayBufferView,
  ) =>
    filledStorageBuffer(device, size, `${label}.${what}`, (dst) => {
      parts.forEach((ps, i) => {
        let at = i * stride;
        for (const p of ps) {
          const b = bytesOf(part(p));
          dst.set(b, at);
          at += b.length;
        }
      });
    });
  if (format.kind === "q") {
    const mx = isMxfp4(format);
    for (const m of parts.flat()) {
      if (!("codes" in m) || isMxfp4(m) !== mx) {
        throw new TypeError(`${label}: expected ${mx ? "MXFP4" : "a quantized matrix"}`);
      }
    }
    const q = (m: HostMatrix) => m as QuantizedTensor;
    const codes = stacked(n * l.matrixStride * 4, l.matrixStride * 4, "codes", (m) => q(m).codes);
    if (mx) {
      // e8m0 bytes are read as u32 quads: keep whole trailing words.
      const size = Math.ceil((n * l.groupStride) / 4) * 4 + 4;
      const scales = stacked(size, l.groupStride, "scales", (m) => q(m).scales);
      return { format, rows, cols, count: n, buffers: [codes, scales], bytes };
    }
    // f16 params are read as u32 pairs: keep a whole trailing word.
    const param = format.scaleType === "f16" ? 2 : 4;
    const size = (n * l.groupStride + (param === 2 ? 2 : 0)) * param;
    const scales = stacked(size, l.groupStride * param, "scales", (m) => q(m).scales);
    const zeros = stacked(size, l.groupStride * param, "zeros", (m) => q(m).zeros);
    return { format, rows, cols, count: n, buffers: [codes, scales, zeros], bytes };
  }
  const elemBytes = format.kind === "f32" ? 4 : 2;
  const strideBytes = l.rowStride * 4;
  const rowBytes = cols * elemBytes;
  for (const m of parts.flat()) {
    if (!("raw" in m)) throw new TypeError(`${label}: expected a float matrix`);
  }
  const data = filledStorageBuffer(device, n * rows * strideBytes, `${label}.data`, (dst) => {
    parts.forEach((ps, i) => {
      let row = i * rows;
      for (const p of ps) {
        const raw = (p as { raw: Uint8Array }).raw;
        const count = Math.min(raw.length / rowBytes, (i + 1) * rows - row);
        if (strideBytes === rowBytes) dst.set(raw.subarray(0, count * rowBytes), row * rowBytes);
        else {
          for (let r = 0; r < count; r++) {
            dst.set(raw.subarray(r * rowBytes, (r + 1) * rowBytes), (row + r) * strideBytes);
          }
        }
        row += count;
      }
    });
  });
  return { format, rows, cols, count: n, buffers: [data], bytes: n * rows * strideBytes };
}

/**
 * A row block's place in its matrix, the uniform `rowBlock` of the kernels that read a block of
 * a split matrix: its first row and its row count. Kept out of the generated WGSL so the blocks
 * of one matrix share their pipelines.
 */
export const ROW_BLOCK_WGSL = "struct RowBlock { row0: u32, rows: u32, pad0: u32, pad1: u32 }";

/** The 16-byte {@link ROW_BLOCK_WGSL} uniform of a row block. */
export function rowBlockUniform(device: GPUDevice, row0: number, rows: number): GPUBuffer {
  const buffer = device.createBuffer({
    label: `rowBlock.${row0}+${rows}`,
    size: 16,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    mappedAtCreation: true,
  });
  new Uint32Array(buffer.getMappedRange()).set([row0, rows, 0, 0]);
  buffer.unmap();
  return buffer;
}

/** Binding names of a weight set's buffers, in order. */
export function weightBindings(format: WeightFormat): string[] {
  if (format.kind === "q" && isMxfp4(format)) return ["weights", "scales"];
  return format.kind === "q" ? ["weights", "scales", "zeros"] : ["weights"];
}

/** A weight set's buffers by binding name (for a kernel's bind group). */
export function weightBuffers(set: WeightSet): Record<string, GPUBuffer> {
  return Object.fromEntries(weightBindings(set.format).map((n, i) => [n, set.buffers[i]]));
}

/**
 * A weight set's binding declarations: `weights` (f32 weights as `f32Type`, e.g. `array<f32>` or
 * `array<vec4<f32>>`; u32 words otherwise, as `wordsType`, e.g. {@link wordsArrayType}) and, for quantized weights, `scales` and `zeros`
 * (u32-packed f16 pairs or f32).
 */
export function weightDecls(
  format: WeightFormat,
  f32Type: string,
  wordsType = "array<u32>",
): BindingDecl[] {
  const decls: BindingDecl[] = [["weights", format.kind === "f32" ? f32Type : wordsType]];
  if (format.kind === "q" && isMxfp4(format)) decls.push(["scales", "array<u32>"]);
  else if (format.kind === "q") {
    const type = format.scaleType === "f16" ? "array<u32>" : "array<f32>";
    decls.push(["scales", type], ["zeros", type]);
  }
  return decls;
}

/** Appends {@link weightDecls} to a binding list. */
export function addWeightBindings(
  binds: BindingList,
  format: WeightFormat,
  f32Type: string,
  wordsType?: string,
): void {
  for (const [name, type, space] of weightDecls(format, f32Type, wordsType)) {
    binds.add(name, type, space);
  }
}

// ---------------------------------------------------------------------------------------------
// Decoding in WGSL

/**
 * The WGSL functions that decode `format`, declared once per kernel module (they read the
 * bindings of {@link addWeightBindings}):
 * - f16, bf16: `decodePair(word) -> vec2<f32>`, the two values of a stored word (element 2i in
 *   x, 2i + 1 in y); bf16 is exact (a shift), f16 uses `unpack2x16float`;
 * - quantized: `groupScale(g)` and `groupZero(g)`, the parameters of scale group g (row-major
 *   [rows, groupsPerRow], counted from the start of the set); a value is (f32(code) − zero) ·
 *   scale, the codes come from {@link blockCode}.
 * - MXFP4: `groupScale(g)` = 2^(s − 127) from the e8m0 byte (0 for s = 0, exact: a bitcast),
 *   `groupZero(g)` = 0 and `e2m1(code)`, the code's value; {@link codeValue} writes the call.
 * - f32 needs none.
 */
export function decodeFunctions(format: WeightFormat): string {
  switch (format.kind) {
    case "f32":
      return "";
    case "f16":
      return "fn decodePair(word: u32) -> vec2<f32> { return unpack2x16float(word); }";
    case "bf16":
      return `fn decodePair(word: u32) -> vec2<f32> {
  return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}`;
    case "q": {
      if (isMxfp4(format)) return MXFP4_DECODE;
      const param = (arr: string) =>
        format.scaleType === "f16" ? `unpack2x16float(${arr}[g >> 1u])[g & 1u]` : `${arr}[g]`;
      return `fn groupScale(g: u32) -> f32 { return ${param("scales")}; }
fn groupZero(g: u32) -> f32 { return ${param("zeros")}; }`;
    }
  }
}

/** The MXFP4 decode functions (see {@link decodeFunctions}). */
const MXFP4_DECODE = `fn groupScale(g: u32) -> f32 {
  let s = (scales[g >> 2u] >> ((g & 3u) * 8u)) & 0xffu;
  return bitcast<f32>(s << 23u);
}
fn groupZero(g: u32) -> f32 { return 0.0; }
fn e2m1(c: u32) -> f32 {
  // Twice the magnitudes of codes 0..7 (0, 1, 2, 3, 4, 6, 8, 12) are the nibbles of one word.
  let twice = f32((0xC8643210u >> ((c & 7u) << 2u)) & 15u);
  return twice * select(0.5, -0.5, c >= 8u);
}`;

/**
 * WGSL expression (f32) of a code's value before its group's zero and scale apply: f32(code) for
 * the affine formats, e2m1(code) for MXFP4. Every kernel reads codes through this.
 */
export function codeValue(format: WeightFormat, code: string): string {
  return format.kind === "q" && isMxfp4(format) ? `e2m1(${code})` : `f32(${code})`;
}

/**
 * WGSL statements loading the `bits` words of one 32-code block, starting at word index
 * `start`, into `w0 .. w{bits−1}` (what {@link blockCode} reads); with `width` > 1 the weights
 * are bound as {@link wordsArrayType} and `start` must be a multiple of `width`.
 */
export function loadBlockWords(bits: number, start: string, width: VectorWidth = 1): string[] {
  if (width === 1) {
    return Array.from({ length: bits }, (_, i) => `let w${i} = weights[${start} + ${u(i)}];`);
  }
  const lines: string[] = [];
  for (let v = 0; v < bits / width; v++) {
    lines.push(`let wv${v} = weights[(${start}) / ${u(width)} + ${u(v)}];`);
    for (let i = 0; i < width; i++) lines.push(`let w${v * width + i} = wv${v}.${"xyzw"[i]};`);
  }
  return lines;
}

/** Lanes of a vector load: 1 (scalar), 2 or 4. */
export type VectorWidth = 1 | 2 | 4;

/**
 * Widest vector whose loads tile the `bits` words of a 32-code block (and so every row, whose
 * stride is a whole number of blocks): 4 for 4- and 8-bit, 2 for 2- and 6-bit, else 1. Where a
 * storage load is a per-lane loop (llvmpipe), one vec4 load costs far less than four scalar ones.
 */
export function blockVectorWidth(bits: number): VectorWidth {
  return bits % 4 === 0 ? 4 : bits % 2 === 0 ? 2 : 1;
}

/** WGSL type of packed words bound as vectors of `width` (see {@link loadBlockWords}). */
export function wordsArrayType(width: VectorWidth): string {
  return width === 1 ? "array<u32>" : `array<vec${width}<u32>>`;
}

/** WGSL expression (u32) of code j of a 32-code block held in words w0 .. w{bits−1}. */
export function blockCode(j: number, bits: number): string {
  const bit = j * bits;
  const w = bit >>> 5;
  const shift = bit & 31;
  const mask = u((1 << bits) - 1);
  const low = shift === 0 ? `w${w}` : `(w${w} >> ${u(shift)})`;
  if (shift + bits <= 32) return bits === 32 - shift ? low : `(${low} & ${mask})`;
  return `((${low} | (w${w + 1} << ${u(32 - shift)})) & ${mask})`;
}

/**
 * WGSL `fn weightAt(row: u32, col: u32) -> f32`: element (row, col) of the first matrix of a set
 * stored as a [rows, cols] matrix in `format` (f32 weights bound as `array<f32>`), decoded by
 * {@link decodeFunctions} (included). For random access, e.g. an embedding row.
 */
export function weightAtFunction(format: WeightFormat, cols: number): string {
  const l = weightLayout(format, 1, cols);
  const rs = u(l.rowStride);
  switch (format.kind) {
    case "f32":
      return `fn weightAt(row: u32, col: u32) -> f32 { return weights[row * ${rs} + col]; }`;
    case "f16":
    case "bf16":
      return `${decodeFunctions(format)}
fn weightAt(row: u32, col: u32) -> f32 {
  return decodePair(weights[row * ${rs} + col / 2u])[col % 2u];
}`;
    case "q": {
      const bits = u(format.bits);
      return `${decodeFunctions(format)}
fn weightAt(row: u32, col: u32) -> f32 {
  let bit = (col % ${u(BLOCK_CODES)}) * ${bits};
  let word = row * ${rs} + (col / ${u(BLOCK_CODES)}) * ${bits} + bit / 32u;
  let shift = bit % 32u;
  var code = weights[word] >> shift;
  if (shift + ${bits} > 32u) { code |= weights[word + 1u] << (32u - shift); }
  let g = row * ${u(l.groupsPerRow)} + col / ${u(format.groupSize)};
  return (${
        codeValue(format, `(code & ${u((1 << format.bits) - 1)})`)
      } - groupZero(g)) * groupScale(g);
}`;
    }
  }
}
