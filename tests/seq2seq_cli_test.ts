// Encoder–decoder models through the CLI on the CPU reference: `logits --encoder-ids
// --decoder-ids --json` (the float64 values of transformers' strict oracle), `run --encoder-ids
// --json` (transformers' greedy ids), `eval --spans` of an f32 artifact of the oracle
// checkpoint (transformers' float64 figure on testdata/hf-oracle-extra/switch-spans), and the one-line usage errors;
// the same three and serve on the WebGPU engine (an f32 artifact: 1e-4 of `hf_logits`, the
// greedy ids, 1e-4 relative of the spans figure).

import assert from "node:assert/strict";
import { join } from "node:path";
import { isOneLineError, runCli } from "./cli_helpers.ts";
import { openEngine } from "../cli/model_source.ts";
import { serve } from "../runtime/server.ts";

const TESTDATA = new URL("../testdata/", import.meta.url).pathname;
const ORACLE = join(TESTDATA, "hf-oracle/switch_transformers-a");
const SPANS = join(TESTDATA, "hf-oracle-extra/switch-spans");

async function json(path: string) {
  return JSON.parse(await Deno.readTextFile(path));
}

Deno.test("logits --encoder-ids --decoder-ids --json: within 1e-9 of the strict oracle", async () => {
  const ref = await json(join(ORACLE, "reference.json"));
  const out = await runCli([
    "logits",
    ORACLE,
    "--encoder-ids",
    ref.encoder_input_ids.join(","),
    "--decoder-ids",
    ref.decoder_input_ids.join(","),
    "--json",
  ]);
  assert.equal(out.code, 0, out.stderr);
  const rows: number[][] = JSON.parse(out.stdout).logits;
  assert.equal(rows.length, ref.decoder_input_ids.length);
  const want: number[] = ref.hf_logits_f64strict;
  let err = 0;
  rows.forEach((row, t) =>
    row.forEach((x, i) => (err = Math.max(err, Math.abs(x - want[t * row.length + i]))))
  );
  assert.ok(err < 1e-9, `max error ${err}`);
});

Deno.test("run --encoder-ids --json --device cpu: transformers' greedy ids", async () => {
  const g = (await json(join(ORACLE, "reference.json"))).greedy_decode;
  const out = await runCli([
    "run",
    ORACLE,
    "--device",
    "cpu",
    "--encoder-ids",
    g.encoder_input_ids.join(","),
    "--max-tokens",
    String(g.generated_ids.length),
    "--json",
  ]);
  assert.equal(out.code, 0, out.stderr);
  assert.deepEqual(JSON.parse(out.stdout).ids, g.generated_ids);
});

