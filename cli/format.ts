/**
 * Human-readable summaries shared by `compile`, `study` and `demo`.
 *
 * @module
 */

import type { AllocationSummary } from "../compiler/passes/mod.ts";
import type { ExpertReport } from "../schemas/artifact.ts";

/** A per-layer bit map plus the summary line of an allocation. */
export function formatAllocation(a: AllocationSummary, experts: ExpertReport[]): string {
  // Rows by MoE layer, in report order; the encoder's layers are named as such.
  const layers = new Map<string, ExpertReport[]>();
  for (const e of experts) {
    const name = `${e.stack === "decoder" ? "" : `${e.stack} `}layer ${
      String(e.layer).padStart(2)
    }`;
    if (!layers.has(name)) layers.set(name, []);
    layers.get(name)!.push(e);
  }
  const lines = [
    `allocator ${a.method}: average expert bits ${a.achievedAverage.toFixed(4)}` +
    (a.targetAverage !== null ? ` (target ${a.targetAverage}${a.exact ? ", exact" : ""})` : "") +
    `; counts ${Object.entries(a.counts).map(([b, n]) => `${n}×${b}-bit`).join(", ")}`,
  ];
  for (const [layer, rows] of layers) {
    const bits = rows.sort((x, y) => x.expert - y.expert).map((r) => r.bits).join(" ");
    lines.push(`  ${layer}: ${bits}`);
  }
  for (const n of a.notes) lines.push(`  note: ${n}`);
  return lines.join("\n");
}
