/**
 * Builds the IR of a checkpoint: every tensor the description implies (schemas/tensors.ts
 * `expectedTensors`), found under the name its family adapter gives, checked and claimed; any
 * tensor left over is an error. Nothing here knows a family.
 *
 * @module
 */

import type { ModelSpec, StackName } from "../../schemas/model.ts";
import { expectedTensors } from "../../schemas/tensors.ts";
import type { ModelIR, PlacedTensor, TokenizerData } from "../ir.ts";
import { TensorClaims } from "./claims.ts";
import type { ExpertLayout, FamilyAdapter } from "./families/mod.ts";
import type { ReadOptions } from "./safetensors.ts";
import type { CheckpointStore } from "./store.ts";

/**
 * The ModelIR of a checkpoint whose config has been parsed into `spec` by `adapter`. Every
 * expected tensor must be present with its shape; every tensor present must be used.
 */
export function buildModelIR(
  store: CheckpointStore,
  spec: ModelSpec,
  adapter: FamilyAdapter,
  tokenizer: TokenizerData,
  options: ReadOptions = {},
  quantMethod: string | null = null,
): ModelIR {
  const claims = new TensorClaims(store, options, quantMethod);
  const layouts = new Map<string, ExpertLayout>();
  const layoutOf = (stack: StackName, layer: number): ExpertLayout => {
    const key = `${stack}/${layer}`;
    let layout = layouts.get(key);
    if (!layout) {
      layout = adapter.expertLayout((name) => claims.has(name), stack, layer);
      layouts.set(key, layout);
    }
    return layout;
  };
  const tensors: PlacedTensor[] = expectedTensors(spec).map((t) => {
    const source = adapter.source(t, spec, layoutOf(t.stack, t.layer));
    const ref = source.mxfp4
      ? claims.mxfp4({ base: source.name, ...source.mxfp4, shape: [t.shape[0], t.shape[1]] })
      : source.packed
      ? claims.packedRows(
        source.name,
        source.packed.shape,
        source.packed.block,
        source.packed.rowStart,
        t.shape[0],
      )
      : source.columns
      ? claims.columns(source.name, source.columns, t.shape)
      : claims.tensor(source.name, t.shape, source.stored);
    return { stack: t.stack, layer: t.layer, expert: t.expert, role: t.role, ref };
  });
  for (const name of adapter.unused(spec)) claims.ignore(name);
  claims.checkAllUsed(spec.family);
  return { spec, tensors, tokenizer, source: store.dir };
}