Deno.test("eval --spans of an f32 switch_transformers-a artifact: transformers' figure", async () => {
  const want = await json(join(SPANS, "reference.json"));
  const dir = await Deno.makeTempDir({ prefix: "moeq-spans-" });
  try {
    const artifact = join(dir, "model.moeq");
    const compiled = await runCli([
      "compile",
      ORACLE,
      "-o",
      artifact,
      "--expert-bits",
      "f32",
      "--dense-bits",
      "f32",
    ]);
    assert.equal(compiled.code, 0, compiled.stderr);
    const spans = join(SPANS, "spans.jsonl");
    const out = await runCli(["eval", artifact, "--device", "cpu", "--spans", spans, "--json"]);
    assert.equal(out.code, 0, out.stderr);
    const got = JSON.parse(out.stdout);
    assert.equal(got.tokens, want.tokens);
    const rel = Math.abs(got.bits_per_token - want.bits_per_token_f64) / want.bits_per_token_f64;
    console.log(`  eval --spans: ${got.bits_per_token} bits/token, relative error ${rel}`);
    assert.ok(rel < 1e-6, `relative error ${rel}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--device webgpu on an f32 switch_transformers-a artifact: logits, run, eval --spans, serve", async () => {
  const ref = await json(join(ORACLE, "reference.json"));
  const want = await json(join(SPANS, "reference.json"));
  const dir = await Deno.makeTempDir({ prefix: "moeq-s2s-gpu-" });
  try {
    const artifact = join(dir, "model.moeq");
    const f32 = ["--expert-bits", "f32", "--dense-bits", "f32"];
    const compiled = await runCli(["compile", ORACLE, "-o", artifact, ...f32]);
    assert.equal(compiled.code, 0, compiled.stderr);

    const logits = await runCli([
      "logits",
      artifact,
      "--device",
      "webgpu",
      "--encoder-ids",
      ref.encoder_input_ids.join(","),
      "--decoder-ids",
      ref.decoder_input_ids.join(","),
      "--json",
    ]);
    assert.equal(logits.code, 0, logits.stderr);
    const rows: number[][] = JSON.parse(logits.stdout).logits;
    assert.equal(rows.length, ref.decoder_input_ids.length);
    let err = 0;
    rows.forEach((row, t) =>
      row.forEach((x, i) => (err = Math.max(err, Math.abs(x - ref.hf_logits[t * row.length + i]))))
    );
    assert.ok(err < 1e-4, `logits max error ${err}`);

    const g = ref.greedy_decode;
    const run = await runCli([
      "run",
      artifact,
      "--encoder-ids",
      g.encoder_input_ids.join(","),
      "--max-tokens",
      String(g.generated_ids.length),
      "--json",
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.deepEqual(JSON.parse(run.stdout).ids, g.generated_ids);

    const spans = join(SPANS, "spans.jsonl");
    const out = await runCli(["eval", artifact, "--spans", spans, "--json"]);
    assert.equal(out.code, 0, out.stderr);
    const got = JSON.parse(out.stdout);
    assert.equal(got.device, "webgpu");
    assert.equal(got.tokens, want.tokens);
    const rel = Math.abs(got.bits_per_token - want.bits_per_token_f64) / want.bits_per_token_f64;
    console.log(
      `  eval --spans --device webgpu: ${got.bits_per_token} bits/token, relative error ${rel}`,
    );
    assert.ok(rel < 1e-4, `relative error ${rel}`);

    // serve /v1/completions on the WebGPU engine: the prompt feeds the encoder.
    await checkServedCompletion(artifact, "webgpu");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("seq2seq usage errors are one line", async () => {
  const cases: [string[], RegExp][] = [
    [["logits", ORACLE, "--ids", "1,2"], /needs --encoder-ids/],
    [["eval", ORACLE, "--text", join(SPANS, "reference.json")], /evaluated with --spans/],
    [
      ["eval", join(TESTDATA, "hf-oracle/mixtral-a"), "--spans", "x.jsonl"],
      /--spans needs an encoder–decoder model/,
    ],
    [["run", ORACLE, "--device", "cpu", "--encoder-ids", "1,99"], /outside the vocabulary/],
  ];
  for (const [args, message] of cases) {
    const out = await runCli(args);
    assert.equal(out.code, 2, `${args.join(" ")}: ${out.stderr}`);
    assert.ok(isOneLineError(out.stderr) && message.test(out.stderr), out.stderr);
  }
});

Deno.test("study --spans: allocators compared on teacher-forced examples", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-s2s-study-" });
  try {
    const spans = join(dir, "spans.jsonl");
    const line = (i: number) =>
      JSON.stringify({
        input_ids: Array.from({ length: 10 }, (_, t) => (7 * i + 3 * t + 2) % 64),
        labels: Array.from({ length: 5 }, (_, t) => (5 * i + 11 * t + 4) % 64),
      });
    await Deno.writeTextFile(spans, Array.from({ length: 8 }, (_, i) => line(i)).join("\n"));
    const out = await runCli([
      "study",
      ORACLE,
      "--spans",
      spans,
      "--examples",
      "4",
      "--calibration-examples",
      "4",
      "--bits",
      "2.5",
      "--seeds",
      "1",
      "--quantizers",
      "",
      "--only",
      "uniform-2,budget@2.5,frequency@2.5",
      "--json",
      "--quiet",
    ]);
    assert.equal(out.code, 0, out.stderr);
    const r = JSON.parse(out.stdout);
    assert.deepEqual(r.rows.map((x: { label: string }) => x.label), [
      "f32",
      "uniform-2",
      "frequency@2.5",
      "budget@2.5",
    ]);
    assert.deepEqual([r.examples, r.tokens, r.calibration_examples], [4, 20, 4]);
    for (const row of r.rows) assert.ok(Number.isFinite(row.bitsPerByte), row.label);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve /v1/completions on an encoder–decoder model: the prompt feeds the encoder", async () => {
  await checkServedCompletion(ORACLE, "cpu");
});

/** serve's /v1/completions on `model`: the prompt feeds the encoder, the text is transformers' greedy decode. */
async function checkServedCompletion(model: string, device: "cpu" | "webgpu"): Promise<void> {
  const g = (await json(join(ORACLE, "reference.json"))).greedy_decode;
  const { engine, tokenizer } = await openEngine(model, device);
  const server = serve(engine, tokenizer, { port: 0, onListen: () => {} });
  try {
    const res = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: g.encoder_input_ids, max_tokens: 6, temperature: 0 }),
    });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.equal(body.choices[0].text, tokenizer.decode(g.generated_ids));
    assert.equal(body.usage.completion_tokens, 6);
  } finally {
    await server.shutdown();
    engine.dispose();
  }
}
