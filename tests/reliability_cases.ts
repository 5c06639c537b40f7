/**
 * Bad-input cases run through `cli.ts` the way users run it. Each case builds its inputs in a
 * fresh temp dir, names the CLI arguments, the exit code it must end with and the words its
 * one-line message must contain (the file and/or field at fault). Used by the reliability tests
 * (`tests/reliability_*_test.ts`) and by `tests/errors_doc.ts`, which prints docs/ERRORS.md from
 * the messages these cases actually produce.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  concatBytes,
  headerLengthBytes,
  rawSafetensors,
  type TestTensor,
  writeSafetensors,
  writeSyntheticCheckpoint,
} from "../compiler/checkpoint/testing.ts";
import { writeMxfp4Release } from "../compiler/checkpoint/mxfp4_testing.ts";
import { openSafetensors } from "../compiler/checkpoint/safetensors.ts";
import { withHeader, withHeaderBytes, withPreamble } from "../schemas/testing.ts";
import { writeFp8Fixture } from "../compiler/checkpoint/fp8_testing.ts";
import { compileModel } from "../compiler/compile.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { decodePreamble, summarize } from "../schemas/artifact.ts";
import { type CliResult, isOneLineError, runCli, type RunCliOptions } from "./cli_helpers.ts";

/** An FP8 weight of the deepseek_v3-a fixture re-encoded by fp8_testing.ts, and its scale. */
const FP8_WEIGHT = "model.layers.1.mlp.experts.0.up_proj.weight";
const FP8_SCALE = `${FP8_WEIGHT}_scale_inv`;

/** The deepseek_v3-a fixture as an FP8 checkpoint in `dir`/fp8, edited by `mutate`. */
async function fp8Checkpoint(
  dir: string,
  mutate: (t: Record<string, TestTensor>) => void,
): Promise<string> {
  const out = join(dir, "fp8");
  const fixture = new URL("../testdata/hf-oracle/deepseek_v3-a", import.meta.url).pathname;
  await writeFp8Fixture(fixture, out, { mutate });
  return out;
}

/** One bad-input case. */
export interface CliCase {
  /** Stable identifier (kebab-case). */
  id: string;
  /** Which table of docs/ERRORS.md it belongs to. */
  group: "checkpoint" | "artifact" | "flags" | "io";
  /** What is wrong with the input, in words. */
  title: string;
  /** Builds the inputs inside `dir` and returns the CLI arguments. */
  setup(dir: string): Promise<string[]>;
  /** Expected exit code. */
  code: number;
  /** Substrings / patterns the message must contain (the file and field at fault). */
  mentions: (string | RegExp)[];
  /** For compile: the destination (relative to dir) that must not exist afterwards. */
  dest?: string;
  /** How to run the CLI (e.g. under a file-size limit). */
  options?: RunCliOptions;
}

/** A small Mixtral config: 2 layers, 4 experts, hidden 16; every tensor a few KiB. */
export const SMALL_MIXTRAL: Record<string, unknown> = {
  model_type: "mixtral",
  architectures: ["MixtralForCausalLM"],
  vocab_size: 32,
  hidden_size: 16,
  intermediate_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  head_dim: 8,
  num_local_experts: 4,
  num_experts_per_tok: 2,
  rope_theta: 10000,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 64,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
};

/** Writes the small valid checkpoint into `dir/ckpt` and returns that path. */
export async function smallCheckpoint(
  dir: string,
  config: Record<string, unknown> = SMALL_MIXTRAL,
  shards = 1,
): Promise<string> {
  const ckpt = join(dir, "ckpt");
  await writeSyntheticCheckpoint(ckpt, config, { seed: 7, shards });
  return ckpt;
}

/** The parsed header and the data bytes of a safetensors file. */
interface Parsed {
  header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  data: Uint8Array;
}

async function readParsed(path: string): Promise<Parsed> {
  const bytes = await Deno.readFile(path);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  return { header, data: bytes.slice(8 + n) };
}

/**
 * A checkpoint whose model.safetensors was rewritten: `edit` gets the parsed header and data and
 * returns the new header text (or object) and data.
 */
async function editedCheckpoint(
  dir: string,
  edit: (p: Parsed) => { header: string | object; data?: Uint8Array },
): Promise<string> {
  const ckpt = await smallCheckpoint(dir);
  const path = join(ckpt, "model.safetensors");
  const p = await readParsed(path);
  const r = edit(p);
  const text = typeof r.header === "string" ? r.header : JSON.stringify(r.header);
  await Deno.writeFile(path, rawSafetensors(text, r.data ?? p.data));
  return ckpt;
}

const EXPERT = "model.layers.0.block_sparse_moe.experts.1.w1.weight";
const Q_PROJ = "model.layers.1.self_attn.q_proj.weight";
const K_PROJ = "model.layers.0.self_attn.k_proj.weight";

/** Sets element `index` of an F32 tensor to `value` in a checkpoint's data bytes. */
function poke(p: Parsed, name: string, index: number, value: number): Uint8Array {
  const data = p.data.slice();
  const at = p.header[name].data_offsets[0] + 4 * index;
  new DataView(data.buffer).setFloat32(at, value, true);
  return data;
}

const compileArgs = (ckpt: string, dir: string, ...extra: string[]) => [
  "compile",
  ckpt,
  "-o",
  join(dir, "out.moeq"),
  "--quiet",
  ...extra,
];

