/**
 * A compact byte-level BPE for the tokenizer.json files of GPT-2, Llama 3 and gpt-oss (o200k):
 * loads a 200k-vocabulary file in a fraction of the time `@huggingface/tokenizers` takes (no
 * per-merge splitting or re-stringifying: a merge's rank is looked up by its "a b" text) and
 * gives the same ids. It takes only the configurations it reproduces exactly — no normalizer;
 * a ByteLevel pre-tokenizer, or a regex Split (Isolated) followed by a regex-less ByteLevel;
 * a BPE model without dropout, suffixes or byte fallback; added tokens without strip or
 * single-word rules; a ByteLevel (or no) post-processor; a ByteLevel decoder — and answers
 * null for anything else, which the caller hands to the library.
 *
 * @module
 */

/** What runtime/tokenizer.ts needs from a tokenizer implementation. */
export interface BpeCodec {
  /** Distinct tokens, added tokens included. */
  vocabSize: number;
  /** Text → ids (the post-processor adds nothing, so `addSpecialTokens` has no effect). */
  encode(text: string): number[];
  /** Ids → text: special tokens and unknown ids skipped, bytes decoded as UTF-8 (lossy). */
  decode(ids: number[]): string;
  /** A token's literal text (byte-level symbols for vocabulary tokens). */
  tokenText(id: number): string | undefined;
}

/** GPT-2's pre-tokenizer regex (ByteLevel with `use_regex`). */
const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Words longer than this (in UTF-16 units) are not cached. */
const MAX_CACHED_WORD = 256;
/** The word cache is emptied when it reaches this many entries. */
const CACHE_LIMIT = 20_000;

/** GPT-2's reversible byte → printable character table. */
function byteChars(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}

type Json = Record<string, unknown>;
const isObject = (x: unknown): x is Json => typeof x === "object" && x !== null;
const isFalsy = (x: unknown) => x === undefined || x === null || x === false;

/**
 * Rewrites a tokenizer.json (Rust `regex`) split pattern to a JS regex with the same meaning,
 * or null when it uses syntax this module does not translate (then the library handles it).
 * `\s` and `\d` are Unicode in Rust: White_Space and Nd.
 */
