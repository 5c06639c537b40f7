/**
 * `moeq bench compile`: compiler throughput and memory on a synthetic Mixtral-shaped checkpoint.
 *
 * Generates (once; reused when `--dir` already holds the same one) a BF16 checkpoint with
 * Mixtral-8x7B dimensions (hidden 4096, intermediate 14336, 8 experts, 32/8 heads, vocab 32000)
 * and as many layers as `--size-gb` needs, sharded with model.safetensors.index.json. Values are
 * a random bf16 block repeated at a per-tensor offset and power-of-two scale: cheap to write, and
 * every tensor (and row) differs. Then compiles it and reports MB/s of checkpoint, CPU time,
 * peak RSS (VmHWM of the process: the workers are threads of it, so they are included; plus
 * sampled RSS), the share of the allocation passes, and checks that the header sits in its
 * reserved region right after the preamble (offsets > 4 GiB, thousands of tensors).
 *
 * @module
 */

import { mulberry32 } from "../schemas/prng.ts";
import type { AllocatorName } from "../compiler/passes/mod.ts";
import { join } from "node:path";
import type { Args } from "./args.ts";
import { compileModel } from "../compiler/compile.ts";
import { parseExpertStorage } from "./compile_flags.ts";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { QUANT_METHODS, type QuantMethod } from "../compiler/quantize/mod.ts";
import { decodePreamble, PREAMBLE_SIZE } from "../schemas/artifact.ts";
import { UsageError } from "../schemas/errors.ts";

/** Dimensions of the synthetic checkpoint (Mixtral-8x7B by default). */
export interface SyntheticDims {
  /** Tensor names and config of this family (default "mixtral"). */
  family?: "mixtral" | "qwen3_moe";
  /** Experts per token (default 2). */
  topK?: number;
  /** Head dimension (default hidden / heads). */
  headDim?: number;
  layers: number;
  hidden: number;
  intermediate: number;
  experts: number;
  heads: number;
  kvHeads: number;
  vocab: number;
}

/** Mixtral-8x7B's dimensions, `layers` layers. */
export function mixtralDims(layers: number): SyntheticDims {
  return {
    layers,
    hidden: 4096,
    intermediate: 14336,
    experts: 8,
    heads: 32,
    kvHeads: 8,
    vocab: 32000,
  };
}

/**
 * Qwen3-30B-A3B's dimensions (hidden 2048, 128 experts of 768, top-8, 32/4 heads of 128, vocab
 * 151936), `layers` layers.
 */
export function qwen3Dims(layers: number): SyntheticDims {
  return {
    family: "qwen3_moe",
    topK: 8,
    headDim: 128,
    layers,
    hidden: 2048,
    intermediate: 768,
    experts: 128,
    heads: 32,
    kvHeads: 4,
    vocab: 151936,
  };
}

/** The tensors of the checkpoint, in file order: [name, shape]. */
export function mixtralTensors(d: SyntheticDims): [string, number[]][] {
  const H = d.hidden, I = d.intermediate, hd = d.headDim ?? d.hidden / d.heads;
  const qwen = d.family === "qwen3_moe";
  const out: [string, number[]][] = [["model.embed_tokens.weight", [d.vocab, H]]];
  for (let l = 0; l < d.layers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      [`${p}.input_layernorm.weight`, [H]],
      [`${p}.self_attn.q_proj.weight`, [d.heads * hd, H]],
      [`${p}.self_attn.k_proj.weight`, [d.kvHeads * hd, H]],
      [`${p}.self_attn.v_proj.weight`, [d.kvHeads * hd, H]],
      [`${p}.self_attn.o_proj.weight`, [H, d.heads * hd]],
      [`${p}.post_attention_layernorm.weight`, [H]],
    );
    if (qwen) {
      out.push(
        [`${p}.self_attn.q_norm.weight`, [hd]],
        [`${p}.self_attn.k_norm.weight`, [hd]],
        [`${p}.mlp.gate.weight`, [d.experts, H]],
      );
      for (let e = 0; e < d.experts; e++) {
        const q = `${p}.mlp.experts.${e}`;
        out.push(
          [`${q}.gate_proj.weight`, [I, H]],
          [`${q}.up_proj.weight`, [I, H]],
          [`${q}.down_proj.weight`, [H, I]],
        );
      }
      continue;
    }
    out.push([`${p}.block_sparse_moe.gate.weight`, [d.experts, H]]);
    for (let e = 0; e < d.experts; e++) {
      const q = `${p}.block_sparse_moe.experts.${e}`;
      out.push([`${q}.w1.weight`, [I, H]], [`${q}.w2.weight`, [H, I]], [`${q}.w3.weight`, [I, H]]);
    }
  }
  out.push(["model.norm.weight", [H]], ["lm_head.weight", [d.vocab, H]]);
  return out;
}

