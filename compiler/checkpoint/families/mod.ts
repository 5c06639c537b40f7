/**
 * The family registry: every `model_type` the front end reads, each an adapter module
 * (config.json → description, tensor keys → checkpoint names).
 *
 * Adding a family:
 * 1. `families/<model_type>.ts`: a {@link FamilyAdapter} whose `describe` maps config.json onto
 *    the block vocabulary (schemas/model.ts; building blocks in decoder.ts), and whose naming
 *    says where each (stack, layer, expert, role) key is stored (`hubNames` when the checkpoint
 *    uses the `model.layers.L.self_attn` layout; otherwise its own `source`, classic and packed).
 * 2. List it in {@link FAMILIES} below.
 * 3. A block variant the description uses that the float64 reference lacks is implemented once in
 *    compiler/reference/ (its file says which variants it has); the rest needs no change.
 *
 * @module
 */

import { UnsupportedError } from "../../../schemas/errors.ts";
import type { FamilyAdapter } from "./family.ts";
import { deepseekV2, deepseekV3, kimiK2 } from "./deepseek.ts";
import { ernie45Moe } from "./ernie4_5_moe.ts";
import { glm4Moe } from "./glm4_moe.ts";
import { granitemoe } from "./granitemoe.ts";
import { gptOss } from "./gpt_oss.ts";
import { mixtral } from "./mixtral.ts";
import { olmoe } from "./olmoe.ts";
import { phimoe } from "./phimoe.ts";
import { qwen2Moe } from "./qwen2_moe.ts";
import { qwen3Moe } from "./qwen3_moe.ts";
import { switchTransformers } from "./switch_transformers.ts";

export type { ExpertLayout, FamilyAdapter, TensorSource } from "./family.ts";

/** Every supported family, by `model_type`. */
export const FAMILIES: readonly FamilyAdapter[] = [
  mixtral,
  qwen2Moe,
  qwen3Moe,
  olmoe,
  granitemoe,
  phimoe,
  gptOss,
  switchTransformers,
  glm4Moe,
  ernie45Moe,
  deepseekV2,
  deepseekV3,
  kimiK2,
];

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
