/**
 * What a model family contributes to the front end, as data: how its config.json maps to the
 * model description, and where each tensor the description implies is stored in its checkpoints.
 * Everything else (reading, checking shapes, slicing packed tensors, refusing leftovers) is
 * generic (compiler/checkpoint/build_ir.ts).
 *
 * @module
 */

import type { ModelSpec, StackName } from "../../../schemas/model.ts";
import type { ExpectedTensor } from "../../../schemas/tensors.ts";
import type { ConfigFields } from "../fields.ts";

/**
 * How a layer's routed experts are stored: one tensor per expert and matrix ("classic"),
 * transformers v5's fused tensors with one block per expert ("packed"), or those fused tensors
 * released in MXFP4 as `_blocks` / `_scales` pairs ("packed-mxfp4", checkpoint/mxfp4.ts).
 */
export type ExpertLayout = "classic" | "packed" | "packed-mxfp4";

/**
 * Where one expected tensor lives in a checkpoint: a whole tensor of the expected shape (or of
 * `stored`, the same values with extra unit dims), rows `[rowStart, rowStart + rows)` of block
 * `block` of a packed `[blocks, blockRows, cols]` tensor, or columns `start, start + step, …` of
 * block `block` of a `[blocks, rows, cols]` (or, for a vector, `[blocks, cols]`) tensor taken as
 * rows: a transposed, strided slice (gpt-oss keeps its experts as x·W, [E, H, 2I] with gate and
 * up columns interleaved); or rows `rowStart, rowStart + rowStep, …` of expert `block` of an
 * MXFP4 release pair `<name>_blocks` / `<name>_scales` (checkpoint/mxfp4.ts).
 */
export type TensorSource =
  | {
    name: string;
    packed?: undefined;
    columns?: undefined;
    mxfp4?: undefined;
    stored?: readonly number[];
  }
  | {
    name: string;
    packed: { shape: [number, number, number]; block: number; rowStart: number };
    columns?: undefined;
    mxfp4?: undefined;
    stored?: undefined;
  }
  | {
    name: string;
    packed?: undefined;
    columns: { shape: number[]; block: number; start: number; step: number };
    mxfp4?: undefined;
    stored?: undefined;
  }
  | {
    name: string;
    packed?: undefined;
    columns?: undefined;
    mxfp4: { block: number; rowStart: number; rowStep: number };
    stored?: undefined;
  };

/** One model family (one config.json `model_type`). */
export interface FamilyAdapter {
  /** The config.json `model_type` it reads. */
  readonly modelType: string;
  /**
   * config.json → the model description, with transformers' defaults for absent fields; throws
   * InputError naming the field for a bad value and UnsupportedError for a feature it refuses.
   */
  describe(config: ConfigFields): ModelSpec;
  /** The expert layout of one layer, judged by which tensors the checkpoint has. */
  expertLayout(has: (name: string) => boolean, stack: StackName, layer: number): ExpertLayout;
  /** Where the tensor `t` of `spec` is stored, in the given layout of its layer. */
  source(t: ExpectedTensor, spec: ModelSpec, layout: ExpertLayout): TensorSource;
  /** Tensors a checkpoint may hold that the description does not use (a tied lm_head copy). */
  unused(spec: ModelSpec): string[];
}