/** Bytes of the BF16 checkpoint's tensor data for `d`. */
export function checkpointBytes(d: SyntheticDims): number {
  return mixtralTensors(d).reduce((s, [, shape]) => s + 2 * shape.reduce((a, b) => a * b, 1), 0);
}

/** Layers of Mixtral dims whose checkpoint has at least `gb` GB (at least 1). */
export function layersForSize(gb: number): number {
  const base = checkpointBytes(mixtralDims(0));
  const perLayer = checkpointBytes(mixtralDims(1)) - base;
  return Math.max(1, Math.ceil((gb * 1e9 - base) / perLayer));
}

function configJson(d: SyntheticDims): Record<string, unknown> {
  if (d.family === "qwen3_moe") {
    return {
      architectures: ["Qwen3MoeForCausalLM"],
      model_type: "qwen3_moe",
      hidden_size: d.hidden,
      intermediate_size: 6144,
      moe_intermediate_size: d.intermediate,
      num_hidden_layers: d.layers,
      num_attention_heads: d.heads,
      num_key_value_heads: d.kvHeads,
      head_dim: d.headDim ?? d.hidden / d.heads,
      num_experts: d.experts,
      num_experts_per_tok: d.topK ?? 8,
      norm_topk_prob: true,
      decoder_sparse_step: 1,
      mlp_only_layers: [],
      vocab_size: d.vocab,
      max_position_embeddings: 4096,
      rms_norm_eps: 1e-6,
      rope_theta: 1e6,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
    };
  }
  return {
    architectures: ["MixtralForCausalLM"],
    model_type: "mixtral",
    hidden_size: d.hidden,
    intermediate_size: d.intermediate,
    num_hidden_layers: d.layers,
    num_attention_heads: d.heads,
    num_key_value_heads: d.kvHeads,
    num_local_experts: d.experts,
    num_experts_per_tok: d.topK ?? 2,
    vocab_size: d.vocab,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 1e6,
    tie_word_embeddings: false,
    torch_dtype: "bfloat16",
  };
}

const BLOCK = (1 << 20) + 7; // odd: rows of any width start at different block offsets

/** Three bf16 blocks of N(0, σ²) values, σ = 0.01, 0.02, 0.04 (exact bf16 patterns). */
function valueBlocks(seed: number): Uint16Array[] {
  const r = mulberry32(seed);
  const f = new Float32Array(BLOCK);
  for (let i = 0; i < BLOCK; i += 2) {
    const u = Math.max(r(), 1e-12), v = r();
    const m = Math.sqrt(-2 * Math.log(u));
    f[i] = m * Math.cos(2 * Math.PI * v);
    if (i + 1 < BLOCK) f[i + 1] = m * Math.sin(2 * Math.PI * v);
  }
  return [0.01, 0.02, 0.04].map((s) => {
    const b = new Uint16Array(BLOCK);
    const x = new Float32Array(1);
    const u = new Uint32Array(x.buffer);
    for (let i = 0; i < BLOCK; i++) {
      x[0] = f[i] * s;
      b[i] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) >>> 16; // round to nearest even
    }
    return b;
  });
}

function hash(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
  return h;
}

const MANIFEST = "bench-manifest.json";

/** Options of {@link writeSyntheticMixtral}. */
export interface GenerateOptions {
  /** Tensor bytes per shard before starting a new one (default 2 GB). */
  shardBytes?: number;
  /** Seed of the value block (default 1). */
  seed?: number;
}

