import assert from "node:assert/strict";
import { createTokenizer, type Tokenizer, tokenizerFromArtifact } from "./tokenizer.ts";
import { InputError } from "../schemas/errors.ts";
import { bytesToUnicode } from "../testdata/tokenizer/make_tokenizer.ts";

const jsonBytes = Deno.readFileSync(
  new URL("../testdata/tokenizer/tiny-bpe.json", import.meta.url),
);
const json = JSON.parse(new TextDecoder().decode(jsonBytes));
const bpe = createTokenizer(jsonBytes, null, { bos: 316, eos: 317 });
const bytes = createTokenizer(null, null, { bos: 2, eos: [3] });

const SAMPLES = [
  "The quick brown fox.",
  "café crème brûlée, déjà vu",
  "中文分词测试：中国",
  "emoji 😀🎉👍🏽 and ZWJ 👩‍👩‍👧",
  "  two spaces\n\ttab\r\nCRLF  ",
  "Ünïcödé ŝtrïñg — “quotes” ½ ∑ 𝔘",
];

/** Independent BPE (merge by rank) over GPT-2 byte symbols, for pre-tokens of `text`. */
function referenceEncode(text: string): number[] {
  const rank = new Map<string, number>(json.model.merges.map((m: string, i: number) => [m, i]));
  const vocab: Record<string, number> = json.model.vocab;
  const byteChar = bytesToUnicode();
  const pre = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  const ids: number[] = [];
  for (const m of text.matchAll(pre)) {
    let symbols = Array.from(new TextEncoder().encode(m[0]), (b) => byteChar[b]);
    while (symbols.length > 1) {
      let best = -1;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const r = rank.get(symbols[i] + " " + symbols[i + 1]);
        if (
          r !== undefined && (best < 0 || r < rank.get(symbols[best] + " " + symbols[best + 1])!)
        ) {
          best = i;
        }
      }
      if (best < 0) break;
      symbols = [
        ...symbols.slice(0, best),
        symbols[best] + symbols[best + 1],
        ...symbols.slice(best + 2),
      ];
    }
    for (const s of symbols) ids.push(vocab[s]);
  }
  return ids;
}

function streamAll(tokenizer: Tokenizer, ids: number[]): string[] {
  const decoder = tokenizer.createStreamDecoder();
  const pieces = ids.map((id) => decoder.push(id));
  pieces.push(decoder.flush());
  return pieces;
}

Deno.test("byte tokenizer: token = byte, round trips, ignores out-of-range ids", () => {
  assert.equal(bytes.vocabSize, 256);
  for (const text of SAMPLES) {
    const ids = bytes.encode(text);
    assert.deepEqual(ids, Array.from(new TextEncoder().encode(text)));
    assert.equal(bytes.decode(ids), text);
  }
  assert.equal(bytes.decode([104, 300, 105, -1]), "hi");
  assert.deepEqual(bytes.encode("x", { addSpecialTokens: true }), [120], "no BOS for bytes");
});

Deno.test("BPE tokenizer.json: ids match an independent merge-by-rank encoder; round trips", () => {
  assert.equal(bpe.vocabSize, 320);
  for (const text of SAMPLES) {
    const ids = bpe.encode(text);
    assert.deepEqual(ids, referenceEncode(text), text);
    assert.equal(bpe.decode(ids), text);
  }
  // Merges learned from the corpus do apply.
  assert.ok(
    bpe.encode(" the café 中文").length < new TextEncoder().encode(" the café 中文").length,
  );
  // Special tokens are recognised in text and skipped on decode.
  assert.deepEqual(bpe.encode("<s>hi</s>"), [316, 104, 105, 317]);
  assert.equal(bpe.decode([316, 104, 105, 317]), "hi");
});

