/**
 * The compact byte-level BPE gives the same ids (and decoded text) as `@huggingface/tokenizers`
 * on a varied corpus, for an o200k-sized tokenizer.json generated here and smaller variants
 * (GPT-2 pre-tokenizer, merges as pairs, ignore_merges off), and declines configurations it does
 * not reproduce.
 */
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { byteLevelBpe } from "./bpe.ts";
import { createTokenizer } from "./tokenizer.ts";
import { type LargeBpeOptions, largeByteLevelBpe } from "../testdata/tokenizer/make_tokenizer.ts";

const ADDED = [
  { content: "<|start|>", special: true },
  { content: "<|message|>", special: true },
  { content: "<|end|>", special: true },
  { content: "<|return|>", special: true },
  { content: "<|st", special: false },
  { content: "[tool]", special: false },
];

const CORPUS = [
  "The quick brown fox jumps over the lazy dog.",
  "I'M HERE, you're there; they'll've gone. It's JOHN'S car",
  "café crème brûlée, déjà vu, naïve résumé — Ünïcödé ŝtrïñg",
  "中文分词测试：中国，中文，中间。我们在中国学习中文。日本語のテキスト、한국어",
  "emoji 😀🎉👍🏽 and ZWJ 👩‍👩‍👧 flags 🇫🇷🇯🇵",
  "  two spaces\n\ttab\r\nCRLF  \n\n\n   trailing   ",
  " ".repeat(40) + "x" + "\t".repeat(9) + "\n".repeat(5),
  "numbers 1 12 123 1234 12345 3.14159 -42 1e10 ½ ² ٣٤٥",
  "<|start|>user<|message|>hello<|end|><|start|>assistant",
  "<|st<|start|>[tool]x[tool]<|return|><|<|end|",
  "path/to/file.ts\n// comment\nconst x = a?.b ?? c; // 🎉\r\n",
  "nbsp\u00a0here, nel\u0085there, bom\ufeffword, zero\u200bwidth",
  "lone surrogate \ud800 end",
  "MiXeD CaSe WoRdS ABCdef defABC Éclair ÉCOLE",
  "",
];

/** Both tokenizers for one generated tokenizer.json. */
function pair(options: LargeBpeOptions) {
  const bytes = largeByteLevelBpe(options);
  const json = JSON.parse(new TextDecoder().decode(bytes));
  const ours = byteLevelBpe(JSON.parse(new TextDecoder().decode(bytes)));
  assert.ok(ours, "the generated file is one the compact BPE takes");
  const hf = new HfTokenizer(json, { clean_up_tokenization_spaces: false });
  return { ours, hf, bytes };
}

function assertSame(options: LargeBpeOptions) {
  const { ours, hf, bytes } = pair(options);
  assert.equal(ours.vocabSize, hf.get_vocab(true).size);
  let merged = 0;
  for (const text of CORPUS) {
    const expected = hf.encode(text, { add_special_tokens: false }).ids;
    const ids = ours.encode(text);
    assert.deepEqual(ids, expected, JSON.stringify(text));
    merged += new TextEncoder().encode(text).length - ids.length;
    const decoded = expected.length === 0 ? "" : hf.decode(expected, { skip_special_tokens: true });
    assert.equal(ours.decode(ids), decoded, JSON.stringify(text));
  }
  assert.ok(merged > 20, `merges apply (${merged} fewer ids than bytes)`);
  // Arbitrary id sequences decode alike (split UTF-8, added tokens anywhere).
  let state = 5;
  const rand = (n: number) => (state = (state * 1103515245 + 12345) % 2 ** 31) % n;
  for (let k = 0; k < 50; k++) {
    const ids = Array.from({ length: 1 + rand(12) }, () => rand(ours.vocabSize));
    assert.equal(ours.decode(ids), hf.decode(ids, { skip_special_tokens: true }), `${ids}`);
  }
  return bytes;
}

Deno.test("byte-level BPE: o200k-sized tokenizer.json (200k tokens, o200k split) — ids as the library's", () => {
  const bytes = assertSame({ added: ADDED });
  // createTokenizer takes this path: same ids, special tokens as one id each.
  const tok = createTokenizer(bytes, null, { bos: null, eos: [200_003] });
  assert.deepEqual(tok.encode("<|return|>"), [200_003]);
  assert.equal(tok.vocabSize, 200_000 + ADDED.length);
});

Deno.test("byte-level BPE: GPT-2 pre-tokenizer, pair merges, ignore_merges off — ids as the library's", () => {
  assertSame({ vocabSize: 20_000, seed: 2, preTokenizer: "gpt2", added: ADDED });
  assertSame({ vocabSize: 20_000, seed: 3, pairMerges: true, ignoreMerges: false, added: ADDED });
  assertSame({ vocabSize: 5_000, seed: 4, preTokenizer: "gpt2", ignoreMerges: false });
});

Deno.test("byte-level BPE declines what it does not reproduce (the library takes those)", () => {
  const base = JSON.parse(
    new TextDecoder().decode(largeByteLevelBpe({ vocabSize: 300, added: ADDED })),
  );
  assert.ok(byteLevelBpe(structuredClone(base)));
  // deno-lint-ignore no-explicit-any
  const variants: ((j: Record<string, any>) => void)[] = [
    (j) => j.normalizer = { type: "NFC" },
    (j) => j.model.type = "WordPiece",
    (j) => j.model.byte_fallback = true,
    (j) => j.model.dropout = 0.1,
    (j) => j.decoder = { type: "Metaspace" },
    (j) => j.post_processor = { type: "TemplateProcessing" },
    (j) => j.added_tokens[0].lstrip = true,
    (j) => j.pre_tokenizer.pretokenizers[0].pattern.Regex = "\\w+|\\s+",
    (j) => j.pre_tokenizer.pretokenizers[0].behavior = "Removed",
    (j) => j.pre_tokenizer = { type: "Metaspace" },
  ];
  for (const change of variants) {
    const j = structuredClone(base);
    change(j);
    assert.equal(byteLevelBpe(j), null, change.toString());
  }
});
