/**
 * The engine inside a Deno Worker: keeps the GPU work off the caller's thread. Protocol:
 * `{type: "load", path}` → `{type: "ready"}`; `{type: "generate", id, prompt, maxTokens?,
 * temperature?, seed?}` → `{type: "text", id, piece}`* then `{type: "done", id, tokens}`; any
 * failure → `{type: "error", id, message}`. See worker_main.ts for the caller side.
 *
 * @module
 */

/// <reference no-default-lib="true" />
/// <reference lib="deno.worker" />

import { loadModel, openArtifact, type WebGpuEngine } from "../runtime/mod.ts";
import { type Tokenizer, tokenizerFromArtifact } from "../runtime/tokenizer.ts";

let model: { engine: WebGpuEngine; tokenizer: Tokenizer } | null = null;
// Requests run one at a time, in arrival order.
let queue: Promise<void> = Promise.resolve();

self.onmessage = (e: MessageEvent) => {
  const msg = e.data;
  queue = queue.then(() => handle(msg)).catch((err) =>
    self.postMessage({ type: "error", id: msg.id ?? null, message: (err as Error).message })
  );
};

async function handle(msg: Record<string, unknown>): Promise<void> {
  if (msg.type === "load") {
    const artifact = await openArtifact(msg.path as string);
    const tokenizer = await tokenizerFromArtifact(artifact);
    artifact.close();
    model = { engine: await loadModel(msg.path as string), tokenizer };
    self.postMessage({ type: "ready" });
  } else if (msg.type === "generate") {
    if (!model) throw new Error("send {type: 'load'} first");
    const { engine, tokenizer } = model;
    const decoder = tokenizer.createStreamDecoder();
    let tokens = 0;
    const options = {
      maxTokens: (msg.maxTokens as number | undefined) ?? 64,
      temperature: (msg.temperature as number | undefined) ?? 0,
      seed: (msg.seed as number | undefined) ?? 0,
    };
    for await (const id of engine.generate(tokenizer.encode(msg.prompt as string), options)) {
      tokens++;
      const piece = decoder.push(id);
      if (piece) self.postMessage({ type: "text", id: msg.id, piece });
    }
    const tail = decoder.flush();
    if (tail) self.postMessage({ type: "text", id: msg.id, piece: tail });
    self.postMessage({ type: "done", id: msg.id, tokens });
  } else if (msg.type === "close") {
    model?.engine.dispose();
    self.close();
  }
}
