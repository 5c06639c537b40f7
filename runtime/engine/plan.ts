/**
 * Plan building: the list of dispatches of one forward pass, read top to bottom like the
 * reference — embed → for each layer its blocks (blocks.ts) → final norm → head — for a token
 * tile and a logits mode. A plan is built once at load; every forward replays it with the
 * token count of its batch (each dispatch's workgroup counts are a function of T).
 *
 * The {@link PlanBuilder} holds the dispatch primitives the blocks use (matmuls in either kernel
 * style, routed-expert matmuls, norms, element-wise kernels), so a block function says what it
 * computes, not how a kernel style lays out its workgroups.
 *
 * @module
 */

import type { ModelSpec, NormSpec } from "../../schemas/model.ts";
import type { KernelSource } from "../kernels/kernel.ts";
import type { SlotLayout } from "../kernels/slots.ts";
import { layerNormSource } from "../kernels/layer_norm.ts";
import { matmulGroups, type MatmulKey, matmulSource } from "../kernels/matmul.ts";
import { routeListsSource, routerSource, type RoutingKey } from "../kernels/moe.ts";
import { elementGroups, embedSource, rmsNormSource } from "../kernels/ops.ts";
import { tiledGroups, type TiledKey, tiledMatmulSource } from "../kernels/tiled.ts";
import { weightBuffers, type WeightSet } from "../kernels/weights.ts";
import type { Activations, KvCache } from "./activations.ts";
import { attentionBlock, denseBlock, moeBlock } from "./blocks.ts";
import { mlaBlock } from "./mla.ts";
import type { ExpertSet, Matrix, ModelWeights } from "./weights.ts";

/** What the logits stage of a plan computes: nothing, the last position's, or every position's. */
export type LogitsMode = "none" | "last" | "all";

/** Workgroup counts of a dispatch for a batch of T tokens. */
export type Groups = (T: number) => [number, number, number];

/** A dispatch before its pipeline exists: plans are built first, compiled all at once, then bound. */
export interface PendingDispatch {
  src: KernelSource;
  buffers: Record<string, GPUBuffer>;
  groups: Groups;
}

/** Everything a plan reads, fixed at load. */
export interface PlanContext {
  spec: ModelSpec;
  weights: ModelWeights;
  acts: Activations;
  /** KV cache of each attention block, by `${layer}/${block}`. */
  caches: Map<string, KvCache>;
  /** RoPE table of each attention block, by `${layer}/${block}`. */
  ropes: Map<string, GPUBuffer>;
  /** The Step uniform {T, pos0}. */
  step: GPUBuffer;
  /** "tiled" (CPU adapters) or "classic" (GPUs): see kernels/tiled.ts and kernels/matmul.ts. */
  tiled: boolean;
  /** Tiled style: output rows per invocation. */
  rowTile: number;
  /**
   * Tiled style: output rows per invocation of the matmuls over packed (quantized) weights, when
   * they differ from `rowTile` (the batched decode plans; float kernels with many rows take
   * minutes to JIT-compile on lavapipe).
   */
  packedRowTile?: number;
  /**
   * Tiled style: output rows per invocation of the routed-expert matmuls over packed weights in
   * plans of more than one token (prefill and batched decode; the one-token decode plan keeps
   * `rowTile`). See kernels/tiled.ts for the measurements.
   */
  expertRowTile?: number;
  /**
   * Tiled style: tokens per workgroup of the routed-expert matmuls in plans of more than one
   * token, when they differ from the plan's token tile (each expert gets about tokens · top-k /
   * experts of them; tiles that are not more than half full run single-token passes).
   */
  expertTokenTile?: number;
  /** Classic style: most threads per matrix row. */
  threadsPerRow: number;
  /** Most tokens per forward (the routed-token lists' capacity). */
  chunk: number;
  /**
   * Multi-slot engines: where each token's slot and position are (kernels/slots.ts); the "rows"
   * source reads acts.rows. Absent: one sequence at KV rows 0...
   */
  slots?: SlotLayout;
}

/** Options of {@link PlanBuilder.matmul}. */
export interface MatmulOptions {
  bias?: GPUBuffer;
  /** Add into y (a residual add). */
  accumulate?: boolean;
  /** Multiplier of W·x (residual or head scale). */
  scale?: number;
  /** Only the batch's last token, whose row was moved to row 0 (last-position logits). */
  lastToken?: boolean;
  /** The set is [gate; up] stacked: write silu(gate·x)·(up·x) (tiled style). */
  gateUp?: boolean;
}

/** Collects the dispatches of one plan. */
export class PlanBuilder {
  readonly dispatches: PendingDispatch[] = [];

  /**
   * `tokenTile`: tokens per workgroup of the matmuls; `prefill`: the plan may run T > 1 tokens
   * (false for the one-token decode plan).
   */
  constructor(
    readonly ctx: PlanContext,
    readonly tokenTile: number,
    readonly prefill: boolean,
  ) {}

  get acts(): Activations {
    return this.ctx.acts;
  }

