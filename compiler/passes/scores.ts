/**
 * The one representation of per-expert scores used by every sensitivity pass and allocator.
 *
 * A {@link ScoreTable} is `table[moeLayer][expert]`: the first index is the position of the MoE
 * block in `moeLayers(ir)` (compiler/ir.ts: the encoder's MoE layers first, then the decoder's),
 * so dense layers have no row and every row is one MoE block's experts.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";

/** Per-expert scores: `table[moeLayer][expert]` (see the module doc). */
export type ScoreTable = number[][];

/** Experts per MoE layer of a table. */
export function tableShape(table: ScoreTable): number[] {
  return table.map((row) => row.length);
}

/**
 * Throws an InputError naming `name` and the position unless every entry is a finite number and,
 * when `shape` is given, the table has exactly that many experts per layer.
 */
export function checkScoreTable(table: ScoreTable, name: string, shape?: readonly number[]): void {
  if (!Array.isArray(table)) throw new InputError(`${name}: not a [layer][expert] table`);
  if (shape && table.length !== shape.length) {
    throw new InputError(`${name}: ${table.length} MoE layers, expected ${shape.length}`);
  }
  for (let l = 0; l < table.length; l++) {
    const row = table[l];
    if (!Array.isArray(row)) throw new InputError(`${name}[${l}]: not an array of experts`);
    if (shape && row.length !== shape[l]) {
      throw new InputError(`${name}[${l}]: ${row.length} experts, expected ${shape[l]}`);
    }
    for (let e = 0; e < row.length; e++) {
      if (typeof row[e] !== "number" || !Number.isFinite(row[e])) {
        throw new InputError(`${name}[${l}][${e}]: ${row[e]} is not a finite number`);
      }
    }
  }
}
