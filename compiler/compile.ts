/**
 * The compiler pipeline: checkpoint IR → sensitivity passes → bit allocation → quantize → artifact.
 *
 * 1. **Scores** (cheap, weight-only): router-norm change Λ (needs the init checkpoint's routers,
 *    falls back to final norms) and MaxVar of each expert's first matrix. The paper's orderings
 *    need MaxVar before the first expert is written, so for them the gates are read first in
 *    512-row blocks (row variances on the worker pool); every other allocator gets MaxVar from
 *    the same blocks while they stream through the emit (no extra read).
 * 2. **Calibration** (optional; needed by `frequency`, `gptq`, and the output-error costs of
 *    `budget`): the float64 reference runs a little text and records routing counts and a bounded
 *    sample of each expert's inputs (compiler/calibration.ts).
 * 3. **Costs** (`budget` only): each expert quantized at every candidate width, damage measured
 *    on its calibration inputs (compiler/expert_error.ts) and scaled per layer by that layer's
 *    measured loss sensitivity on the calibration text (`budgetCost: "layer"`, docs/STUDY.md) or,
 *    without calibration, as weight error.
 * 4. **Allocation**: bits[layer][expert] from the chosen allocator (compiler/passes/).
 * 5. **Emit**: tensor by tensor, quantized per the plan, streamed into the artifact.
 *
 * @module
 */

import { type ModelIR, type PlacedTensor, type TensorRef } from "./ir_legacy.ts";
import { type BlockJob, type BlockRunner, inlineRunner } from "./parallel/block.ts";
import { chunkRanges } from "./parallel/chunked.ts";
import {
  allocate,
  type Allocation,
  type AllocationSummary,
  type AllocatorName,
  maxVariance,
  routerNorm,
  routingFrequency,
  type ScoreTable,
} from "./passes/mod.ts";
import { HessianAccumulator, quantizeMatrix, type QuantMethod } from "./quantize/mod.ts";
import { emitArtifact, type TensorEncoding } from "./emit/mod.ts";
import { MomentAccumulator } from "./emit/stats.ts";
import { QuantizePool } from "./parallel/pool.ts";
import { evaluateReference, prepareReference } from "./reference/mod.ts";
import { calibrate, type CalibrationData } from "./calibration.ts";
import {
  type ExpertWeights,
  layerDelta,
  layerScales,
  outputError,
  squaredError,
} from "./expert_error.ts";
import type { ExpertReport, FloatStorage } from "../schemas/artifact.ts";
import { UsageError } from "../schemas/errors.ts";
import {
  dequantize,
  isQuantBits,
  packedByteSizes,
  type QuantBits,
  type QuantLayout,
} from "../schemas/packing.ts";
import { silu } from "./reference/mod.ts";

/** Storage of non-expert weights: a float type or a quantized width. */
export type DenseBits = FloatStorage | QuantBits;

