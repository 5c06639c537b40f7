/**
 * Embeds the moeq runtime in a Deno HTTP service with an OpenAI-compatible API.
 *
 *     XDG_RUNTIME_DIR=/tmp deno run -A examples/serve.ts model.moeq 8080
 *     curl -s localhost:8080/v1/completions -d '{"prompt": "ROMEO:", "max_tokens": 64}'
 *
 * @module
 */

import { loadModel, openArtifact } from "../runtime/mod.ts";
import { serve } from "../runtime/server.ts";
import { tokenizerFromArtifact } from "../runtime/tokenizer.ts";

const [path, port = "8080"] = Deno.args;
if (!path) {
  console.error("usage: deno run -A examples/serve.ts <model.moeq> [port]");
  Deno.exit(2);
}

const artifact = await openArtifact(path);
const tokenizer = await tokenizerFromArtifact(artifact);
artifact.close();
const engine = await loadModel(path);

const stop = new AbortController();
for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => stop.abort());
const server = serve(engine, tokenizer, { port: Number(port), signal: stop.signal });
await server.finished;
engine.dispose();
