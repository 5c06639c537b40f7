/**
 * Streamed calibration: the calibration tokens' hidden states pass through the model one layer at
 * a time, so only one layer's weights (and, in a MoE block, one expert's) are in memory at once.
 *
 * The states of every window live side by side ([tokens, H] float64, a few MB for thousands of
 * tokens). Per block: the norm, attention or dense weights are read, every window runs through
 * them, the weights are dropped. A MoE block routes every token first (routing counts and each
 * expert's bounded input sample are then final for the layer), then reads its experts one by
 * one (a few in flight on the worker pool): each runs over all the tokens routed to it and, when
 * asked, is quantized at every candidate width and its output error measured on its sample (the
 * `budget` costs), then dropped.
 * The embedding is read one token row at a time, the head in row blocks; nothing holds the whole
 * model.
 *
 * The loss-based layer sensitivity of the `budget` allocator (the increase in bits/token when all
 * of one MoE layer's experts are at the lowest width) is measured in the same pass: when MoE
 * layer m is reached, the first `sensitivityTokens` tokens (whole windows, the last one cut:
 * the model is causal) are forked into a perturbed stream whose layer-m experts are the quantized
 * ones; that stream then runs through the later layers beside the clean one, and the head scores
 * every stream at the end (online log-sum-exp over vocabulary blocks). Cost: one pass over all
 * tokens plus, per MoE layer, the later layers over the sensitivity tokens.
 *
 * Arithmetic: the hidden states stay float64 and the small parts are the float64 reference's own
 * (norms, RoPE, softmax, routing); the large products run in float32 on the SIMD kernels of
 * compiler/calibration/ (the attention projections, each head's scores and value sums, the dense,
 * shared and routed experts, the head), the experts and head blocks as jobs on the compiler's
 * worker pool when one is given (with a pool of 4 workers or more, the attention blocks'
 * projections too, in row blocks: `projectionJobs`; or whole blocks per KV head on request:
 * `attentionJobs`).
 * So the states equal `forward`'s to ≈ 1e-7 relative, not bit for bit (calibration_stream_test.ts
 * states the tolerances), and the result is the same whatever the number of workers: job outputs
 * are combined in expert and block order. Quantized experts for the costs are decoded without
 * packing (compiler/calibration/fake_quant.ts, the same values). Reservoir sampling draws from one
 * seeded generator per expert, so a sample does not depend on the order layers are visited.
 *
 * @module
 */

import { mulberry32 } from "../schemas/prng.ts";
import type { ExpertWidth } from "../schemas/packing.ts";
import { InputError, UsageError } from "../schemas/errors.ts";
import { keyString, type TensorKey } from "../schemas/tensors.ts";
import type { CalibrationData, ExpertSample } from "./calibration.ts";
import type { ExpertWeights } from "./expert_weights.ts";
import type { AttentionSpec, MatrixName } from "../schemas/model.ts";
import {
  type CalibrationRunner,
  type ExpertJobResult,
  inlineCalibration,
} from "./calibration/jobs.ts";
import { type HeadBlock, type MlpF32, mlpF32 } from "./calibration/kernels.ts";
import {
  attendF32,
  attendGrouped,
  attendWindows,
  attendWindowsPooled,
  type AttentionF32,
  dropSharedBuffers,
  f32Of,
  groupable,
  linearF32,
} from "./calibration/attention.ts";
import {
  type ExpertIR,
  type ModelIR,
  moeLayers,
  type RawElements,
  type RawLocation,
  type TensorRef,
} from "./ir.ts";
import type { QuantMethod } from "./quantize/mod.ts";
import { attentionBlock, type ReferenceAttention } from "./reference/attention.ts";
import { matmul, notImplemented, sigmoid } from "./reference/math.ts";
import { readMlp, type ReferenceMlp } from "./reference/mlp.ts";
import { readDense } from "./reference/moe.ts";
import { normRows, readNorm } from "./reference/norms.ts";
import { checkRouter, route } from "./reference/router.ts";
import { windows } from "./reference/eval.ts";
import { type LayerWeights, WeightReader } from "./reference/weights.ts";
import { readAttention } from "./reference/attention.ts";
import { mlaBlock, mlaCacheWidth, readMla, type ReferenceMla } from "./reference/mla.ts";

/** What the `budget` costs need measured during the pass. */
export interface StreamCostRequest {
  widths: readonly ExpertWidth[];
  groupSize: number;
  quantizer: QuantMethod;
  /** Also measure each MoE layer's loss sensitivity at the lowest width. */
  sensitivity: boolean;
}

