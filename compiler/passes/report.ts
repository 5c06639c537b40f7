/**
 * The per-expert report rows the artifact stores: what every routed expert was given and why.
 *
 * @module
 */

import type { QuantBits } from "../../schemas/packing.ts";
import type { Allocation } from "./allocation.ts";
import type { ScoreTable } from "./scores.ts";

/** One routed expert's row in the artifact's quantization report. */
export interface ExpertReportRow {
  layer: number;
  expert: number;
  /** Width of the expert's matrices. */
  bits: QuantBits;
  /** Stored bytes of the expert (codes + scales + zeros of its three matrices). */
  bytes: number;
  /** Position in its layer's order, 0 = most sensitive (got the most bits). */
  rank: number;
  /** Named scores, e.g. { lambda, maxVar, frequency, range, kurtosis }. */
  scores: Record<string, number>;
  /** Measured relative output error after quantization, null when not measured. */
  relError: number | null;
}

/** Extra material for {@link reportRows}. */
export interface ReportInputs {
  /** Stored bytes of expert (layer, expert) at `bits`. */
  bytes: (layer: number, expert: number, bits: QuantBits) => number;
  /** Score tables to copy into each row, by column name. */
  scores?: Record<string, ScoreTable>;
  /** relError[layer][expert], when measured. */
  relError?: readonly (readonly (number | null)[])[];
}

/** One row per routed expert, layers then experts in index order. */
export function reportRows(allocation: Allocation, inputs: ReportInputs): ExpertReportRow[] {
  const rows: ExpertReportRow[] = [];
  allocation.bits.forEach((row, layer) =>
    row.forEach((bits, expert) => {
      const scores: Record<string, number> = {};
      for (const [name, table] of Object.entries(inputs.scores ?? {})) {
        const v = table[layer]?.[expert];
        if (v !== undefined) scores[name] = v;
      }
      rows.push({
        layer,
        expert,
        bits,
        bytes: inputs.bytes(layer, expert, bits),
        rank: allocation.rank[layer][expert],
        scores,
        relError: inputs.relError?.[layer]?.[expert] ?? null,
      });
    })
  );
  return rows;
}
