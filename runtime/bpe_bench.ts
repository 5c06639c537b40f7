/**
 * Loading an o200k-sized (200k tokens, 200k merges) byte-level BPE tokenizer.json: the compact
 * BPE (runtime/bpe.ts, what `createTokenizer` uses) against `@huggingface/tokenizers`.
 * Run: `deno bench -A runtime/bpe_bench.ts`.
 */
// deno-lint-ignore no-import-prefix
import { Tokenizer as HfTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { createTokenizer } from "./tokenizer.ts";
import { largeByteLevelBpe } from "../testdata/tokenizer/make_tokenizer.ts";

const bytes = largeByteLevelBpe({ added: [{ content: "<|start|>", special: true }] });
const text = new TextDecoder().decode(bytes);

Deno.bench("JSON.parse only (11 MB)", { group: "load" }, () => {
  JSON.parse(text);
});
Deno.bench("createTokenizer (compact BPE; decode + parse + build)", {
  group: "load",
  baseline: true,
}, () => {
  createTokenizer(bytes, null, { bos: null, eos: [] });
});
Deno.bench("@huggingface/tokenizers (decode + parse + constructor)", { group: "load" }, () => {
  new HfTokenizer(JSON.parse(new TextDecoder().decode(bytes)), {});
});