/** Checkpoint (safetensors, index, config.json) cases through `compile` and `logits`. */
type RawTensors = Record<string, { dtype: string; shape: number[]; data: Uint8Array }>;

/**
 * The mixtral-a-packed oracle fixture as an MXFP4 release (compiler/checkpoint/mxfp4_testing.ts)
 * in `dir/mxfp4`, its tensors and config.json then edited.
 */
async function mxfp4Release(
  dir: string,
  edit: (t: RawTensors) => void,
  config: (c: Record<string, unknown>) => void = () => {},
): Promise<string> {
  const ckpt = join(dir, "mxfp4");
  await writeMxfp4Release(
    "testdata/hf-oracle/mixtral-a-packed",
    ckpt,
    (n) => /mlp\.experts\.(gate_up|down)_proj$/.test(n) ? {} : null,
  );
  const path = join(ckpt, "model.safetensors");
  const file = await openSafetensors(path);
  const tensors: RawTensors = {};
  for (const [name, info] of file.tensors) {
    const data = info.dtype === "U8"
      ? await file.readU8(name, 0, info.numel)
      : await file.readBytes(name, 0, info.numel);
    tensors[name] = { dtype: info.dtype, shape: [...info.shape], data };
  }
  edit(tensors);
  await writeSafetensors(path, tensors);
  const c = JSON.parse(await Deno.readTextFile(join(ckpt, "config.json")));
  config(c);
  await Deno.writeTextFile(join(ckpt, "config.json"), JSON.stringify(c));
  return ckpt;
}