/**
 * Writes a BF16 Mixtral-shaped checkpoint (config.json, shards, model.safetensors.index.json) to
 * `dir`, streaming (memory: one 8 MiB buffer and the value blocks). Returns the tensor bytes.
 * Skips the work when `dir` holds a manifest of the same dimensions and seed.
 */
export async function writeSyntheticMixtral(
  dir: string,
  d: SyntheticDims,
  opts: GenerateOptions = {},
): Promise<{ bytes: number; reused: boolean }> {
  const shardBytes = opts.shardBytes ?? 2e9;
  const seed = opts.seed ?? 1;
  const manifest = JSON.stringify({ dims: d, seed, shardBytes });
  try {
    if ((await Deno.readTextFile(join(dir, MANIFEST))) === manifest) {
      return { bytes: checkpointBytes(d), reused: true };
    }
  } catch {
    // no manifest: generate
  }
  await Deno.mkdir(dir, { recursive: true });
  await Deno.remove(join(dir, MANIFEST)).catch(() => {});
  const tensors = mixtralTensors(d);
  const shards: [string, number[]][][] = [[]];
  let acc = 0;
  for (const t of tensors) {
    const b = 2 * t[1].reduce((a, c) => a * c, 1);
    if (acc > 0 && acc + b > shardBytes) {
      shards.push([]);
      acc = 0;
    }
    shards[shards.length - 1].push(t);
    acc += b;
  }
  const blocks = valueBlocks(seed);
  const chunk = new Uint16Array(4 << 20);
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [s, list] of shards.entries()) {
    const file = `model-${String(s + 1).padStart(5, "0")}-of-${
      String(shards.length).padStart(5, "0")
    }.safetensors`;
    const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
    let off = 0;
    for (const [name, shape] of list) {
      const n = 2 * shape.reduce((a, c) => a * c, 1);
      header[name] = { dtype: "BF16", shape, data_offsets: [off, off + n] };
      off += n;
      weightMap[name] = file;
    }
    let text = JSON.stringify(header);
    text += " ".repeat((8 - (text.length % 8)) % 8);
    const f = await Deno.open(join(dir, file), { write: true, create: true, truncate: true });
    try {
      const len = new Uint8Array(8);
      new DataView(len.buffer).setBigUint64(0, BigInt(text.length), true);
      await writeAll(f, len);
      await writeAll(f, new TextEncoder().encode(text));
      for (const [name, shape] of list) {
        const h = hash(name);
        const block = blocks[h % 3];
        let pos = (h >>> 2) % BLOCK;
        let left = shape.reduce((a, c) => a * c, 1);
        while (left > 0) {
          const m = Math.min(left, chunk.length);
          let filled = 0;
          while (filled < m) {
            const k = Math.min(m - filled, BLOCK - pos);
            chunk.set(block.subarray(pos, pos + k), filled);
            filled += k;
            pos = (pos + k) % BLOCK;
          }
          await writeAll(f, new Uint8Array(chunk.buffer, 0, 2 * m));
          left -= m;
        }
      }
    } finally {
      f.close();
    }
    total += off;
  }
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(configJson(d), null, 2));
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
  await Deno.writeTextFile(join(dir, MANIFEST), manifest);
  return { bytes: total, reused: false };
}

async function writeAll(f: Deno.FsFile, b: Uint8Array): Promise<void> {
  let done = 0;
  while (done < b.length) done += await f.write(b.subarray(done));
}

/** Peak resident set (VmHWM) and current RSS of this process in bytes, from /proc; null elsewhere. */
export function procMemory(): { hwm: number; rss: number } | null {
  try {
    const s = Deno.readTextFileSync("/proc/self/status");
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
    return { hwm: kb("VmHWM") * 1024, rss: kb("VmRSS") * 1024 };
  } catch {
    return null;
  }
}

/** CPU seconds (user + system, all threads) of this process, from /proc; NaN elsewhere. */
export function procCpuSeconds(): number {
  try {
    const s = Deno.readTextFileSync("/proc/self/stat");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in USER_HZ (100 on Linux)
  } catch {
    return NaN;
  }
}

