/**
 * The checkpoint front end: a Hugging Face checkpoint directory (config.json + safetensors,
 * single-file or sharded) → ModelIR: the model description its family adapter reads from
 * config.json, and every tensor the description implies as a lazy reference.
 *
 * @module
 */

import { join } from "node:path";
import { InputError } from "../../schemas/errors.ts";
import type { ModelIR, TokenizerData } from "../ir.ts";
import { buildModelIR } from "./build_ir.ts";
import { readConfig } from "./config.ts";
import { ConfigFields } from "./fields.ts";
import { quantMethodOf } from "./mxfp4.ts";
import { osError } from "./safetensors.ts";
import { openCheckpointStore, readJsonFile } from "./store.ts";

export { buildModelIR } from "./build_ir.ts";
export { TensorClaims } from "./claims.ts";
export { parseConfig, type ParsedConfig, readConfig } from "./config.ts";
export {
  type ExpertLayout,
  FAMILIES,
  type FamilyAdapter,
  familyAdapter,
  SUPPORTED_MODEL_TYPES,
  type TensorSource,
} from "./families/mod.ts";
export { ConfigFields } from "./fields.ts";
export {
  checkMxfp4Pair,
  MXFP4_QUANT_METHOD,
  mxfp4Names,
  mxfp4Ref,
  type Mxfp4Slice,
  quantMethodOf,
} from "./mxfp4.ts";
export {
  decodeFloats,
  DTYPE_SIZES,
  findDuplicateKey,
  FLOAT_DTYPES,
  MAX_HEADER_BYTES,
  openSafetensors,
  type ReadOptions,
  type SafetensorsFile,
  type TensorInfo,
} from "./safetensors.ts";
export {
  type CheckpointStore,
  INDEX_FILE,
  openCheckpointStore,
  readJsonFile,
  SINGLE_FILE,
} from "./store.ts";

/** Options for loadCheckpoint. */
export interface LoadOptions {
  /** Read NaN/±Inf weights as 0 instead of failing the read with an InputError (default false). */
  allowNonFinite?: boolean;
}

async function readOptionalBytes(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw osError(err, path, "read");
  }
}

/**
 * The chat template: `chat_template.jinja` if present, else tokenizer_config.json's
 * `chat_template` (a string, or a list of {name, template} of which "default" or the first is used).
 */
async function readChatTemplate(dir: string): Promise<string | null> {
  const jinja = await readOptionalBytes(join(dir, "chat_template.jinja"));
  if (jinja) return new TextDecoder().decode(jinja);
  const path = join(dir, "tokenizer_config.json");
  if ((await readOptionalBytes(path)) === null) return null;
  const cfg = await readJsonFile(path);
  const t = (cfg as { chat_template?: unknown } | null)?.chat_template;
  if (t === undefined || t === null) return null;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const named = t as { name?: unknown; template?: unknown }[];
    const pick = named.find((x) => x?.name === "default") ?? named[0];
    if (typeof pick?.template === "string") return pick.template;
  }
  throw new InputError('field "chat_template" is not a string or a list of templates', path);
}

/** Reads tokenizer.json (raw bytes) and the chat template, each null when absent. */
export async function readTokenizer(dir: string): Promise<TokenizerData> {
  return {
    tokenizerJson: await readOptionalBytes(join(dir, "tokenizer.json")),
    chatTemplate: await readChatTemplate(dir),
  };
}

/**
 * config.json's EOS ids followed by the other ids generation_config.json's `eos_token_id` lists
 * (gpt-oss stops on <|return|> and <|call|>, only the first is in config.json).
 */
async function withGenerationEos(dir: string, eos: number[], vocab: number): Promise<number[]> {
  const path = join(dir, "generation_config.json");
  if ((await readOptionalBytes(path)) === null) return eos;
  const raw = await readJsonFile(path);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new InputError("must be a JSON object", path);
  }
  const more = new ConfigFields(raw as Record<string, unknown>, path).tokenIds(
    "eos_token_id",
    vocab,
  );
  return [...eos, ...more.filter((id, i) => !eos.includes(id) && more.indexOf(id) === i)];
}

/**
 * Loads a Hugging Face MoE checkpoint directory into ModelIR. Reads config.json and the
 * safetensors headers only; tensors are read from disk when their `read()` is called.
 */
export async function loadCheckpoint(dir: string, opts: LoadOptions = {}): Promise<ModelIR> {
  const configPath = join(dir, "config.json");
  const config = await readJsonFile(configPath);
  const { spec, adapter } = readConfig(config, configPath);
  const quantMethod = quantMethodOf(config as Record<string, unknown>, configPath);
  spec.eosTokenIds = await withGenerationEos(dir, spec.eosTokenIds, spec.vocabSize);
  const store = await openCheckpointStore(dir);
  const tokenizer = await readTokenizer(dir);
  const options = { allowNonFinite: opts.allowNonFinite ?? false };
  return buildModelIR(store, spec, adapter, tokenizer, options, quantMethod);
}