export const CHECKPOINT_CASES: CliCase[] = [
  {
    id: "st-header-length-past-eof",
    group: "checkpoint",
    title: "safetensors header length larger than the file",
    code: 3,
    mentions: ["model.safetensors", /header/],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      const path = join(ckpt, "model.safetensors");
      const bytes = await Deno.readFile(path);
      bytes.set(headerLengthBytes(bytes.length + 100), 0);
      await Deno.writeFile(path, bytes);
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "st-header-over-100mb",
    group: "checkpoint",
    title: "safetensors header length over 100 MB",
    code: 5,
    mentions: ["model.safetensors", /header/],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      const path = join(ckpt, "model.safetensors");
      const bytes = await Deno.readFile(path);
      bytes.set(headerLengthBytes(200_000_000), 0);
      await Deno.writeFile(path, bytes);
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "st-too-small",
    group: "checkpoint",
    title: "safetensors file shorter than the 8-byte length field",
    code: 3,
    mentions: ["model.safetensors"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      await Deno.writeFile(join(ckpt, "model.safetensors"), new Uint8Array([1, 2, 3]));
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "st-header-not-utf8",
    group: "checkpoint",
    title: "safetensors header is not UTF-8",
    code: 3,
    mentions: ["model.safetensors", "UTF-8"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      const header = new Uint8Array([0x7b, 0xff, 0xfe, 0x7d, 0x20, 0x20, 0x20, 0x20]);
      await Deno.writeFile(
        join(ckpt, "model.safetensors"),
        concatBytes([headerLengthBytes(header.length), header]),
      );
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "st-header-not-json",
    group: "checkpoint",
    title: "safetensors header is not JSON",
    code: 3,
    mentions: ["model.safetensors", "JSON"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      await Deno.writeFile(join(ckpt, "model.safetensors"), rawSafetensors("{not json}      "));
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "st-duplicate-name",
    group: "checkpoint",
    title: "two tensors with the same name",
    code: 3,
    mentions: ["model.safetensors", "duplicate", "model.norm.weight"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          const norm = JSON.stringify(p.header["model.norm.weight"]);
          const text = JSON.stringify(p.header);
          return { header: text.slice(0, -1) + `,"model.norm.weight":${norm}}` };
        }),
        dir,
      ),
  },
  {
    id: "st-overlapping-offsets",
    group: "checkpoint",
    title: "two tensors' data_offsets overlap",
    code: 3,
    mentions: ["model.safetensors", "overlaps"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          const names = Object.keys(p.header);
          const a = p.header[names[0]], b = p.header[names[1]];
          // b starts 4 bytes inside a; keep b's length so dtype x shape still matches.
          const len = b.data_offsets[1] - b.data_offsets[0];
          b.data_offsets = [a.data_offsets[1] - 4, a.data_offsets[1] - 4 + len];
          return { header: p.header };
        }),
        dir,
      ),
  },
  {
    id: "st-offsets-past-data",
    group: "checkpoint",
    title: "tensor data_offsets run past the end of the file",
    code: 3,
    mentions: ["model.safetensors", "model.norm.weight"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          const t = p.header["model.norm.weight"];
          const len = t.data_offsets[1] - t.data_offsets[0];
          t.data_offsets = [p.data.length + 64, p.data.length + 64 + len];
          return { header: p.header };
        }),
        dir,
      ),
  },
  {
    id: "st-dtype-shape-bytes",
    group: "checkpoint",
    title: "dtype x shape does not match the byte length",
    code: 3,
    mentions: ["model.safetensors", "model.norm.weight"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          p.header["model.norm.weight"].shape = [17];
          return { header: p.header };
        }),
        dir,
      ),
  },
  {
    id: "st-unknown-dtype",
    group: "checkpoint",
    title: "unknown dtype",
    code: 3,
    mentions: ["model.safetensors", "model.norm.weight", "F31"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          p.header["model.norm.weight"].dtype = "F31";
          return { header: p.header };
        }),
        dir,
      ),
  },
  {
    id: "fp8-scale-missing",
    group: "checkpoint",
    title: "an F8_E4M3 weight without its weight_scale_inv",
    code: 3,
    mentions: ["model.safetensors", "up_proj.weight", "weight_scale_inv", "missing"],
    dest: "out.moeq",
    setup: async (dir) => compileArgs(await fp8Checkpoint(dir, (t) => delete t[FP8_SCALE]), dir),
  },
  {
    id: "fp8-scale-shape",
    group: "checkpoint",
    title: "an F8_E4M3 weight whose weight_scale_inv is not one F32 per 128×128 block",
    code: 3,
    mentions: ["model.safetensors", "weight_scale_inv", "[1, 1]"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await fp8Checkpoint(dir, (t) => (t[FP8_SCALE] = { shape: [2, 1], data: [0.01, 0.01] })),
        dir,
      ),
  },
  {
    id: "st-negative-shape",
    group: "checkpoint",
    title: "negative dimension in a shape",
    code: 3,
    mentions: ["model.safetensors", "model.norm.weight"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          p.header["model.norm.weight"].shape = [-16];
          return { header: p.header };
        }),
        dir,
      ),
  },
  {
    id: "st-huge-shape",
    group: "checkpoint",
    title: "shape whose element count overflows 2^53",
    code: 3,
    mentions: ["model.safetensors", "model.norm.weight"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          p.header["model.norm.weight"].shape = [2 ** 40, 2 ** 40];
          return { header: p.header };
        }),
        dir,
      ),
  },
  {
    id: "st-nan-weight",
    group: "checkpoint",
    title: "NaN in an expert weight",
    code: 3,
    mentions: ["model.safetensors", EXPERT, "NaN"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => ({ header: p.header, data: poke(p, EXPERT, 5, NaN) })),
        dir,
      ),
  },
  {
    id: "st-inf-weight",
    group: "checkpoint",
    title: "+Inf in an attention weight",
    code: 3,
    mentions: ["model.safetensors", Q_PROJ, "Inf"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => ({
          header: p.header,
          data: poke(p, Q_PROJ, 3, Infinity),
        })),
        dir,
      ),
  },
  {
    id: "st-nan-logits",
    group: "checkpoint",
    title: "NaN weight through `logits --device cpu`",
    code: 3,
    mentions: ["model.safetensors", Q_PROJ, "NaN"],
    setup: async (dir) => [
      "logits",
      await editedCheckpoint(dir, (p) => ({ header: p.header, data: poke(p, Q_PROJ, 0, NaN) })),
      "--ids",
      "1,2",
      "--device",
      "cpu",
    ],
  },
  {
    id: "st-missing-tensor",
    group: "checkpoint",
    title: "a required tensor is missing",
    code: 3,
    mentions: [Q_PROJ],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          // Drop q_proj and shift the following tensors down over its bytes.
          const [s, e] = p.header[Q_PROJ].data_offsets;
          delete p.header[Q_PROJ];
          for (const t of Object.values(p.header)) {
            if (t.data_offsets[0] >= e) {
              t.data_offsets = [t.data_offsets[0] - (e - s), t.data_offsets[1] - (e - s)];
            }
          }
          return {
            header: p.header,
            data: concatBytes([p.data.subarray(0, s), p.data.subarray(e)]),
          };
        }),
        dir,
      ),
  },
  {
    id: "st-wrong-tensor-shape",
    group: "checkpoint",
    title: "a tensor has the wrong shape for the config",
    code: 3,
    mentions: [K_PROJ, "[8, 16]"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await editedCheckpoint(dir, (p) => {
          const t = p.header[K_PROJ];
          t.shape = [t.shape[1], t.shape[0]];
          return { header: p.header };
        }),
        dir,
      ),
  },
  {
    id: "st-no-weights",
    group: "checkpoint",
    title: "no model.safetensors and no index in the directory",
    code: 3,
    mentions: ["model.safetensors"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      await Deno.remove(join(ckpt, "model.safetensors"));
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "index-missing-shard",
    group: "checkpoint",
    title: "a shard listed in the index is missing",
    code: 3,
    mentions: ["model.safetensors.index.json", "model-00002-of-00002.safetensors"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir, SMALL_MIXTRAL, 2);
      await Deno.remove(join(ckpt, "model-00002-of-00002.safetensors"));
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "index-not-json",
    group: "checkpoint",
    title: "the shard index is not JSON",
    code: 3,
    mentions: ["model.safetensors.index.json", "JSON"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir, SMALL_MIXTRAL, 2);
      await Deno.writeTextFile(join(ckpt, "model.safetensors.index.json"), '{"weight_map": ');
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "index-tensor-not-in-shard",
    group: "checkpoint",
    title: "the index maps a tensor to a shard that does not hold it",
    code: 3,
    mentions: ["model.safetensors.index.json", "model.norm.weight"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir, SMALL_MIXTRAL, 2);
      const path = join(ckpt, "model.safetensors.index.json");
      const index = JSON.parse(await Deno.readTextFile(path));
      const m = index.weight_map as Record<string, string>;
      const other = (f: string) =>
        f.startsWith("model-00001") ? "model-00002-of-00002.safetensors" : "model-00001-of-00002" +
          ".safetensors";
      m["model.norm.weight"] = other(m["model.norm.weight"]);
      await Deno.writeTextFile(path, JSON.stringify(index));
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "config-missing-key",
    group: "checkpoint",
    title: "config.json lacks a required key",
    code: 3,
    mentions: ["config.json", "hidden_size"],
    dest: "out.moeq",
    async setup(dir) {
      const { hidden_size: _, ...cfg } = SMALL_MIXTRAL;
      const ckpt = await smallCheckpoint(dir);
      await Deno.writeTextFile(join(ckpt, "config.json"), JSON.stringify(cfg));
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "config-bad-value",
    group: "checkpoint",
    title: "config.json has a non-integer where an integer is required",
    code: 3,
    mentions: ["config.json", "num_local_experts"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      await Deno.writeTextFile(
        join(ckpt, "config.json"),
        JSON.stringify({ ...SMALL_MIXTRAL, num_local_experts: "four" }),
      );
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "config-unknown-architecture",
    group: "checkpoint",
    title: "config.json names an unsupported architecture",
    code: 4,
    mentions: ["config.json", "gpt2"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      await Deno.writeTextFile(
        join(ckpt, "config.json"),
        JSON.stringify({
          ...SMALL_MIXTRAL,
          model_type: "gpt2",
          architectures: ["GPT2LMHeadModel"],
        }),
      );
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "config-not-json",
    group: "checkpoint",
    title: "config.json is not JSON",
    code: 3,
    mentions: ["config.json", "JSON"],
    dest: "out.moeq",
    async setup(dir) {
      const ckpt = await smallCheckpoint(dir);
      await Deno.writeTextFile(join(ckpt, "config.json"), "model_type = mixtral");
      return compileArgs(ckpt, dir);
    },
  },
  {
    id: "mxfp4-missing-scales",
    group: "checkpoint",
    title: "an MXFP4 `_blocks` tensor without its `_scales`",
    code: 3,
    mentions: ["model.safetensors", "gate_up_proj_blocks", "gate_up_proj_scales"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await mxfp4Release(dir, (t) => delete t["model.layers.0.mlp.experts.gate_up_proj_scales"]),
        dir,
      ),
  },
  {
    id: "mxfp4-inconsistent-shapes",
    group: "checkpoint",
    title: "MXFP4 scales whose shape does not match their blocks",
    code: 3,
    mentions: ["model.safetensors", "down_proj_scales", "[4,64,1]", "[4, 32, 2]"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await mxfp4Release(dir, (t) => {
          const s = t["model.layers.1.mlp.experts.down_proj_scales"];
          t["model.layers.1.mlp.experts.down_proj_scales"] = {
            ...s,
            shape: [4, 64, 1],
          };
        }),
        dir,
      ),
  },
  {
    id: "mxfp4-other-quant-method",
    group: "checkpoint",
    title: "config.json quantization_config with a quant_method moeq does not read",
    code: 4,
    mentions: ["config.json", "quant_method", "gptq"],
    dest: "out.moeq",
    setup: async (dir) =>
      compileArgs(
        await mxfp4Release(dir, () => {}, (c) => c.quantization_config = { quant_method: "gptq" }),
        dir,
      ),
  },
  {
    id: "checkpoint-dir-missing",
    group: "checkpoint",
    title: "the checkpoint directory does not exist",
    code: 3,
    mentions: ["nope"],
    dest: "out.moeq",
    setup: (dir) => Promise.resolve(compileArgs(join(dir, "nope"), dir)),
  },
];

// ---------------------------------------------------------------------------------------------
// Artifacts

let compiled: Promise<Uint8Array> | null = null;

/**
 * A small valid artifact (the mixtral-classic fixture at 3 bits), compiled once per process
 * into a temp file and returned as bytes.
 */
export function smallArtifact(): Promise<Uint8Array> {
  compiled ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "moeq-rel-art-" });
    try {
      const fixture = new URL("../testdata/hf-moe/mixtral-classic", import.meta.url).pathname;
      const ir = await loadCheckpoint(fixture);
      const out = join(dir, "a.moeq");
      await compileModel(ir, out, {
        expertStorage: { kind: "bits", average: 3 },
        denseStorage: { kind: "bits", bits: 8 },
      });
      return await Deno.readFile(out);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  })();
  return compiled;
}

