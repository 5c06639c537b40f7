/**
 * A seeded, bounded fuzz loop for the artifact reader: mutates a valid artifact (bit flips,
 * byte overwrites, truncations, header edits with recomputed checksums so they reach the
 * verifier and the semantic checks, preamble field edits) and asserts that opening it, verifying
 * it and reading every tensor either succeeds or throws a MoeqError, never anything else, and
 * that each case finishes within a time bound.
 *
 * @module
 */

import { decodePreamble, encodePreamble, openArtifactBytes, PREAMBLE_SIZE } from "./artifact.ts";
import { crc32c } from "./crc32c.ts";
import { MoeqError } from "./errors.ts";
import { mulberry32, randomInt } from "./prng.ts";

/** Options of {@link fuzzArtifact}. */
export interface FuzzOptions {
  /** Number of mutated artifacts to try (default 2000). */
  iterations?: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /** Fail when one case takes longer than this (default 2000 ms). */
  maxMsPerCase?: number;
}

/** What the fuzz loop saw. */
export interface FuzzResult {
  iterations: number;
  /** Cases rejected with a MoeqError, by error class name. */
  rejected: Record<string, number>;
  /** Cases that opened, verified and read cleanly (mutations of nothing meaningful). */
  accepted: number;
  /** Slowest case in ms. */
  maxMs: number;
}

/** Applies one random mutation to a copy of `valid`. */
function mutate(valid: Uint8Array, rng: () => number): Uint8Array {
  const pick = (n: number) => randomInt(rng, n);
  const pre = decodePreamble(valid, "fuzz");
  const hStart = pre.headerOffset, hEnd = pre.headerOffset + pre.headerLength;
  const out = valid.slice();
  const fixChecksums = (bytes: Uint8Array) => {
    const header = bytes.subarray(hStart, hEnd);
    const p = decodePreambleLoose(bytes);
    bytes.set(encodePreamble({ ...p, headerCrc32c: crc32c(header) }), 0);
    return bytes;
  };
  switch (pick(6)) {
    case 0: { // flip 1-4 random bits anywhere
      for (let k = 1 + pick(4); k > 0; k--) out[pick(out.length)] ^= 1 << pick(8);
      return out;
    }
    case 1: // truncate
      return out.slice(0, pick(out.length));
    case 2: { // header bytes edited, checksums fixed: exercises the verifier
      for (let k = 1 + pick(4); k > 0; k--) {
        const at = hStart + pick(pre.headerLength);
        out[at] = pick(3) === 0 ? out[at] ^ (1 << pick(8)) : pick(256);
      }
      return fixChecksums(out);
    }
    case 3: { // a 32-bit word of the header set to an interesting value, checksums fixed
      const at = hStart + 4 * pick(pre.headerLength >>> 2);
      const values = [0, 1, 0xffffffff, 0x7fffffff, 0x80000000, pre.headerLength, 4, 8, 0xffff];
      new DataView(out.buffer).setUint32(at, values[pick(values.length)], true);
      return fixChecksums(out);
    }
    case 4: { // preamble field edits with a valid preamble checksum
      const field = pick(4);
      const big = [0, 8, 63, 64, pre.fileLength, pre.fileLength + 1, 2 ** 40, 2 ** 53 - 1];
      const v = big[pick(big.length)];
      const p = { ...pre };
      if (field === 0) p.headerOffset = v;
      else if (field === 1) p.headerLength = v;
      else if (field === 2) p.fileLength = v;
      else p.version = pick(4);
      out.set(encodePreamble(p), 0);
      return out;
    }
    default: { // bytes appended or a segment byte changed
      if (pick(2) === 0) {
        const longer = new Uint8Array(out.length + 1 + pick(300));
        longer.set(out);
        return longer;
      }
      const at = PREAMBLE_SIZE + pick(out.length - PREAMBLE_SIZE);
      out[at] = pick(256);
      return out;
    }
  }
}

/** Reads the preamble fields without validating them (the fuzzer edits them on purpose). */
function decodePreambleLoose(bytes: Uint8Array) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset);
  return {
    version: dv.getUint32(4, true),
    headerOffset: Number(dv.getBigUint64(8, true)),
    headerLength: Number(dv.getBigUint64(16, true)),
    fileLength: Number(dv.getBigUint64(24, true)),
    headerCrc32c: dv.getUint32(32, true),
  };
}

/** Opens, verifies and reads everything of one candidate artifact. */
async function exercise(bytes: Uint8Array): Promise<void> {
  const a = await openArtifactBytes(bytes, "fuzz");
  try {
    await a.verifyAll();
    for (const t of a.tensors) {
      await a.readF32(t);
      if (t.quant) await a.readQuantized(t);
    }
    await a.readTokenizerJson();
  } finally {
    a.close();
  }
}

/**
 * Runs the fuzz loop over mutations of `valid` (which must itself open cleanly). Throws an Error
 * naming the iteration and seed when a case throws a non-MoeqError or exceeds the time bound.
 */
export async function fuzzArtifact(valid: Uint8Array, opts: FuzzOptions = {}): Promise<FuzzResult> {
  const iterations = opts.iterations ?? 2000;
  const seed = opts.seed ?? 1;
  const maxMsPerCase = opts.maxMsPerCase ?? 2000;
  await exercise(valid);
  const rng = mulberry32(seed);
  const result: FuzzResult = { iterations, rejected: {}, accepted: 0, maxMs: 0 };
  for (let i = 0; i < iterations; i++) {
    const bytes = mutate(valid, rng);
    const t0 = performance.now();
    try {
      await exercise(bytes);
      result.accepted++;
    } catch (e) {
      if (!(e instanceof MoeqError)) {
        throw new Error(`fuzz case ${i} (seed ${seed}) threw a non-moeq error: ${e}`, { cause: e });
      }
      result.rejected[e.name] = (result.rejected[e.name] ?? 0) + 1;
    }
    const ms = performance.now() - t0;
    result.maxMs = Math.max(result.maxMs, ms);
    if (ms > maxMsPerCase) {
      throw new Error(`fuzz case ${i} (seed ${seed}) took ${ms.toFixed(0)} ms (> ${maxMsPerCase})`);
    }
  }
  return result;
}
