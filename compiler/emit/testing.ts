/**
 * Test helpers for the back end: synthetic ModelIRs (any model description, every tensor it
 * implies holding seeded values, readable whole or by rows) to emit without a checkpoint.
 *
 * The values are those schemas/testing.ts `buildArtifact` stores by default (tensor i of
 * `expectedTensors` seeded with i + 1, named by its key string), so an f32 emit of
 * `syntheticIR(spec)` and `buildArtifact(spec)` are the same file byte for byte.
 *
 * @module
 */

import type { ModelIR, PlacedTensor } from "../ir.ts";
import type { ModelSpec } from "../../schemas/model.ts";
import { type ExpectedTensor, expectedTensors, keyString } from "../../schemas/tensors.ts";
import { seededValues } from "../../schemas/testing.ts";

export { seededValues } from "../../schemas/testing.ts";

/** Options of {@link syntheticIR}. */
export interface SyntheticOptions {
  /** Tensor i's values (default: seeded with i + 1, in (−1, 1)). */
  values?: (t: ExpectedTensor, index: number) => Float32Array;
  /** Source dtype reported by the refs (default "F32"). */
  dtype?: string;
  /** `source` of the IR (default "synthetic"). */
  source?: string;
}

/**
 * A ModelIR of `spec` with every tensor `expectedTensors(spec)` lists, in that order, each a ref
 * over values held in memory (read whole or by rows).
 */
export function syntheticIR(spec: ModelSpec, opts: SyntheticOptions = {}): ModelIR {
  const tensors: PlacedTensor[] = expectedTensors(spec).map((t, i) => {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    const values = opts.values?.(t, i) ?? seededValues(numel, i + 1);
    if (values.length !== numel) throw new Error(`${keyString(t)}: ${values.length} values`);
    const cols = t.shape.length === 2 ? t.shape[1] : numel;
    return {
      stack: t.stack,
      layer: t.layer,
      expert: t.expert,
      role: t.role,
      ref: {
        name: keyString(t),
        shape: t.shape,
        dtype: opts.dtype ?? "F32",
        read: () => Promise.resolve(values.slice()),
        readRows: (start: number, count: number) =>
          Promise.resolve(values.slice(start * cols, (start + count) * cols)),
      },
    };
  });
  return {
    spec,
    tensors,
    tokenizer: { tokenizerJson: null, chatTemplate: null },
    source: opts.source ?? "synthetic",
  };
}
