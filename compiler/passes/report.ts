/**
 * The per-expert report the artifact stores: what every routed expert was given and why, one row
 * per expert of every MoE layer (encoder first, then decoder; experts in index order), named by
 * (stack, layer, expert) where `layer` is the layer's index within its stack.
 *
 * @module
 */

import type { ExpertReport } from "../../schemas/artifact.ts";
import type { StackName } from "../../schemas/model.ts";
import type { ExpertWidth } from "../../schemas/packing.ts";
import type { Allocation } from "./allocation_result.ts";
import type { ScoreTable } from "./scores.ts";

/** Where a MoE layer sits and how many experts it has (the rows of every table). */
export interface ReportLayer {
  stack: StackName;
  /** The layer's index within its stack. */
  layer: number;
  numExperts: number;
}

/** What {@link expertReport} copies into the rows. */
export interface ReportInputs {
  /** The MoE layers, in table order (`moeLayers(ir)`). */
  layers: readonly ReportLayer[];
  /** The allocation; null for float experts (bits 0, rank −1, bytes 0). */
  allocation: Allocation | null;
  /** Stored bytes of expert `expert` of MoE layer `moeLayer` at `bits`. */
  bytes: (moeLayer: number, expert: number, bits: ExpertWidth) => number;
  /** Score tables to copy into each row, by column name, in this order. */
  scores: Record<string, ScoreTable>;
  /** Measured relative error per expert; a missing table or entry is written −1. */
  relError?: ScoreTable;
}

/** One report row per routed expert (see the module doc). */
export function expertReport(inputs: ReportInputs): ExpertReport[] {
  const { allocation } = inputs;
  const rows: ExpertReport[] = [];
  inputs.layers.forEach(({ stack, layer, numExperts }, m) => {
    for (let e = 0; e < numExperts; e++) {
      const bits = allocation ? allocation.bits[m][e] : 0;
      const scores: Record<string, number> = {};
      for (const [name, table] of Object.entries(inputs.scores)) {
        const v = table[m]?.[e];
        if (v !== undefined) scores[name] = v;
      }
      rows.push({
        stack,
        layer,
        expert: e,
        bits,
        bytes: allocation ? inputs.bytes(m, e, bits as ExpertWidth) : 0,
        rank: allocation ? allocation.rank[m][e] : -1,
        relError: inputs.relError?.[m]?.[e] ?? -1,
        scores,
      });
    }
  });
  return rows;
}
