/**
 * Teacher-forced evaluation of an encoder–decoder model on a span set: JSONL of
 * `{"input_ids": [...], "labels": [...]}`, the encoder reading `input_ids` and the decoder
 * `[decoderStart] + labels[:-1]`, each label scored by the logits of the position before it. The
 * result is the mean cross-entropy in bits per label (the protocol of switch-shakespeare's
 * reference.json).
 *
 * @module
 */

import { InputError } from "../../schemas/errors.ts";
import { crossEntropyBits } from "./eval.ts";

/** One teacher-forced example. */
export interface Span {
  inputIds: number[];
  labels: number[];
}

/** What {@link evaluateSpans} measured. */
export interface SpanEval {
  /** Mean cross-entropy in bits per label. */
  bitsPerToken: number;
  /** Labels scored. */
  tokens: number;
  examples: number;
}

/** Parses a span set; InputError naming `file`, the line and the field for a bad one. */
export function parseSpans(text: string, file: string, vocabSize: number): Span[] {
  const spans: Span[] = [];
  const lines = text.split("\n");
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    const where = `line ${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new InputError(`${where} is not JSON`, file);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new InputError(`${where} is not an object with input_ids and labels`, file);
    }
    const ids = (key: string): number[] => {
      const v = (value as Record<string, unknown>)[key];
      if (!Array.isArray(v) || v.length === 0) {
        throw new InputError(`${where}: "${key}" must be a non-empty list of token ids`, file);
      }
      for (const id of v) {
        if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
          throw new InputError(
            `${where}: "${key}" holds ${JSON.stringify(id)}, not a token id below ${vocabSize}`,
            file,
          );
        }
      }
      return v as number[];
    };
    spans.push({ inputIds: ids("input_ids"), labels: ids("labels") });
  });
  if (spans.length === 0) throw new InputError("no examples", file);
  return spans;
}

/**
 * Scores every span: `logits(encoderIds, decoderIds)` returns one logits row per decoder
 * position; label t is scored by row t.
 */
export async function evaluateSpans(
  logits: (
    encoderIds: number[],
    decoderIds: number[],
  ) => ArrayLike<number>[] | Promise<ArrayLike<number>[]>,
  spans: readonly Span[],
  decoderStart: number,
  onProgress?: (done: number, total: number) => void,
): Promise<SpanEval> {
  let bits = 0;
  let tokens = 0;
  for (const [i, span] of spans.entries()) {
    const rows = await logits(span.inputIds, [decoderStart, ...span.labels.slice(0, -1)]);
    span.labels.forEach((label, t) => (bits += crossEntropyBits(rows[t], label)));
    tokens += span.labels.length;
    onProgress?.(i + 1, spans.length);
  }
  return { bitsPerToken: bits / tokens, tokens, examples: spans.length };
}
