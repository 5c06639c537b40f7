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
