/**
 * `moeq study --probe`: why does an allocator win or lose? Per expert it measures the loss
 * sensitivity directly, with the float64 reference as the evaluator: Δ bits/byte on a short
 * held-out slice when ONLY that expert is quantized to the lowest width (everything else float),
 * and per layer the Δ when all of that layer's experts are. Those measurements are compared, by
 * Spearman rank correlation within each layer, with the scores the allocators use: the
 * router-norm change Λ (paper: small Λ = sensitive), routing frequency, and the budget
 * allocator's output-error proxy.
 *
 * @module
 */

import { type ModelIR, moeLayers } from "../compiler/ir.ts";
import type { CalibrationData } from "../compiler/calibration.ts";
import { evaluateReference, type ReferenceModel } from "../compiler/reference/mod.ts";
import { outputError, spearman, weightError } from "../compiler/expert_error.ts";
import {
  DATA_FREE_COSTS,
  type DataFreeCost,
  expertImportance,
  normedWeightError,
} from "../compiler/data_free.ts";
import {
  expertHessians,
  type ExpertWeights,
  quantizeExpert,
  referenceExpert,
  swapExpert,
} from "../compiler/expert_weights.ts";
import type { QuantMethod } from "../compiler/quantize/mod.ts";
import type { StackName } from "../schemas/model.ts";
import type { QuantBits } from "../schemas/packing.ts";
import { routerNorm, routingFrequency } from "../compiler/passes/mod.ts";

/** One expert's probe measurements. */
export interface ProbeExpert {
  stack: StackName;
  /** The layer's index within its stack. */
  layer: number;
  expert: number;
  /** Router-norm change (or final norm without init). */
  lambda: number;
  /** Routing share on the calibration text. */
  frequency: number;
  /** Output-error proxy at the probed width (compiler/expert_error.ts), calibration text. */
  proxy: number;
  /** Measured Δ bits/byte with only this expert at the probed width. */
  delta: number;
  /** The data-free costs (compiler/data_free.ts) at the probed width, by variant. */
  free: Record<DataFreeCost, number>;
}

/** Per-layer summary of a probe (one per MoE layer). */
export interface ProbeLayer {
  stack: StackName;
  /** The layer's index within its stack. */
  layer: number;
  /** Δ bits/byte with every expert of this layer at the probed width. */
  delta: number;
  /** Σ of the single-expert Δs (additivity check). */
  sumDelta: number;
  /** Σ proxy of the layer's experts. */
  sumProxy: number;
  /** Spearman ρ(Λ, Δ): the paper predicts NEGATIVE (small Λ ↔ large damage). */
  rhoLambdaDelta: number;
  rhoLambdaFrequency: number;
  rhoFrequencyDelta: number;
  rhoProxyDelta: number;
  /** Spearman ρ(data-free cost, Δ) per variant. */
  rhoFreeDelta: Record<DataFreeCost, number>;
}

/** Result of {@link probe}. */
export interface ProbeResult {
  bits: number;
  quantizer: string;
  evalTokens: number;
  base: number;
  experts: ProbeExpert[];
  layers: ProbeLayer[];
  /** Spearman over all experts of all layers. */
  overall: {
    rhoLambdaDelta: number;
    rhoFrequencyDelta: number;
    rhoProxyDelta: number;
    rhoFreeDelta: Record<DataFreeCost, number>;
  };
}

async function bpb(model: ReferenceModel, ids: readonly number[], context: number) {
  return (await evaluateReference(model, ids, { context })).bitsPerToken;
}

