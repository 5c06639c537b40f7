/**
 * Builds `tiny-bpe.json`: a real Hugging Face tokenizer.json (BPE model, ByteLevel
 * pre-tokenizer/decoder, GPT-2 byte alphabet) with merges learned here from `CORPUS` by plain
 * byte-pair counting. Run: `deno run -W testdata/tokenizer/make_tokenizer.ts`.
 *
 * @module
 */

const CORPUS = `The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.
To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.
Café crème, déjà vu, naïve résumé: the café serves crème brûlée. Élève, été, école.
中文分词测试：中国，中文，中间。我们在中国学习中文。
Emoji: 😀 😀 🎉 party 🎉! The end. the the the then there these those.
`;
const MERGES = 120;

/** GPT-2's reversible byte → printable character table. */
export function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}

const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function main(): void {
  const byteChar = bytesToUnicode();
  const encoder = new TextEncoder();
  // Each pre-token as a list of byte-level symbols, with its count.
  const words = new Map<string, number>();
  for (const m of CORPUS.matchAll(PRETOKENIZE)) {
    const symbols = Array.from(encoder.encode(m[0]), (b) => byteChar[b]).join(" ");
    words.set(symbols, (words.get(symbols) ?? 0) + 1);
  }
  let split = Array.from(words, ([w, n]) => ({ symbols: w.split(" "), n }));

  const vocab: Record<string, number> = {};
  byteChar.forEach((c, i) => vocab[c] = i);
  const merges: string[] = [];
  for (let step = 0; step < MERGES; step++) {
    const pairs = new Map<string, number>();
    for (const { symbols, n } of split) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const pair = symbols[i] + " " + symbols[i + 1];
        pairs.set(pair, (pairs.get(pair) ?? 0) + n);
      }
    }
    let best = "";
    let bestCount = 1;
    for (const [pair, n] of pairs) if (n > bestCount) [best, bestCount] = [pair, n];
    if (!best) break;
    const [a, b] = best.split(" ");
    merges.push(best);
    vocab[a + b] = Object.keys(vocab).length;
    split = split.map(({ symbols, n }) => {
      const out: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (i + 1 < symbols.length && symbols[i] === a && symbols[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(symbols[i]);
      }
      return { symbols: out, n };
    });
  }
  const next = Object.keys(vocab).length;
  const special = ["<s>", "</s>", "<|user|>", "<|assistant|>"];
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: special.map((content, i) => ({
      id: next + i,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab: Object.fromEntries(
        Object.entries(vocab).concat(special.map((s, i) => [s, next + i])),
      ),
      merges,
    },
  };
  const path = new URL("./tiny-bpe.json", import.meta.url);
  Deno.writeTextFileSync(path, JSON.stringify(tokenizer, null, 1) + "\n");
  console.log(`wrote ${path.pathname}: ${next + special.length} tokens, ${merges.length} merges`);
}

if (import.meta.main) main();

/** gpt-oss's (o200k) pre-tokenizer regex, as its tokenizer.json writes it. */
export const O200K_PATTERN = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*" +
  "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?" +
  "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" +
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|" +
  "\\s+(?!\\S)|\\s+";

/** Options for {@link largeByteLevelBpe}. */
export interface LargeBpeOptions {
  /** Tokens before the added tokens (256 bytes + one per merge). Default 200 000. */
  vocabSize?: number;
  /** PRNG seed. */
  seed?: number;
  /** "o200k": Sequence[Split(O200K_PATTERN), ByteLevel(no regex)]; "gpt2": ByteLevel. */
  preTokenizer?: "o200k" | "gpt2";
  /** BPE `ignore_merges` (gpt-oss sets it). */
  ignoreMerges?: boolean;
  /** Merges as `["a", "b"]` pairs (newer files) instead of `"a b"` strings. */
  pairMerges?: boolean;
  /** Added tokens, special ones first; ids follow the vocabulary. */
  added?: { content: string; special: boolean }[];
}

/**
 * An o200k-sized byte-level BPE tokenizer.json (never committed: tests generate it): 256 byte
 * symbols plus `vocabSize - 256` merges of random pairs of text-like tokens (letters, spaces,
 * accents, CJK and emoji bytes), so that real text merges a lot.
 */
export function largeByteLevelBpe(options: LargeBpeOptions = {}): Uint8Array {
  const size = options.vocabSize ?? 200_000;
  let state = (options.seed ?? 1) >>> 0;
  const rand = (n: number) => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) % n);
  };
  const byteChar = bytesToUnicode();
  const enc = new TextEncoder();
  // Symbols text is made of: ASCII letters and space, accented letters', CJK's and emoji's bytes.
  const seedText =
    " etaoinshrdlucmfwypvbgkqjxz ETAOINSHRDLU éèàçüöñ 中文国的一是 😀🎉 0123456789.,";
  const common = [...new Set(Array.from(enc.encode(seedText), (b) => byteChar[b]))];
  const tokens: string[] = [...byteChar];
  const vocab = new Map<string, number>(tokens.map((t, i) => [t, i]));
  const merges: [string, string][] = [];
  while (tokens.length < size) {
    // Grow recent tokens by a common symbol most of the time; sometimes join two tokens.
    const a = tokens[tokens.length - 1 - rand(Math.min(tokens.length, 5000))];
    const b = rand(4) === 0 ? tokens[rand(tokens.length)] : common[rand(common.length)];
    const a2 = rand(8) === 0 ? common[rand(common.length)] : a;
    const merged = a2 + b;
    if (merged.length > 24 || vocab.has(merged)) continue;
    vocab.set(merged, tokens.length);
    tokens.push(merged);
    merges.push([a2, b]);
  }
  const added = options.added ?? [];
  const addedTokens = added.map(({ content, special }, i) => ({
    id: size + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: !special,
    special,
  }));
  for (const t of addedTokens) vocab.set(t.content, t.id);
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true };
  const preTokenizer = (options.preTokenizer ?? "o200k") === "o200k"
    ? {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: O200K_PATTERN }, behavior: "Isolated", invert: false },
        { ...byteLevel, use_regex: false },
      ],
    }
    : { ...byteLevel, use_regex: true };
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: { ...byteLevel, use_regex: false },
    decoder: { ...byteLevel, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: options.ignoreMerges ?? true,
      vocab: Object.fromEntries(vocab),
      merges: options.pairMerges ? merges : merges.map((m) => m.join(" ")),
    },
  };
  return enc.encode(JSON.stringify(json));
}
