/**
 * Evaluation worker of `study`: receives {id, path, ids, context, device}, evaluates the artifact
 * at `path` on `ids` and answers {id, bitsPerToken} or {id, error}. Runs in a Deno Worker so two
 * evaluations proceed on two cores.
 *
 * @module
 */

import { openEngine } from "./model_source.ts";
import { evaluateEngine } from "./evaluate_engine.ts";
import { evaluateSpans, forwardSeq2Seq, type Span } from "../compiler/reference/mod.ts";

/** A request to the worker. */
export interface EvalRequest {
  id: number;
  path: string;
  ids: number[];
  context: number;
  device: "cpu" | "webgpu";
  /** An encoder–decoder model's examples (teacher-forced, on the CPU reference) instead of ids. */
  spans?: Span[];
}

/** The worker's answer. */
export interface EvalReply {
  id: number;
  bitsPerToken?: number;
  error?: string;
}

// deno-lint-ignore no-explicit-any
const scope = self as any;
scope.onmessage = async (ev: MessageEvent<EvalRequest>) => {
  const { id, path, ids, context, device, spans } = ev.data;
  try {
    const { engine, reference } = await openEngine(path, device);
    try {
      const r = spans && reference
        ? await evaluateSpans(
          (e, d) => forwardSeq2Seq(reference, e, d),
          spans,
          reference.spec.decoderStartTokenId!,
        )
        : await evaluateEngine(engine, ids, context);
      scope.postMessage({ id, bitsPerToken: r.bitsPerToken } satisfies EvalReply);
    } finally {
      engine.dispose();
    }
  } catch (e) {
    scope.postMessage({ id, error: (e as Error).message } satisfies EvalReply);
  }
};