Deno.test("streaming decode holds back split UTF-8 (é, 中, emoji) and never emits U+FFFD", () => {
  for (const tokenizer of [bytes, bpe]) {
    for (const text of [...SAMPLES, "é", "中", "😀", "a😀b中c"]) {
      const ids = tokenizer.encode(text);
      const pieces = streamAll(tokenizer, ids);
      assert.equal(pieces.join(""), text);
      for (const p of pieces) assert.ok(!p.includes("\uFFFD"), `${JSON.stringify(p)} in ${text}`);
    }
  }
  // Byte level: every multi-byte character is split; the pieces come out whole.
  assert.deepEqual(streamAll(bytes, bytes.encode("é中😀")), [
    "",
    "é",
    "",
    "",
    "中",
    "",
    "",
    "",
    "😀",
    "",
  ]);
  // BPE: 🎉 is four byte tokens here (not merged by the corpus).
  const party = bpe.encode("🎉");
  assert.equal(party.length, 4);
  assert.deepEqual(streamAll(bpe, party), ["", "", "", "🎉", ""]);
  // A sequence that never completes is flushed as U+FFFD, not dropped.
  assert.deepEqual(streamAll(bytes, [0x61, 0xe4, 0xb8]), ["a", "", "", "\uFFFD"]);
  // Text after an invalid byte is not held back forever.
  assert.deepEqual(streamAll(bytes, [0xff, 0x62]).join(""), "\uFFFDb");
});

Deno.test("chat template: jinja rendering with bos/eos, fallback format, errors", () => {
  const template = "{{ bos_token }}{% for m in messages %}" +
    "{% if m.role == 'user' %}<|user|>{{ m.content }}{{ eos_token }}" +
    "{% elif m.role == 'assistant' %}<|assistant|>{{ m.content }}{{ eos_token }}" +
    "{% else %}{{ raise_exception('unknown role ' + m.role) }}{% endif %}{% endfor %}" +
    "{% if add_generation_prompt %}<|assistant|>{% endif %}";
  const chat = createTokenizer(jsonBytes, template, { bos: 316, eos: 317 });
  const messages = [
    { role: "user", content: "Bonjour, ça va ?" },
    { role: "assistant", content: "Oui." },
    { role: "user", content: "中文?" },
  ];
  const text = chat.applyChatTemplate(messages);
  assert.equal(
    text,
    "<s><|user|>Bonjour, ça va ?</s><|assistant|>Oui.</s><|user|>中文?</s><|assistant|>",
  );
  assert.ok(chat.applyChatTemplate(messages, { addGenerationPrompt: false }).endsWith("中文?</s>"));
  const ids = chat.encode(text, { addSpecialTokens: false });
  assert.equal(ids[0], 316);
  assert.equal(ids.at(-1), 319);
  assert.throws(
    () => chat.applyChatTemplate([{ role: "tool", content: "x" }]),
    (e) => e instanceof InputError && /unknown role tool/.test(e.message),
  );
  assert.equal(
    bytes.applyChatTemplate([{ role: "user", content: "hi" }]),
    "user: hi\nassistant:",
  );
  assert.throws(() => createTokenizer(null, "{% for %}", { bos: null, eos: [] }), InputError);
});

Deno.test("bad tokenizer.json is an InputError naming the file", () => {
  const bad = [
    new TextEncoder().encode("{not json"),
    new TextEncoder().encode("{}"),
    new Uint8Array([0xff, 0xfe]),
  ];
  for (const b of bad) {
    assert.throws(
      () => createTokenizer(b, null, { bos: null, eos: [] }),
      (e) => e instanceof InputError && e.message.startsWith("tokenizer.json:"),
    );
  }
});

Deno.test("tokenizerFromArtifact reads tokenizer.json, template and special ids", async () => {
  const model = { bosTokenId: 316, eosTokenIds: [317, 318] };
  const fromBpe = await tokenizerFromArtifact({
    model,
    tokenizer: { chatTemplate: "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}" },
    readTokenizerJson: () => Promise.resolve(jsonBytes),
  });
  assert.deepEqual([fromBpe.bos, fromBpe.eos], [316, [317, 318]]);
  assert.equal(fromBpe.applyChatTemplate([{ role: "user", content: "x" }]), "<s>x</s>");
  const fromBytes = await tokenizerFromArtifact({
    model,
    tokenizer: { chatTemplate: null },
    readTokenizerJson: () => Promise.resolve(null),
  });
  assert.equal(fromBytes.vocabSize, 256);
});
