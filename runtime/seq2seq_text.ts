/**
 * Text ↔ ids for the encoder of an encoder–decoder model. With the artifact's tokenizer.json the
 * prompt is encoded by it; byte-level models (no tokenizer.json, vocabulary beyond the 256
 * bytes, like switch-shakespeare) read bytes, with `<extra_id_N>` written in the prompt standing
 * for sentinel N, whose id follows the special ids (the largest of EOS and decoder start, + 1 + N).
 * The encoder input ends with the EOS id, as in T5 training.
 *
 * @module
 */

import type { StreamDecoder, Tokenizer } from "./tokenizer.ts";
import { UsageError } from "../schemas/errors.ts";
import type { ModelSpec } from "../schemas/model.ts";

const SENTINEL = /<extra_id_(\d+)>/g;

/** The id of sentinel 0 of a byte-level seq2seq model. */
function sentinelBase(spec: ModelSpec): number {
  return Math.max(spec.decoderStartTokenId ?? 0, ...spec.eosTokenIds) + 1;
}

/** True when the model reads bytes but has ids past them (sentinels, pad, EOS). */
function byteLevel(spec: ModelSpec, tokenizer: Tokenizer): boolean {
  return tokenizer.vocabSize === 256 && spec.vocabSize > 256;
}

/** The encoder ids of `prompt` (see the module doc). */
export function encoderIdsOf(prompt: string, spec: ModelSpec, tokenizer: Tokenizer): number[] {
  const ids: number[] = [];
  if (byteLevel(spec, tokenizer)) {
    const base = sentinelBase(spec);
    let at = 0;
    for (const m of prompt.matchAll(SENTINEL)) {
      ids.push(...tokenizer.encode(prompt.slice(at, m.index)));
      ids.push(base + Number(m[1]));
      at = m.index! + m[0].length;
    }
    ids.push(...tokenizer.encode(prompt.slice(at)));
  } else {
    ids.push(...tokenizer.encode(prompt));
  }
  const eos = spec.eosTokenIds[0];
  if (eos !== undefined && ids.at(-1) !== eos) ids.push(eos);
  const bad = ids.find((id) => id >= spec.vocabSize);
  if (bad !== undefined) throw new UsageError(`--prompt: id ${bad} is outside the vocabulary`);
  return ids;
}

/** The text of decoder ids: bytes, sentinels as `<extra_id_N>`, other special ids dropped. */
export function decoderText(ids: number[], spec: ModelSpec, tokenizer: Tokenizer): string {
  if (!byteLevel(spec, tokenizer)) return tokenizer.decode(ids);
  const base = sentinelBase(spec);
  let text = "";
  let bytes: number[] = [];
  const flush = () => {
    text += new TextDecoder().decode(Uint8Array.from(bytes));
    bytes = [];
  };
  for (const id of ids) {
    if (id < 256) bytes.push(id);
    else if (id >= base) {
      flush();
      text += `<extra_id_${id - base}>`;
    }
  }
  flush();
  return text;
}

/** A streaming {@link decoderText}: bytes held until complete, sentinels as `<extra_id_N>`. */
export function createDecoderStream(spec: ModelSpec, tokenizer: Tokenizer): StreamDecoder {
  const inner = tokenizer.createStreamDecoder();
  if (!byteLevel(spec, tokenizer)) return inner;
  const base = sentinelBase(spec);
  return {
    push(id: number): string {
      if (id < 256) return inner.push(id);
      return id >= base ? inner.flush() + `<extra_id_${id - base}>` : "";
    },
    flush: () => inner.flush(),
  };
}