/** Costs measured by the pass, `[moeLayer][expert][width index]`, memoised on the record. */
export interface StreamCosts {
  /** Output error (expert_error.ts `outputError`) of each expert at each width. */
  output: number[][][];
  /** Δ bits/token with a MoE layer's experts at the lowest width (with `sensitivity`). */
  deltas: number[] | null;
  /** Tokens the sensitivity was scored on. */
  sensitivityTokens: number;
  /**
   * Milliseconds spent quantizing experts and measuring their output error (summed over the
   * threads the jobs ran on), and in the head (wall).
   */
  costMs: number;
  headMs: number;
}

/** Options of {@link calibrateStream}. */
export interface StreamOptions {
  /** Window length (default: the model's max positions). */
  context?: number;
  /** Rows kept per expert (default 512). */
  maxSamplesPerExpert?: number;
  /** Reservoir seed (default 0). */
  seed?: number;
  /** Measure the `budget` costs in the same pass. */
  costs?: StreamCostRequest;
  /**
   * The expert samples the costs are measured on, `[moeLayer][expert]` (default: the ones this
   * pass collects): a caller's earlier calibration record, so its costs use its samples.
   */
  samples?: ExpertSample[][];
  /**
   * Tokens the layer sensitivity is scored on: the first ones of the text (whole windows, then the
   * first tokens of the next one; default all).
   */
  sensitivityTokens?: number;
  /**
   * Keep each expert's input sample in the record (default true; GPTQ's Hessians need them). When
   * false, a layer's samples are dropped once its costs are measured (only `n = 0` and `seen`
   * stay), so memory does not grow with the number of layers.
   */
  keepSamples?: boolean;
  /** Progress: (steps done, steps in all); a step is a block or an expert. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Where the expert and head jobs run (compiler/calibration/jobs.ts): the compiler's worker
   * pool, or (default) this thread. The result does not depend on it.
   */
  runner?: CalibrationRunner;
  /**
   * Run the GQA attention blocks as jobs on `runner` too, one per KV head (the same values;
   * compiler/calibration/attention.ts `attendGrouped`). Default: no; `projectionJobs` splits the
   * same work for less CPU (docs/STUDY.md §6).
   */
  attentionJobs?: boolean;
  /**
   * Run the attention blocks' q/k/v and o projections as row-block jobs on `runner` while this
   * thread attends (the same values; `attendWindowsPooled` in compiler/calibration/attention.ts).
   * Default: when the runner keeps at least {@link ATTENTION_JOB_LANES} jobs in flight (and not
   * `attentionJobs`). They win only with a core to spare: on a loaded 2-worker machine the
   * block runs on this thread (docs/STUDY.md §6).
   */
  projectionJobs?: boolean;
}

/** Lanes from which the attention projections run as pool jobs by default (4 workers). */
export const ATTENTION_JOB_LANES = 8;

/** The memo key under which {@link calibrateStream} stores its {@link StreamCosts}. */
export function streamCostsKey(req: StreamCostRequest): string {
  return `stream|${req.quantizer}|${req.groupSize}|${req.widths}|${req.sensitivity}`;
}

/** One window of one stream: its states [n, H] and where its tokens sit in the text. */
interface Seq {
  /** −1: the clean stream; m: the stream whose MoE layer m is quantized. */
  stream: number;
  start: number;
  n: number;
  x: Float64Array;
}

/** Vocabulary rows per block of the embedding and head reads (≈ 32 MB of f32 at hidden 2048). */
const VOCAB_BLOCK_VALUES = 1 << 23;

/**
 * Row blocks [a, b) of a [rows, H] tensor, read with `readRows` when the ref has it; with a ref
 * that reads raw rows, the blocks are not read here (`rows` is null) and `each` reads them.
 */
async function forRowBlocks(
  ref: TensorRef,
  H: number,
  each: (a: number, b: number, rows: Float32Array | null) => Promise<void>,
): Promise<void> {
  const rows = ref.shape[0];
  if (!ref.readRows) {
    await each(0, rows, await ref.read());
    return;
  }
  const step = Math.max(1, Math.floor(VOCAB_BLOCK_VALUES / H));
  for (let a = 0; a < rows; a += step) {
    const b = Math.min(rows, a + step);
    await each(a, b, ref.readRawRows ? null : await ref.readRows(a, b - a));
  }
}

