/**
 * Streamed calibration: the calibration tokens' hidden states pass through the model one layer at
 * a time, so only one layer's weights (and, in a MoE block, one expert's) are in memory at once.
 *
 * The states of every window live side by side ([tokens, H] float64, a few MB for thousands of
 * tokens). Per block: the norm, attention or dense weights are read, every window runs through
 * them, the weights are dropped. A MoE block routes every token first (routing counts and each
 * expert's bounded input sample are then final for the layer), then reads its experts one by
 * one: each runs over all the tokens routed to it and, when asked, is quantized at every
 * candidate width and its output error measured on its sample (the `budget` costs), then dropped.
 * The embedding and the head are read in row blocks; nothing holds the whole model.
 *
 * The loss-based layer sensitivity of the `budget` allocator (the increase in bits/token when all
 * of one MoE layer's experts are at the lowest width) is measured in the same pass: when MoE
 * layer m is reached, the first `sensitivityTokens` tokens' windows are forked into a perturbed
 * stream whose layer-m experts are the quantized ones; that stream then runs through the later
 * layers beside the clean one, and the head scores every stream at the end (online log-sum-exp
 * over vocabulary blocks). Cost: one pass over all tokens plus, per MoE layer, the later layers
 * over the sensitivity tokens.
 *
 * Every kernel is the float64 reference's own (matmul, attention, mlp, router), and each token's
 * arithmetic is the same as in `forward`, so the clean states equal the reference's bit for bit.
 * Reservoir sampling draws from one seeded generator per expert, so a sample does not depend on
 * the order layers are visited.
 *
 * @module
 */

import { mulberry32 } from "../schemas/prng.ts";
import type { ExpertWidth } from "../schemas/packing.ts";
import { InputError, UsageError } from "../schemas/errors.ts";
import { keyString, type TensorKey } from "../schemas/tensors.ts";
import type { CalibrationData, ExpertSample } from "./calibration.ts";
import { outputError } from "./expert_error.ts";
import {
  expertHessians,
  expertOutputs,
  type ExpertWeights,
  quantizeExpert,
  readExpert,
  toReferenceMlp,
} from "./expert_weights.ts";
import { type ModelIR, moeLayers, type TensorRef } from "./ir.ts";
import type { QuantMethod } from "./quantize/mod.ts";
import { attentionBlock, type ReferenceAttention } from "./reference/attention.ts";
import { addBias, matmul, notImplemented, sigmoid } from "./reference/math.ts";
import { mlp, readMlp } from "./reference/mlp.ts";
import { readDense } from "./reference/moe.ts";
import { normRows, readNorm } from "./reference/norms.ts";
import { checkRouter, route } from "./reference/router.ts";
import { windows } from "./reference/eval.ts";
import { WeightReader } from "./reference/weights.ts";
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
  /** Milliseconds spent quantizing experts and measuring their output error, and in the head. */
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
  /** Tokens (whole windows from the start, at least one) the layer sensitivity is scored on. */
  sensitivityTokens?: number;
  /**
   * Keep each expert's input sample in the record (default true; GPTQ's Hessians need them). When
   * false, a layer's samples are dropped once its costs are measured (only `n = 0` and `seen`
   * stay), so memory does not grow with the number of layers.
   */
  keepSamples?: boolean;
  /** Progress: (steps done, steps in all); a step is a block or an expert. */
  onProgress?: (done: number, total: number) => void;
}

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

