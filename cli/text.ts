/**
 * Reading text files as token ids for calibration and evaluation.
 *
 * @module
 */

import { InputError, UsageError } from "../schemas/errors.ts";
import type { Tokenizer } from "../runtime/tokenizer.ts";

/** Reads a file (or a byte range of it) and tokenizes it; byte-level models get the raw bytes. */
export async function readTextIds(
  path: string,
  tokenizer: Tokenizer | null,
  range: { offset?: number; maxBytes?: number } = {},
): Promise<number[]> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new InputError(`cannot read: ${(e as Error).message.split("\n")[0]}`, path);
  }
  const offset = range.offset ?? 0;
  if (offset < 0 || offset >= bytes.length) {
    throw new UsageError(`${path}: offset ${offset} is outside the file (${bytes.length} bytes)`);
  }
  const end = range.maxBytes !== undefined
    ? Math.min(bytes.length, offset + range.maxBytes)
    : bytes.length;
  const slice = bytes.subarray(offset, end);
  if (tokenizer === null) return Array.from(slice);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(slice);
  } catch {
    throw new InputError("not valid UTF-8 text", path);
  }
  return tokenizer.encode(text);
}
