/**
 * What a compile is asked to do ({@link CompileOptions}) and the same with every default
 * resolved and checked ({@link CompilePlan}): the record every stage of `compileModel` reads.
 *
 * @module
 */

import type { FloatStorage } from "../../schemas/artifact.ts";
import { UsageError } from "../../schemas/errors.ts";
import {
  EXPERT_WIDTHS,
  type ExpertWidth,
  isExpertWidth,
  MXFP4_WIDTH,
  QUANT_BITS,
  type QuantBits,
} from "../../schemas/packing.ts";
import type { ModelIR } from "../ir.ts";
import type { AllocatorName } from "../passes/mod.ts";
import type { QuantMethod } from "../quantize/mod.ts";
import type { CalibrationData } from "../calibration.ts";
import type { Span } from "../reference/mod.ts";
import type { DataFreeCost } from "../data_free.ts";

/** How routed experts are stored: unquantized in a float type, or at an average bit width. */
export type ExpertStorage =
  | { kind: "float"; storage: FloatStorage }
  | { kind: "bits"; average: number };

/** How non-expert matrices are stored: a float type, or quantized at one width. */
export type DenseStorage =
  | { kind: "float"; storage: FloatStorage }
  | { kind: "bits"; bits: QuantBits };

/** What the `budget` allocator minimises per expert and width (see {@link CompileOptions}). */
export type BudgetCost = "layer" | "output" | "weight";

