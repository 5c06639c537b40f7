/**
 * Stage 5 of `compileModel`: the artifact. Every tensor is written in the model's canonical order
 * (compiler/emit/), encoded per the plan: routed-expert matrices at their allocated width (or the
 * expert float type), everything else per {@link denseEncoding}. As each expert's matrices stream
 * by, its weight error and weight statistics are measured (and MaxVar, when the allocation did not
 * need it first), so the report stored in the header costs no extra read.
 *
 * @module
 */

import type { ExpertReport } from "../../schemas/artifact.ts";
import { MXFP4_WIDTH } from "../../schemas/packing.ts";
import { keyString, type TensorKey } from "../../schemas/tensors.ts";
import type { MatrixName } from "../../schemas/model.ts";
import type { CalibrationData } from "../calibration.ts";
import { emitArtifact, type TensorEncoding, type WrittenArtifact } from "../emit/mod.ts";
import { MomentAccumulator } from "../emit/stats.ts";
import {
  expertBytes,
  type ExpertHessians,
  expertHessians,
  outputMatrix,
  readExpert,
} from "../expert_weights.ts";
import type { ExpertIR, ModelIR, MoeLayerIR, PlacedTensor } from "../ir.ts";
import type { QuantizePool } from "../parallel/pool.ts";
import { type Allocation, expertReport, type ScoreTable } from "../passes/mod.ts";
import type { QuantMethod } from "../quantize/mod.ts";
import type { CompilePlan, DenseStorage } from "./plan.ts";
import { storageJson } from "./plan.ts";
import type { WeightScores } from "./weight_scores.ts";

/**
 * How each non-expert tensor is stored for a dense storage choice (the one place this policy
 * lives). Vectors stay f32. The router and the shared-expert gate decide what runs and the
 * relative-position bias table is added to attention scores: at least f16, f32 when dense weights
 * are f32. The embedding is a lookup table, not a matmul: f16 when dense matrices are quantized.
 */
export function denseEncoding(
  placed: PlacedTensor,
  dense: DenseStorage,
  groupSize: number,
  method: QuantMethod,
): TensorEncoding {
  const { role, ref } = placed;
  if (ref.shape.length !== 2) return { storage: "f32" };
  if (role === "router" || role === "shared_expert_gate" || role.endsWith("relative_bias")) {
    return { storage: dense.kind === "float" && dense.storage === "f32" ? "f32" : "f16" };
  }
  if (dense.kind === "float") return { storage: dense.storage };
  if (role === "embed") return { storage: "f16" };
  return { storage: "q", bits: dense.bits, groupSize, method };
}

/** Everything the emit stage reads. */
export interface EmitInputs {
  /** The model's MoE layers (`moeLayers(ir)`), the rows of every table. */
  layers: readonly MoeLayerIR[];
  plan: CompilePlan;
  allocation: Allocation | null;
  /** Its `maxVar` is completed here when `plan.maxVarFirst` is false. */
  scores: WeightScores;
  frequency?: ScoreTable;
  calib: CalibrationData | null;
  pool?: QuantizePool;
}

/** What the emit wrote, and the expert report it stored. */
export interface EmitResult {
  written: WrittenArtifact;
  experts: ExpertReport[];
}

/** One routed-expert matrix: where its expert sits and which matrix of it this is. */
interface ExpertSlot {
  moeLayer: number;
  expert: ExpertIR;
  name: MatrixName;
  /** Position in the expert's matrices (0: the first, what MaxVar reads). */
  position: number;
}

/** What is measured of an expert while its matrices stream by. */
interface ExpertMeasure {
  /** Σ(w − ŵ)² and Σw² over its matrices. */
  err: number;
  ref: number;
  /** Matrices written so far. */
  written: number;
  moments: MomentAccumulator;
  range: number;
  kurtosis: number;
}

/** Every routed-expert matrix of `layers`, by tensor key. */
function expertSlots(layers: readonly MoeLayerIR[]): Map<string, ExpertSlot> {
  const slots = new Map<string, ExpertSlot>();
  layers.forEach((l, moeLayer) => {
    for (const expert of l.experts) {
      expert.matrices.forEach(({ name }, position) => {
        const key: TensorKey = {
          stack: l.stack,
          layer: l.layer,
          expert: expert.index,
          role: `expert_${name}`,
        };
        slots.set(keyString(key), { moeLayer, expert, name, position });
      });
    }
  });
  return slots;
}