/** Row blocks [a, b) of a [rows, H] tensor, read with `readRows` when the ref has it. */
async function forRowBlocks(
  ref: TensorRef,
  H: number,
  each: (a: number, b: number, rows: Float32Array) => void,
): Promise<void> {
  const rows = ref.shape[0];
  if (!ref.readRows) {
    each(0, rows, await ref.read());
    return;
  }
  const step = Math.max(1, Math.floor(VOCAB_BLOCK_VALUES / H));
  for (let a = 0; a < rows; a += step) {
    const b = Math.min(rows, a + step);
    each(a, b, await ref.readRows(a, b - a));
  }
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
  const scoredWindows: number[] = [];
  let scoredTokens = 0;
  const limit = opts.sensitivityTokens ?? Infinity;
  for (let w = 0; w < clean.length; w++) {
    if (w > 0 && scoredTokens + clean[w].n > limit) break;
    scoredWindows.push(w);
    scoredTokens += clean[w].n;
  }
  let seqs: Seq[] = [...clean];

  // Embedding rows of the tokens, read in vocabulary blocks.
  await forRowBlocks(top("embed"), H, (a, b, rows) => {
    for (const s of clean) {
      for (let t = 0; t < s.n; t++) {
        const id = ids[s.start + t];
        if (id < a || id >= b) continue;
        const row = rows.subarray((id - a) * H, (id - a + 1) * H);
        for (let c = 0; c < H; c++) s.x[t * H + c] = row[c] * spec.embedScale;
      }
    }
  });

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
  let m = 0;
  for (const [l, layer] of spec.decoder.layers.entries()) {
    const weights = reader.layer("decoder", l);
    const r = layer.residualScale;
    for (const block of layer.blocks) {
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
        const a = block.attention.kind === "mla"
          ? await readMla(block.attention, weights, 0)
          : await readAttention(block.attention, weights, 0);
        seqs.forEach((s, i) => addInto(s.x, r, attend(hs[i], s.n, a)));
      } else if (block.ffn.kind === "dense") {
        const d = await readDense(block.ffn, weights);
        seqs.forEach((s, i) => {
          const out = new Float64Array(s.n * H);
          mlp(out, hs[i], s.n, d.mlp, H);
          addInto(s.x, r, out);
        });
      } else {
        const layerIR = moe[m];
        if (layerIR.layer !== l) throw new Error(`MoE layer ${m} is not decoder layer ${l}`);
        const fork = sensitivity ? scoredWindows.map((w) => clean[w]) : [];
        const result = await moeStream({
          ir: layerIR,
          weights,
          seqs,
          hs,
          fork,
          m,
          cap,
          seed,
          costs,
          counts: counts[m],
          costSamples: opts.samples?.[m],
          progress,
          costClock,
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
          const x = s.x.slice();
          addInto(x, r, result.forkOut[i]);
          return { stream: m, start: s.start, n: s.n, x };
        });
        seqs.forEach((s, i) => addInto(s.x, r, result.out[i]));
        seqs = [...seqs, ...forked];
        m++;
      }
      await progress();
    }
  }

  let deltas: number[] | null = null;
  const headStart = performance.now();
  if (sensitivity) {
    const scored = seqs.filter((s) => s.stream >= 0 || scoredWindows.includes(clean.indexOf(s)));
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
    scored: Seq[],
    ids: readonly number[],
    moeCount: number,
  ): Promise<{ clean: number; layers: number[] }> {
    const w = new WeightReader(ir).layer("decoder", -1);
    const finalNorm = await readNorm(spec.decoder.finalNorm, w, "final_norm");
    const bias = spec.head.bias ? await w.read("lm_head_bias") : null;
    // Rows that predict a token, gathered: [k, H].
    const rowsOf: { seq: Seq; t: number; target: number }[] = [];
    for (const s of scored) {
      normRows(s.x, s.x, s.n, finalNorm);
      if (spec.head.scale !== 1) { for (let i = 0; i < s.x.length; i++) s.x[i] *= spec.head.scale; }
      for (let t = 0; t < s.n; t++) {
        const next = s.start + t + 1;
        if (next < ids.length) rowsOf.push({ seq: s, t, target: ids[next] });
      }
    }
    const k = rowsOf.length;
    const x = new Float64Array(k * H);
    rowsOf.forEach((row, i) => x.set(row.seq.x.subarray(row.t * H, (row.t + 1) * H), i * H));
    const max = new Float64Array(k).fill(-Infinity);
    const sum = new Float64Array(k);
    const target = new Float64Array(k);
    await forRowBlocks(top(spec.head.tied ? "embed" : "lm_head"), H, (a, b, rows) => {
      const n = b - a;
      const wf = Float64Array.from(rows);
      const logits = new Float64Array(k * n);
      matmul(logits, x, wf, k, n, H);
      if (bias) addBias(logits, bias.subarray(a, b), k);
      for (let i = 0; i < k; i++) {
        const row = logits.subarray(i * n, (i + 1) * n);
        let bm = -Infinity;
        for (let j = 0; j < n; j++) if (row[j] > bm) bm = row[j];
        if (bm > max[i]) {
          sum[i] *= Math.exp(max[i] - bm);
          max[i] = bm;
        }
        let s = 0;
        for (let j = 0; j < n; j++) s += Math.exp(row[j] - max[i]);
        sum[i] += s;
        const tg = rowsOf[i].target;
        if (tg >= a && tg < b) target[i] = row[tg - a];
      }
    });
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

/** x += r · out. */
function addInto(x: Float64Array, r: number, out: Float64Array): void {
  for (let i = 0; i < x.length; i++) x[i] += r * out[i];
}

/** The attention block over one whole window (positions 0..n−1, a fresh cache). */
function attend(h: Float64Array, n: number, a: ReferenceAttention | ReferenceMla): Float64Array {
  const out = new Float64Array(h.length);
  if ("kvB" in a) {
    mlaBlock(out, h, n, a, new Float64Array(n * mlaCacheWidth(a.spec)), 0);
    return out;
  }
  const kvDim = a.spec.numKvHeads * a.spec.headDim;
  const cache = { keys: new Float64Array(n * kvDim), values: new Float64Array(n * kvDim) };
  attentionBlock(out, h, n, a, cache, 0);
  return out;
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
}

/**
 * One MoE block over every window of every stream, experts read one at a time: the block outputs
 * per seq, the forked windows' outputs with quantized experts, the clean stream's samples and,
 * with `costs`, each expert's output error per width.
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
          keep(samples[e], hs[si].subarray(t * H, (t + 1) * H), r.weights[j], cap, rngs[e]);
        }
      }
    }
  });
  for (const s of samples) {
    s.inputs = s.inputs.slice(0, s.n * H);
    s.weights = s.weights.slice(0, s.n);
  }

  const out = seqs.map((s) => new Float64Array(s.n * H));
  const forkIndex = new Map(fork.map((s, i) => [seqs.indexOf(s), i]));
  const forkOut = fork.map((s) => new Float64Array(s.n * H));
  const output: number[][] = layer.experts.map(() => []);
  for (let e = 0; e < E; e++) {
    const list = routes[e];
    const needsWeights = list.length > 0 || costs;
    if (!needsWeights) {
      await inp.progress();
      continue;
    }
    const w = await readExpert(layer.experts[e]);
    if (list.length > 0) accumulate(w, list, out);
    if (costs) {
      const t0 = performance.now();
      const sample = inp.costSamples?.[e] ?? samples[e];
      const hessians = costs.quantizer === "gptq" && sample.n > 0
        ? expertHessians(w, sample)
        : undefined;
      const y = sample.n > 0 ? expertOutputs(w, sample.inputs, sample.n) : undefined;
      let lowest: ExpertWeights | null = null;
      for (const b of costs.widths) {
        const q = quantizeExpert(w, b, costs.groupSize, costs.quantizer, hessians);
        if (!lowest) lowest = q;
        output[e].push(outputError(w, q, sample, y).cost);
      }
      const forked = list.filter((x) => forkIndex.has(x.seq));
      if (fork.length > 0 && forked.length > 0) {
        accumulate(
          lowest!,
          forked.map((x) => ({ ...x, seq: forkIndex.get(x.seq)! })),
          forkOut,
        );
      }
      inp.costClock.ms += performance.now() - t0;
    }
    await inp.progress();
  }

  // The shared expert, optionally gated, on every seq (its full-precision output on forks too).
  if (spec.shared) {
    const shared = await readMlp(spec.shared.mlp, "shared", weights);
    const gateRow = spec.shared.gated ? await weights.read("shared_expert_gate") : null;
    seqs.forEach((s, si) => {
      const ys = new Float64Array(s.n * H);
      mlp(ys, hs[si], s.n, shared, H);
      const gate = new Float64Array(s.n);
      if (gateRow) matmul(gate, hs[si], gateRow, s.n, 1, H);
      const targets = [out[si]];
      if (forkIndex.has(si)) targets.push(forkOut[forkIndex.get(si)!]);
      for (const o of targets) {
        for (let t = 0; t < s.n; t++) {
          const g = gateRow ? sigmoid(gate[t]) : 1;
          for (let c = 0; c < H; c++) o[t * H + c] += g * ys[t * H + c];
        }
      }
    });
  }
  return { out, forkOut, samples, output };

  /** out[seq][t] += w · expert(h[seq][t]) for every route of `list`. */
  function accumulate(
    w: ExpertWeights,
    list: { seq: number; t: number; w: number }[],
    into: Float64Array[],
  ): void {
    const n = list.length;
    const x = new Float64Array(n * H);
    list.forEach((r, i) => {
      const src = into === forkOut ? fork[r.seq] : seqs[r.seq];
      const h = into === forkOut ? hs[seqs.indexOf(src)] : hs[r.seq];
      x.set(h.subarray(r.t * H, (r.t + 1) * H), i * H);
    });
    const y = new Float64Array(n * H);
    mlp(y, x, n, toReferenceMlp(w), H);
    list.forEach((r, i) => {
      const o = into[r.seq];
      for (let c = 0; c < H; c++) o[r.t * H + c] += r.w * y[i * H + c];
    });
  }
}

/** Reservoir step: keeps `h` in `s` (growing its buffers as needed) with the reservoir rule. */
function keep(s: ExpertSample, h: Float64Array, weight: number, cap: number, rng: () => number) {
  const H = h.length;
  s.seen++;
  let slot = s.n < cap ? s.n++ : Math.floor(rng() * s.seen);
  if (slot >= cap) slot = -1;
  if (slot < 0) return;
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
}
