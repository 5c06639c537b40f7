/**
 * gpt-oss's tokenizer and harmony chat template travel into the artifact: a gpt_oss checkpoint
 * (gpt_oss-a's weights with a 320-token vocabulary) with a byte-level BPE tokenizer.json built
 * here (harmony's special tokens as added tokens) and a harmony-style chat_template.jinja
 * compiles; the artifact's tokenizer renders chat turns in the harmony format, encodes the
 * special tokens as single ids, and the engine decodes from them, stopping on <|return|> or
 * <|call|> (generation_config.json's EOS ids join config.json's). Through the CLI, `run --prompt`
 * renders the prompt as a user turn with that template (`--raw`: as is).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { openSafetensors } from "../compiler/checkpoint/safetensors.ts";
import { writeSafetensors } from "../compiler/checkpoint/testing.ts";
import { mulberry32 as rng } from "../schemas/prng.ts";
import { createWebGpuEngine, openArtifact } from "../runtime/mod.ts";
import { tokenizerFromArtifact } from "../runtime/tokenizer.ts";
import { collect, emitTemp } from "./engine_helpers.ts";
import { runCli } from "./cli_helpers.ts";

const FIXTURE = "testdata/hf-oracle/gpt_oss-a";
const V = 320;
/** Harmony's special tokens and their ids here. */
const SPECIAL = {
  "<|start|>": 300,
  "<|message|>": 301,
  "<|end|>": 302,
  "<|return|>": 303,
  "<|call|>": 304,
};
/** A harmony-format template: <|start|>role<|message|>content<|end|> per turn. */
const HARMONY = "{%- for m in messages -%}<|start|>{{ m.role }}<|message|>{{ m.content }}" +
  "<|end|>{%- endfor -%}{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}";

/** GPT-2's byte → printable character map (ByteLevel pre-tokenizer). */
function byteChars(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    out[b] = String.fromCharCode(keep.includes(b) ? b : 256 + extra++);
  }
  return out;
}

/** A byte-level BPE tokenizer.json: 256 bytes, merges "h e", "l l", "he ll", the specials. */
function harmonyTokenizerJson(): Uint8Array {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, i) => vocab[c] = i);
  const merges = [["h", "e"], ["l", "l"], ["he", "ll"]];
  merges.forEach(([a, b], i) => vocab[a + b] = 256 + i);
  const added = Object.entries(SPECIAL).map(([content, id]) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const json = {
    version: "1.0",
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true },
    model: { type: "BPE", vocab, merges: merges.map((m) => m.join(" ")), unk_token: null },
  };
  return new TextEncoder().encode(JSON.stringify(json));
}

/** Writes the gpt_oss checkpoint with the harmony tokenizer and template into `dir`. */
async function writeHarmonyCheckpoint(dir: string): Promise<void> {
  const config = JSON.parse(await Deno.readTextFile(join(FIXTURE, "config.json")));
  await Deno.writeTextFile(
    join(dir, "config.json"),
    JSON.stringify({ ...config, vocab_size: V, eos_token_id: SPECIAL["<|return|>"] }),
  );
  const file = await openSafetensors(join(FIXTURE, "model.safetensors"));
  const rand = rng(7);
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [name, info] of file.tensors) {
    tensors[name] = { shape: [...info.shape], data: await file.read(name) };
  }
  for (const name of ["model.embed_tokens.weight", "lm_head.weight"]) {
    const H = config.hidden_size;
    tensors[name] = {
      shape: [V, H],
      data: Float32Array.from({ length: V * H }, () => rand() * 2 - 1),
    };
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  await Deno.writeFile(join(dir, "tokenizer.json"), harmonyTokenizerJson());
  await Deno.writeTextFile(join(dir, "chat_template.jinja"), HARMONY);
  // As released: config.json names <|return|>, generation_config.json also <|call|>.
  await Deno.writeTextFile(
    join(dir, "generation_config.json"),
    JSON.stringify({ eos_token_id: [SPECIAL["<|return|>"], SPECIAL["<|call|>"]] }),
  );
}

const u = (s: string) => [...new TextEncoder().encode(s)];
/** "user: hello" in harmony: "hello" → "hell" (merge 258) + "o"; special tokens one id each. */
const HELLO_CHAT_IDS = [300, ...u("user"), 301, 258, ...u("o"), 302, 300, ...u("assistant")];

Deno.test("gpt_oss: tokenizer.json and harmony template in the artifact, chat turns encode and decode", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-harmony-" });
  let path = "";
  try {
    await writeHarmonyCheckpoint(dir);
    path = await emitTemp(await loadCheckpoint(dir));
    const artifact = await openArtifact(path);
    const tok = await tokenizerFromArtifact(artifact);
    assert.ok(tok.hasChatTemplate);
    const text = tok.applyChatTemplate([{ role: "user", content: "hello" }]);
    assert.equal(text, "<|start|>user<|message|>hello<|end|><|start|>assistant");
    const ids = tok.encode(text, { addSpecialTokens: false });
    assert.deepEqual(ids, HELLO_CHAT_IDS);
    assert.equal(tok.decode(ids), "userhelloassistant");
    assert.deepEqual(tok.eos, [SPECIAL["<|return|>"], SPECIAL["<|call|>"]]);

    const engine = await createWebGpuEngine(artifact);
    try {
      const out = await collect(engine.generate(ids, { maxTokens: 8, stopIds: tok.eos }));
      assert.ok(out.length >= 1 && out.every((id) => id >= 0 && id < V));
    } finally {
      engine.dispose();
      artifact.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    if (path) await Deno.remove(path);
  }
});

Deno.test("cli run --prompt: a user turn through the harmony template; --raw feeds the text as is", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-harmony-cli-" });
  let path = "";
  try {
    await writeHarmonyCheckpoint(dir);
    path = await emitTemp(await loadCheckpoint(dir));
    const run = async (...extra: string[]) => {
      const common = ["--max-tokens", "4", "--device", "cpu"];
      const r = await runCli(["run", path, "--prompt", "hello", ...common, ...extra]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout;
    };
    const chat = JSON.parse(await run("--json"));
    assert.deepEqual(chat.prompt_ids, HELLO_CHAT_IDS);
    assert.ok(chat.ids.length >= 1);
    // The same ids given directly generate the same tokens.
    const direct = await runCli([
      "run",
      path,
      "--ids",
      HELLO_CHAT_IDS.join(","),
      "--max-tokens",
      "4",
      "--device",
      "cpu",
      "--json",
    ]);
    assert.deepEqual(JSON.parse(direct.stdout).ids, chat.ids, direct.stderr);
    const raw = JSON.parse(await run("--json", "--raw"));
    assert.deepEqual(raw.prompt_ids, [258, ...u("o")]);
    // Plain output: chat prints the reply only; --raw echoes the prompt before the continuation.
    assert.ok(!(await run()).startsWith("hello"));
    assert.ok((await run("--raw")).startsWith("hello"));
    const help = await runCli(["run", "--help"]);
    assert.match(help.stdout + help.stderr, /--raw/);
  } finally {
    await Deno.remove(dir, { recursive: true });
    if (path) await Deno.remove(path);
  }
});