/**
 * Runs tasks with at most `lanes` in flight; `submit` starts one. {@link drain} waits for the rest
 * and rethrows the first failure.
 */
class Lanes {
  readonly #lanes: number;
  readonly #flying = new Set<Promise<void>>();
  #error: unknown = null;

  constructor(lanes: number) {
    this.#lanes = Math.max(1, lanes);
  }

  /** Starts `task`, first waiting while all lanes are busy. */
  async submit(task: () => Promise<void>): Promise<void> {
    while (this.#flying.size >= this.#lanes) await Promise.race(this.#flying);
    if (this.#error) throw this.#error;
    const p: Promise<void> = task().catch((e) => {
      this.#error ??= e;
    }).finally(() => this.#flying.delete(p));
    this.#flying.add(p);
  }

  /** Waits for every task; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.#flying);
    if (this.#error) throw this.#error;
  }
}

/** A float64 reference MLP as the float32 kernels take it (exact: its values came from f32). */
function mlpOf(m: ReferenceMlp, hidden: number): MlpF32 {
  const out: MlpF32 = {
    activation: m.activation,
    hidden,
    inter: m.inter,
    matrices: {},
    biases: {},
  };
  for (const [name, w] of Object.entries(m.matrices)) {
    if (w) out.matrices[name as keyof MlpF32["matrices"]] = Float32Array.from(w);
  }
  for (const [name, b] of Object.entries(m.biases)) {
    if (b) out.biases[name as keyof MlpF32["biases"]] = Float32Array.from(b);
  }
  return out;
}

/** out [n, H] (float64) = the MLP over h [n, H], in float32. */
function mlpInto(out: Float64Array, m: MlpF32, h: Float64Array, n: number): void {
  out.set(mlpF32(m, Float32Array.from(h), n));
}

/**
 * Runs `ids` through the model of `ir` layer by layer (see the module doc) and returns the same
 * record as `calibrate`, with the costs asked for in `memo` under {@link streamCostsKey}.
 */
export async function calibrateStream(
  ir: ModelIR,
  ids: readonly number[],
  opts: StreamOptions = {},
): Promise<CalibrationData> {
  const spec = ir.spec;
  if (spec.encoder) throw notImplemented("an encoder stack");
  if (ids.length < 2) throw new UsageError("calibration text needs at least 2 tokens");
  const { hiddenSize: H, vocabSize: V } = spec;
  const context = opts.context ?? spec.maxPositions;
  const cap = opts.maxSamplesPerExpert ?? 512;
  const seed = opts.seed ?? 0;
  for (let i = 0; i < ids.length; i++) {
    if (!Number.isInteger(ids[i]) || ids[i] < 0 || ids[i] >= V) {
      throw new UsageError(`calibration ids[${i}] = ${ids[i]} is not a token id in [0, ${V})`);
    }
  }
  const refs = new Map(ir.tensors.map((t) => [keyString(t), t.ref]));
  const top = (role: string): TensorRef => {
    const key: TensorKey = { stack: "decoder", layer: -1, expert: -1, role };
    const ref = refs.get(keyString(key));
    if (!ref) throw new InputError(`missing tensor ${role}`, ir.source);
    if (ref.shape[0] !== V || ref.shape[1] !== H) {
      throw new InputError(`tensor ${ref.name} has shape [${ref.shape}], expected [${V}, ${H}]`);
    }
    return ref;
  };
  const reader = new WeightReader(ir);
  const moe = moeLayers(ir);
  const costs = opts.costs;
  const sensitivity = costs?.sensitivity ?? false;

  // Windows as in `calibrate`; the first windows up to `sensitivityTokens` are also scored.
  const plan = windows(ids.length + 1, context);
  const clean: Seq[] = plan.map(({ start, length }) => ({
    stream: -1,
    start,
    n: length,
    x: new Float64Array(length * H),
  }));
  // The scored prefix: whole windows, the last one cut to the first tokens that fit (a window's
  // first t states are those of a window of t tokens: the model is causal).
  const scoredWindows: number[] = [];
  const scoredRows: number[] = [];
  let scoredTokens = 0;
  const limit = Math.max(1, opts.sensitivityTokens ?? Infinity);
  for (let w = 0; w < clean.length && scoredTokens < limit; w++) {
    const rows = Math.min(clean[w].n, limit - scoredTokens);
    scoredWindows.push(w);
    scoredRows.push(rows);
    scoredTokens += rows;
  }
  let seqs: Seq[] = [...clean];

  const counts = moe.map((m) => new Array<number>(m.experts.length).fill(0));
  const samples: ExpertSample[][] = moe.map(() => []);
  const output: number[][][] = moe.map((m) => m.experts.map(() => []));
  const steps = spec.decoder.layers.reduce(
    (s, layer) =>
      s +
      layer.blocks.reduce(
        (b, blk) => b + 1 + (blk.kind === "ffn" && blk.ffn.kind === "moe" ? blk.ffn.numExperts : 0),
        0,
      ),
    0,
  );
  let done = 0;
  const progress = async () => {
    opts.onProgress?.(++done, steps);
    await Promise.resolve();
  };

  const costClock = { ms: 0 };
  // Attention weights by (layer, block), read ahead: a MoE block starts the read of the next
  // layer's attention blocks, so it overlaps with the expert jobs instead of following them, and
  // layer 0's are read while the embedding rows are.
  const attentionReads = new Map<string, Promise<AttentionF32 | ReferenceMla>>();
  const readAttentionAt = (l: number, b: number) => {
    const key = `${l}/${b}`;
    let p = attentionReads.get(key);
    if (!p) {
      const block = spec.decoder.layers[l].blocks[b];
      if (block.kind !== "attention") throw new Error(`block ${key} is not attention`);
      const w = reader.layer("decoder", l);
      p = block.attention.kind === "mla"
        ? readMla(block.attention, w, 0)
        : readAttentionF32(block.attention, w);
      p.catch(() => {}); // awaited (and thrown) where used
      attentionReads.set(key, p);
    }
    return p;
  };
  const readAhead = (l: number) => {
    spec.decoder.layers[l + 1]?.blocks.forEach((blk, b) => {
      if (blk.kind === "attention") readAttentionAt(l + 1, b);
    });
  };

  readAhead(-1);
  // Embedding rows of the tokens: one read per distinct id where the ref reads rows.
  const embedRow = (id: number, row: Float32Array) => {
    for (const s of clean) {
      for (let t = 0; t < s.n; t++) {
        if (ids[s.start + t] !== id) continue;
        for (let c = 0; c < H; c++) s.x[t * H + c] = row[c] * spec.embedScale;
      }
    }
  };
  const embed = top("embed");
  if (embed.readRows) {
    for (const id of [...new Set(ids)].sort((a, b) => a - b)) {
      embedRow(id, await embed.readRows(id, 1));
    }
  } else {
    const rows = await embed.read();
    for (const id of new Set(ids)) embedRow(id, rows.subarray(id * H, (id + 1) * H));
  }

  const runner = opts.runner ?? inlineCalibration;
  const attentionJobs = runner.lanes > 1 && (opts.attentionJobs ?? false);
  const projectionJobs = !attentionJobs && runner.lanes > 1 &&
    (opts.projectionJobs ?? runner.lanes >= ATTENTION_JOB_LANES);
  let m = 0;
  for (const [l, layer] of spec.decoder.layers.entries()) {
    const weights = reader.layer("decoder", l);
    const r = layer.residualScale;
    for (const [b, block] of layer.blocks.entries()) {
      if (block.kind === "cross_attention") throw notImplemented("cross-attention");
      const norm = await readNorm(
        block.norm,
        weights,
        block.kind === "attention" ? "attn_norm" : "ffn_norm",
      );
      const hs = seqs.map((s) => {
        const h = new Float64Array(s.n * H);
        normRows(h, s.x, s.n, norm);
        return h;
      });
      if (block.kind === "attention") {
        const a = await readAttentionAt(l, b);
        attentionReads.delete(`${l}/${b}`);
        if (attentionJobs && !("kvB" in a) && groupable(a)) {
          const outs = await attendGrouped(a, hs, seqs.map((s) => s.n), runner);
          seqs.forEach((s, i) => addInto(s.x, r, outs[i]));
        } else if (projectionJobs && !("kvB" in a) && !a.relativeBias) {
          const outs = await attendWindowsPooled(a, hs, seqs.map((s) => s.n), runner);
          seqs.forEach((s, i) => addInto(s.x, r, outs[i]));
        } else if (!("kvB" in a) && !a.relativeBias) {
          // On this thread, no await (with one here, and every window's output held, the pass's
          // peak RSS was 0.2 GiB higher on the Qwen3-shaped synthetic): the projections over
          // batches of windows (a fork window per earlier MoE layer), each window attended alone.
          const outs = attendWindows(a, hs, seqs.map((s) => s.n));
          seqs.forEach((s, i) => addInto(s.x, r, outs[i]));
        } else {
          seqs.forEach((s, i) => addInto(s.x, r, attend(hs[i], s.n, a)));
        }
      } else if (block.ffn.kind === "dense") {
        const d = mlpOf((await readDense(block.ffn, weights)).mlp, H);
        seqs.forEach((s, i) => {
          const out = new Float64Array(s.n * H);
          mlpInto(out, d, hs[i], s.n);
          addInto(s.x, r, out);
        });
      } else {
        const layerIR = moe[m];
        if (layerIR.layer !== l) throw new Error(`MoE layer ${m} is not decoder layer ${l}`);
        readAhead(l);
        const fork = sensitivity ? scoredWindows.map((w) => clean[w]) : [];
        const forkRows = sensitivity ? scoredRows : [];
        const result = await moeStream({
          ir: layerIR,
          weights,
          seqs,
          hs,
          fork,
          forkRows,
          m,
          cap,
          seed,
          costs,
          counts: counts[m],
          costSamples: opts.samples?.[m],
          progress,
          costClock,
          runner,
        });
        samples[m] = opts.keepSamples === false
          ? result.samples.map((x) => ({
            n: 0,
            seen: x.seen,
            inputs: new Float32Array(0),
            weights: new Float32Array(0),
          }))
          : result.samples;
        output[m] = result.output;
        const forked = fork.map((s, i) => {
          const n = forkRows[i];
          const x = s.x.slice(0, n * H);
          addInto(x, r, result.forkOut[i]);
          return { stream: m, start: s.start, n, x };
        });
        seqs.forEach((s, i) => addInto(s.x, r, result.out[i]));
        seqs = [...seqs, ...forked];
        m++;
      }
      await progress();
    }
  }
  if (projectionJobs) dropSharedBuffers();

  let deltas: number[] | null = null;
  const headStart = performance.now();
  if (sensitivity) {
    const scored = [
      ...scoredWindows.map((w, i) => ({ seq: clean[w], n: scoredRows[i] })),
      ...seqs.filter((s) => s.stream >= 0).map((seq) => ({ seq, n: seq.n })),
    ];
    const bits = await scoreStreams(ir, top, scored, ids, moe.length);
    deltas = bits.layers.map((b) => b - bits.clean);
  }
  const data: CalibrationData = {
    tokens: clean.reduce((s, q) => s + q.n, 0),
    counts,
    samples,
    ids: [...ids],
    context,
    spans: null,
    memo: new Map(),
  };
  if (costs) {
    const result: StreamCosts = {
      output,
      deltas,
      sensitivityTokens: scoredTokens,
      costMs: costClock.ms,
      headMs: performance.now() - headStart,
    };
    data.memo.set(streamCostsKey(costs), result);
  }
  return data;

  /** Finalises the norms and head and returns mean bits/token per stream. */
  async function scoreStreams(
    ir: ModelIR,
    top: (role: string) => TensorRef,
    scored: { seq: Seq; n: number }[],
    ids: readonly number[],
    moeCount: number,
  ): Promise<{ clean: number; layers: number[] }> {
    const w = new WeightReader(ir).layer("decoder", -1);
    const finalNorm = await readNorm(spec.decoder.finalNorm, w, "final_norm");
    const bias = spec.head.bias ? await w.read("lm_head_bias") : null;
    // Rows that predict a token, gathered: [k, H].
    const rowsOf: { seq: Seq; t: number; target: number }[] = [];
    for (const { seq: s, n } of scored) {
      normRows(s.x, s.x, n, finalNorm);
      if (spec.head.scale !== 1) { for (let i = 0; i < n * H; i++) s.x[i] *= spec.head.scale; }
      for (let t = 0; t < n; t++) {
        const next = s.start + t + 1;
        if (next < ids.length) rowsOf.push({ seq: s, t, target: ids[next] });
      }
    }
    const k = rowsOf.length;
    const x = new Float32Array(k * H);
    rowsOf.forEach((row, i) => x.set(row.seq.x.subarray(row.t * H, (row.t + 1) * H), i * H));
    const targets = Int32Array.from(rowsOf, (r) => r.target);
    // Vocabulary blocks on the runner; combined in block order (online log-sum-exp).
    const blocks: HeadBlock[] = [];
    const lanes = new Lanes(runner.lanes);
    let index = 0;
    const headRef = top(spec.head.tied ? "embed" : "lm_head");
    await forRowBlocks(headRef, H, async (a, b, decoded) => {
      const slot = index++;
      // Where the BF16 rows lie (the runner's thread reads them), or raw bytes (decoded there).
      const rows = headRef.locateRawRows && headRef.dtype === "BF16"
        ? headRef.locateRawRows(a, b - a)
        : headRef.readRawRows
        ? await headRef.readRawRows(a, b - a)
        : decoded!;
      const job = {
        kind: "head" as const,
        x,
        k,
        rows,
        n: b - a,
        a,
        bias: bias ? Float32Array.from(bias.subarray(a, b)) : null,
        targets,
      };
      await lanes.submit(async () => {
        blocks[slot] = await runner.runCalibration(job);
      });
    });
    await lanes.drain();
    const max = new Float64Array(k).fill(-Infinity);
    const sum = new Float64Array(k);
    const target = new Float64Array(k);
    for (const blk of blocks) {
      for (let i = 0; i < k; i++) {
        const bm = blk.max[i];
        if (bm > max[i]) {
          sum[i] = sum[i] * Math.exp(max[i] - bm) + blk.sum[i];
          max[i] = bm;
        } else {
          sum[i] += blk.sum[i] * Math.exp(bm - max[i]);
        }
        if (!Number.isNaN(blk.target[i])) target[i] = blk.target[i];
      }
    }
    const total = new Float64Array(moeCount + 1);
    const tokens = new Float64Array(moeCount + 1);
    for (let i = 0; i < k; i++) {
      const slot = rowsOf[i].seq.stream + 1;
      total[slot] += (max[i] + Math.log(sum[i]) - target[i]) / Math.LN2;
      tokens[slot]++;
    }
    const mean = (slot: number) => total[slot] / Math.max(1, tokens[slot]);
    return { clean: mean(0), layers: Array.from({ length: moeCount }, (_, j) => mean(j + 1)) };
  }
}

/**
 * An expert for its job: BF16 matrices as the place of their checkpoint bytes where the refs give
 * it (the job's thread reads them straight into its kernel memory), else as raw bytes where the
 * refs read them (decoded on the job's thread), else decoded here; biases decoded here.
 */
async function readExpertRaw(e: ExpertIR): Promise<{
  weights: ExpertWeights;
  raw: Partial<Record<MatrixName, RawElements>>;
  located: Partial<Record<MatrixName, RawLocation>>;
}> {
  const [inter, hidden] = e.matrices[0].weight.shape;
  const weights: ExpertWeights = {
    activation: e.activation,
    hidden,
    inter,
    matrices: {},
    biases: {},
  };
  const raw: Partial<Record<MatrixName, RawElements>> = {};
  const located: Partial<Record<MatrixName, RawLocation>> = {};
  for (const m of e.matrices) {
    const ref = m.weight;
    if (ref.locateRawRows && ref.dtype === "BF16") {
      located[m.name] = ref.locateRawRows(0, ref.shape[0]);
    } else if (ref.readRawRows) raw[m.name] = await ref.readRawRows(0, ref.shape[0]);
    else weights.matrices[m.name] = await ref.read();
    if (m.bias) weights.biases[m.name] = await m.bias.read();
  }
  return { weights, raw, located };
}

/** x += r · out. */
function addInto(x: Float64Array, r: number, out: Float64Array): void {
  for (let i = 0; i < x.length; i++) x[i] += r * out[i];
}

/** The attention block over one whole window (positions 0..n−1, a fresh cache). */
function attend(h: Float64Array, n: number, a: AttentionF32 | ReferenceMla): Float64Array {
  const out = new Float64Array(h.length);
  if ("kvB" in a) {
    mlaBlock(out, h, n, a, new Float64Array(n * mlaCacheWidth(a.spec)), 0);
    return out;
  }
  if (!a.relativeBias) return attendF32(a, h, n);
  // A relative-bias block is read in float64 (readAttentionF32), as attentionBlock takes it.
  const kvDim = a.spec.numKvHeads * a.spec.headDim;
  const cache = { keys: new Float64Array(n * kvDim), values: new Float64Array(n * kvDim) };
  attentionBlock(out, h, n, a as ReferenceAttention, cache, 0, linearF32);
  return out;
}

/** The projections of a GQA block, read in float32 by {@link readAttentionF32}. */
const PROJECTIONS = ["q", "k", "v", "o"] as const;

/**
 * A GQA block's weights for the float32 attention (calibration/attention.ts): the q/k/v/o
 * projections as read, in float32, with no float64 copy; the rest (norms, biases, sinks, RoPE)
 * as the reference reads them. A block with a relative bias, or weights without `readF32`, is
 * read in float64 and its projections' float32 copies made one per task turn.
 */
async function readAttentionF32(
  spec: AttentionSpec,
  w: LayerWeights,
): Promise<AttentionF32 | ReferenceAttention> {
  if (spec.kind !== "gqa" || spec.position.kind === "relative_bias" || !w.readF32) {
    const a = await readAttention(spec, w, 0);
    for (const p of PROJECTIONS) {
      f32Of(a[p]);
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    return a;
  }
  // The reference reads everything but the projections, which are left empty here.
  const roles = new Set(PROJECTIONS.map((p) => `attn_${p}`));
  const empty = new Float64Array(0);
  const rest = await readAttention(spec, {
    read: (role, expert) => roles.has(role) ? Promise.resolve(empty) : w.read(role, expert),
  }, 0);
  const a: AttentionF32 = { ...rest };
  for (const p of PROJECTIONS) a[p] = await w.readF32(`attn_${p}`);
  return a;
}

/** Inputs of {@link moeStream}. */
interface MoeStreamInput {
  ir: ReturnType<typeof moeLayers>[number];
  weights: ReturnType<WeightReader["layer"]>;
  seqs: Seq[];
  /** The normalised states of `seqs`. */
  hs: Float64Array[];
  /** Clean windows to fork with this layer's experts quantized at the lowest width. */
  fork: Seq[];
  /** Rows forked of each of `fork` (its first ones). */
  forkRows: number[];
  m: number;
  cap: number;
  seed: number;
  costs?: StreamCostRequest;
  counts: number[];
  /** Samples to measure the costs on instead of the collected ones. */
  costSamples?: ExpertSample[];
  progress: () => Promise<void>;
  /** Accumulates the milliseconds spent on costs. */
  costClock: { ms: number };
  runner: CalibrationRunner;
}

/**
 * One MoE block over every window of every stream: the block outputs per seq, the forked
 * windows' outputs with quantized experts, the clean stream's samples and, with `costs`, each
 * expert's output error per width. Experts are read one at a time and each becomes a job
 * (compiler/calibration/jobs.ts) on the runner; their outputs are added in expert order, so the
 * result does not depend on which job finished first.
 */
async function moeStream(inp: MoeStreamInput): Promise<{
  out: Float64Array[];
  forkOut: Float64Array[];
  samples: ExpertSample[];
  output: number[][];
}> {
  const { ir: layer, weights, seqs, hs, fork, m, cap, costs } = inp;
  const spec = layer.spec;
  const { numExperts: E, topK } = spec;
  const H = hs[0]?.length / seqs[0].n;
  const router = checkRouter(spec.router);
  const routerRows = await weights.read("router");
  const samples: ExpertSample[] = Array.from({ length: E }, () => ({
    n: 0,
    seen: 0,
    inputs: new Float32Array(0),
    weights: new Float32Array(0),
  }));
  const rngs = Array.from(
    { length: E },
    (_, e) => mulberry32((inp.seed ^ Math.imul(0x9e3779b1, m * E + e + 1)) >>> 0),
  );
  // Per expert: (seq, token, weight) of every route, in seq then token order.
  const routes: { seq: number; t: number; w: number }[][] = Array.from({ length: E }, () => []);
  // Per expert and sample slot: the route the slot holds (its row in the expert's job).
  const slotRoute: number[][] = Array.from({ length: E }, () => []);
  seqs.forEach((s, si) => {
    const logits = new Float64Array(s.n * E);
    matmul(logits, hs[si], routerRows, s.n, E, H);
    for (let t = 0; t < s.n; t++) {
      const r = route(logits.subarray(t * E, (t + 1) * E), topK, router);
      for (let j = 0; j < topK; j++) {
        const e = r.experts[j];
        routes[e].push({ seq: si, t, w: r.weights[j] });
        if (s.stream === -1) {
          inp.counts[e]++;
          const slot = keep(
            samples[e],
            hs[si].subarray(t * H, (t + 1) * H),
            r.weights[j],
            cap,
            rngs[e],
          );
          if (slot >= 0) slotRoute[e][slot] = routes[e].length - 1;
        }
      }
    }
  });
  for (const s of samples) {
    s.inputs = s.inputs.slice(0, s.n * H);
    s.weights = s.weights.slice(0, s.n);
  }

  const forkIndex = new Map(fork.map((s, i) => [seqs.indexOf(s), i]));
  /** Whether a route's row is one of the forked rows. */
  const forked = (r: { seq: number; t: number }): boolean => {
    const f = forkIndex.get(r.seq);
    return f !== undefined && r.t < inp.forkRows[f];
  };
  const results: (ExpertJobResult | null)[] = new Array(E).fill(null);
  const lanes = new Lanes(inp.runner.lanes);
  for (let e = 0; e < E; e++) {
    const list = routes[e];
    if (list.length === 0 && !costs) {
      await inp.progress();
      continue;
    }
    const { weights: w, raw, located } = await readExpertRaw(layer.experts[e]);
    const routed = new Float32Array(list.length * H);
    list.forEach((r, i) => routed.set(hs[r.seq].subarray(r.t * H, (r.t + 1) * H), i * H));
    const own = inp.costSamples?.[e];
    const job = {
      kind: "expert" as const,
      weights: w,
      raw,
      located,
      routed,
      n: list.length,
      costs: costs && {
        widths: costs.widths,
        groupSize: costs.groupSize,
        quantizer: costs.quantizer,
        sample: own ?? samples[e],
        // The collected sample's rows are routed rows: their outputs are reused.
        sampleRows: own ? undefined : Int32Array.from(slotRoute[e].slice(0, samples[e].n)),
        forkRows: Int32Array.from(list.flatMap((r, i) => forked(r) ? [i] : [])),
      },
    };
    await lanes.submit(async () => {
      const r = await inp.runner.runCalibration(job);
      results[e] = r;
      inp.costClock.ms += r.costMs;
      await inp.progress();
    });
  }
  await lanes.drain();

  const out = seqs.map((s) => new Float64Array(s.n * H));
  const forkOut = fork.map((_, i) => new Float64Array(inp.forkRows[i] * H));
  const output: number[][] = layer.experts.map(() => []);
  for (let e = 0; e < E; e++) {
    const r = results[e];
    if (!r) continue;
    output[e] = r.costs;
    let j = 0;
    routes[e].forEach((route, i) => {
      const o = out[route.seq];
      const y = r.routed.subarray(i * H, (i + 1) * H);
      for (let c = 0; c < H; c++) o[route.t * H + c] += route.w * y[c];
      if (costs && forked(route)) {
        const yq = r.fork.subarray(j * H, ++j * H);
        const fo = forkOut[forkIndex.get(route.seq)!];
        for (let c = 0; c < H; c++) fo[route.t * H + c] += route.w * yq[c];
      }
    });
  }

  // The shared expert, optionally gated, on every seq (its full-precision output on forks too).
  if (spec.shared) {
    const shared = mlpOf(await readMlp(spec.shared.mlp, "shared", weights), H);
    const gateRow = spec.shared.gated ? await weights.read("shared_expert_gate") : null;
    seqs.forEach((s, si) => {
      const ys = new Float64Array(s.n * H);
      mlpInto(ys, shared, hs[si], s.n);
      const gate = new Float64Array(s.n);
      if (gateRow) matmul(gate, hs[si], gateRow, s.n, 1, H);
      const targets = [out[si]];
      if (forkIndex.has(si)) targets.push(forkOut[forkIndex.get(si)!]);
      for (const o of targets) {
        for (let t = 0; t < o.length / H; t++) {
          const g = gateRow ? sigmoid(gate[t]) : 1;
          for (let c = 0; c < H; c++) o[t * H + c] += g * ys[t * H + c];
        }
      }
    });
  }
  return { out, forkOut, samples, output };
}

/**
 * Reservoir step: keeps `h` in `s` (growing its buffers as needed) with the reservoir rule;
 * returns the slot it went to, or −1.
 */
function keep(
  s: ExpertSample,
  h: Float64Array,
  weight: number,
  cap: number,
  rng: () => number,
): number {
  const H = h.length;
  s.seen++;
  let slot = s.n < cap ? s.n++ : Math.floor(rng() * s.seen);
  if (slot >= cap) slot = -1;
  if (slot < 0) return -1;
  if (s.inputs.length < (slot + 1) * H) {
    const rows = Math.min(cap, Math.max(8, 2 * (s.inputs.length / H), slot + 1));
    const inputs = new Float32Array(rows * H);
    inputs.set(s.inputs);
    const weights = new Float32Array(rows);
    weights.set(s.weights);
    s.inputs = inputs;
    s.weights = weights;
  }
  s.inputs.set(h, slot * H);
  s.weights[slot] = weight;
  return slot;
}