/** GPTQ Hessians, computed one expert at a time (memory stays bounded). */
function hessianSource(calib: CalibrationData) {
  let held: { expert: ExpertIR; hessians: Promise<ExpertHessians> } | null = null;
  return (slot: ExpertSlot): Promise<ExpertHessians> => {
    if (held?.expert !== slot.expert) {
      const sample = calib.samples[slot.moeLayer][slot.expert.index];
      held = {
        expert: slot.expert,
        hessians: readExpert(slot.expert).then((w) => expertHessians(w, sample)),
      };
    }
    return held.hessians;
  };
}

/** Writes `ir` to `dest` per the plan and the allocation; see the module doc. */
export async function emitCompiled(
  ir: ModelIR,
  dest: string,
  inputs: EmitInputs,
): Promise<EmitResult> {
  const { layers, plan, allocation, scores, calib } = inputs;
  const slots = expertSlots(layers);
  const measures: ExpertMeasure[][] = layers.map((l) =>
    l.experts.map(() => ({
      err: 0,
      ref: 0,
      written: 0,
      moments: new MomentAccumulator(),
      range: 0,
      kurtosis: 0,
    }))
  );
  const measureOf = (slot: ExpertSlot) => measures[slot.moeLayer][slot.expert.index];
  const hessians = plan.quantizer === "gptq" && calib ? hessianSource(calib) : null;

  const encode = (p: PlacedTensor): TensorEncoding => {
    const slot = slots.get(keyString(p));
    if (!slot) return denseEncoding(p, plan.denseStorage, plan.groupSize, plan.denseQuantizer);
    if (!allocation) {
      const storage = plan.expertStorage;
      if (storage.kind !== "float") throw new Error("internal: quantized experts need bits");
      return { storage: storage.storage };
    }
    const bits = allocation.bits[slot.moeLayer][slot.expert.index];
    if (bits === MXFP4_WIDTH) return { storage: "mxfp4", released: p.ref.readMxfp4 !== undefined };
    const enc: TensorEncoding = {
      storage: "q",
      bits,
      groupSize: plan.groupSize,
      method: plan.quantizer,
    };
    if (hessians) {
      const side = slot.name === outputMatrix(slot.expert.activation) ? "output" : "input";
      enc.hessian = async () => (await hessians(slot))[side];
    }
    return enc;
  };

  const table = (f: (m: ExpertMeasure) => number): ScoreTable => measures.map((row) => row.map(f));
  const report = (): ExpertReport[] =>
    expertReport({
      layers: layers.map((l) => ({ stack: l.stack, layer: l.layer, numExperts: l.experts.length })),
      allocation,
      bytes: (m, e, bits) =>
        expertBytes(layers[m].experts[e].matrices.map((x) => x.weight.shape), bits, plan.groupSize),
      scores: {
        lambda: scores.lambda,
        maxVar: scores.maxVar,
        ...(inputs.frequency ? { frequency: inputs.frequency } : {}),
        range: table((m) => m.range),
        kurtosis: table((m) => m.kurtosis),
      },
      relError: plan.quantizedExperts
        ? table((m) => (m.ref > 0 ? Math.sqrt(m.err / m.ref) : -1))
        : undefined,
    });

  const written = await emitArtifact(ir, dest, {
    pool: inputs.pool,
    encode,
    experts: report,
    options: {
      expertBits: storageJson(plan.expertStorage),
      denseBits: storageJson(plan.denseStorage),
      allocator: plan.allocator,
      quantizer: plan.quantizer,
      denseQuantizer: plan.denseQuantizer,
      groupSize: plan.groupSize,
      zeta: plan.zeta,
      seed: plan.seed,
      widths: plan.widths,
      maxBytes: plan.maxBytes ?? null,
      init: plan.init ? plan.init.source : null,
      calibrationTokens: calib?.tokens ?? 0,
    },
    onQuantError: (p, err, ref) => {
      const slot = slots.get(keyString(p));
      if (!slot) return;
      const m = measureOf(slot);
      m.err += err;
      m.ref += ref;
    },
    // Streamed: the moments of each block are taken where it is quantized; an expert's matrices
    // are never held together.
    moments: (p) => {
      const slot = slots.get(keyString(p));
      return slot ? measureOf(slot).moments : undefined;
    },
    rowVariance: (p) => {
      const slot = slots.get(keyString(p));
      if (plan.maxVarFirst || !slot || slot.position !== 0) return undefined;
      return (v) => scores.maxVar[slot.moeLayer][slot.expert.index] = v;
    },
    onTensor: (rec, i, n) => {
      plan.onProgress("emit", i + 1, n);
      const slot = slots.get(keyString(rec));
      if (!slot) return;
      const m = measureOf(slot);
      if (++m.written === slot.expert.matrices.length) {
        const stats = m.moments.finish();
        m.range = stats.range;
        m.kurtosis = stats.kurtosis;
      }
    },
  });
  return { written, experts: report() };
}
