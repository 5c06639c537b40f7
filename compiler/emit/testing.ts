/**
 * Test helpers: a tiny but complete artifact (float and quantized tensors of every storage type,
 * a tokenizer segment, report rows) written through the real writer, and a way to rewrite a
 * valid artifact's header with consistent checksums (to reach the semantic checks in tests).
 *
 * @module
 */

import {
  type ArtifactHeader,
  decodeHeader,
  decodePreamble,
  encodePreamble,
  type Preamble,
} from "../../schemas/artifact.ts";
import { crc32c } from "../../schemas/crc32c.ts";
import type { ModelConfig } from "../../schemas/model_legacy.ts";
import { quantizeMatrix } from "../quantize/mod.ts";
import { encodeHeader } from "../../schemas/header.ts";
import { ArtifactWriter } from "./writer.ts";

/** The config of the tiny artifact. */
export const TINY_CONFIG: ModelConfig = {
  family: "mixtral",
  vocabSize: 8,
  hiddenSize: 32,
  numLayers: 1,
  numHeads: 2,
  numKvHeads: 1,
  headDim: 16,
  expertIntermediateSize: 16,
  denseIntermediateSize: 0,
  sharedIntermediateSize: 0,
  sharedExpertGated: false,
  ropeTheta: 10000,
  rmsNormEps: 1e-5,
  maxPositions: 64,
  tieWordEmbeddings: true,
  qkvBias: false,
  qkNorm: "none",
  activation: "silu",
  routing: { scoring: "softmax", numExperts: 2, topK: 1, normTopK: true },
  layerKinds: ["moe"],
  bosTokenId: 1,
  eosTokenIds: [2],
};

/** Seeded non-zero values in (-1, 1) (LCG; tests only). */
export function seededValues(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32) * 2 - 1 || 0.5;
  }
  return out;
}

/** Writes the tiny artifact to `path` (a few KiB) and returns its bytes. */
export async function writeTinyArtifact(path: string): Promise<Uint8Array> {
  const w = await ArtifactWriter.create(path, { headerReserve: 4096 });
  const H = 32;
  await w.addFloatTensor(
    { name: "embed", role: "embed", layer: -1, expert: -1, shape: [8, H] },
    seededValues(8 * H, 1),
    "f16",
  );
  await w.addFloatTensor(
    { name: "final_norm", role: "final_norm", layer: -1, expert: -1, shape: [H] },
    seededValues(H, 2),
    "f32",
  );
  await w.addFloatTensor(
    { name: "router", role: "router", layer: 0, expert: -1, shape: [2, H] },
    seededValues(2 * H, 3),
    "bf16",
  );
  const gate = quantizeMatrix(seededValues(16 * H, 4), 16, H, {
    bits: 4,
    groupSize: 32,
    method: "rtn",
  });
  await w.addQuantTensor(
    { name: "experts.0.gate", role: "expert_gate", layer: 0, expert: 0, shape: [16, H] },
    gate,
    "rtn",
  );
  const up = quantizeMatrix(seededValues(16 * H, 5), 16, H, {
    bits: 3,
    groupSize: 32,
    method: "rtn",
    scaleType: "f32",
  });
  await w.addQuantTensor(
    { name: "experts.1.up", role: "expert_up", layer: 0, expert: 1, shape: [16, H] },
    up,
    "rtn",
  );
  await w.setTokenizer(new TextEncoder().encode('{"model":{"type":"BPE"}}'), "{{ messages }}");
  await w.finish({
    config: TINY_CONFIG,
    experts: [
      {
        layer: 0,
        expert: 0,
        bits: 4,
        bytes: 320,
        rank: 0,
        relError: 0.05,
        scores: { freq: 0.7, sens: 1.5 },
      },
      {
        layer: 0,
        expert: 1,
        bits: 3,
        bytes: 320,
        rank: 1,
        relError: 0.1,
        scores: { freq: 0.3, sens: 0.5 },
      },
    ],
    optionsJson: JSON.stringify({ bits: "mixed" }),
  });
  return await Deno.readFile(path);
}

/** Decodes the header of a valid artifact held in memory. */
export function headerOf(bytes: Uint8Array): ArtifactHeader {
  const pre = decodePreamble(bytes, "test");
  return decodeHeader(
    bytes.subarray(pre.headerOffset, pre.headerOffset + pre.headerLength),
    "test",
    pre.fileLength,
  );
}

/**
 * Re-encodes `bytes`' header after `edit` changed it, with fresh header and preamble checksums.
 * The new header must fit the old header's region (the tiny artifact reserves 4 KiB).
 */
export function withHeader(bytes: Uint8Array, edit: (h: ArtifactHeader) => void): Uint8Array {
  const h = headerOf(bytes);
  edit(h);
  return withHeaderBytes(bytes, encodeHeader(h));
}

/** Replaces the header bytes verbatim (zeroing the old ones) and fixes both checksums. */
export function withHeaderBytes(bytes: Uint8Array, header: Uint8Array): Uint8Array {
  const pre = decodePreamble(bytes, "test");
  const out = bytes.slice();
  out.fill(0, pre.headerOffset, pre.headerOffset + pre.headerLength);
  out.set(header, pre.headerOffset);
  out.set(
    encodePreamble({ ...pre, headerLength: header.length, headerCrc32c: crc32c(header) }),
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
