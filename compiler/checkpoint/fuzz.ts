/**
 * A seeded, bounded fuzzer for the safetensors reader: mutates a small valid file (bit flips,
 * truncations, header byte edits, header-length edits, digit edits, splices) and checks that every
 * case either loads and reads cleanly or throws a MoeqError — never a TypeError/RangeError/other
 * crash, and never hangs. `deno run -A compiler/checkpoint/fuzz.ts 100000 [seed]` runs a long one.
 *
 * @module
 */

import { join } from "node:path";
import { MoeqError } from "../../schemas/errors.ts";
import { parseConfig } from "./config.ts";
import { FLOAT_DTYPES, openSafetensors } from "./safetensors.ts";
import { encodeSafetensors, randomValues, seededRandom } from "./testing.ts";

/** Outcome of a fuzz run. */
export interface FuzzReport {
  /** Cases run. */
  iterations: number;
  /** Cases that opened and read every tensor without error. */
  loaded: number;
  /** Cases rejected, by error class name (all MoeqError subclasses). */
  rejected: Record<string, number>;
  /** Slowest single case in milliseconds. */
  maxCaseMs: number;
}

/** Options for fuzzSafetensors. */
export interface FuzzOptions {
  /** PRNG seed (default 1); the same seed replays the same cases. */
  seed?: number;
  /** Per-case time limit in ms (default 2000); exceeding it fails the run. */
  caseTimeoutMs?: number;
}

/** The valid file every case starts from: several dtypes, metadata, a scalar and an empty tensor. */
export function fuzzSeedFile(): Uint8Array {
  const rand = seededRandom(99);
  return encodeSafetensors({
    "model.embed_tokens.weight": { dtype: "F32", shape: [4, 6], data: randomValues(rand, 24) },
    "model.layers.0.mlp.experts.gate_up_proj": {
      dtype: "BF16",
      shape: [2, 4, 3],
      data: randomValues(rand, 24),
    },
    "model.norm.weight": { dtype: "F16", shape: [6], data: randomValues(rand, 6) },
    "scale": { dtype: "F64", shape: [], data: [0.5] },
    "empty": { dtype: "F32", shape: [0, 3], data: [] },
    "ids": { dtype: "I32", shape: [3], data: [1, 2, 3] },
  }, { format: "pt" });
}

/** One mutated copy of `base` and a description of the mutation. */
export function mutate(base: Uint8Array, rand: () => number): { bytes: Uint8Array; what: string } {
  const int = (n: number) => Math.floor(rand() * n);
  const headerLen = Number(new DataView(base.buffer, base.byteOffset).getBigUint64(0, true));
  const headerEnd = 8 + headerLen;
  const bytes = base.slice();
  const kind = int(8);
  switch (kind) {
    case 0: { // flip 1-4 random bits anywhere
      const flips = 1 + int(4);
      for (let i = 0; i < flips; i++) bytes[int(bytes.length)] ^= 1 << int(8);
      return { bytes, what: `flip ${flips} bits` };
    }
    case 1: { // flip a bit in the header
      const at = 8 + int(headerLen);
      bytes[at] ^= 1 << int(8);
      return { bytes, what: `flip header byte ${at}` };
    }
    case 2: { // truncate
      const len = int(bytes.length);
      return { bytes: bytes.slice(0, len), what: `truncate to ${len}` };
    }
    case 3: { // replace a header byte with a JSON-significant or random character
      const alphabet = '{}[]":,-.eE0123456789 \\tnul';
      const at = 8 + int(headerLen);
      bytes[at] = rand() < 0.8 ? alphabet.charCodeAt(int(alphabet.length)) : int(256);
      return { bytes, what: `edit header byte ${at}` };
    }
    case 4: { // edit the header length field
      const view = new DataView(bytes.buffer);
      const choices = [
        BigInt(headerLen + int(17) - 8),
        0n,
        BigInt(bytes.length),
        BigInt(int(2 ** 31)),
        (1n << 63n) + BigInt(int(1000)),
        2n ** 64n - 1n,
      ];
      const v = choices[int(choices.length)];
      view.setBigUint64(0, v < 0n ? 0n : v, true);
      return { bytes, what: `header length ${v}` };
    }
    case 5: { // change a digit in the header (shapes and offsets)
      const digits: number[] = [];
      for (let i = 8; i < headerEnd; i++) if (bytes[i] >= 48 && bytes[i] <= 57) digits.push(i);
      const at = digits[int(digits.length)];
      bytes[at] = 48 + int(10);
      return { bytes, what: `digit at ${at}` };
    }
    case 6: { // append or remove data bytes
      if (rand() < 0.5) {
        const extra = 1 + int(16);
        const out = new Uint8Array(bytes.length + extra);
        out.set(bytes);
        return { bytes: out, what: `append ${extra}` };
      }
      return { bytes: bytes.slice(0, bytes.length - 1 - int(8)), what: "drop tail" };
    }
    default: { // splice: insert or delete a few bytes inside the header
      const at = 8 + int(headerLen);
      const n = 1 + int(3);
      if (rand() < 0.5) {
        const out = new Uint8Array(bytes.length + n);
        out.set(bytes.subarray(0, at));
        for (let i = 0; i < n; i++) out[at + i] = 32 + int(95);
        out.set(bytes.subarray(at), at + n);
        return { bytes: out, what: `insert ${n} at ${at}` };
      }
      const out = new Uint8Array(bytes.length - n);
      out.set(bytes.subarray(0, at));
      out.set(bytes.subarray(at + n), at);
      return { bytes: out, what: `delete ${n} at ${at}` };
    }
  }
}