/** Writes a mutated copy of the small artifact to `dir/bad.moeq` and returns its path. */
async function badArtifact(dir: string, mutate: (b: Uint8Array) => Uint8Array): Promise<string> {
  const path = join(dir, "bad.moeq");
  await Deno.writeFile(path, mutate((await smallArtifact()).slice()));
  return path;
}

/** Offset of the first weight segment of an artifact (the first tensor's first segment). */
function firstSegment(bytes: Uint8Array): number {
  const pre = decodePreamble(bytes, "test");
  return Math.ceil((pre.headerOffset + pre.headerLength) / 256) * 256;
}

const HELDOUT = new URL("../testdata/shakespeare-moe/heldout.txt", import.meta.url).pathname;

/** Artifact cases through `inspect`, `run` and `eval`. */
export const ARTIFACT_CASES: CliCase[] = [
  {
    id: "art-wrong-magic",
    group: "artifact",
    title: "wrong magic bytes",
    code: 3,
    mentions: ["bad.moeq", "magic"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) => {
        b.set(new TextEncoder().encode("GGUF"), 0);
        return b;
      }),
    ],
  },
  {
    id: "art-newer-version",
    group: "artifact",
    title: "format version newer than this build reads",
    code: 3,
    mentions: ["bad.moeq", "version"],
    setup: async (
      dir,
    ) => ["inspect", await badArtifact(dir, (b) => withPreamble(b, { version: 9 }))],
  },
  {
    id: "art-version-1",
    group: "artifact",
    title: "format version 1 (before model descriptions)",
    code: 3,
    mentions: ["bad.moeq", "version 1", "recompile"],
    setup: async (
      dir,
    ) => ["inspect", await badArtifact(dir, (b) => withPreamble(b, { version: 1 }))],
  },
  {
    id: "art-preamble-crc",
    group: "artifact",
    title: "preamble checksum mismatch",
    code: 3,
    mentions: ["bad.moeq", "preamble"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) => {
        b[40] ^= 1; // a reserved byte: only the preamble CRC notices
        return b;
      }),
    ],
  },
  {
    id: "art-header-crc",
    group: "artifact",
    title: "header checksum mismatch",
    code: 3,
    mentions: ["bad.moeq", "header"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) => {
        b[decodePreamble(b, "t").headerOffset + 20] ^= 0x10;
        return b;
      }),
    ],
  },
  {
    id: "art-header-verifier",
    group: "artifact",
    title: "header is not a valid FlatBuffer (checksums consistent)",
    code: 3,
    mentions: ["bad.moeq", "header"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) => {
        const pre = decodePreamble(b, "t");
        const junk = new Uint8Array(pre.headerLength).fill(0xab);
        new DataView(junk.buffer).setUint32(0, pre.headerLength * 4, true); // root offset past end
        return withHeaderBytes(b, junk);
      }),
    ],
  },
  {
    id: "art-segment-past-eof",
    group: "artifact",
    title: "a segment offset lies past the end of the file",
    code: 3,
    mentions: ["bad.moeq", "segment"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) =>
        withHeader(b, (h) => {
          h.tensors[0].data!.offset = 1 << 30;
        })),
    ],
  },
  {
    id: "art-unsupported-block",
    group: "artifact",
    title: "the model description names a block variant this moeq does not know",
    code: 4,
    mentions: ["bad.moeq", "model.decoder.layers[0].blocks[1].kind", "mamba"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) =>
        withHeader(b, (h) => {
          (h.model.decoder.layers[0].blocks[1] as { kind: string }).kind = "mamba";
        })),
    ],
  },
  {
    id: "art-model-field",
    group: "artifact",
    title: "a field of the model description is out of range",
    code: 3,
    mentions: ["bad.moeq", "model.decoder.layers[1].blocks[1].ffn.topK is 0"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) =>
        withHeader(b, (h) => {
          (h.model.decoder.layers[1].blocks[1] as { ffn: { topK: number } }).ffn.topK = 0;
        })),
    ],
  },
  {
    id: "art-tensor-missing",
    group: "artifact",
    title: "a tensor the model description implies is missing",
    code: 3,
    mentions: ["bad.moeq", "layer 1 router", "lacks"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) =>
        withHeader(b, (h) => {
          h.tensors = h.tensors.filter((t) => !(t.layer === 1 && t.role === "router"));
          h.summary = summarize(h.tensors);
        })),
    ],
  },
  {
    id: "art-tensor-shape",
    group: "artifact",
    title: "a tensor's shape does not match its segment size",
    code: 3,
    mentions: ["bad.moeq", /tensor/],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) =>
        withHeader(b, (h) => {
          h.tensors[0].shape = [h.tensors[0].shape[0] + 1, ...h.tensors[0].shape.slice(1)];
        })),
    ],
  },
  {
    id: "art-file-length",
    group: "artifact",
    title: "preamble file length differs from the file size (bytes appended)",
    code: 3,
    mentions: ["bad.moeq"],
    setup: async (dir) => [
      "inspect",
      await badArtifact(dir, (b) => concatBytes([b, new Uint8Array(100)])),
    ],
  },
  {
    id: "art-truncated",
    group: "artifact",
    title: "file truncated in the weights",
    code: 3,
    mentions: ["bad.moeq"],
    setup: async (dir) => ["inspect", await badArtifact(dir, (b) => b.slice(0, b.length - 300))],
  },
  {
    id: "art-truncated-preamble",
    group: "artifact",
    title: "file shorter than the preamble",
    code: 3,
    mentions: ["bad.moeq"],
    setup: async (dir) => ["inspect", await badArtifact(dir, (b) => b.slice(0, 20))],
  },
  {
    id: "art-empty",
    group: "artifact",
    title: "empty file",
    code: 3,
    mentions: ["bad.moeq"],
    setup: async (dir) => ["inspect", await badArtifact(dir, () => new Uint8Array())],
  },
  {
    id: "art-weight-crc-verify",
    group: "artifact",
    title: "a weight byte flipped, `inspect --verify`",
    code: 3,
    mentions: ["bad.moeq", "CRC32C"],
    setup: async (dir) => [
      "inspect",
      "--verify",
      await badArtifact(dir, (b) => {
        b[firstSegment(b) + 5] ^= 0x04;
        return b;
      }),
    ],
  },
  {
    id: "art-weight-crc-run",
    group: "artifact",
    title: "a weight byte flipped, `run --device cpu`",
    code: 3,
    mentions: ["bad.moeq", "CRC32C"],
    setup: async (dir) => [
      "run",
      await badArtifact(dir, (b) => {
        b[firstSegment(b) + 5] ^= 0x04;
        return b;
      }),
      "--ids",
      "1,2",
      "--max-tokens",
      "2",
      "--device",
      "cpu",
    ],
  },
  {
    id: "art-weight-crc-eval",
    group: "artifact",
    title: "a weight byte flipped near the end, `eval --device cpu`",
    code: 3,
    mentions: ["bad.moeq", "CRC32C"],
    setup: async (dir) => [
      "eval",
      await badArtifact(dir, (b) => {
        b[b.length - 3] ^= 0x80;
        return b;
      }),
      "--text",
      HELDOUT,
      "--max-bytes",
      "64",
      "--device",
      "cpu",
      "--quiet",
    ],
  },
  {
    id: "art-padding",
    group: "artifact",
    title: "a padding byte is non-zero, `inspect --verify`",
    code: 3,
    mentions: ["bad.moeq", "padding"],
    setup: async (dir) => [
      "inspect",
      "--verify",
      await badArtifact(dir, (b) => {
        b[firstSegment(b) - 1] = 7;
        return b;
      }),
    ],
  },
  {
    id: "art-missing",
    group: "artifact",
    title: "the artifact file does not exist",
    code: 3,
    mentions: ["missing.moeq"],
    setup: (dir) => Promise.resolve(["inspect", join(dir, "missing.moeq")]),
  },
  {
    id: "art-is-directory",
    group: "artifact",
    title: "the artifact path is a directory",
    code: 3,
    mentions: ["adir"],
    async setup(dir) {
      await Deno.mkdir(join(dir, "adir"));
      return ["inspect", join(dir, "adir")];
    },
  },
  {
    id: "eval-text-missing",
    group: "artifact",
    title: "`eval --text` file does not exist",
    code: 3,
    mentions: ["nothere.txt"],
    setup: async (dir) => [
      "eval",
      await badArtifact(dir, (b) => b),
      "--text",
      join(dir, "nothere.txt"),
      "--device",
      "cpu",
    ],
  },
];