/** Options of {@link compileModel}. */
export interface CompileOptions {
  /** Target average expert bit width, or a float storage for unquantized experts. */
  expertBits: number | FloatStorage;
  /** Non-expert matrices (attention, lm_head, shared/dense MLPs); default 8. */
  denseBits?: DenseBits;
  /** Default "paper". */
  allocator?: AllocatorName;
  /** Expert quantizer; default "hqq" when the lowest expert width ≤ 3, else "rtn". */
  quantizer?: QuantMethod;
  /** Quantizer of dense matrices when `denseBits` is a width; default "rtn". */
  denseQuantizer?: QuantMethod;
  /** Columns per quantization group (default 64). */
  groupSize?: number;
  /** MaxVar reorder factor of the paper allocator (default 3). */
  zeta?: number;
  /** Seed of the random allocator (default 0). */
  seed?: number;
  /** Widths of order-based allocators (default: the two around the target). */
  levels?: number[];
  /** Candidate widths of the budget allocator (default [2, 3, 4]). */
  widths?: number[];
  /**
   * What the budget allocator minimises per expert and width: "layer" (default with calibration)
   * the output error on calibration inputs scaled by the layer's measured loss sensitivity,
   * "output" the output error alone, "weight" (default without calibration) the squared weight
   * error.
   */
  budgetCost?: "layer" | "output" | "weight";
  /** Byte budget for all experts (budget allocator), instead of the average. */
  maxBytes?: number;
  /** Step-0 checkpoint of the same model (router-norm change). */
  init?: ModelIR;
  /** Calibration token ids (frequency, gptq, budget output-error costs). */
  calibrationIds?: number[];
  /** Calibration already collected (e.g. by a study compiling many variants); wins over ids. */
  calibration?: CalibrationData;
  /** Calibration window (default: the model's max positions, at most 512). */
  calibrationContext?: number;
  /** Worker threads quantizing RTN/HQQ matrices (0 = this thread; output is identical). */
  workers?: number;
  /** Progress: phase name, done, total. */
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** Wall-clock milliseconds per phase. */
export interface CompileTimings {
  /** Scores + allocation (the passes proper). */
  passes: number;
  calibration: number;
  /** Budget costs: quantizing every expert at every candidate width. */
  costs: number;
  emit: number;
  total: number;
}

/** What {@link compileModel} produced. */
export interface CompileResult {
  path: string;
  bytes: number;
  allocation: AllocationSummary | null;
  experts: ExpertReport[];
  timings: CompileTimings;
}

const FLOATS: readonly string[] = ["f32", "f16", "bf16"];

/** Parses "2.5" | "3" | "f16"... as an expert-bits option. */
export function parseExpertBits(s: string): number | FloatStorage {
  if (FLOATS.includes(s)) return s as FloatStorage;
  const v = Number(s);
  if (!Number.isFinite(v) || v < 2 || v > 8) {
    throw new UsageError(`--expert-bits must be a number in [2, 8] or f32|f16|bf16 (got "${s}")`);
  }
  return v;
}

/** Parses "8" | "4" | "f16"... as a dense-bits option. */
export function parseDenseBits(s: string): DenseBits {
  if (FLOATS.includes(s)) return s as FloatStorage;
  const v = Number(s);
  if (!isQuantBits(v)) {
    throw new UsageError(`--dense-bits must be 2, 3, 4, 8, f32, f16 or bf16 (got "${s}")`);
  }
  return v;
}

/** How each non-expert tensor is stored for a dense-bits choice (the one place this policy lives). */
export function denseEncoding(
  placed: PlacedTensor,
  denseBits: DenseBits,
  groupSize: number,
  method: QuantMethod,
): TensorEncoding {
  const { role, ref } = placed;
  if (ref.shape.length !== 2) return { storage: "f32" }; // norms and biases
  if (role === "router" || role === "shared_expert_gate") {
    // The router decides which experts run: at least f16, f32 when dense weights are f32.
    return { storage: denseBits === "f32" ? "f32" : "f16" };
  }
  if (typeof denseBits === "string") return { storage: denseBits };
  // Embeddings are a lookup table, not a matmul: kept f16 when dense matrices are quantized.
  if (role === "embed") return { storage: "f16" };
  return { storage: "q", bits: denseBits, groupSize, method };
}

interface ExpertRefs {
  layer: number;
  expert: number;
  gate: PlacedTensor["ref"];
  up: PlacedTensor["ref"];
  down: PlacedTensor["ref"];
}

function expertsOf(ir: ModelIR): ExpertRefs[] {
  const out: ExpertRefs[] = [];
  for (const layer of ir.layers) {
    if (layer.ffn.kind !== "moe") continue;
    for (const e of layer.ffn.experts) {
      out.push({ layer: layer.index, expert: e.index, gate: e.gate, up: e.up, down: e.down });
    }
  }
  return out;
}

async function readExpert(e: ExpertRefs): Promise<ExpertWeights> {
  const [inter, hidden] = e.gate.shape;
  return {
    gate: await e.gate.read(),
    up: await e.up.read(),
    down: await e.down.read(),
    hidden,
    inter,
  };
}

/** An expert quantized at `bits` and dequantized again (GPTQ needs `hessians`). */
export function quantizeExpert(
  w: ExpertWeights,
  bits: QuantBits,
  groupSize: number,
  method: QuantMethod,
  hessians?: { x: Float64Array; a: Float64Array },
): ExpertWeights {
  const q = (m: Float32Array, rows: number, cols: number, h?: Float64Array) =>
    dequantize(quantizeMatrix(m, rows, cols, { bits, groupSize, method, hessian: h }));
  return {
    gate: q(w.gate, w.inter, w.hidden, hessians?.x),
    up: q(w.up, w.inter, w.hidden, hessians?.x),
    down: q(w.down, w.hidden, w.inter, hessians?.a),
    hidden: w.hidden,
    inter: w.inter,
  };
}

/** GPTQ Hessians of an expert from its calibration sample: inputs x, and down's inputs a. */
export function expertHessians(
  w: ExpertWeights,
  calib: CalibrationData,
  layer: number,
  expert: number,
): { x: Float64Array; a: Float64Array } {
  const s = calib.samples[layer][expert];
  const hx = new HessianAccumulator(w.hidden);
  const ha = new HessianAccumulator(w.inter);
  const a = new Float64Array(w.inter);
  for (let t = 0; t < s.n; t++) {
    const x = s.inputs.subarray(t * w.hidden, (t + 1) * w.hidden);
    hx.add(x);
    for (let i = 0; i < w.inter; i++) {
      let g = 0;
      let u = 0;
      const o = i * w.hidden;
      for (let c = 0; c < w.hidden; c++) {
        g += w.gate[o + c] * x[c];
        u += w.up[o + c] * x[c];
      }
      a[i] = silu(g) * u;
    }
    ha.add(a);
  }
  return { x: hx.finish(), a: ha.finish() };
}

function table<T>(ir: ModelIR, fill: (layer: number, expert: number) => T): T[][] {
  return ir.layers.map((l) =>
    l.ffn.kind === "moe" ? l.ffn.experts.map((e) => fill(l.index, e.index)) : []
  );
}

/**
 * Compiles `ir` into an artifact at `dest`. Streams tensor by tensor; calibration (when asked
 * for) holds the model in float64 for the reference forward pass.
 */
export async function compileModel(
  ir: ModelIR,
  dest: string,
  opts: CompileOptions,
): Promise<CompileResult> {
  const t0 = performance.now();
  const cfg = ir.config;
  const groupSize = opts.groupSize ?? 64;
  const denseBits = opts.denseBits ?? 8;
  const denseMethod = opts.denseQuantizer ?? "rtn";
  const allocator = opts.allocator ?? "paper";
  const progress = opts.onProgress ?? (() => {});
  const timings: CompileTimings = { passes: 0, calibration: 0, costs: 0, emit: 0, total: 0 };
  const experts = expertsOf(ir);
  const quantizedExperts = typeof opts.expertBits === "number";
  const widths = (opts.widths ?? [2, 3, 4]).map((b) => {
    if (!isQuantBits(b)) throw new UsageError(`--widths: ${b} is not one of 2, 3, 4, 8`);
    return b;
  });

  // 1. Weight-only scores.
  let t = performance.now();
  const routers = async (m: ModelIR) =>
    await Promise.all(m.layers.map((l) => (l.ffn.kind === "moe" ? l.ffn.router.read() : null)));
  if (opts.init && opts.init.layers.length !== ir.layers.length) {
    throw new UsageError(
      `--init has ${opts.init.layers.length} layers, the model ${ir.layers.length}`,
    );
  }
  const lambda = routerNorm(
    await routers(ir),
    cfg.hiddenSize,
    opts.init ? await routers(opts.init) : undefined,
  );
  const maxVar: ScoreTable = table(ir, () => 0);
  // MaxVar needs a read of every expert's first matrix. Only the paper's orderings need it
  // before allocation; otherwise it is taken while the matrices stream through the emit below.
  const maxVarFirst = quantizedExperts &&
    (allocator === "paper" || allocator === "reverse-paper");
  // The pool serves the MaxVar reads here and the emit below; closed at the end either way.
  const pool = opts.workers ? new QuantizePool(opts.workers) : undefined;
  try {
    return await compileWithPool();
  } finally {
    pool?.close();
  }

  async function compileWithPool(): Promise<CompileResult> {
    if (maxVarFirst) {
      await rowVariances(
        experts.map((e) => e.gate),
        pool ?? inlineRunner,
        (i, v) => {
          const e = experts[i];
          maxVar[e.layer][e.expert] = v;
          progress("scores", i + 1, experts.length);
        },
      );
    }
    timings.passes += performance.now() - t;

    // 2. Calibration.
    const method: QuantMethod = opts.quantizer ??
      (Math.min(...widths, Math.floor(Number(opts.expertBits) || 8)) <= 3 ? "hqq" : "rtn");
    const needCalib = quantizedExperts &&
      (allocator === "frequency" || method === "gptq" || opts.calibrationIds !== undefined);
    let calib: CalibrationData | null = opts.calibration ?? null;
    if (needCalib && !calib) {
      if (!opts.calibrationIds) {
        throw new UsageError(
          `${
            allocator === "frequency" ? "--allocator frequency" : "--quantizer gptq"
          } needs --calibration`,
        );
      }
      t = performance.now();
      const ref = await prepareReference(ir);
      calib = await calibrate(ref, opts.calibrationIds, {
        context: opts.calibrationContext ?? Math.min(cfg.maxPositions, 512),
        onProgress: (d, n) => progress("calibration", d, n),
      });
      timings.calibration = performance.now() - t;
    }
    const frequency = calib ? routingFrequency(calib.counts) : undefined;

    // 3. Budget costs: every expert at every candidate width.
    const layout = (rows: number, cols: number, bits: QuantBits): QuantLayout => ({
      rows,
      cols,
      bits,
      groupSize,
      scaleType: "f16",
    });
    const expertBytes = (e: ExpertRefs, bits: QuantBits) =>
      [e.gate, e.up, e.down].reduce(
        (s, r) => s + packedByteSizes(layout(r.shape[0], r.shape[1], bits)).total,
        0,
      );
    let budget;
    const budgetNotes: string[] = [];
    if (quantizedExperts && allocator === "budget") {
      t = performance.now();
      const costMode = opts.budgetCost ?? (calib ? "layer" : "weight");
      if (costMode !== "weight" && !calib) {
        throw new UsageError(`budget cost "${costMode}" needs calibration data`);
      }
      const memoKey = `budget|${method}|${groupSize}|${widths}|${costMode}`;
      type Costs = { cost: number[][][]; bytes: number[][][]; notes: string[] };
      let costs = calib?.memo.get(memoKey) as Costs | undefined;
      if (!costs) {
        const cost = table(ir, () => [] as number[]);
        const bytes = table(ir, () => [] as number[]);
        const notes: string[] = [];
        // "layer": each layer's output-error proxies are scaled to measured bits/token (see
        // layerScales), one layer at a time so only that layer's quantized experts are held.
        const ref = costMode === "layer" ? await prepareReference(ir) : null;
        const base = ref
          ? (await evaluateReference(ref, calib!.ids, { context: calib!.context })).bitsPerToken
          : 0;
        const deltas = ir.layers.map(() => 0);
        let lowest: ExpertWeights[] = [];
        for (const [i, e] of experts.entries()) {
          const w = await readExpert(e);
          const h = method === "gptq" && calib
            ? expertHessians(w, calib, e.layer, e.expert)
            : undefined;
          for (const b of widths) {
            const q = quantizeExpert(w, b, groupSize, method, h);
            if (ref && b === widths[0]) lowest[e.expert] = q;
            cost[e.layer][e.expert].push(
              costMode !== "weight"
                ? outputError(w, q, calib!.samples[e.layer][e.expert]).cost
                : (["gate", "up", "down"] as const).reduce(
                  (s, k) => s + squaredError(w[k], q[k]).err,
                  0,
                ),
            );
            bytes[e.layer][e.expert].push(expertBytes(e, b));
          }
          const last = i + 1 === experts.length || experts[i + 1].layer !== e.layer;
          if (ref && last) {
            deltas[e.layer] = await layerDelta(
              ref,
              calib!.ids,
              calib!.context,
              e.layer,
              lowest,
              base,
            );
            lowest = [];
          }
          progress("costs", i + 1, experts.length);
        }
        if (ref) {
          const scale = layerScales(
            deltas,
            cost.map((row) => row.reduce((s, c) => s + (c[0] ?? 0), 0)),
          );
          cost.forEach((row, l) => row.forEach((c) => c.forEach((_, k) => c[k] *= scale[l])));
          notes.push(
            `budget cost: output error × measured layer sensitivity; Δ bits/token with a layer's ` +
              `experts at ${widths[0]} bits: ${deltas.map((d) => d.toFixed(4)).join(", ")}`,
          );
        } else {notes.push(
            `budget cost: ${costMode === "output" ? "output error" : "weight error"}`,
          );}
        costs = { cost, bytes, notes };
        calib?.memo.set(memoKey, costs);
      }
      budgetNotes.push(...costs.notes);
      budget = { widths, cost: costs.cost, bytes: costs.bytes, maxBytes: opts.maxBytes };
      timings.costs = performance.now() - t;
    }

    // 4. Allocation.
    t = performance.now();
    let allocation: Allocation | null = null;
    if (quantizedExperts) {
      allocation = allocate(allocator, {
        targetAverage: opts.maxBytes !== undefined && allocator === "budget"
          ? undefined
          : (opts.expertBits as number),
        expertsPerLayer: ir.layers.map((l) => (l.ffn.kind === "moe" ? l.ffn.experts.length : 0)),
        lambda: lambda.scores,
        usedInit: lambda.usedInit,
        maxVar,
        frequency,
        zeta: opts.zeta,
        seed: opts.seed,
        levels: opts.levels,
        budget,
      });
    }
    allocation?.summary.notes.push(...budgetNotes);
    timings.passes += performance.now() - t;

    // 5. Emit, measuring each expert's weight error and statistics as its matrices stream by.
    t = performance.now();
    const scoreTables: Record<string, ScoreTable> = {
      lambda: lambda.scores,
      maxVar,
      ...(frequency ? { frequency } : {}),
    };
    const errAcc = table(
      ir,
      () => ({ err: 0, ref: 0, parts: 0, moments: new MomentAccumulator() }),
    );
    const stats = table(ir, () => ({ range: 0, kurtosis: 0 }));
    const report = (): ExpertReport[] =>
      experts.map((e) => {
        const bits = allocation ? allocation.bits[e.layer][e.expert] : 0;
        const scores: Record<string, number> = {};
        for (const [k, v] of Object.entries(scoreTables)) scores[k] = v[e.layer][e.expert];
        scores.range = stats[e.layer][e.expert].range;
        scores.kurtosis = stats[e.layer][e.expert].kurtosis;
        const acc = errAcc[e.layer][e.expert];
        return {
          layer: e.layer,
          expert: e.expert,
          bits,
          bytes: bits ? expertBytes(e, bits as QuantBits) : 0,
          rank: allocation ? allocation.rank[e.layer][e.expert] : -1,
          relError: quantizedExperts && acc.ref > 0 ? Math.sqrt(acc.err / acc.ref) : -1,
          scores,
        };
      });
    const hessianCache = new Map<string, { x: Float64Array; a: Float64Array }>();
    const written = await emitArtifact(ir, dest, {
      pool,
      encode: (p) => {
        if (p.expert < 0 || !p.role.startsWith("expert_")) {
          return denseEncoding(p, denseBits, groupSize, denseMethod);
        }
        if (!allocation) return { storage: opts.expertBits as FloatStorage };
        const bits = allocation.bits[p.layer][p.expert];
        const enc: TensorEncoding = { storage: "q", bits, groupSize, method };
        if (method === "gptq" && calib) {
          const key = `${p.layer}/${p.expert}`;
          const which = p.role === "expert_down" ? "a" : "x";
          enc.hessian = async () => {
            let h = hessianCache.get(key);
            if (!h) {
              hessianCache.clear(); // one expert at a time: memory stays bounded
              const e = experts.find((x) => x.layer === p.layer && x.expert === p.expert)!;
              h = expertHessians(await readExpert(e), calib!, p.layer, p.expert);
              hessianCache.set(key, h);
            }
            return h[which];
          };
        }
        return enc;
      },
      experts: report,
      options: {
        expertBits: opts.expertBits,
        denseBits,
        allocator,
        quantizer: method,
        denseQuantizer: denseMethod,
        groupSize,
        zeta: opts.zeta ?? 3,
        seed: opts.seed ?? 0,
        widths,
        maxBytes: opts.maxBytes ?? null,
        init: opts.init ? opts.init.source : null,
        calibrationTokens: calib?.tokens ?? 0,
      },
      onQuantError: (p, err, ref) => {
        if (p.expert < 0 || !p.role.startsWith("expert_")) return;
        const acc = errAcc[p.layer][p.expert];
        acc.err += err;
        acc.ref += ref;
      },
      // Streamed: the moments of each block are taken where it is quantized; the three matrices
      // are never held together.
      moments: (p) =>
        p.expert >= 0 && p.role.startsWith("expert_")
          ? errAcc[p.layer][p.expert].moments
          : undefined,
      rowVariance: (p) =>
        !maxVarFirst && p.role === "expert_gate" ? (v) => maxVar[p.layer][p.expert] = v : undefined,
      onTensor: (rec, i, n) => {
        progress("emit", i + 1, n);
        if (rec.expert < 0 || !rec.role.startsWith("expert_")) return;
        const acc = errAcc[rec.layer][rec.expert];
        if (++acc.parts === 3) {
          const ws = acc.moments.finish();
          stats[rec.layer][rec.expert] = { range: ws.range, kurtosis: ws.kurtosis };
        }
      },
    });
    timings.emit = performance.now() - t;
    timings.total = performance.now() - t0;
    return {
      path: written.path,
      bytes: written.bytes,
      allocation: allocation?.summary ?? null,
      experts: report(),
      timings,
    };
  }
}

/**
 * MaxVar of each matrix (the largest row variance, `maxVariance`), read in row blocks through
 * `runner` with a few blocks in flight; `done(i, value)` is called in order. The maximum over
 * blocks is the maximum over rows, so the values equal `maxVariance` of the whole matrices.
 */
export async function rowVariances(
  refs: readonly TensorRef[],
  runner: BlockRunner,
  done: (i: number, value: number) => void,
): Promise<void> {
  const window = runner.lanes + 2;
  const blocks: [number, number, number][] = [];
  refs.forEach((ref, i) => {
    if (ref.shape.length === 2 && (ref.readRawRows || ref.readRows)) {
      for (const [a, b] of chunkRanges(ref.shape[0])) blocks.push([i, a, b]);
    } else {
      blocks.push([i, 0, -1]);
    }
  });
  const start = async ([i, a, b]: [number, number, number]): Promise<number> => {
    const ref = refs[i];
    const [rows, cols] = ref.shape;
    if (b < 0) return maxVariance(await ref.read(), rows, cols, ref.name);
    const job: BlockJob = {
      ...(ref.readRawRows
        ? { raw: await ref.readRawRows(a, b - a) }
        : { values: await ref.readRows!(a, b - a) }),
      rows: b - a,
      cols,
      name: ref.name,
      rowVariance: true,
    };
    return (await runner.run(job)).rowVariance!;
  };
  const inFlight: Promise<number>[] = [];
  let next = 0;
  const fill = () => {
    while (inFlight.length < window && next < blocks.length) {
      const p = start(blocks[next++]);
      p.catch(() => {});
      inFlight.push(p);
    }
  };
  fill();
  let best = 0;
  for (let k = 0; k < blocks.length; k++) {
    const v = await inFlight.shift()!;
    fill();
    const [i, , b] = blocks[k];
    if (v > best) best = v;
    const last = b < 0 || k + 1 === blocks.length || blocks[k + 1][0] !== i;
    if (last) {
      done(i, best);
      best = 0;
    }
  }
}
