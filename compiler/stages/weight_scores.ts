/**
 * Stage 1 of `compileModel`: the weight-only scores. Λ, the router-norm change of each expert
 * (with the init checkpoint's routers; without, the final norms), and MaxVar, the largest row
 * variance of each expert's first matrix.
 *
 * MaxVar needs a read of every first matrix. Only the paper's orderings need it before the
 * allocation: then the matrices are read here in 512-row blocks (row variances on the worker
 * pool); otherwise the table stays zero here and the emit fills it as the same blocks stream by
 * (no extra read).
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";
import { type ModelIR, type MoeLayerIR, moeLayers, type TensorRef } from "../ir.ts";
import { type BlockJob, type BlockRunner } from "../parallel/block.ts";
import { chunkRanges } from "../parallel/chunked.ts";
import { maxVariance, routerNorm, type ScoreTable } from "../passes/mod.ts";

/** The weight-only scores, `[moeLayer][expert]`. */
export interface WeightScores {
  /** Router-norm change Λ (the final router norm when `usedInit` is false). */
  lambda: ScoreTable;
  /** Whether Λ used the init checkpoint's routers. */
  usedInit: boolean;
  /** MaxVar of each expert's first matrix (filled by the emit when not measured up front). */
  maxVar: ScoreTable;
}

/** Router rows of every MoE layer, [E, H] each. */
function readRouters(layers: readonly MoeLayerIR[]): Promise<Float32Array[]> {
  return Promise.all(layers.map((l) => l.router.read()));
}

/** Throws unless `init` has MoE blocks at the same places as the model's. */
function checkInit(layers: readonly MoeLayerIR[], initLayers: readonly MoeLayerIR[], src: string) {
  const where = (ls: readonly MoeLayerIR[]) => ls.map((l) => `${l.stack} ${l.layer}`).join(", ");
  if (where(layers) !== where(initLayers)) {
    throw new UsageError(
      `--init ${src}: MoE layers [${where(initLayers)}], the model has [${where(layers)}]`,
    );
  }
}

/**
 * Computes Λ for every expert of `layers` (the model's `moeLayers`), and MaxVar too when
 * `maxVarFirst`, reading the first matrices through `runner`.
 */
export async function weightScores(
  layers: readonly MoeLayerIR[],
  hiddenSize: number,
  opts: {
    init?: ModelIR;
    maxVarFirst: boolean;
    runner: BlockRunner;
    onProgress: (phase: string, done: number, total: number) => void;
  },
): Promise<WeightScores> {
  let initRouters: Float32Array[] | undefined;
  if (opts.init) {
    const initLayers = moeLayers(opts.init);
    checkInit(layers, initLayers, opts.init.source);
    initRouters = await readRouters(initLayers);
  }
  const lambda = routerNorm(await readRouters(layers), hiddenSize, initRouters);
  const maxVar: ScoreTable = layers.map((l) => l.experts.map(() => 0));
  if (opts.maxVarFirst) {
    const experts = layers.flatMap((l, m) => l.experts.map((e) => ({ m, e })));
    await rowVariances(
      experts.map(({ e }) => e.matrices[0].weight),
      opts.runner,
      (i, v) => {
        const { m, e } = experts[i];
        maxVar[m][e.index] = v;
        opts.onProgress("scores", i + 1, experts.length);
      },
    );
  }
  return { lambda: lambda.scores, usedInit: lambda.usedInit, maxVar };
}

/**
 * MaxVar of each matrix (the largest row variance, `maxVariance`), read in row blocks through
 * `runner` with a few blocks in flight; `done(i, value)` is called in order. The maximum over
 * blocks is the maximum over rows, so the values equal `maxVariance` of the whole matrices.
 */
export async function rowVariances(
  refs: readonly TensorRef[],
  runner: BlockRunner,
  done: (i: number, value: number) => void,
): Promise<void> {
  const window = runner.lanes + 2;
  const blocks: [number, number, number][] = [];
  refs.forEach((ref, i) => {
    if (ref.shape.length === 2 && (ref.readRawRows || ref.readRows)) {
      for (const [a, b] of chunkRanges(ref.shape[0])) blocks.push([i, a, b]);
    } else {
      blocks.push([i, 0, -1]);
    }
  });
  const start = async ([i, a, b]: [number, number, number]): Promise<number> => {
    const ref = refs[i];
    const [rows, cols] = ref.shape;
    if (b < 0) return maxVariance(await ref.read(), rows, cols, ref.name);
    const job: BlockJob = {
      ...(ref.readRawRows
        ? { raw: await ref.readRawRows(a, b - a) }
        : { values: await ref.readRows!(a, b - a) }),
      rows: b - a,
      cols,
      name: ref.name,
      rowVariance: true,
    };
    return (await runner.run(job)).rowVariance!;
  };
  const inFlight: Promise<number>[] = [];
  let next = 0;
  const fill = () => {
    while (inFlight.length < window && next < blocks.length) {
      const p = start(blocks[next++]);
      p.catch(() => {});
      inFlight.push(p);
    }
  };
  fill();
  let best = 0;
  for (let k = 0; k < blocks.length; k++) {
    const v = await inFlight.shift()!;
    fill();
    const [i, , b] = blocks[k];
    if (v > best) best = v;
    const last = b < 0 || k + 1 === blocks.length || blocks[k + 1][0] !== i;
    if (last) {
      done(i, best);
      best = 0;
    }
  }
}