/** Runs one case in a fresh temp dir (removed afterwards) and returns the result. */
export async function runCase(
  c: CliCase,
): Promise<CliResult & { dir: string; args: string[]; leftovers: string[] }> {
  const dir = await Deno.makeTempDir({ prefix: `moeq-rel-${c.id}-` });
  try {
    const args = await c.setup(dir);
    const r = await runCli(args, c.options);
    const leftovers: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      if (e.name.includes(".tmp-") || (c.dest !== undefined && e.name === c.dest)) {
        leftovers.push(e.name);
      }
    }
    return { ...r, dir, args, leftovers };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs a case and asserts everything the reliability contract promises. Returns the message. */
export async function checkCase(c: CliCase): Promise<string> {
  const r = await runCase(c);
  const msg = r.stderr.trim();
  assert.equal(r.code, c.code, `${c.id}: exit ${r.code}, want ${c.code}; stderr: ${r.stderr}`);
  assert.ok(isOneLineError(r.stderr), `${c.id}: not one line: ${JSON.stringify(r.stderr)}`);
  assert.ok(!/internal error/.test(msg), `${c.id}: ${msg}`);
  for (const m of c.mentions) {
    if (typeof m === "string") assert.ok(msg.includes(m), `${c.id}: "${msg}" lacks "${m}"`);
    else assert.match(msg, m, c.id);
  }
  assert.deepEqual(r.leftovers, [], `${c.id}: left ${r.leftovers.join(", ")} behind`);
  return msg.replaceAll(r.dir, "<tmp>");
}

// ---------------------------------------------------------------------------------------------
// The operating system refuses a write

/** Write failures at the destination: IoError, exit 7, nothing left behind. */
export const IO_CASES: CliCase[] = [
  {
    id: "io-dest-dir-missing",
    group: "io",
    title: "compile: the destination directory does not exist",
    code: 7,
    mentions: ["nodir/out.moeq"],
    setup: (dir) =>
      Promise.resolve([
        "compile",
        new URL("../testdata/hf-moe/mixtral-classic", import.meta.url).pathname,
        "-o",
        join(dir, "nodir", "out.moeq"),
        "--quiet",
      ]),
  },
  {
    id: "io-dest-is-directory",
    group: "io",
    title: "compile: the destination is a directory",
    code: 7,
    mentions: ["adir"],
    async setup(dir) {
      await Deno.mkdir(join(dir, "adir"));
      return [
        "compile",
        new URL("../testdata/hf-moe/mixtral-classic", import.meta.url).pathname,
        "-o",
        join(dir, "adir"),
        "--quiet",
      ];
    },
  },
  {
    id: "io-disk-full",
    group: "io",
    title: "compile: the disk fills up mid-write (`ulimit -f 16 KiB`)",
    code: 7,
    mentions: ["out.moeq", "File too large"],
    dest: "out.moeq",
    options: { fileSizeLimitBytes: 16 << 10 },
    setup: (dir) =>
      Promise.resolve([
        "compile",
        new URL("../testdata/hf-moe/mixtral-classic", import.meta.url).pathname,
        "-o",
        join(dir, "out.moeq"),
        "--expert-bits",
        "f32",
        "--quiet",
      ]),
  },
  {
    id: "io-eval-text-is-directory",
    group: "io",
    title: "eval: --text names a directory",
    code: 3,
    mentions: ["tdir"],
    async setup(dir) {
      await Deno.mkdir(join(dir, "tdir"));
      const path = join(dir, "ok.moeq");
      await Deno.writeFile(path, await smallArtifact());
      return ["eval", path, "--text", join(dir, "tdir"), "--device", "cpu"];
    },
  },
  {
    id: "io-eval-spans-not-json",
    group: "io",
    title: "eval: a `--spans` line is not JSON",
    code: 3,
    mentions: ["spans.jsonl", "line 2"],
    async setup(dir) {
      const spans = join(dir, "spans.jsonl");
      await Deno.writeTextFile(spans, '{"input_ids": [3, 4], "labels": [5]}\n{"input_ids": [3,\n');
      return ["eval", SWITCH_ORACLE, "--spans", spans];
    },
  },
  {
    id: "io-eval-spans-label-range",
    group: "io",
    title: "eval: a `--spans` label is not a token id",
    code: 3,
    mentions: ["spans.jsonl", "line 1", "labels", "99"],
    async setup(dir) {
      const spans = join(dir, "spans.jsonl");
      await Deno.writeTextFile(spans, '{"input_ids": [3, 4], "labels": [5, 99]}\n');
      return ["eval", SWITCH_ORACLE, "--spans", spans];
    },
  },
];

/** The encoder–decoder oracle checkpoint (Switch Transformer, vocab 64). */
const SWITCH_ORACLE =
  new URL("../testdata/hf-oracle/switch_transformers-a", import.meta.url).pathname;

// ---------------------------------------------------------------------------------------------
// Command-line flags

const FIXTURE = new URL("../testdata/hf-moe/mixtral-classic", import.meta.url).pathname;
/** A byte-level checkpoint (vocab 256), as `study` needs. */
const SHAKESPEARE = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;

/** Writes the small valid artifact to `dir/ok.moeq` and returns its path. */
async function goodArtifact(dir: string): Promise<string> {
  const path = join(dir, "ok.moeq");
  await Deno.writeFile(path, await smallArtifact());
  return path;
}

/** A usage case: exit 2, the message names `mention`. */
function usage(
  id: string,
  title: string,
  mention: string | RegExp,
  setup: (dir: string) => Promise<string[]> | string[],
  dest?: string,
): CliCase {
  return {
    id,
    group: "flags",
    title,
    code: 2,
    mentions: [mention],
    dest,
    setup: async (dir) => await setup(dir),
  };
}

const out = (dir: string) => ["-o", join(dir, "out.moeq"), "--quiet"];

/** Bad flags for every command. */
export const FLAG_CASES: CliCase[] = [
  usage("flag-unknown-command", "unknown command", "frobnicate", () => ["frobnicate"]),
  // compile
  usage("compile-unknown-flag", "compile: unknown flag", "--bogus", (d) => [
    "compile",
    FIXTURE,
    ...out(d),
    "--bogus",
  ], "out.moeq"),
  usage("compile-missing-out", "compile: -o missing", "-o", () => ["compile", FIXTURE]),
  usage("compile-missing-positional", "compile: no checkpoint given", "usage", (d) => [
    "compile",
    ...out(d),
  ], "out.moeq"),
  usage("compile-expert-bits-nan", "compile: non-numeric --expert-bits", "--expert-bits", (d) => [
    "compile",
    FIXTURE,
    ...out(d),
    "--expert-bits",
    "lots",
  ], "out.moeq"),
  usage("compile-expert-bits-range", "compile: --expert-bits out of range", "--expert-bits", (
    d,
  ) => ["compile", FIXTURE, ...out(d), "--expert-bits", "1.5"], "out.moeq"),
  usage("compile-dense-bits", "compile: --dense-bits not a width", "--dense-bits", (d) => [
    "compile",
    FIXTURE,
    ...out(d),
    "--dense-bits",
    "5",
  ], "out.moeq"),
  usage("compile-allocator", "compile: unknown --allocator", "--allocator", (d) => [
    "compile",
    FIXTURE,
    ...out(d),
    "--allocator",
    "greedy",
  ], "out.moeq"),
  usage("compile-group-size", "compile: --group-size 0", "--group-size", (d) => [
    "compile",
    FIXTURE,
    ...out(d),
    "--group-size",
    "0",
  ], "out.moeq"),
  usage(
    "compile-gptq-no-calibration",
    "compile: --quantizer gptq without --calibration",
    "--calibration",
    (d) => ["compile", FIXTURE, ...out(d), "--quantizer", "gptq"],
    "out.moeq",
  ),
  usage(
    "compile-boolean-with-value",
    "compile: boolean switch given a value",
    "--quiet",
    (d) => ["compile", FIXTURE, "-o", join(d, "out.moeq"), "--quiet=yes"],
    "out.moeq",
  ),
  // inspect
  usage("inspect-unknown-flag", "inspect: unknown flag", "--deep", async (d) => [
    "inspect",
    await goodArtifact(d),
    "--deep",
  ]),
  usage("inspect-extra-positional", "inspect: two artifacts", "usage", async (d) => [
    "inspect",
    await goodArtifact(d),
    "second.moeq",
  ]),
  // logits
  usage("logits-missing-ids", "logits: --ids missing", "--ids", () => ["logits", FIXTURE]),
  usage("logits-ids-nan", "logits: non-numeric --ids", "--ids", () => [
    "logits",
    FIXTURE,
    "--ids",
    "1,x",
    "--device",
    "cpu",
  ]),
  usage("logits-ids-range", "logits: token id outside the vocabulary", "--ids", () => [
    "logits",
    FIXTURE,
    "--ids",
    "1,4800",
    "--device",
    "cpu",
  ]),
  usage("logits-device", "logits: unknown --device", "--device", () => [
    "logits",
    FIXTURE,
    "--ids",
    "1",
    "--device",
    "tpu",
  ]),
  // run
  usage("run-prompt-and-ids", "run: --prompt and --ids together", "--prompt", async (d) => [
    "run",
    await goodArtifact(d),
    "--prompt",
    "hi",
    "--ids",
    "1",
  ]),
  usage("run-no-prompt", "run: neither --prompt nor --ids", "--prompt", async (d) => [
    "run",
    await goodArtifact(d),
  ]),
  usage("run-max-tokens-zero", "run: --max-tokens 0", "--max-tokens", async (d) => [
    "run",
    await goodArtifact(d),
    "--ids",
    "1",
    "--max-tokens",
    "0",
  ]),
  usage("run-temperature-nan", "run: non-numeric --temperature", "--temperature", async (d) => [
    "run",
    await goodArtifact(d),
    "--ids",
    "1",
    "--temperature",
    "warm",
  ]),
  usage("run-top-p-range", "run: --top-p above 1", "--top-p", async (d) => [
    "run",
    await goodArtifact(d),
    "--ids",
    "1",
    "--top-p",
    "1.5",
  ]),
  usage("run-seed-fraction", "run: fractional --seed", "--seed", async (d) => [
    "run",
    await goodArtifact(d),
    "--ids",
    "1",
    "--seed",
    "1.5",
  ]),
  usage(
    "run-context-positions",
    "run: --context beyond the model's positions",
    "--context",
    async (d) => [
      "run",
      await goodArtifact(d),
      "--ids",
      "1",
      "--context",
      "1000000",
    ],
  ),
  // eval
  usage("eval-missing-text", "eval: --text missing", "--text", async (d) => [
    "eval",
    await goodArtifact(d),
  ]),
  usage("eval-context-range", "eval: --context 1", "--context", async (d) => [
    "eval",
    await goodArtifact(d),
    "--text",
    HELDOUT,
    "--context",
    "1",
    "--device",
    "cpu",
  ]),
  usage("eval-max-bytes-nan", "eval: non-numeric --max-bytes", "--max-bytes", async (d) => [
    "eval",
    await goodArtifact(d),
    "--text",
    HELDOUT,
    "--max-bytes",
    "all",
    "--device",
    "cpu",
  ]),
  // study
  usage("study-missing-text", "study: --text missing", "--text", () => ["study", FIXTURE]),
  usage("study-not-byte-level", "study: a model that is not byte-level", "vocab 48", () => [
    "study",
    FIXTURE,
    "--text",
    HELDOUT,
  ]),
  usage("study-bits-nan", "study: non-numeric --bits", "--bits", () => [
    "study",
    SHAKESPEARE,
    "--text",
    HELDOUT,
    "--bits",
    "2.5,x",
  ]),
  usage("study-dense-bits", "study: --dense-bits not a width", "--dense-bits", () => [
    "study",
    SHAKESPEARE,
    "--text",
    HELDOUT,
    "--dense-bits",
    "abc",
  ]),
  usage("study-quantizers", "study: unknown --quantizers entry", "--quantizers", () => [
    "study",
    SHAKESPEARE,
    "--text",
    HELDOUT,
    "--quantizers",
    "hqq,awq",
  ]),
  // serve
  usage("serve-port-range", "serve: --port 70000", "--port", async (d) => [
    "serve",
    await goodArtifact(d),
    "--port",
    "70000",
  ]),
  usage("serve-port-nan", "serve: non-numeric --port", "--port", async (d) => [
    "serve",
    await goodArtifact(d),
    "--port",
    "http",
  ]),
  usage("serve-max-queue", "serve: negative --max-queue", "--max-queue", async (d) => [
    "serve",
    await goodArtifact(d),
    "--max-queue=-1",
  ]),
  // bench
  usage("bench-unknown", "bench: unknown benchmark", "frob", () => ["bench", "frob"]),
  usage(
    "bench-unknown-flag",
    "bench: unknown flag",
    "--fast",
    () => ["bench", "kernels", "--fast"],
  ),
  // demo
  usage("demo-extra-positional", "demo: positional argument", "usage", () => ["demo", "now"]),
  usage("demo-unknown-flag", "demo: unknown flag", "--bits", () => ["demo", "--bits", "2"]),
];
