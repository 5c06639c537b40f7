/**
 * A checkpoint's tensors across one or more safetensors files: either a single
 * `model.safetensors`, or shards listed by `model.safetensors.index.json` (`weight_map`: tensor
 * name → shard file name).
 *
 * @module
 */

import { join } from "node:path";
import { InputError } from "../../schemas/errors.ts";
import {
  openSafetensors,
  osError,
  type ReadOptions,
  type SafetensorsFile,
  type TensorInfo,
} from "./safetensors.ts";

/** Name of the single-file checkpoint. */
export const SINGLE_FILE = "model.safetensors";
/** Name of the shard index. */
export const INDEX_FILE = "model.safetensors.index.json";

/** Every tensor of a checkpoint, with the file holding it. */
export interface CheckpointStore {
  /** The checkpoint directory. */
  readonly dir: string;
  /** The opened safetensors files (one per shard). */
  readonly files: readonly SafetensorsFile[];
  /** All tensor names, in file then header order. */
  names(): string[];
  /** True when the checkpoint has a tensor of this name. */
  has(name: string): boolean;
  /** The tensor's header entry; InputError naming the tensor when absent. */
  info(name: string): TensorInfo;
  /** The file holding the tensor. */
  fileOf(name: string): SafetensorsFile;
  /** Reads `count` elements from flat index `start` of the tensor, as f32. */
  readElements(
    name: string,
    start: number,
    count: number,
    options?: ReadOptions,
  ): Promise<Float32Array>;
  /** Reads the raw bytes of `count` elements from flat index `start` of a float tensor. */
  readBytes(name: string, start: number, count: number): Promise<Uint8Array>;
  /** Bytes [start, start + count) of a U8 tensor (MXFP4 blocks and scales). */
  readU8(name: string, start: number, count: number): Promise<Uint8Array>;
}

/** Reads a small JSON file; InputError naming it when missing or not JSON. */
export async function readJsonFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw osError(err, path, "read");
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InputError(`not valid JSON (${(err as Error).message})`, path);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw osError(err, path, "stat");
  }
}

/** Parses and validates the shard index: returns tensor name → shard file name. */
async function readIndex(indexPath: string): Promise<Map<string, string>> {
  const index = await readJsonFile(indexPath);
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== "object" || weightMap === null || Array.isArray(weightMap)) {
    throw new InputError('field "weight_map" missing or not an object', indexPath);
  }
  const map = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== "string" || shard === "" || /[\\/]/.test(shard) || shard === "..") {
      throw new InputError(
        `weight_map["${name}"] is not a plain file name: ${JSON.stringify(shard)}`,
        indexPath,
      );
    }
    map.set(name, shard);
  }
  if (map.size === 0) throw new InputError('"weight_map" is empty', indexPath);
  return map;
}

/**
 * Opens a checkpoint directory: validates every header, and for sharded checkpoints that every
 * shard exists, every mapped tensor is in its shard, and no shard holds an unlisted tensor.
 */
export async function openCheckpointStore(dir: string): Promise<CheckpointStore> {
  const indexPath = join(dir, INDEX_FILE);
  const where = new Map<string, SafetensorsFile>();
  const files: SafetensorsFile[] = [];
  if (await exists(indexPath)) {
    const map = await readIndex(indexPath);
    const shards = new Map<string, SafetensorsFile>();
    for (const shard of new Set(map.values())) {
      const path = join(dir, shard);
      if (!(await exists(path))) {
        throw new InputError(`shard "${shard}" listed in weight_map does not exist`, indexPath);
      }
      const file = await openSafetensors(path);
      shards.set(shard, file);
      files.push(file);
    }
    for (const [name, shard] of map) {
      const file = shards.get(shard)!;
      if (!file.tensors.has(name)) {
        throw new InputError(
          `tensor "${name}" is mapped to shard "${shard}" but is not in it`,
          indexPath,
        );
      }
      where.set(name, file);
    }
    for (const file of files) {
      for (const name of file.tensors.keys()) {
        if (where.get(name) !== file) {
          throw new InputError(`tensor "${name}" is not listed in ${INDEX_FILE}`, file.path);
        }
      }
    }
  } else {
    const path = join(dir, SINGLE_FILE);
    if (!(await exists(path))) {
      throw new InputError(`no ${SINGLE_FILE} or ${INDEX_FILE} in the checkpoint`, dir);
    }
    const file = await openSafetensors(path);
    files.push(file);
    for (const name of file.tensors.keys()) where.set(name, file);
  }

  const fileOf = (name: string): SafetensorsFile => {
    const file = where.get(name);
    if (!file) throw new InputError(`tensor "${name}" not found`, dir);
    return file;
  };
  return {
    dir,
    files,
    names: () => [...where.keys()],
    has: (name) => where.has(name),
    info: (name) => fileOf(name).info(name),
    fileOf,
    readElements: (name, start, count, options) =>
      fileOf(name).readElements(name, start, count, options),
    readBytes: (name, start, count) => fileOf(name).readBytes(name, start, count),
    readU8: (name, start, count) => fileOf(name).readU8(name, start, count),
  };
}