/** Opens the file and reads every float tensor (whole, and its first row), as a consumer would. */
async function exercise(path: string): Promise<void> {
  const file = await openSafetensors(path);
  for (const [name, info] of file.tensors) {
    if (!FLOAT_DTYPES.includes(info.dtype)) continue; // listed, but not weights
    await file.read(name);
    if (info.shape.length > 0 && info.shape[0] > 0) await file.readRows(name, 0, 1);
  }
}

/**
 * Runs `iterations` mutated cases. Throws an Error describing the first case that crashed with a
 * non-MoeqError or exceeded the time limit; otherwise returns the tally.
 */
export async function fuzzSafetensors(
  iterations: number,
  options: FuzzOptions = {},
): Promise<FuzzReport> {
  const seed = options.seed ?? 1;
  const limit = options.caseTimeoutMs ?? 2000;
  const rand = seededRandom(seed);
  const base = fuzzSeedFile();
  const dir = await Deno.makeTempDir({ prefix: "moeq-fuzz-" });
  const path = join(dir, "case.safetensors");
  const report: FuzzReport = { iterations, loaded: 0, rejected: {}, maxCaseMs: 0 };
  try {
    for (let i = 0; i < iterations; i++) {
      const { bytes, what } = mutate(base, rand);
      await Deno.writeFile(path, bytes);
      const t0 = performance.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), limit);
      });
      let outcome: unknown;
      try {
        outcome = await Promise.race([exercise(path).then(() => "ok" as const), timeout]);
      } catch (err) {
        outcome = err;
      } finally {
        clearTimeout(timer);
      }
      report.maxCaseMs = Math.max(report.maxCaseMs, performance.now() - t0);
      if (outcome === "ok") {
        report.loaded++;
      } else if (outcome === "timeout") {
        throw new Error(`fuzz case ${i} (seed ${seed}, ${what}) exceeded ${limit} ms`);
      } else if (outcome instanceof MoeqError) {
        report.rejected[outcome.name] = (report.rejected[outcome.name] ?? 0) + 1;
      } else {
        throw new Error(`fuzz case ${i} (seed ${seed}, ${what}) crashed: ${outcome}`, {
          cause: outcome,
        });
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return report;
}

/** Values the config fuzzer substitutes: wrong types, edge numbers, nesting. */
const CONFIG_VALUES: unknown[] = [
  null,
  0,
  -1,
  1,
  2,
  3,
  1.5,
  1e9,
  2 ** 53,
  Number.MAX_VALUE,
  "8",
  "",
  true,
  false,
  [],
  [0],
  [1, 2],
  [-1],
  {},
  { rope_type: "default", rope_theta: 5 },
  { rope_type: "linear" },
  "mixtral",
  "qwen2_moe",
  "qwen3_moe",
  "olmoe",
  "gpt2",
];

/**
 * Runs `iterations` mutated config.json objects (1-3 fields of a valid config replaced, deleted or
 * added) through parseConfig; each must parse or throw a MoeqError. Returns the number parsed.
 */
export function fuzzConfig(
  base: Record<string, unknown>,
  iterations: number,
  seed = 1,
): { parsed: number; rejected: number } {
  const rand = seededRandom(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const keys = [
    ...Object.keys(base),
    "head_dim",
    "mlp_only_layers",
    "rope_parameters",
    "clip_qkv",
    "qkv_bias",
    "sliding_window",
    "use_sliding_window",
  ];
  let parsed = 0;
  for (let i = 0; i < iterations; i++) {
    const cfg: Record<string, unknown> = { ...base };
    const edits = 1 + int(3);
    for (let e = 0; e < edits; e++) {
      const key = keys[int(keys.length)];
      if (rand() < 0.2) delete cfg[key];
      else cfg[key] = CONFIG_VALUES[int(CONFIG_VALUES.length)];
    }
    try {
      parseConfig(cfg, "config.json");
      parsed++;
    } catch (err) {
      if (!(err instanceof MoeqError)) {
        throw new Error(
          `config fuzz case ${i} (seed ${seed}) crashed: ${err}: ${JSON.stringify(cfg)}`,
          {
            cause: err,
          },
        );
      }
    }
  }
  return { parsed, rejected: iterations - parsed };
}

if (import.meta.main) {
  const n = Number(Deno.args[0] ?? 10000);
  const seed = Number(Deno.args[1] ?? 1);
  console.log(JSON.stringify(await fuzzSafetensors(n, { seed })));
}
