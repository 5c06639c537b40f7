/**
 * `config.json` → the model description ({@link ModelSpec}), through the adapter of its
 * `model_type` (compiler/checkpoint/families/). Bad input is a one-line InputError naming the
 * file and field; a family or feature outside the supported set is an UnsupportedError.
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import type { ModelSpec } from "../../schemas/model.ts";
import { ConfigFields } from "./fields.ts";
import { type FamilyAdapter, familyAdapter } from "./families/mod.ts";

/** A parsed config: the description and the adapter that knows the checkpoint's names. */
export interface ParsedConfig {
  spec: ModelSpec;
  adapter: FamilyAdapter;
}

/** Parses a config.json object with its family's adapter. `file` names it in messages. */
export function readConfig(raw: unknown, file = "config.json"): ParsedConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new InputError("not a JSON object", file);
  }
  const fields = new ConfigFields(raw as Record<string, unknown>, file);
  const modelType = fields.raw.model_type;
  if (typeof modelType !== "string") {
    throw new InputError('field "model_type" missing or not a string', file);
  }
  const adapter = familyAdapter(modelType, file);
  return { spec: adapter.describe(fields), adapter };
}

/** Parses a config.json object into the model description. */
export function parseConfig(raw: unknown, file = "config.json"): ModelSpec {
  return readConfig(raw, file).spec;
}
