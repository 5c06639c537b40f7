import assert from "node:assert/strict";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { artifactToIR, emitArtifact, type TensorEncoding } from "../compiler/emit/mod.ts";
import { isExpertRole, type PlacedTensor } from "../compiler/ir_legacy.ts";
import { forward, prepareReference, ReferenceSession } from "../compiler/reference/forward.ts";
import type { QuantBits } from "../schemas/packing.ts";
import { createWebGpuEngine, loadModel, openArtifact, readbackCount } from "./mod.ts";

const FIXTURES = ["mixtral-packed", "mixtral-classic", "qwen2-moe"];
await Deno.mkdir(".tmp", { recursive: true });

async function compileF32(name: string): Promise<string> {
  const ir = await loadCheckpoint(`testdata/hf-moe/${name}`);
  const dest = await Deno.makeTempFile({ dir: ".tmp", suffix: ".moeq" });
  await emitArtifact(ir, dest);
  return dest;
}

for (const name of FIXTURES) {
  Deno.test(`engine f32 ${name}: logits vs HF float64 within 1e-4, greedy decode`, async () => {
    const ref = JSON.parse(await Deno.readTextFile(`testdata/hf-moe/${name}/reference.json`));
    const path = await compileF32(name);
    const engine = await loadModel(path);
    try {
      const V = engine.config.vocabSize;
      const rows = await engine.logits(ref.input_ids);
      let maxErr = 0;
      rows.forEach((row, t) => {
        for (let i = 0; i < V; i++) {
          maxErr = Math.max(maxErr, Math.abs(row[i] - ref.hf_logits[t * V + i]));
        }
      });
      console.log(`${name}: max |gpu - hf| = ${maxErr.toExponential(2)}`);
      assert.ok(maxErr <= 1e-4, `max abs error ${maxErr}`);
      const g = ref.greedy_decode;
      const prompt: number[] = g ? g.prompt_ids : ref.input_ids;
      const want: number[] = g ? g.generated_ids : ref.greedy_ids;
      const got: number[] = [];
      for await (const id of engine.generate(prompt, { maxTokens: want.length, stopIds: [] })) {
        got.push(id);
      }
      assert.deepEqual(got, want);
    } finally {
      engine.dispose();
      await Deno.remove(path);
    }
  });
}

/** max |a − b| / max |b| over all rows. */
function relErr(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let num = 0, den = 0;
  a.forEach((row, t) => {
    for (let i = 0; i < row.length; i++) {
      num = Math.max(num, Math.abs(row[i] - b[t][i]));
      den = Math.max(den, Math.abs(b[t][i]));
    }
  });
  return num / den;
}

const BITS: QuantBits[] = [2, 3, 4, 8];
const QUANT_CASES: {
  label: string;
  fixture: string;
  bits: (e: number) => QuantBits;
  f16: boolean;
}[] = [
  ...BITS.map((b) => ({ label: `q${b}`, fixture: "mixtral-packed", bits: () => b, f16: true })),
  { label: "mixed 2/3/4/8", fixture: "qwen2-moe", bits: (e: number) => BITS[e % 4], f16: true },
  {
    label: "mixed 2/3/4/8, f16 disabled",
    fixture: "mixtral-classic",
    bits: (e: number) => BITS[(e + 1) % 4],
    f16: false,
  },
];

for (const c of QUANT_CASES) {
  Deno.test(`engine quantized ${c.label} (${c.fixture}): logits vs CPU reference on the same weights (rel ≤ 1e-3)`, async () => {
    const ir = await loadCheckpoint(`testdata/hf-moe/${c.fixture}`);
    const path = await Deno.makeTempFile({ dir: ".tmp", suffix: ".moeq" });
    await emitArtifact(ir, path, {
      encode: (p: PlacedTensor): TensorEncoding => {
        if (p.ref.shape.length !== 2 || p.role === "embed") return { storage: "f32" };
        if (p.role === "lm_head") return { storage: "bf16" };
        if (p.role.startsWith("attn_") || p.role === "router") return { storage: "f16" };
        const cols = p.ref.shape[1];
        const bits = isExpertRole(p.role) ? c.bits(p.expert) : 8;
        return { storage: "q", bits, groupSize: cols % 32 === 0 ? 32 : cols, method: "rtn" };
      },
    });
    const artifact = await openArtifact(path);
    const model = await prepareReference(await artifactToIR(artifact));
    const ids = [3, 17, 5, 40, 22, 9, 31];
    const want = forward(model, ids);
    const engine = await createWebGpuEngine(artifact, { f16: c.f16 });
    try {
      assert.equal(engine.f16, false || (c.f16 && engine.device.features.has("shader-f16")));
      const got = await engine.logits(ids);
      const err = relErr(got, want);
      console.log(`${c.label}: rel err ${err.toExponential(2)}`);
      assert.ok(err <= 1e-3, `rel err ${err}`);
      // Greedy decode through the KV cache equals the reference argmax continuation.
      const session = new ReferenceSession(model);
      let row = session.feed(ids.slice(0, 3)).at(-1)!;
      const wantIds: number[] = [];
      for (let i = 0; i < 5; i++) {
        const id = argmax(row);
        wantIds.push(id);
        row = session.step(id);
      }
      const gotIds: number[] = [];
      for await (const id of engine.generate(ids.slice(0, 3), { maxTokens: 5, stopIds: [] })) {
        gotIds.push(id);
      }
      assert.deepEqual(gotIds, wantIds);
    } finally {
      engine.dispose();
      artifact.close();
      await Deno.remove(path);
    }
  });
}

function argmax(row: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[b]) b = i;
  return b;
}

Deno.test("engine decode loop: one readback per readbackEvery tokens, stop ids, abort", async () => {
  const path = await compileF32("mixtral-packed");
  const engine = await loadModel(path, { prefillChunk: 2 });
  try {
    // Long prompt in chunks of 2 still matches full logits of the reference fixture.
    const ref = JSON.parse(
      await Deno.readTextFile("testdata/hf-moe/mixtral-packed/reference.json"),
    );
    const rows = await engine.logits(ref.input_ids);
    const V = engine.config.vocabSize;
    let maxErr = 0;
    rows.forEach((r, t) =>
      r.forEach((v, i) => maxErr = Math.max(maxErr, Math.abs(v - ref.hf_logits[t * V + i])))
    );
    assert.ok(maxErr <= 1e-4, `chunked prefill max abs error ${maxErr}`);

    const before = readbackCount();
    const all: number[] = [];
    for await (
      const id of engine.generate([1, 2, 3], { maxTokens: 24, readbackEvery: 8, stopIds: [] })
    ) {
      all.push(id);
    }
    assert.equal(all.length, 24);
    assert.equal(readbackCount() - before, 3, "3 readbacks for 24 tokens at readbackEvery 8");

    // Stop on a token: the stop id is yielded, overshoot discarded.
    const stopAt = all.findIndex((id, i) => all.indexOf(id) === i && i > 0);
    const stopId = all[stopAt];
    const stopped: number[] = [];
    for await (const id of engine.generate([1, 2, 3], { maxTokens: 24, stopIds: [stopId] })) {
      stopped.push(id);
    }
    assert.deepEqual(stopped, all.slice(0, all.indexOf(stopId) + 1));

    const ac = new AbortController();
    const some: number[] = [];
    for await (
      const id of engine.generate([1, 2, 3], { maxTokens: 24, signal: ac.signal, stopIds: [] })
    ) {
      some.push(id);
      if (some.length === 2) ac.abort();
    }
    assert.equal(some.length, 2);
  } finally {
    engine.dispose();
    await Deno.remove(path);
  }
});
