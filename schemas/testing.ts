/**
 * Format-layer test helpers: complete artifacts built in memory from a model description (no
 * compiler needed, so runtime and schemas tests can use them), seeded tensor values, random
 * quantized matrices built with the packing spec, and edits of a valid artifact's header or
 * preamble with consistent checksums (to reach the semantic checks in tests).
 *
 * {@link buildArtifact} lays the file out exactly as the compiler's streaming writer does
 * (header right after the preamble, segments 256-aligned in tensor order, then tokenizer.json),
 * so the two can be compared byte for byte.
 *
 * @module
 */

import {
  alignUp,
  decodePreamble,
  encodePreamble,
  FORMAT_VERSION,
  type Preamble,
  PREAMBLE_SIZE,
  SEGMENT_ALIGN,
} from "./artifact.ts";
import { crc32c } from "./crc32c.ts";
import { TINY_MODEL } from "./example_specs.ts";
import { bf16ToF32, f32ToF16 } from "./half.ts";
import {
  type ArtifactHeader,
  decodeHeader,
  encodeHeader,
  type ExpertReport,
  type FloatStorage,
  type Segment,
  summarize,
  type TensorRecord,
} from "./header.ts";
import type { ModelSpec } from "./model.ts";
import {
  encodeParams,
  groupsPerRow,
  packCodes,
  type QuantBits,
  type QuantizedTensor,
  type ScaleType,
} from "./packing.ts";
import { mulberry32, randomInt } from "./prng.ts";
import { type ExpectedTensor, expectedTensors, keyString } from "./tensors.ts";

/** Seeded non-zero values in (−1, 1) (mulberry32). */
export function seededValues(n: number, seed: number): Float32Array {
  const rng = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng() * 2 - 1 || 0.5;
  return out;
}

/** `values` truncated to bfloat16 (each exactly representable as bf16). */
export function toBf16Values(values: Float32Array): Float32Array {
  const bits = new Uint32Array(values.slice().buffer);
  return Float32Array.from(bits, (b) => bf16ToF32(b >>> 16));
}

/**
 * A random packed matrix: codes uniform in [0, 2^bits), scales in [0.01, 0.11), zeros in
 * [0, 2^bits) (stored as `scaleType`); MXFP4 (e8m0) scales 2^-9 .. 1 and no zeros.
 */
export function randomQuantized(
  rows: number,
  cols: number,
  layout: { bits: QuantBits; groupSize: number; scaleType: ScaleType },
  seed: number,
): QuantizedTensor {
  const rng = mulberry32(seed);
  const codes = new Uint8Array(rows * cols).map(() => randomInt(rng, 1 << layout.bits));
  const groups = rows * groupsPerRow(cols, layout.groupSize);
  if (layout.scaleType === "e8m0") {
    // MXFP4: e8m0 scale bytes in [118, 127] (scales 2^-9 .. 1), no zeros.
    return {
      rows,
      cols,
      ...layout,
      codes: packCodes(codes, rows, cols, layout.bits),
      scales: new Uint8Array(groups).map(() => 118 + randomInt(rng, 10)),
      zeros: new Uint8Array(0),
    };
  }
  const scales = Array.from({ length: groups }, () => 0.01 + 0.1 * rng());
  const zeros = Array.from({ length: groups }, () => rng() * (1 << layout.bits));
  return {
    rows,
    cols,
    ...layout,
    codes: packCodes(codes, rows, cols, layout.bits),
    scales: encodeParams(scales, layout.scaleType),
    zeros: encodeParams(zeros, layout.scaleType),
  };
}

/** What one tensor of a built artifact holds. */
export type TensorContent =
  | { storage: FloatStorage; values: Float32Array }
  | { storage: "q"; tensor: QuantizedTensor; quantizer: string };

/** Options of {@link buildArtifact}. */
export interface BuildOptions {
  /** Each expected tensor's content (default: f32 seeded values, seed = index + 1). */
  content?: (t: ExpectedTensor, index: number) => TensorContent;
  /** A tensor's name in the header (default: its key string, e.g. "decoder/0/-1/attn_q"). */
  name?: (t: ExpectedTensor) => string;
  experts?: ExpertReport[];
  tokenizerJson?: Uint8Array | null;
  chatTemplate?: string | null;
  /** Stored as options_json (default {}). */
  options?: unknown;
  generator?: string;
  /** Bytes reserved for the header (default: exactly its size), room for header edits. */
  headerReserve?: number;
}

