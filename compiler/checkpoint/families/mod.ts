/**
 * The family registry: every `model_type` the front end reads, each an adapter module
 * (config.json → description, tensor keys → checkpoint names). Adding a family is adding a
 * module here.
 *
 * @module
 */

import { UnsupportedError } from "../../../schemas/errors.ts";
import type { FamilyAdapter } from "./family.ts";
import { mixtral } from "./mixtral.ts";
import { olmoe } from "./olmoe.ts";
import { qwen2Moe } from "./qwen2_moe.ts";
import { qwen3Moe } from "./qwen3_moe.ts";

export type { ExpertLayout, FamilyAdapter, TensorSource } from "./family.ts";

/** Every supported family, by `model_type`. */
export const FAMILIES: readonly FamilyAdapter[] = [mixtral, qwen2Moe, qwen3Moe, olmoe];

/** The `model_type` values the adapters understand. */
export const SUPPORTED_MODEL_TYPES: readonly string[] = FAMILIES.map((a) => a.modelType);

/** The adapter of `modelType`; UnsupportedError listing the supported ones otherwise. */
export function familyAdapter(modelType: string, file: string): FamilyAdapter {
  const adapter = FAMILIES.find((a) => a.modelType === modelType);
  if (!adapter) {
    throw new UnsupportedError(
      `${file}: model_type "${modelType}" is not supported (supported: ${
        SUPPORTED_MODEL_TYPES.join(", ")
      })`,
    );
  }
  return adapter;
}
