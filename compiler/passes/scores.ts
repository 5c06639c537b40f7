/**
 * The one representation of per-expert scores used by every sensitivity pass and allocator.
 *
 * A {@link ScoreTable} is `table[layer][expert]`, indexed by the model's layer index. A dense
 * layer (Qwen2-MoE `mlp_only_layers`) has an empty row, so `table.length === numLayers` and
 * indices never need remapping.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";

/** Per-expert scores: `table[layer][expert]`; dense layers have an empty row. */
export type ScoreTable = number[][];

/** Experts per layer of a table (0 for dense layers). */
export function tableShape(table: ScoreTable): number[] {
  return table.map((row) => row.length);
}

/** Total number of experts in a table. */
export function expertCount(table: ScoreTable): number {
  let n = 0;
  for (const row of table) n += row.length;
  return n;
}

/**
 * Throws an InputError naming `name` and the position unless every entry is a finite number and,
 * when `shape` is given, the table has exactly that many experts per layer.
 */
export function checkScoreTable(table: ScoreTable, name: string, shape?: readonly number[]): void {
  if (!Array.isArray(table)) throw new InputError(`${name}: not a [layer][expert] table`);
  if (shape && table.length !== shape.length) {
    throw new InputError(`${name}: ${table.length} layers, expected ${shape.length}`);
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

/** A table of the given shape filled by `f(layer, expert)`. */
export function makeTable(
  shape: readonly number[],
  f: (layer: number, expert: number) => number,
): ScoreTable {
  return shape.map((n, l) => Array.from({ length: n }, (_, e) => f(l, e)));
}