  /**
   * Appends a dispatch (the Step uniform and the slot rows are bound for every kernel that
   * declares them).
   */
  dispatch(src: KernelSource, buffers: Record<string, GPUBuffer>, groups: Groups): void {
    const common = { step: this.ctx.step, rows: this.ctx.acts.rows };
    this.dispatches.push({ src, buffers: { ...common, ...buffers }, groups });
  }

  /** Tiled style: output rows per invocation for a weight set. */
  rowTileOf(set: WeightSet): number {
    return set.format.kind === "q" ? this.ctx.packedRowTile ?? this.ctx.rowTile : this.ctx.rowTile;
  }

  /** An element-wise kernel over `width` columns of `rows(T)` rows. */
  elementwise(
    src: KernelSource,
    buffers: Record<string, GPUBuffer>,
    width: number,
    rows: (T: number) => number = (T) => T,
  ): void {
    this.dispatch(src, buffers, (T) => elementGroups(width, rows(T)));
  }

  /**
   * y = scale · W·x (+ bias) (+ y), in the engine's kernel style; a matrix split into row blocks
   * runs one dispatch per block, each writing its slice of y's rows.
   */
  matmul(m: WeightSet | Matrix, x: GPUBuffer, y: GPUBuffer, opts: MatmulOptions = {}): void {
    if (!("blocks" in m)) {
      this.#matmulBlock(m, undefined, opts.gateUp ? m.rows / 2 : m.rows, x, y, opts);
      return;
    }
    for (const b of m.blocks) this.#matmulBlock(b.set, b.rowBlock, m.rows, x, y, opts);
  }

  /** One weight set: a whole matrix, or the row block `rowBlock` of a y row of `yCols`. */
  #matmulBlock(
    set: WeightSet,
    rowBlock: GPUBuffer | undefined,
    yCols: number,
    x: GPUBuffer,
    y: GPUBuffer,
    opts: MatmulOptions,
  ): void {
    const buffers: Record<string, GPUBuffer> = { x, y, ...weightBuffers(set) };
    if (opts.bias) buffers.bias = opts.bias;
    if (rowBlock) buffers.rowBlock = rowBlock;
    const fixedT = opts.lastToken ? 1 : undefined;
    const tokenTile = opts.lastToken ? 1 : this.tokenTile;
    const shared = {
      format: set.format,
      cols: set.cols,
      tokenTile,
      mode: "dense" as const,
      bias: opts.bias !== undefined,
      accumulate: opts.accumulate,
      scale: opts.scale,
      fixedT,
      rowBlock: rowBlock !== undefined,
      yCols,
    };
    if (this.ctx.tiled) {
      const rows = opts.gateUp ? set.rows / 2 : set.rows;
      const rowTile = this.rowTileOf(set);
      const key: TiledKey = { ...shared, rows, rowTile, gateUp: opts.gateUp };
      this.dispatch(tiledMatmulSource(key), buffers, (T) => tiledGroups(key, T));
      return;
    }
    if (opts.gateUp) throw new Error("stacked gate/up needs the tiled kernels");
    const key: MatmulKey = { ...shared, rows: set.rows, maxThreadsPerRow: this.ctx.threadsPerRow };
    this.dispatch(matmulSource(key), buffers, (T) => matmulGroups(key, T));
  }

  /**
   * Routed experts' matmuls, one dispatch per expert set: x rows are tokens ("token": gate/up)
   * or (token, slot) rows ("slot": down), y rows (token, slot) rows. Tiled style: each expert
   * walks its routed-token list (acts.routes); classic style: each expert scans the chosen ids
   * and skips tiles it has no token in.
   */
  expertMatmuls(
    sets: ExpertSet[],
    x: GPUBuffer,
    y: GPUBuffer,
    xRows: "token" | "slot",
    routing: RoutingKey,
    gateUp = false,
  ): void {
    for (const { set, experts, outRows, rowBlock } of sets) {
      const buffers: Record<string, GPUBuffer> = {
        x,
        y,
        setExperts: experts,
        ...weightBuffers(set),
      };
      if (rowBlock) buffers.rowBlock = rowBlock;
      if (this.ctx.tiled) {
        const key: TiledKey = {
          format: set.format,
          rows: gateUp ? set.rows / 2 : set.rows,
          cols: set.cols,
          rowTile: set.format.kind === "q" && this.tokenTile > 1
            ? this.ctx.expertRowTile ?? this.rowTileOf(set)
            : this.rowTileOf(set),
          tokenTile: this.tokenTile > 1 ? this.ctx.expertTokenTile ?? this.tokenTile : 1,
          mode: "list",
          xRows,
          topK: routing.topK,
          numExperts: routing.numExperts,
          capacity: this.ctx.chunk,
          gateUp,
          rowBlock: rowBlock !== undefined,
          yCols: outRows,
        };
        this.dispatch(
          tiledMatmulSource(key),
          { ...buffers, routes: this.acts.routes },
          (T) => tiledGroups(key, T, set.count),
        );
        continue;
      }
      if (gateUp) throw new Error("stacked gate/up needs the tiled kernels");
      const key: MatmulKey = {
        format: set.format,
        rows: set.rows,
        cols: set.cols,
        tokenTile: this.tokenTile,
        mode: "expert",
        xRows,
        topK: routing.topK,
        maxThreadsPerRow: this.ctx.threadsPerRow,
        rowBlock: rowBlock !== undefined,
        yCols: outRows,
      };
      this.dispatch(
        matmulSource(key),
        { ...buffers, expertIds: this.acts.expertIds },
        (T) => matmulGroups(key, T, set.count),
      );
    }
  }

  /**
   * Chooses each token's experts from acts.routerLogits into acts.expertIds/expertWeights; the
   * tiled style also builds the per-expert token lists (acts.routes).
   */
  route(routing: RoutingKey, selectionBias?: GPUBuffer): void {
    const buffers: Record<string, GPUBuffer> = {
      routerLogits: this.acts.routerLogits,
      expertIds: this.acts.expertIds,
      expertWeights: this.acts.expertWeights,
    };
    if (selectionBias) buffers.selectionBias = selectionBias;
    if (this.ctx.tiled) {
      this.dispatch(routeListsSource(routing, this.ctx.chunk), {
        ...buffers,
        routes: this.acts.routes,
      }, () => [1, 1, 1]);
    } else {
      this.dispatch(routerSource(routing), buffers, (T) => [T, 1, 1]);
    }
  }

  /**
   * A block's (or the final) norm of acts.hidden into acts.normed, RMSNorm or LayerNorm (+ bias)
   * as `norm` says; `lastToken`: only the last token's row, written to row 0.
   */
  preNorm(norm: NormSpec, weight: GPUBuffer, bias?: GPUBuffer, lastToken = false): void {
    const { hidden, normed } = this.acts;
    const H = this.ctx.spec.hiddenSize;
    if (norm.kind === "rms") {
      this.rmsNorm(hidden, weight, normed, H, 1, norm.eps, lastToken);
      return;
    }
    const src = layerNormSource({ width: H, eps: norm.eps, bias: !!bias, lastOnly: lastToken });
    const buffers: Record<string, GPUBuffer> = { x: hidden, w: weight, out: normed };
    if (bias) buffers.b = bias;
    this.dispatch(src, buffers, (T) => [lastToken ? 1 : T, 1, 1]);
  }

  /**
   * RMSNorm of `rowsPerToken` rows of `width` per token, into `out` or in place (out null);
   * `lastToken`: only the last token's row, written to row 0.
   */
  rmsNorm(
    x: GPUBuffer,
    weight: GPUBuffer,
    out: GPUBuffer | null,
    width: number,
    rowsPerToken: number,
    eps: number,
    lastToken = false,
  ): void {
    const src = rmsNormSource({ width, rowsPerToken, eps, inPlace: !out, lastOnly: lastToken });
    const buffers: Record<string, GPUBuffer> = { x, w: weight };
    if (out) buffers.out = out;
    this.dispatch(src, buffers, (T) => [lastToken ? 1 : T * rowsPerToken, 1, 1]);
  }
}