function bytesOf(a: Uint32Array | Uint16Array | Float32Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** The segment bytes of one tensor's content (bf16 values must be exactly representable). */
function contentBytes(c: TensorContent, what: string): Uint8Array[] {
  if (c.storage === "q") return [c.tensor.codes, c.tensor.scales, c.tensor.zeros].map(bytesOf);
  if (c.storage === "f32") return [bytesOf(c.values)];
  const bits = new Uint32Array(c.values.slice().buffer);
  if (c.storage === "bf16") {
    if (bits.some((b) => (b & 0xffff) !== 0)) throw new Error(`${what}: values are not bf16`);
    return [bytesOf(Uint16Array.from(bits, (b) => b >>> 16))];
  }
  return [bytesOf(Uint16Array.from(c.values, (v) => f32ToF16(v)))];
}

/** Builds a complete, valid artifact of `model` in memory. */
export function buildArtifact(model: ModelSpec, opts: BuildOptions = {}): Uint8Array {
  const expected = expectedTensors(model);
  const content = opts.content ??
    ((t: ExpectedTensor, i: number): TensorContent => ({
      storage: "f32",
      values: seededValues(t.shape.reduce((a, b) => a * b, 1), i + 1),
    }));
  const parts = expected.map((t, i) => {
    const name = opts.name?.(t) ?? keyString(t);
    const c = content(t, i);
    return { t, name, c, bytes: contentBytes(c, name) };
  });
  const segments: Segment[] = [];
  const place = (bytes: Uint8Array): Segment => {
    const last = segments.at(-1);
    const offset = last ? alignUp(last.offset + last.length, SEGMENT_ALIGN) : 0;
    const seg = { offset, length: bytes.length, crc32c: crc32c(bytes) };
    segments.push(seg);
    return seg;
  };
  const tensors: TensorRecord[] = parts.map(({ t, name, c, bytes }) => {
    const base = {
      name,
      stack: t.stack,
      role: t.role,
      layer: t.layer,
      expert: t.expert,
      shape: [...t.shape],
    };
    if (c.storage !== "q") {
      return { ...base, storage: c.storage, data: place(bytes[0]), quant: null };
    }
    const q = c.tensor;
    return {
      ...base,
      storage: "q",
      data: null,
      quant: {
        bits: q.bits,
        groupSize: q.groupSize,
        scaleType: q.scaleType,
        quantizer: c.quantizer,
        codes: place(bytes[0]),
        scales: place(bytes[1]),
        zeros: place(bytes[2]),
      },
    };
  });
  const tokJson = opts.tokenizerJson?.length ? opts.tokenizerJson : null;
  const header: ArtifactHeader = {
    generator: opts.generator ?? "moeq",
    model,
    tensors,
    experts: opts.experts ?? [],
    tokenizer: { json: tokJson && place(tokJson), chatTemplate: opts.chatTemplate ?? null },
    optionsJson: JSON.stringify(opts.options ?? {}),
    summary: summarize(tensors),
  };
  // Segment offsets so far are relative to the first segment; the header size does not depend
  // on them, so encode once to learn where the segments start, then shift them there.
  const reserve = Math.max(encodeHeader(header).length, opts.headerReserve ?? 0);
  const start = alignUp(PREAMBLE_SIZE + reserve, SEGMENT_ALIGN);
  for (const s of segments) s.offset += start;
  const headerBytes = encodeHeader(header);
  const last = segments.at(-1);
  const fileLength = Math.max(
    PREAMBLE_SIZE + headerBytes.length,
    last ? last.offset + last.length : 0,
  );
  const out = new Uint8Array(fileLength);
  out.set(
    encodePreamble({
      version: FORMAT_VERSION,
      headerOffset: PREAMBLE_SIZE,
      headerLength: headerBytes.length,
      fileLength,
      headerCrc32c: crc32c(headerBytes),
    }),
  );
  out.set(headerBytes, PREAMBLE_SIZE);
  const all = [...parts.flatMap((p) => p.bytes), ...(tokJson ? [tokJson] : [])];
  all.forEach((bytes, i) => out.set(bytes, segments[i].offset));
  return out;
}

/** Tiny-artifact report rows: expert 0 at 4 bits, expert 1 at 3 bits. */
export const TINY_REPORT: ExpertReport[] = [
  {
    stack: "decoder",
    layer: 0,
    expert: 0,
    bits: 4,
    bytes: 0,
    rank: 0,
    relError: 0.05,
    scores: { freq: 0.7, sens: 1.5 },
  },
  {
    stack: "decoder",
    layer: 0,
    expert: 1,
    bits: 3,
    bytes: 0,
    rank: 1,
    relError: 0.1,
    scores: { freq: 0.3, sens: 0.5 },
  },
];

/**
 * The content of each tensor of the tiny artifact (schemas/example_specs.ts TINY_MODEL): embed
 * and attention matrices f16, norms f32, router bf16, expert 0's matrices 4-bit (f16 scales),
 * expert 1's 3-bit (f32 scales), group size 32; values seeded by tensor index.
 */
export function tinyContent(t: ExpectedTensor, i: number): TensorContent {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.expertMatrix) {
    const layout = t.expert === 0
      ? { bits: 4 as const, groupSize: 32, scaleType: "f16" as const }
      : { bits: 3 as const, groupSize: 32, scaleType: "f32" as const };
    return {
      storage: "q",
      tensor: randomQuantized(t.shape[0], t.shape[1], layout, i + 1),
      quantizer: "rtn",
    };
  }
  if (t.role === "router") return { storage: "bf16", values: toBf16Values(seededValues(n, i + 1)) };
  return { storage: t.vector ? "f32" : "f16", values: seededValues(n, i + 1) };
}