function compilePattern(source: string): RegExp | null {
  const escapes: Record<string, string> = {
    s: "\\p{White_Space}",
    S: "\\P{White_Space}",
    d: "\\p{Nd}",
    D: "\\P{Nd}",
  };
  let out = "";
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === "\\") {
      const next = source[i + 1];
      if (next === undefined) return null;
      if (next in escapes) out += escapes[next];
      else if (/[pPrnt\\.^$|?*+()[\]{}\/'-]/.test(next)) out += c + next;
      else return null; // \w, \b, \A, \z, \h, octal... : not translated here
      i++;
    } else if (c === "(" && source[i + 1] === "?") {
      const group = /^\(\?(?::|i:|=|!|<=|<!)/.exec(source.slice(i));
      if (!group) return null;
      out += group[0];
      i += group[0].length - 1;
    } else if (c === "[" && source[i + 1] === ":") {
      return null; // POSIX classes
    } else out += c;
  }
  try {
    return new RegExp(out, "gu");
  } catch {
    return null;
  }
}

/** Pieces of `text`: the matches of `regex` and the text between them (Split, Isolated). */
function splitIsolated(text: string, regex: RegExp): string[] {
  const pieces: string[] = [];
  let prev = 0;
  for (const m of text.matchAll(regex)) {
    if (prev < m.index) pieces.push(text.slice(prev, m.index));
    if (m[0].length > 0) pieces.push(m[0]);
    prev = m.index + m[0].length;
  }
  if (prev < text.length) pieces.push(text.slice(prev));
  return pieces;
}

/** The pre-tokenizer as a function from text to words, or null when not supported. */
function preTokenizerOf(config: unknown): ((text: string) => string[]) | null {
  if (!isObject(config)) return null;
  if (config.type === "ByteLevel") {
    const prefix = config.add_prefix_space === true;
    const useRegex = config.use_regex ?? true;
    return (text) => {
      if (prefix && !text.startsWith(" ")) text = " " + text;
      return useRegex ? text.match(GPT2_PATTERN) ?? [] : [text];
    };
  }
  if (config.type !== "Sequence" || !Array.isArray(config.pretokenizers)) return null;
  const [split, byteLevel, ...rest] = config.pretokenizers as unknown[];
  if (rest.length > 0 || !isObject(split) || !isObject(byteLevel)) return null;
  if (byteLevel.type !== "ByteLevel" || byteLevel.use_regex !== false) return null;
  if (byteLevel.add_prefix_space === true) return null;
  if (split.type !== "Split" || split.behavior !== "Isolated" || split.invert !== false) {
    return null;
  }
  const pattern = split.pattern;
  if (!isObject(pattern) || typeof pattern.Regex !== "string") return null;
  const regex = compilePattern(pattern.Regex);
  return regex && ((text) => splitIsolated(text, regex));
}

/** One tokenizer.json added token. */
interface Added {
  id: number;
  content: string;
  special: boolean;
}

/** The added tokens, or null when one has rules this module does not apply. */
function addedTokensOf(config: unknown): Added[] | null {
  if (config === undefined || config === null) return [];
  if (!Array.isArray(config)) return null;
  const out: Added[] = [];
  for (const t of config as unknown[]) {
    if (!isObject(t) || typeof t.id !== "number" || typeof t.content !== "string") return null;
    if (t.content === "" || t.lstrip === true || t.rstrip === true || t.single_word === true) {
      return null;
    }
    out.push({ id: t.id, content: t.content, special: t.special === true });
  }
  return out;
}

/**
 * Splits `text` into added tokens and the text between them: at each position the longest added
 * token that starts there, scanning left to right.
 */
function addedSplitter(added: Added[]): (text: string) => (string | Added)[] {
  const byFirst = new Map<string, Added[]>();
  for (const t of added) {
    const list = byFirst.get(t.content[0]) ?? [];
    list.push(t);
    byFirst.set(t.content[0], list);
  }
  for (const list of byFirst.values()) list.sort((a, b) => b.content.length - a.content.length);
  return (text) => {
    if (byFirst.size === 0) return text.length > 0 ? [text] : [];
    const out: (string | Added)[] = [];
    let start = 0;
    for (let i = 0; i < text.length;) {
      const match = byFirst.get(text[i])?.find((t) => text.startsWith(t.content, i));
      if (!match) {
        i++;
        continue;
      }
      if (i > start) out.push(text.slice(start, i));
      out.push(match);
      i += match.content.length;
      start = i;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  };
}

/**
 * Builds the compact byte-level BPE for a parsed tokenizer.json, or returns null when its
 * configuration is not one this module reproduces exactly.
 */
export function byteLevelBpe(json: Json): BpeCodec | null {
  const model = json.model;
  if (!isObject(model) || model.type !== "BPE") return null;
  if (!isFalsy(json.normalizer) || !isObject(json.decoder)) return null;
  if (json.decoder.type !== "ByteLevel") return null;
  const post = json.post_processor;
  if (!isFalsy(post) && !(isObject(post) && post.type === "ByteLevel")) return null;
  if (!isFalsy(model.dropout) || model.byte_fallback === true) return null;
  if (!isFalsy(model.continuing_subword_prefix) || !isFalsy(model.end_of_word_suffix)) {
    return null;
  }
  const preTokenize = preTokenizerOf(json.pre_tokenizer);
  const added = addedTokensOf(json.added_tokens);
  const vocab = model.vocab;
  const merges = model.merges;
  if (!preTokenize || !added || !isObject(vocab) || !Array.isArray(merges)) return null;

  // Vocabulary: the parsed object itself serves lookups (own numeric values only).
  const addedIds = new Map(added.map((t) => [t.content, t.id]));
  const idOf = (token: string): number | undefined => {
    const addedId = addedIds.get(token);
    if (addedId !== undefined) return addedId;
    const id = vocab[token];
    return typeof id === "number" && Object.hasOwn(vocab, token) ? id : undefined;
  };
  const tokens: string[] = [];
  let vocabSize = 0;
  for (const token in vocab) {
    const id = vocab[token];
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0) return null;
    tokens[id] = token;
    vocabSize++;
  }
  const addedById = new Map<number, Added>();
  for (const t of added) {
    if (!Object.hasOwn(vocab, t.content)) vocabSize++;
    tokens[t.id] = t.content;
    addedById.set(t.id, t);
  }
  const unkId = typeof model.unk_token === "string" ? idOf(model.unk_token) : undefined;

  // Merge ranks keyed by "a b" — the string form is the key as it stands. Backwards, so that
  // a repeated merge keeps its first rank.
  const ranks = new Map<string, number>();
  for (let i = merges.length - 1; i >= 0; i--) {
    const m = merges[i];
    let key: string;
    if (typeof m === "string") key = m;
    else if (Array.isArray(m) && m.length === 2 && typeof m[0] === "string") {
      if (m[0].includes(" ") || m[1].includes(" ")) return null;
      key = m[0] + " " + m[1];
    } else return null;
    ranks.set(key, i);
  }
  const ignoreMerges = model.ignore_merges === true;

  const byteChar = byteChars();
  const byteOf = new Map(byteChar.map((c, b) => [c, b]));
  const encoder = new TextEncoder();
  const splitAdded = addedSplitter(added);
  const cache = new Map<string, number[]>();

  /** BPE of one word (byte-level symbols): merge the leftmost lowest-rank pair until none. */
  function bpe(word: string): number[] {
    const whole = ignoreMerges ? idOf(word) : undefined;
    if (whole !== undefined) return [whole];
    const cached = cache.get(word);
    if (cached) return cached;
    const symbols = Array.from(word);
    while (symbols.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = ranks.get(symbols[i] + " " + symbols[i + 1]);
        if (rank !== undefined && rank < bestRank) [best, bestRank] = [i, rank];
      }
      if (best < 0) break;
      symbols.splice(best, 2, symbols[best] + symbols[best + 1]);
    }
    const ids: number[] = [];
    for (const s of symbols) {
      const id = idOf(s) ?? unkId;
      if (id !== undefined) ids.push(id);
    }
    if (word.length < MAX_CACHED_WORD) {
      if (cache.size >= CACHE_LIMIT) cache.clear();
      cache.set(word, ids);
    }
    return ids;
  }

  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  const decodeSymbols = (text: string) => {
    const bytes: number[] = [];
    for (const c of text) {
      const b = byteOf.get(c);
      if (b !== undefined) bytes.push(b);
      else bytes.push(...encoder.encode(c));
    }
    return decoder.decode(Uint8Array.from(bytes));
  };

  return {
    vocabSize,
    encode(text) {
      const ids: number[] = [];
      for (const section of splitAdded(text)) {
        if (typeof section !== "string") {
          ids.push(section.id);
          continue;
        }
        for (const word of preTokenize(section)) {
          let symbols = "";
          for (const b of encoder.encode(word)) symbols += byteChar[b];
          if (symbols.length > 0) ids.push(...bpe(symbols));
        }
      }
      return ids;
    },
    decode(ids) {
      let out = "";
      let run = "";
      for (const id of ids) {
        const token = tokens[id];
        if (token === undefined) continue;
        const isAdded = addedById.get(id);
        if (isAdded === undefined) {
          run += token;
          continue;
        }
        if (isAdded.special) continue;
        out += decodeSymbols(run) + token;
        run = "";
      }
      return out + decodeSymbols(run);
    },
    tokenText: (id) => tokens[id],
  };
}