/** Options of `compileModel`. */
export interface CompileOptions {
  /** Routed experts: a float type, or the target average expert bit width. */
  expertStorage: ExpertStorage;
  /** Non-expert matrices (attention, lm_head, shared/dense MLPs); default 8 bits. */
  denseStorage?: DenseStorage;
  /** Default "paper". */
  allocator?: AllocatorName;
  /** Expert quantizer; default "hqq" when the lowest expert width ≤ 3, else "rtn". */
  quantizer?: QuantMethod;
  /** Quantizer of dense matrices when they are quantized; default "rtn". */
  denseQuantizer?: QuantMethod;
  /** Columns per quantization group (default 64). */
  groupSize?: number;
  /** MaxVar reorder factor of the paper allocator (default 3). */
  zeta?: number;
  /** Seed of the random allocator (default 0). */
  seed?: number;
  /** Widths of order-based allocators (default: the two around the target). */
  levels?: number[];
  /**
   * Candidate widths of the budget allocator (default [2, 3, 4], plus MXFP4_WIDTH when the
   * checkpoint's experts are an MXFP4 release).
   */
  widths?: number[];
  /**
   * What the budget allocator minimises per expert and width: "layer" (default with calibration)
   * the output error on calibration inputs scaled by the layer's measured loss sensitivity,
   * "output" the output error alone, "weight" (default without calibration) the squared weight
   * error.
   */
  budgetCost?: BudgetCost;
  /** The "weight" (data-free) cost's variant (compiler/data_free.ts; default "routing"). */
  dataFreeCost?: DataFreeCost;
  /** Byte budget for all experts (budget allocator), instead of the average. */
  maxBytes?: number;
  /** Step-0 checkpoint of the same model (router-norm change). */
  init?: ModelIR;
  /** Calibration token ids (frequency, gptq, budget output-error costs). */
  calibrationIds?: number[];
  /** Calibration examples of an encoder–decoder model (instead of ids). */
  calibrationSpans?: Span[];
  /** Calibration already collected (e.g. by a study compiling many variants); wins over ids. */
  calibration?: CalibrationData;
  /** Calibration window (default: the model's max positions, at most 512). */
  calibrationContext?: number;
  /** Tokens the budget allocator's layer sensitivity is scored on (default: all calibration). */
  sensitivityTokens?: number;
  /** Worker threads quantizing RTN/HQQ matrices (0 = this thread; output is identical). */
  workers?: number;
  /** Progress: phase name, done, total. */
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** {@link CompileOptions} resolved: every default applied, every choice checked. */
export interface CompilePlan {
  expertStorage: ExpertStorage;
  denseStorage: DenseStorage;
  allocator: AllocatorName;
  /** The expert quantizer (recorded even for float experts, as before). */
  quantizer: QuantMethod;
  denseQuantizer: QuantMethod;
  groupSize: number;
  zeta: number;
  seed: number;
  levels?: number[];
  widths: ExpertWidth[];
  budgetCost?: BudgetCost;
  dataFreeCost: DataFreeCost;
  maxBytes?: number;
  init?: ModelIR;
  /** The experts get an allocation (expert storage is a bit width). */
  quantizedExperts: boolean;
  /** MaxVar is needed before the allocation (the paper's orderings), not taken during the emit. */
  maxVarFirst: boolean;
  /** Calibration must run (frequency, GPTQ, or ids were given) unless it was passed in. */
  calibrationNeeded: boolean;
  calibrationIds?: number[];
  calibrationSpans?: Span[];
  calibration?: CalibrationData;
  calibrationContext: number;
  sensitivityTokens?: number;
  onProgress: (phase: string, done: number, total: number) => void;
}

/** Resolves and checks `opts` for `ir`. */
export function resolvePlan(ir: ModelIR, opts: CompileOptions): CompilePlan {
  const experts = opts.expertStorage;
  if (experts.kind === "bits") {
    const lo = QUANT_BITS[0], hi = QUANT_BITS[QUANT_BITS.length - 1];
    if (!(experts.average >= lo && experts.average <= hi)) {
      throw new UsageError(`expert bits ${experts.average} is outside [${lo}, ${hi}]`);
    }
  }
  // An MXFP4 release's experts are a free candidate: kept as released, they cost no error.
  const released = ir.tensors.some((t) => t.expert >= 0 && t.ref.readMxfp4 !== undefined);
  const widths = (opts.widths ?? (released ? [2, 3, 4, MXFP4_WIDTH] : [2, 3, 4])).map((b) => {
    if (!isExpertWidth(b)) throw new UsageError(`widths: ${b} is not one of ${EXPERT_WIDTHS}`);
    return b;
  });
  const allocator = opts.allocator ?? "paper";
  const quantizedExperts = experts.kind === "bits";
  // The lowest width in play decides the default quantizer (float experts count as 8 bits).
  const lowest = Math.min(...widths, experts.kind === "bits" ? Math.floor(experts.average) : 8);
  const quantizer = opts.quantizer ?? (lowest <= 3 ? "hqq" : "rtn");
  return {
    expertStorage: experts,
    denseStorage: opts.denseStorage ?? { kind: "bits", bits: 8 },
    allocator,
    quantizer,
    denseQuantizer: opts.denseQuantizer ?? "rtn",
    groupSize: opts.groupSize ?? 64,
    zeta: opts.zeta ?? 3,
    seed: opts.seed ?? 0,
    levels: opts.levels,
    widths,
    budgetCost: opts.budgetCost,
    dataFreeCost: opts.dataFreeCost ?? "routing",
    maxBytes: opts.maxBytes,
    init: opts.init,
    quantizedExperts,
    maxVarFirst: quantizedExperts && (allocator === "paper" || allocator === "reverse-paper"),
    calibrationNeeded: quantizedExperts &&
      (allocator === "frequency" || quantizer === "gptq" || opts.calibrationIds !== undefined ||
        opts.calibrationSpans !== undefined),
    calibrationIds: opts.calibrationIds,
    calibrationSpans: opts.calibrationSpans,
    calibration: opts.calibration,
    calibrationContext: opts.calibrationContext ?? Math.min(ir.spec.maxPositions, 512),
    sensitivityTokens: opts.sensitivityTokens,
    onProgress: opts.onProgress ?? (() => {}),
  };
}

/** A storage choice as the artifact's options JSON records it: 2.5, 8, "f16"... */
export function storageJson(s: ExpertStorage | DenseStorage): number | FloatStorage {
  if (s.kind === "float") return s.storage;
  return "average" in s ? s.average : s.bits;
}