/** Runs the probe (see the module doc); `ids` is the short evaluation slice. */
export async function probe(
  ir: ModelIR,
  ref: ReferenceModel,
  calib: CalibrationData,
  ids: readonly number[],
  opts: {
    context: number;
    bits: QuantBits;
    groupSize: number;
    method: QuantMethod;
    init?: ModelIR;
    log?: (s: string) => void;
  },
): Promise<ProbeResult> {
  const log = opts.log ?? (() => {});
  const routers = (m: ModelIR) => Promise.all(moeLayers(m).map((l) => l.router.read()));
  const lambda = routerNorm(
    await routers(ir),
    ir.spec.hiddenSize,
    opts.init ? await routers(opts.init) : undefined,
  ).scores;
  const freq = routingFrequency(calib.counts);
  const base = await bpb(ref, ids, opts.context);
  // Indexed by MoE layer m (the position in ref.moe and in the calibration tables).
  const experts: ProbeExpert[][] = [];
  const quantized: ExpertWeights[][] = [];
  for (const [m, layer] of ref.moe.entries()) {
    const { stack, layer: l } = layer;
    experts[m] = [];
    quantized[m] = [];
    const g = ffnNormWeights(ref, m);
    const router = Float32Array.from(layer.router);
    const importance = {
      router: expertImportance("router", layer.spec, router, g),
      routing: expertImportance("routing", layer.spec, router, g),
    };
    for (let e = 0; e < layer.experts.length; e++) {
      const w = referenceExpert(ref, m, e);
      const sample = calib.samples[m][e];
      const h = opts.method === "gptq" ? expertHessians(w, sample) : undefined;
      const q = quantizeExpert(w, opts.bits, opts.groupSize, opts.method, h);
      quantized[m][e] = q;
      const proxy = outputError(w, q, sample).cost;
      const restore = swapExpert(ref, m, e, q);
      const delta = (await bpb(ref, ids, opts.context)) - base;
      restore();
      const normed = normedWeightError(w, q, g);
      const free: Record<DataFreeCost, number> = {
        plain: weightError(w, q),
        normed,
        router: normed * importance.router[e],
        routing: normed * importance.routing[e],
      };
      experts[m].push({
        free,
        stack,
        layer: l,
        expert: e,
        lambda: lambda[m][e],
        frequency: freq[m][e],
        proxy,
        delta,
      });
      log(`probe ${stack} L${l} E${e}: Δ ${delta.toFixed(5)} proxy ${proxy.toExponential(3)}`);
    }
  }
  const layers: ProbeLayer[] = [];
  for (const [m, layer] of ref.moe.entries()) {
    const restores = quantized[m].map((q, e) => swapExpert(ref, m, e, q));
    const delta = (await bpb(ref, ids, opts.context)) - base;
    restores.forEach((r) => r());
    const xs = experts[m];
    const col = (f: (x: ProbeExpert) => number) => xs.map(f);
    layers.push({
      stack: layer.stack,
      layer: layer.layer,
      delta,
      sumDelta: xs.reduce((s, x) => s + x.delta, 0),
      sumProxy: xs.reduce((s, x) => s + x.proxy, 0),
      rhoLambdaDelta: spearman(col((x) => x.lambda), col((x) => x.delta)),
      rhoLambdaFrequency: spearman(col((x) => x.lambda), col((x) => x.frequency)),
      rhoFrequencyDelta: spearman(col((x) => x.frequency), col((x) => x.delta)),
      rhoProxyDelta: spearman(col((x) => x.proxy), col((x) => x.delta)),
      rhoFreeDelta: freeRhos(xs),
    });
    log(`probe ${layer.stack} layer ${layer.layer}: Δ ${delta.toFixed(5)}`);
  }
  const all = (f: (x: ProbeExpert) => number) => experts.flat().map(f);
  return {
    bits: opts.bits,
    quantizer: opts.method,
    evalTokens: ids.length,
    base,
    experts: experts.flat(),
    layers,
    overall: {
      rhoLambdaDelta: spearman(all((x) => x.lambda), all((x) => x.delta)),
      rhoFrequencyDelta: spearman(all((x) => x.frequency), all((x) => x.delta)),
      rhoProxyDelta: spearman(all((x) => x.proxy), all((x) => x.delta)),
      rhoFreeDelta: freeRhos(experts.flat()),
    },
  };
}

/** Spearman ρ of each data-free cost variant with the measured Δ over `xs`. */
function freeRhos(xs: readonly ProbeExpert[]): Record<DataFreeCost, number> {
  const delta = xs.map((x) => x.delta);
  return Object.fromEntries(
    DATA_FREE_COSTS.map((v) => [v, spearman(xs.map((x) => x.free[v]), delta)]),
  ) as Record<DataFreeCost, number>;
}

/** The weights of the norm in front of MoE block `m` (as f32). */
function ffnNormWeights(ref: ReferenceModel, m: number): Float32Array | null {
  const moe = ref.moe[m];
  for (const layer of ref.layers) {
    for (const b of layer.blocks) {
      if (b.kind === "ffn" && b.ffn === moe) return Float32Array.from(b.norm.weight);
    }
  }
  return null;
}

/** Markdown tables of a probe: per layer, then per expert. */
export function probeTables(p: ProbeResult): string {
  const f = (x: number, d = 3) => (x >= 0 ? "+" : "") + x.toFixed(d);
  /** "3" for a decoder layer, "encoder 3" for an encoder one. */
  const where = (x: { stack: StackName; layer: number }) =>
    x.stack === "decoder" ? `${x.layer}` : `${x.stack} ${x.layer}`;
  const lines = [
    `Probe: ${p.quantizer} ${p.bits}-bit, ${p.evalTokens} eval bytes, base ${
      p.base.toFixed(4)
    } bits/byte`,
    "",
    "| layer | Δ layer | Σ Δ experts | ρ(Λ,Δ) | ρ(Λ,freq) | ρ(freq,Δ) | ρ(proxy,Δ) |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const l of p.layers) {
    lines.push(
      `| ${where(l)} | ${l.delta.toFixed(4)} | ${l.sumDelta.toFixed(4)} | ${
        f(l.rhoLambdaDelta, 2)
      } | ${f(l.rhoLambdaFrequency, 2)} | ${f(l.rhoFrequencyDelta, 2)} | ${
        f(l.rhoProxyDelta, 2)
      } |`,
    );
  }
  const o = p.overall;
  lines.push(
    `| all | | | ${f(o.rhoLambdaDelta, 2)} | | ${f(o.rhoFrequencyDelta, 2)} | ${
      f(o.rhoProxyDelta, 2)
    } |`,
    "",
    `Data-free costs: Spearman ρ(cost, Δ) per layer and over all experts`,
    "",
    `| layer | ${DATA_FREE_COSTS.join(" | ")} |`,
    `| ---: | ${DATA_FREE_COSTS.map(() => "---:").join(" | ")} |`,
    ...p.layers.map((l) =>
      `| ${where(l)} | ${DATA_FREE_COSTS.map((v) => f(l.rhoFreeDelta[v], 2)).join(" | ")} |`
    ),
    `| all | ${DATA_FREE_COSTS.map((v) => f(o.rhoFreeDelta[v], 2)).join(" | ")} |`,
    "",
    "| layer | expert | Λ | frequency | proxy | Δ bits/byte |",
    "| ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const x of p.experts) {
    lines.push(
      `| ${where(x)} | ${x.expert} | ${x.lambda.toFixed(4)} | ${x.frequency.toFixed(4)} | ${
        x.proxy.toExponential(3)
      } | ${x.delta.toFixed(5)} |`,
    );
  }
  return lines.join("\n");
}