/** Resets VmHWM to the current RSS (Linux ≥ 4.0); false when not possible. */
function resetPeak(): boolean {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/** What one timed compile measured. */
export interface CompileBenchResult {
  quantizer: string;
  expertBits: string;
  workers: number;
  checkpointBytes: number;
  artifactBytes: number;
  tensors: number;
  seconds: number;
  cpuSeconds: number;
  mbPerSecond: number;
  peakRssBytes: number | null;
  sampledPeakRssBytes: number;
  timings: Record<string, number>;
  passesShare: number;
  /** Scores + calibration + costs + allocator, seconds. */
  allocationSeconds: number;
  /** VmHWM when the allocation was done (bytes), null where unknown. */
  allocationPeakBytes: number | null;
  headerOffset: number;
  headerInReserve: boolean;
}

/** Compiles the checkpoint in `dir` once and measures it. */
export async function timeCompile(
  dir: string,
  out: string,
  o: {
    expertBits: string;
    quantizer: QuantMethod;
    workers: number;
    bytes: number;
    allocator?: AllocatorName;
    /** Calibration token ids (the budget allocator's output-error costs, frequency). */
    calibrationIds?: number[];
    sensitivityTokens?: number;
  },
): Promise<CompileBenchResult> {
  const ir = await loadCheckpoint(dir);
  const peakReset = resetPeak();
  let sampled = 0;
  const sample = () => (sampled = Math.max(sampled, Deno.memoryUsage().rss));
  const timer = setInterval(sample, 100);
  const cpu0 = procCpuSeconds();
  const t0 = performance.now();
  let res;
  try {
    res = await compileModel(ir, out, {
      expertStorage: parseExpertStorage(o.expertBits),
      quantizer: o.quantizer,
      workers: o.workers,
      allocator: o.allocator ?? "paper",
      calibrationIds: o.calibrationIds,
      sensitivityTokens: o.sensitivityTokens,
    });
  } finally {
    clearInterval(timer);
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpuSeconds = procCpuSeconds() - cpu0;
  sample();
  const mem = procMemory();
  const f = await Deno.open(out, { read: true });
  const pre = new Uint8Array(PREAMBLE_SIZE);
  try {
    await f.read(pre);
  } finally {
    f.close();
  }
  const p = decodePreamble(pre, out);
  const tensors = ir.tensors.length;
  return {
    quantizer: o.quantizer,
    expertBits: o.expertBits,
    workers: o.workers,
    checkpointBytes: o.bytes,
    artifactBytes: res.bytes,
    tensors,
    seconds,
    cpuSeconds,
    mbPerSecond: o.bytes / 1e6 / seconds,
    peakRssBytes: peakReset && mem ? mem.hwm : null,
    sampledPeakRssBytes: sampled,
    timings: { ...res.timings },
    passesShare: res.timings.passes / res.timings.total,
    allocationSeconds: (res.timings.passes + res.timings.calibration + res.timings.costs) / 1000,
    allocationPeakBytes: peakReset ? res.allocationPeakBytes : null,
    headerOffset: p.headerOffset,
    headerInReserve: p.headerOffset === PREAMBLE_SIZE,
  };
}

const GB = 1e9;
const MIB = 1 << 20;

/** Runs `bench compile`. */
export async function benchCompile(args: Args): Promise<void> {
  const quantizers = args.string("quantizer", "rtn").split(",").map((q) => {
    if (!(QUANT_METHODS as readonly string[]).includes(q) || q === "gptq") {
      throw new UsageError(`--quantizer: "${q}" is not one of rtn, rtn-sym, hqq`);
    }
    return q as QuantMethod;
  });
  const expertBits = args.string("expert-bits", "2.5");
  parseExpertStorage(expertBits);
  const allocator = args.choice(
    "allocator",
    ["paper", "uniform", "random", "budget", "frequency"] as const,
    "paper",
  );
  const shape = args.choice("shape", ["mixtral", "qwen3"] as const, "mixtral");
  const calibTokens = args.string("calibration-tokens") === undefined
    ? 0
    : args.int("calibration-tokens", 512, 2);
  const sensitivityTokens = args.string("sensitivity-tokens") === undefined
    ? undefined
    : args.int("sensitivity-tokens", 64, 1);
  const auto = navigator.hardwareConcurrency ?? 2;
  const workerList = args.string("workers", "auto").split(",").map((w) => {
    if (w === "auto") return auto;
    const v = Number(w);
    if (!Number.isInteger(v) || v < 0 || v > 64) {
      throw new UsageError(`--workers: "${w}" is not an integer in [0, 64] or auto`);
    }
    return v;
  });
  const layers = args.string("layers") !== undefined
    ? args.int("layers", 1, 1, 64)
    : layersForSize(args.number("size-gb", 8, 0.1, 1000));
  const dims = shape === "qwen3" ? qwen3Dims(layers) : mixtralDims(layers);
  // Calibration ids: seeded uniform token ids (the weights are random too).
  const idRng = mulberry32(3);
  const calibrationIds = calibTokens > 0
    ? Array.from({ length: calibTokens }, () => Math.floor(idRng() * dims.vocab))
    : undefined;
  const keep = args.string("dir") !== undefined;
  const dir = args.string("dir") ?? await Deno.makeTempDir({ prefix: "moeq-bench-ckpt-" });
  const json = args.flag("json");
  const log = (s: string) => {
    if (!json) console.error(s);
  };
  const need = checkpointBytes(dims);
  log(`checkpoint: ${layers} ${shape} layers, ${(need / GB).toFixed(2)} GB BF16 in ${dir}`);
  const t0 = performance.now();
  const gen = await writeSyntheticMixtral(dir, dims);
  const genSeconds = (performance.now() - t0) / 1000;
  log(gen.reused ? "  reused" : `  written in ${genSeconds.toFixed(1)} s`);
  const outDir = await Deno.makeTempDir({ prefix: "moeq-bench-out-" });
  const results: CompileBenchResult[] = [];
  try {
    for (const quantizer of quantizers) {
      for (const workers of workerList) {
        log(`compile: ${quantizer}, ${expertBits} bits (${allocator}), ${workers} workers ...`);
        const out = join(outDir, `bench-${quantizer}-${workers}.moeq`);
        const r = await timeCompile(dir, out, {
          expertBits,
          quantizer,
          workers,
          bytes: gen.bytes,
          allocator,
          calibrationIds,
          sensitivityTokens,
        });
        await Deno.remove(out);
        results.push(r);
        log(`  ${r.seconds.toFixed(1)} s, ${r.mbPerSecond.toFixed(1)} MB/s`);
      }
    }
  } finally {
    await Deno.remove(outDir, { recursive: true }).catch(() => {});
    if (!keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  if (json) {
    console.log(JSON.stringify(
      { checkpoint: { dims, bytes: gen.bytes, reused: gen.reused, genSeconds }, results },
      null,
      2,
    ));
    return;
  }
  const rows = results.map((r) => [
    r.quantizer,
    String(r.workers),
    r.seconds.toFixed(1),
    r.cpuSeconds.toFixed(1),
    r.mbPerSecond.toFixed(1),
    r.peakRssBytes === null ? "n/a" : (r.peakRssBytes / MIB).toFixed(0),
    (r.sampledPeakRssBytes / MIB).toFixed(0),
    (100 * r.passesShare).toFixed(2),
    r.allocationSeconds.toFixed(1),
    r.allocationPeakBytes === null ? "n/a" : (r.allocationPeakBytes / MIB).toFixed(0),
    (r.timings.emit / 1000).toFixed(1),
    r.headerInReserve ? "yes" : `no (@${r.headerOffset})`,
  ]);
  const head = [
    "quantizer",
    "workers",
    "wall s",
    "cpu s",
    "MB/s",
    "VmHWM MiB",
    "rss MiB",
    "passes %",
    "alloc s",
    "alloc VmHWM MiB",
    "emit s",
    "header in reserve",
  ];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padStart(widths[i])).join("  ");
  console.log(
    `checkpoint ${(gen.bytes / GB).toFixed(2)} GB (${layers} layers, ${
      results[0]?.tensors ?? 0
    } tensors), expert bits ${expertBits}`,
  );
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}
