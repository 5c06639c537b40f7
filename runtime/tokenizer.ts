/**
 * Text ↔ token ids for the runtime: a byte tokenizer (token = byte, vocabulary 256) for
 * byte-level models, or a Hugging Face `tokenizer.json` — byte-level BPE ones (GPT-2, Llama 3,
 * gpt-oss's o200k) through runtime/bpe.ts, which loads a 200k vocabulary several times faster,
 * any other through the pure-JS `@huggingface/tokenizers` port; plus a streaming decoder and chat templates
 * (`@huggingface/jinja`).
 *
 * @module
 */

// Inline versioned specifiers: runtime/ ships without the project's deno.json import map.
// deno-lint-ignore no-import-prefix
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
// deno-lint-ignore no-import-prefix
import { Template } from "npm:@huggingface/jinja@0.5.11";
import { InputError } from "../schemas/errors.ts";
import { byteLevelBpe } from "./bpe.ts";
import type { ModelSpec } from "../schemas/model.ts";

/** One chat turn. */
export interface ChatMessage {
  /** "system", "user", "assistant", ... */
  role: string;
  /** The turn's text. */
  content: string;
}

/** Options for {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /**
   * Let the tokenizer's post-processor add its special tokens (BOS...). Default true; use false
   * for text rendered by a chat template, which writes them itself. No effect for bytes.
   */
  addSpecialTokens?: boolean;
}

/** Options for {@link Tokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the header of an assistant turn (default true). */
  addGenerationPrompt?: boolean;
}

/** Turns ids into text incrementally, never splitting a UTF-8 character. */
export interface StreamDecoder {
  /** Adds one id; returns the text that is now final ("" while a character is incomplete). */
  push(id: number): string;
  /** Returns whatever is still held back (an incomplete sequence becomes U+FFFD). */
  flush(): string;
}

/** Encodes and decodes text for one model. */
export interface Tokenizer {
  /** Number of ids the tokenizer knows (256 for bytes). */
  readonly vocabSize: number;
  /** BOS id, when the model has one. */
  readonly bos: number | null;
  /** EOS ids (generation stops on these). */
  readonly eos: number[];
  /** Text → ids. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Ids → text, special tokens skipped. */
  decode(ids: number[]): string;
  /** A fresh streaming decoder. */
  createStreamDecoder(): StreamDecoder;
  /** True when the model has a chat template (applyChatTemplate renders it). */
  readonly hasChatTemplate: boolean;
  /** Renders `messages` with the model's chat template (or "role: content" lines without one). */
  applyChatTemplate(messages: ChatMessage[], options?: ChatTemplateOptions): string;
}

/** Special ids, as in the model description (`bosTokenId`, `eosTokenIds`). */
export interface SpecialIds {
  /** BOS id or null. */
  bos: number | null;
  /** One EOS id or several. */
  eos: number | number[];
}

/**
 * Creates a tokenizer. `tokenizerJson` null means a byte-level model (token = byte). Throws
 * InputError naming `tokenizer.json` / `chat_template` when either cannot be parsed.
 */
export function createTokenizer(
  tokenizerJson: Uint8Array | null,
  chatTemplate: string | null,
  special: SpecialIds,
): Tokenizer {
  const eos = Array.isArray(special.eos) ? [...special.eos] : [special.eos];
  const codec = tokenizerJson === null ? byteCodec() : hfCodec(tokenizerJson);
  const template = chatTemplate === null ? null : parseTemplate(chatTemplate);
  const tokenText = (id: number | null) => (id === null ? "" : codec.tokenText(id) ?? "");

  return {
    vocabSize: codec.vocabSize,
    bos: special.bos,
    eos,
    hasChatTemplate: template !== null,
    encode: (text, options) => codec.encode(text, options?.addSpecialTokens ?? true),
    decode: (ids) => codec.decode(ids),
    createStreamDecoder: () => streamDecoder(codec.decode),
    applyChatTemplate(messages, options) {
      const addGenerationPrompt = options?.addGenerationPrompt ?? true;
      if (!template) {
        const lines = messages.map((m) => `${m.role}: ${m.content}\n`);
        return lines.join("") + (addGenerationPrompt ? "assistant:" : "");
      }
      try {
        return template.render({
          messages,
          add_generation_prompt: addGenerationPrompt,
          bos_token: tokenText(special.bos),
          eos_token: tokenText(eos[0] ?? null),
        });
      } catch (e) {
        throw new InputError(`chat_template: rendering failed: ${(e as Error).message}`);
      }
    },
  };
}

