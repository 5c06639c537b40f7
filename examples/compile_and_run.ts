/**
 * The library end to end: load a checkpoint, compile it at 2.5 expert bits, run it with WebGPU.
 *
 *     XDG_RUNTIME_DIR=/tmp deno run -A examples/compile_and_run.ts [checkpoint-dir] [prompt]
 *
 * @module
 */

import { loadCheckpoint } from "../compiler/checkpoint/mod.ts";
import { compileModel } from "../compiler/compile.ts";
import { loadModel, openArtifact } from "../runtime/mod.ts";
import { tokenizerFromArtifact } from "../runtime/tokenizer.ts";

const dir = Deno.args[0] ?? new URL("../testdata/shakespeare-moe", import.meta.url).pathname;
const prompt = Deno.args[1] ?? "ROMEO:";
const out = await Deno.makeTempFile({ suffix: ".moeq" });

const ir = await loadCheckpoint(dir);
const init = await loadCheckpoint(`${dir}/init`).catch(() => undefined); // optional step-0 weights
const result = await compileModel(ir, out, {
  expertStorage: { kind: "bits", average: 2.5 },
  allocator: "paper",
  init,
});
console.log(`${out}: ${result.bytes} bytes, ${result.allocation?.achievedAverage} expert bits`);

const artifact = await openArtifact(out);
const tokenizer = await tokenizerFromArtifact(artifact);
artifact.close();
const engine = await loadModel(out);
const ids: number[] = [];
for await (const id of engine.generate(tokenizer.encode(prompt), { maxTokens: 80, seed: 1 })) {
  ids.push(id);
}
console.log(prompt + tokenizer.decode(ids));
engine.dispose();
await Deno.remove(out);
