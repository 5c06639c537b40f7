/**
 * Granite MoE with `attention_bias`: q/k/v and output-projection biases under a residual
 * multiplier (the engine adds the output bias pre-scaled by it, the reference as
 * x += r·(o_proj(att) + b)). granitemoe-a's weights plus random biases: WebGPU logits within
 * 1e-5 relative of the float64 reference on the same weights.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { openSafetensors } from "../compiler/checkpoint/safetensors.ts";
import { writeSafetensors } from "../compiler/checkpoint/testing.ts";
import { forward, prepareReference } from "../compiler/reference/mod.ts";
import { mulberry32 as rng } from "../schemas/prng.ts";
import { loadModel } from "../runtime/mod.ts";
import { emitTemp, relErr } from "./engine_helpers.ts";

const FIXTURE = "testdata/hf-oracle/granitemoe-a";

Deno.test("engine granitemoe attention_bias: biases under the residual multiplier match the reference", async () => {
  const dir = await Deno.makeTempDir({ prefix: "moeq-granite-bias-" });
  let path = "";
  try {
    const config = JSON.parse(await Deno.readTextFile(join(FIXTURE, "config.json")));
    await Deno.writeTextFile(
      join(dir, "config.json"),
      JSON.stringify({ ...config, attention_bias: true }),
    );
    const file = await openSafetensors(join(FIXTURE, "model.safetensors"));
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [name, info] of file.tensors) {
      tensors[name] = { shape: [...info.shape], data: await file.read(name) };
    }
    const rand = rng(11);
    for (let l = 0; l < config.num_hidden_layers; l++) {
      for (const p of ["q", "k", "v", "o"]) {
        const rows = tensors[`model.layers.${l}.self_attn.${p}_proj.weight`].shape[0];
        tensors[`model.layers.${l}.self_attn.${p}_proj.bias`] = {
          shape: [rows],
          data: Float32Array.from({ length: rows }, () => rand() - 0.5),
        };
      }
    }
    await writeSafetensors(join(dir, "model.safetensors"), tensors);
    const ir = await loadCheckpoint(dir);
    path = await emitTemp(ir);
    const ids = [11, 20, 20, 62, 35, 46, 31, 56];
    const want = forward(await prepareReference(ir), ids);
    const engine = await loadModel(path);
    try {
      const err = relErr(await engine.logits(ids), want);
      console.log(`  granitemoe + attention_bias: rel err ${err.toExponential(2)}`);
      assert.ok(err <= 1e-5, `rel err ${err}`);
    } finally {
      engine.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    if (path) await Deno.remove(path);
  }
});