/** The parts of an opened artifact (schemas/artifact.ts `Artifact`) a tokenizer needs. */
export interface TokenizerSource {
  /** The model description: its BOS and EOS ids. */
  readonly model: Pick<ModelSpec, "bosTokenId" | "eosTokenIds">;
  /** The artifact's tokenizer record: its chat template. */
  readonly tokenizer: { readonly chatTemplate: string | null };
  /** tokenizer.json bytes, or null for byte-level models. */
  readTokenizerJson(): Promise<Uint8Array | null>;
}

/** Creates the tokenizer stored in an artifact (byte-level when it holds no tokenizer.json). */
export async function tokenizerFromArtifact(artifact: TokenizerSource): Promise<Tokenizer> {
  return createTokenizer(await artifact.readTokenizerJson(), artifact.tokenizer.chatTemplate, {
    bos: artifact.model.bosTokenId,
    eos: artifact.model.eosTokenIds,
  });
}

/** What the two tokenizer kinds have in common. */
interface Codec {
  vocabSize: number;
  encode(text: string, addSpecialTokens: boolean): number[];
  decode(ids: number[]): string;
  /** The literal text of one token (for bos_token/eos_token in templates). */
  tokenText(id: number): string | undefined;
}

function byteCodec(): Codec {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  return {
    vocabSize: 256,
    encode: (text) => Array.from(encoder.encode(text)),
    decode: (ids) => decoder.decode(Uint8Array.from(ids.filter((id) => id >= 0 && id < 256))),
    tokenText: (id) => (id >= 0 && id < 256 ? String.fromCharCode(id) : undefined),
  };
}

function hfCodec(bytes: Uint8Array): Codec {
  let json: Record<string, unknown>;
  try {
    // The lossy decoder is faster; only text with U+FFFD is checked strictly.
    let text = new TextDecoder().decode(bytes);
    if (text.includes("\uFFFD")) text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    json = JSON.parse(text);
  } catch (e) {
    throw new InputError(`not valid JSON: ${(e as Error).message}`, "tokenizer.json");
  }
  const model = json?.model as Record<string, unknown> | undefined;
  if (typeof model !== "object" || model === null || typeof model.type !== "string") {
    throw new InputError("missing model.type", "tokenizer.json");
  }
  const fast = byteLevelBpe(json);
  if (fast) {
    return { ...fast, encode: (text) => fast.encode(text) };
  }
  let tokenizer: HfTokenizer;
  try {
    tokenizer = new HfTokenizer(json, { clean_up_tokenization_spaces: false });
  } catch (e) {
    throw new InputError(
      `cannot load ${model.type} tokenizer: ${(e as Error).message}`,
      "tokenizer.json",
    );
  }
  const vocabSize = tokenizer.get_vocab(true).size;
  return {
    vocabSize,
    encode: (text, addSpecialTokens) =>
      tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids,
    decode(ids) {
      const known = ids.filter((id) => tokenizer.id_to_token(id) !== undefined);
      return known.length === 0 ? "" : tokenizer.decode(known, { skip_special_tokens: true });
    },
    tokenText: (id) => tokenizer.id_to_token(id),
  };
}

function parseTemplate(source: string): Template {
  try {
    return new Template(source);
  } catch (e) {
    throw new InputError(`cannot parse: ${(e as Error).message}`, "chat_template");
  }
}

/**
 * Incremental decoding over any `decode`: decodes a short window of recent ids and emits the new
 * suffix once it no longer ends in U+FFFD (an incomplete UTF-8 sequence). Decoding with one
 * token of left context keeps decoders that treat the first token specially (leading spaces)
 * correct.
 */
function streamDecoder(decode: (ids: number[]) => string): StreamDecoder {
  const ids: number[] = [];
  let prefixOffset = 0; // start of the context window
  let readOffset = 0; // ids before this have been emitted
  const pending = () => {
    const before = decode(ids.slice(prefixOffset, readOffset));
    const after = decode(ids.slice(prefixOffset));
    return after.slice(before.length);
  };
  return {
    push(id) {
      ids.push(id);
      const piece = pending();
      if (piece.length === 0 || piece.endsWith("\uFFFD")) return "";
      prefixOffset = readOffset;
      readOffset = ids.length;
      // Drop ids that can no longer be needed as context.
      if (prefixOffset > 64) {
        ids.splice(0, prefixOffset);
        readOffset -= prefixOffset;
        prefixOffset = 0;
      }
      return piece;
    },
    flush() {
      const piece = pending();
      prefixOffset = readOffset = ids.length;
      return piece;
    },
  };
}
