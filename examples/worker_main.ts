/**
 * Runs the engine in a Worker (examples/worker.ts) and streams two requests through it.
 *
 *     XDG_RUNTIME_DIR=/tmp deno run -A examples/worker_main.ts model.moeq
 *
 * @module
 */

const path = Deno.args[0];
if (!path) {
  console.error("usage: deno run -A examples/worker_main.ts <model.moeq>");
  Deno.exit(2);
}
const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
const pending = new Map<string, (tokens: number) => void>();
const ready = Promise.withResolvers<void>();

worker.onmessage = (e: MessageEvent) => {
  const m = e.data;
  if (m.type === "ready") ready.resolve();
  else if (m.type === "text") console.log(`[${m.id}] ${JSON.stringify(m.piece)}`);
  else if (m.type === "done") pending.get(m.id)?.(m.tokens);
  else if (m.type === "error") {
    console.error(`worker: ${m.message}`);
    Deno.exit(1);
  }
};

/** Sends one request; resolves with its token count when the worker is done. */
function generate(id: string, prompt: string, seed: number): Promise<number> {
  return new Promise((resolve) => {
    pending.set(id, resolve);
    worker.postMessage({ type: "generate", id, prompt, maxTokens: 24, temperature: 0.8, seed });
  });
}

worker.postMessage({ type: "load", path });
await ready.promise;
const counts = await Promise.all([generate("a", "ROMEO:", 1), generate("b", "JULIET:", 2)]);
console.log(`done: ${counts.join(" + ")} tokens`);
worker.postMessage({ type: "close" });