/** The tiny artifact: every storage type, a tokenizer, report rows, 4 KiB of header room. */
export function tinyArtifact(): Uint8Array {
  return buildArtifact(TINY_MODEL, {
    content: tinyContent,
    experts: TINY_REPORT,
    tokenizerJson: new TextEncoder().encode('{"model":{"type":"BPE"}}'),
    chatTemplate: "{{ messages }}",
    options: { bits: "mixed" },
    headerReserve: 4096,
  });
}

// ---------------------------------------------------------------------------------------------
// Editing a valid artifact

/** Decodes the header of a valid artifact held in memory. */
export function headerOf(bytes: Uint8Array): ArtifactHeader {
  const pre = decodePreamble(bytes, "test");
  return decodeHeader(
    bytes.subarray(pre.headerOffset, pre.headerOffset + pre.headerLength),
    "test",
  );
}

/** Re-encodes `bytes`' header after `edit` changed it, with fresh checksums. */
export function withHeader(bytes: Uint8Array, edit: (h: ArtifactHeader) => void): Uint8Array {
  const h = headerOf(bytes);
  edit(h);
  return withHeaderBytes(bytes, encodeHeader(h));
}

/**
 * Replaces the header bytes verbatim and fixes both checksums. The new header goes where the old
 * one was when it fits before the next 256-byte boundary (where segments may start), else it is
 * appended at the end of the file (a valid layout, see ARTIFACT.md); the old bytes are zeroed.
 */
export function withHeaderBytes(bytes: Uint8Array, header: Uint8Array): Uint8Array {
  const pre = decodePreamble(bytes, "test");
  const room = alignUp(pre.headerOffset + pre.headerLength, SEGMENT_ALIGN) - pre.headerOffset;
  const appended = header.length > room && pre.headerOffset + pre.headerLength < bytes.length;
  const headerOffset = appended ? alignUp(bytes.length, 8) : pre.headerOffset;
  const fileLength = Math.max(bytes.length, headerOffset + header.length);
  const out = new Uint8Array(fileLength);
  out.set(bytes);
  out.fill(0, pre.headerOffset, pre.headerOffset + pre.headerLength);
  out.set(header, headerOffset);
  out.set(
    encodePreamble({
      ...pre,
      headerOffset,
      headerLength: header.length,
      fileLength,
      headerCrc32c: crc32c(header),
    }),
    0,
  );
  return out;
}

/** Rewrites preamble fields (with a fresh preamble checksum). */
export function withPreamble(bytes: Uint8Array, edit: Partial<Preamble>): Uint8Array {
  const out = bytes.slice();
  out.set(encodePreamble({ ...decodePreamble(bytes, "test"), ...edit }), 0);
  return out;
}

/** The description with every capacity router's capacity set to `capacity` (capacity tests). */
export function withCapacity(spec: ModelSpec, capacity: number): ModelSpec {
  const out = structuredClone(spec);
  for (const stack of [out.encoder, out.decoder]) {
    for (const layer of stack?.layers ?? []) {
      for (const b of layer.blocks) {
        if (b.kind === "ffn" && b.ffn.kind === "moe" && b.ffn.router.kind === "capacity") {
          b.ffn.router.capacity = capacity;
        }
      }
    }
  }
  return out;
}