/**
 * The dispatches of one forward: embed → for each layer its blocks → final norm → head.
 * `tokenTile`: tokens per matmul workgroup; `prefill`: T may exceed 1.
 */
export function buildPlan(
  ctx: PlanContext,
  tokenTile: number,
  logits: LogitsMode,
  prefill: boolean,
): PendingDispatch[] {
  const plan = new PlanBuilder(ctx, tokenTile, prefill);
  const { spec, weights, acts } = ctx;
  const H = spec.hiddenSize;

  // A split embedding gathers each token's row from the block that holds it.
  const embed = weights.embed;
  for (const { set, rowBlock } of embed.blocks) {
    const buffers = { tokens: acts.tokens, ...weightBuffers(set), out: acts.hidden };
    plan.elementwise(
      embedSource(embed.format, H, spec.embedScale, ctx.slots, rowBlock !== undefined),
      rowBlock ? { ...buffers, rowBlock } : buffers,
      H,
    );
  }

  weights.layers.forEach((layer, l) => {
    layer.blocks.forEach((block, b) => {
      switch (block.kind) {
        case "attention": {
          const at = `${l}/${b}`;
          const cache = ctx.caches.get(at)!, rope = ctx.ropes.get(at)!;
          attentionBlock(plan, block, layer.residualScale, cache, rope);
          break;
        }
        case "mla": {
          const at = `${l}/${b}`;
          mlaBlock(plan, block, layer.residualScale, ctx.caches.get(at)!, ctx.ropes.get(at)!);
          break;
        }
        case "moe":
          moeBlock(plan, block, layer.residualScale);
          break;
        case "dense":
          denseBlock(plan, block, layer.residualScale);
          break;
      }
    });
  });

  if (logits === "none") return plan.dispatches;
  const final = spec.decoder.finalNorm;
  const head = { scale: spec.head.scale, bias: weights.headBias };
  if (logits === "all") {
    plan.preNorm(final, weights.finalNorm, weights.finalNormBias);
    plan.matmul(weights.head, acts.normed, acts.logits, head);
  } else {
    plan.preNorm(final, weights.finalNorm, weights.finalNormBias, true);
    plan.matmul(weights.head, acts.normed, acts.logits, { ...head, lastToken: true });
  }
  return plan.dispatches;
}
