/**
 * The CPU reference forward pass: float64 arithmetic over a {@link ModelIR}, written to match
 * Hugging Face transformers (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE). It is the oracle the WebGPU
 * runtime and the quantization study are checked against, so it favours clarity over speed, with
 * one function per block in the style of llama2.c:
 *
 *   x = embed[id]
 *   per layer:  h = rmsNorm(x, inputNorm)
 *               x += o(attention(rope(qkNorm(q h + bq)), rope(qkNorm(k h + bk)), v h + bv))
 *               x += ffn(rmsNorm(x, postAttentionNorm))
 *   logits = lmHead(rmsNorm(x, finalNorm))
 *
 * The MoE ffn is: p = softmax(router · h) over all experts; the top-k experts (ties: the lower
 * index first); weights p_e, renormalised to sum to one when `routing.normTopK`; output
 * Σ w_e · down_e(silu(gate_e h) ⊙ up_e h), plus sigmoid(sharedGate · h) · shared(h) when the layer
 * has a (gated) shared expert. Only the chosen experts are computed.
 *
 * Everything is float64. transformers computes the router softmax in float32 even for a float64
 * model, so its float64 logits differ from these by ~2e-8 on the tiny fixtures; a PyTorch forward
 * that is float64 throughout agrees with this one to ~1e-16.
 *
 * @module
 */

import type { LayerIR, MlpIR, ModelConfig, ModelIR, TensorRef } from "../ir_legacy.ts";
import { InputError, UsageError } from "../../schemas/errors.ts";

// ---------------------------------------------------------------------------------------------
// The model, read once into float64
// ---------------------------------------------------------------------------------------------

/** A SwiGLU MLP in float64: gate/up are [inter, H], down is [H, inter], row-major. */
export interface ReferenceMlp {
  gate: Float64Array;
  up: Float64Array;
  down: Float64Array;
  /** Width of the hidden layer. */
  inter: number;
}

/** A sparse MoE block in float64. */
export interface ReferenceMoe {
  kind: "moe";
  /** [E, H] router rows. */
  router: Float64Array;
  experts: ReferenceMlp[];
  shared?: ReferenceMlp;
  /** [H] sigmoid gate vector of the shared expert. */
  sharedGate?: Float64Array;
}

/** A dense feed-forward block in float64. */
export interface ReferenceDense {
  kind: "dense";
  mlp: ReferenceMlp;
}

/** One decoder layer's weights in float64. */
export interface ReferenceLayer {
  inputNorm: Float64Array;
  /** [nh·hd, H] */
  q: Float64Array;
  /** [nkv·hd, H] */
  k: Float64Array;
  /** [nkv·hd, H] */
  v: Float64Array;
  /** [H, nh·hd] */
  o: Float64Array;
  qBias?: Float64Array;
  kBias?: Float64Array;
  vBias?: Float64Array;
  /** [hd] ("head") or [nh·hd] ("full"). */
  qNorm?: Float64Array;
  /** [hd] ("head") or [nkv·hd] ("full"). */
  kNorm?: Float64Array;
  postAttentionNorm: Float64Array;
  ffn: ReferenceMoe | ReferenceDense;
}

/** A whole model held in float64, ready for {@link forward} and {@link ReferenceSession}. */
export interface ReferenceModel {
  config: ModelConfig;
  /** [V, H] */
  embed: Float64Array;
  layers: ReferenceLayer[];
  /** [H] */
  finalNorm: Float64Array;
  /** [V, H] (the same array as `embed` when tied). */
  lmHead: Float64Array;
  /** RoPE inverse frequencies, [hd/2]: invFreq[i] = 1 / θ^(2i/hd), in float64. */
  invFreq: Float64Array;
}

/** Reads a tensor, checks its shape against the config, and widens it to float64. */
async function readTensor(
  ref: TensorRef,
  shape: readonly number[],
  source: string,
): Promise<Float64Array> {
  const same = ref.shape.length === shape.length && ref.shape.every((d, i) => d === shape[i]);
  if (!same) {
    throw new InputError(
      `tensor ${ref.name} has shape [${ref.shape}], config implies [${shape}]`,
      source,
    );
  }
  const values = await ref.read();
  const size = shape.reduce((a, b) => a * b, 1);
  if (values.length !== size) {
    throw new InputError(
      `tensor ${ref.name} read ${values.length} values, expected ${size}`,
      source,
    );
  }
  return Float64Array.from(values);
}

/** Reads a tensor the config requires, failing with a message naming it when it is absent. */
function required(ref: TensorRef | undefined, what: string, source: string): TensorRef {
  if (!ref) throw new InputError(`missing tensor: ${what}`, source);
  return ref;
}

async function readMlp(mlp: MlpIR, H: number, inter: number, src: string): Promise<ReferenceMlp> {
  return {
    gate: await readTensor(mlp.gate, [inter, H], src),
    up: await readTensor(mlp.up, [inter, H], src),
    down: await readTensor(mlp.down, [H, inter], src),
    inter,
  };
}

async function readLayer(
  layer: LayerIR,
  cfg: ModelConfig,
  src: string,
): Promise<ReferenceLayer> {
  const { hiddenSize: H, headDim: hd, numHeads: nh, numKvHeads: nkv } = cfg;
  const l = layer.index;
  const a = layer.attention;
  const out: ReferenceLayer = {
    inputNorm: await readTensor(layer.inputNorm, [H], src),
    q: await readTensor(a.q, [nh * hd, H], src),
    k: await readTensor(a.k, [nkv * hd, H], src),
    v: await readTensor(a.v, [nkv * hd, H], src),
    o: await readTensor(a.o, [H, nh * hd], src),
    postAttentionNorm: await readTensor(layer.postAttentionNorm, [H], src),
    ffn: await readFfn(layer, cfg, src),
  };
  if (cfg.qkvBias) {
    out.qBias = await readTensor(required(a.qBias, `layer ${l} q bias`, src), [nh * hd], src);
    out.kBias = await readTensor(required(a.kBias, `layer ${l} k bias`, src), [nkv * hd], src);
    out.vBias = await readTensor(required(a.vBias, `layer ${l} v bias`, src), [nkv * hd], src);
  }
  if (cfg.qkNorm !== "none") {
    const full = cfg.qkNorm === "full";
    const qRef = required(a.qNorm, `layer ${l} q norm`, src);
    const kRef = required(a.kNorm, `layer ${l} k norm`, src);
    out.qNorm = await readTensor(qRef, [full ? nh * hd : hd], src);
    out.kNorm = await readTensor(kRef, [full ? nkv * hd : hd], src);
  }
  return out;
}

async function readFfn(
  layer: LayerIR,
  cfg: ModelConfig,
  src: string,
): Promise<ReferenceMoe | ReferenceDense> {
  const H = cfg.hiddenSize;
  const l = layer.index;
  const kind = cfg.layerKinds[l];
  const f = layer.ffn;
  if (f.kind !== kind) {
    throw new InputError(`layer ${l} is ${f.kind} but config.layerKinds says ${kind}`, src);
  }
  if (f.kind === "dense") {
    return { kind: "dense", mlp: await readMlp(f.mlp, H, cfg.denseIntermediateSize, src) };
  }
  const E = cfg.routing.numExperts;
  if (f.experts.length !== E) {
    throw new InputError(`layer ${l} has ${f.experts.length} experts, config says ${E}`, src);
  }
  const moe: ReferenceMoe = {
    kind: "moe",
    router: await readTensor(f.router, [E, H], src),
    experts: new Array<ReferenceMlp>(E),
  };
  for (const e of f.experts) {
    if (!(e.index >= 0 && e.index < E) || moe.experts[e.index]) {
      throw new InputError(`layer ${l}: expert index ${e.index} is out of range or repeated`, src);
    }
    moe.experts[e.index] = await readMlp(e, H, cfg.expertIntermediateSize, src);
  }
  if (cfg.sharedIntermediateSize > 0) {
    const shared = f.shared;
    if (!shared) throw new InputError(`missing tensor: layer ${l} shared expert`, src);
    moe.shared = await readMlp(shared, H, cfg.sharedIntermediateSize, src);
    if (cfg.sharedExpertGated) {
      const gate = required(f.sharedGate, `layer ${l} shared expert gate`, src);
      moe.sharedGate = await readTensor(gate, [1, H], src);
    }
  }
  return moe;
}

/**
 * Reads every tensor of `ir` once into float64 arrays, checking each shape against the config.
 * Throws {@link InputError} naming the tensor when one is missing or misshapen.
 */
export async function prepareReference(ir: ModelIR): Promise<ReferenceModel> {
  const cfg = ir.config;
  const src = ir.source;
  const { hiddenSize: H, vocabSize: V, headDim: hd } = cfg;
  if (hd % 2 !== 0) throw new InputError(`headDim ${hd} is odd; RoPE needs it even`, src);
  if (cfg.numHeads % cfg.numKvHeads !== 0) {
    throw new InputError(`numHeads ${cfg.numHeads} is not a multiple of numKvHeads`, src);
  }
  if (ir.layers.length !== cfg.numLayers || cfg.layerKinds.length !== cfg.numLayers) {
    throw new InputError(`model has ${ir.layers.length} layers, config says ${cfg.numLayers}`, src);
  }
  const embed = await readTensor(ir.embed, [V, H], src);
  const lmHead = ir.lmHead === ir.embed ? embed : await readTensor(ir.lmHead, [V, H], src);
  const layers: ReferenceLayer[] = [];
  for (const layer of ir.layers) layers.push(await readLayer(layer, cfg, src));
  return {
    config: cfg,
    embed,
    layers,
    finalNorm: await readTensor(ir.finalNorm, [H], src),
    lmHead,
    invFreq: ropeInvFreq(hd, cfg.ropeTheta),
  };
}

// ---------------------------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------------------------

/** out = x · w / sqrt(mean(x²) + eps), elementwise over one vector (out may alias x). */
export function rmsNorm(
  out: Float64Array,
  x: Float64Array,
  w: Float64Array,
  eps: number,
): void {
  const n = x.length;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/** Σ_c w[wo + c] · x[xo + c] over `cols` values. */
function dot(w: Float64Array, wo: number, x: Float64Array, xo: number, cols: number): number {
  let s = 0;
  for (let c = 0; c < cols; c++) s += w[wo + c] * x[xo + c];
  return s;
}

/**
 * out[t, r] = Σ_c w[r, c] · x[t, c] for n input rows x[t] (a Linear layer, weights [rows, cols]
 * out × in like torch). With n = 1 it is a matvec.
 *
 * For speed the main loop computes a 2-row × 4-input tile at once, so each weight and input value
 * loaded serves several sums; every sum still runs over c in order, so the result is bit-identical
 * to the plain `dot` per (t, r) that handles the leftover rows and inputs.
 */
export function matmul(
  out: Float64Array,
  x: Float64Array,
  w: Float64Array,
  n: number,
  rows: number,
  cols: number,
): void {
  let r = 0;
  for (; r + 2 <= rows; r += 2) {
    const wa = r * cols;
    const wb = wa + cols;
    let t = 0;
    for (; t + 4 <= n; t += 4) {
      const x0 = t * cols, x1 = x0 + cols, x2 = x1 + cols, x3 = x2 + cols;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      let b0 = 0, b1 = 0, b2 = 0, b3 = 0;
      for (let c = 0; c < cols; c++) {
        const ua = w[wa + c];
        const ub = w[wb + c];
        const v0 = x[x0 + c], v1 = x[x1 + c], v2 = x[x2 + c], v3 = x[x3 + c];
        a0 += ua * v0;
        a1 += ua * v1;
        a2 += ua * v2;
        a3 += ua * v3;
        b0 += ub * v0;
        b1 += ub * v1;
        b2 += ub * v2;
        b3 += ub * v3;
      }
      out[t * rows + r] = a0;
      out[(t + 1) * rows + r] = a1;
      out[(t + 2) * rows + r] = a2;
      out[(t + 3) * rows + r] = a3;
      out[t * rows + r + 1] = b0;
      out[(t + 1) * rows + r + 1] = b1;
      out[(t + 2) * rows + r + 1] = b2;
      out[(t + 3) * rows + r + 1] = b3;
    }
    for (; t < n; t++) {
      out[t * rows + r] = dot(w, wa, x, t * cols, cols);
      out[t * rows + r + 1] = dot(w, wb, x, t * cols, cols);
    }
  }
  for (; r < rows; r++) {
    for (let t = 0; t < n; t++) out[t * rows + r] = dot(w, r * cols, x, t * cols, cols);
  }
}

/** RoPE inverse frequencies for a head of size hd: 1 / θ^(2i/hd), i < hd/2, in float64. */
export function ropeInvFreq(hd: number, theta: number): Float64Array {
  const inv = new Float64Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) inv[i] = 1 / Math.pow(theta, (2 * i) / hd);
  return inv;
}

/**
 * Rotate-half RoPE (transformers style) in place on `nHeads` consecutive heads of size hd:
 * for i < hd/2, (x_i, x_{i+hd/2}) ← (x_i cos − x_{i+hd/2} sin, x_{i+hd/2} cos + x_i sin) with
 * angle = position · invFreq[i]; `cos`/`sin` hold those hd/2 values for the position.
 */
export function rope(
  vec: Float64Array,
  nHeads: number,
  hd: number,
  cos: Float64Array,
  sin: Float64Array,
): void {
  const half = hd / 2;
  for (let h = 0; h < nHeads; h++) {
    const o = h * hd;
    for (let i = 0; i < half; i++) {
      const x1 = vec[o + i];
      const x2 = vec[o + half + i];
      vec[o + i] = x1 * cos[i] - x2 * sin[i];
      vec[o + half + i] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

/** x / (1 + e^(−x)). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/** In-place softmax over `x[0..n)` (max-subtracted, float64). */
export function softmax(x: Float64Array, n = x.length): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < n; i++) x[i] /= sum;
}

/** The experts one token is sent to and their mixing weights, in descending probability. */
export interface Routing {
  experts: number[];
  weights: number[];
}

/**
 * Routes one token from its router logits: softmax over all experts, the `topK` most probable
 * (ties go to the lower expert index, which is what torch.topk returns on CPU in practice; the
 * order among exact ties is not specified by torch), weights renormalised to sum to one when
 * `normTopK`, otherwise the raw probabilities (Qwen2-MoE with norm_topk_prob false).
 */
export function route(logits: Float64Array, topK: number, normTopK: boolean): Routing {
  const p = Float64Array.from(logits);
  softmax(p);
  const taken = new Uint8Array(p.length);
  const experts: number[] = [];
  const weights: number[] = [];
  for (let j = 0; j < topK; j++) {
    let best = -1;
    for (let e = 0; e < p.length; e++) {
      if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
    }
    taken[best] = 1;
    experts.push(best);
    weights.push(p[best]);
  }
  if (normTopK) {
    const sum = weights.reduce((a, b) => a + b, 0);
    for (let j = 0; j < topK; j++) weights[j] /= sum;
  }
  return { experts, weights };
}

/**
 * A SwiGLU MLP over n inputs: out[t] = down(silu(gate x[t]) ⊙ up x[t]). `x` is [n, H], `out`
 * [n, H]; `gate`/`up` scratch must hold n · inter values.
 */
export function mlp(
  out: Float64Array,
  x: Float64Array,
  n: number,
  m: ReferenceMlp,
  H: number,
  gate: Float64Array,
  up: Float64Array,
): void {
  matmul(gate, x, m.gate, n, m.inter, H);
  matmul(up, x, m.up, n, m.inter, H);
  for (let i = 0; i < n * m.inter; i++) gate[i] = silu(gate[i]) * up[i];
  matmul(out, gate, m.down, n, H, m.inter);
}

/**
 * Causal attention of one query position over the cached keys/values 0..nKeys−1 (GQA: query head
 * h reads kv head ⌊h / (nh/nkv)⌋; scores scaled by 1/√hd, softmax in float64). `q` is [nh·hd],
 * `keys`/`values` are [positions, nkv·hd]; `out` [nh·hd]; `scores` scratch holds nKeys values.
 */
export function attention(
  out: Float64Array,
  q: Float64Array,
  keys: Float64Array,
  values: Float64Array,
  nKeys: number,
  nh: number,
  nkv: number,
  hd: number,
  scores: Float64Array,
): void {
  const group = nh / nkv;
  const kvDim = nkv * hd;
  const scale = 1 / Math.sqrt(hd);
  for (let h = 0; h < nh; h++) {
    const qo = h * hd;
    const ko = Math.floor(h / group) * hd;
    for (let j = 0; j < nKeys; j++) {
      const kj = j * kvDim + ko;
      let s = 0;
      for (let i = 0; i < hd; i++) s += q[qo + i] * keys[kj + i];
      scores[j] = s * scale;
    }
    softmax(scores, nKeys);
    for (let i = 0; i < hd; i++) out[qo + i] = 0;
    for (let j = 0; j < nKeys; j++) {
      const vj = j * kvDim + ko;
      const p = scores[j];
      for (let i = 0; i < hd; i++) out[qo + i] += p * values[vj + i];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Calibration hook
// ---------------------------------------------------------------------------------------------

/**
 * Called once per (MoE layer, token) with the normalised hidden state `h` the experts see, the
 * chosen expert ids and their mixing weights. The frequency pass counts routes with it; GPTQ
 * collects each expert's routed inputs. `h` is a view into a buffer that is overwritten after
 * the call: copy it (`h.slice()`) to keep it. `position` is the token's position in the sequence.
 */
export type MoeObserver = (
  layer: number,
  position: number,
  h: Float64Array,
  experts: readonly number[],
  weights: readonly number[],
) => void;

/** Options of {@link forward} and {@link ReferenceSession}. */
export interface ForwardOptions {
  /** Calibration hook, called per MoE layer and token (see {@link MoeObserver}). */
  observer?: MoeObserver;
}

// ---------------------------------------------------------------------------------------------
// The forward pass
// ---------------------------------------------------------------------------------------------

/** One layer's key/value cache: [capacity, nkv·hd] each. */
interface KvCache {
  keys: Float64Array;
  values: Float64Array;
}

/**
 * An incremental decoder with a KV cache: `feed(ids)` runs a chunk of tokens (a prompt) and
 * `step(id)` one token, each returning logits for the new positions. Positions continue across
 * calls; `reset()` empties the cache.
 */
export class ReferenceSession {
  /** The model this session runs. */
  readonly model: ReferenceModel;
  #observer?: MoeObserver;
  #cache: KvCache[] = [];
  #capacity = 0;
  #position = 0;

  /** Creates an empty session over `model`. */
  constructor(model: ReferenceModel, options: ForwardOptions = {}) {
    this.model = model;
    this.#observer = options.observer;
  }

  /** Number of tokens in the cache (the position the next token gets). */
  get position(): number {
    return this.#position;
  }

  /** Empties the KV cache; the next token is at position 0 again. */
  reset(): void {
    this.#position = 0;
  }

  /** Runs one token; returns its next-token logits [vocabSize]. */
  step(id: number): Float64Array {
    return this.feed([id])[0];
  }

  /**
   * Runs `ids` at positions position..position+ids.length−1 (causal attention over everything
   * cached) and returns one logits row [vocabSize] per token.
   */
  feed(ids: readonly number[]): Float64Array[] {
    const cfg = this.model.config;
    const { hiddenSize: H, vocabSize: V } = cfg;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new UsageError(`ids[${i}] = ${id} is not a token id in [0, ${V})`);
      }
    }
    const n = ids.length;
    if (n === 0) return [];
    this.#reserve(this.#position + n);

    const x = new Float64Array(n * H);
    for (let t = 0; t < n; t++) {
      x.set(this.model.embed.subarray(ids[t] * H, (ids[t] + 1) * H), t * H);
    }

    const { cos, sin } = ropeTables(this.model.invFreq, this.#position, n);
    for (let l = 0; l < cfg.numLayers; l++) {
      this.#attentionBlock(l, x, n, cos, sin);
      this.#ffnBlock(l, x, n);
    }

    for (let t = 0; t < n; t++) {
      const xt = x.subarray(t * H, (t + 1) * H);
      rmsNorm(xt, xt, this.model.finalNorm, cfg.rmsNormEps);
    }
    const logits = new Float64Array(n * V);
    matmul(logits, x, this.model.lmHead, n, V, H);
    this.#position += n;
    return Array.from({ length: n }, (_, t) => logits.subarray(t * V, (t + 1) * V));
  }

  /** Grows every layer's KV cache to hold at least `positions` tokens (doubling). */
  #reserve(positions: number): void {
    if (positions <= this.#capacity) return;
    const kvDim = this.model.config.numKvHeads * this.model.config.headDim;
    const capacity = Math.max(positions, 2 * this.#capacity, 64);
    this.#cache = this.model.layers.map((_, l) => {
      const keys = new Float64Array(capacity * kvDim);
      const values = new Float64Array(capacity * kvDim);
      const old = this.#cache[l];
      if (old) {
        keys.set(old.keys.subarray(0, this.#position * kvDim));
        values.set(old.values.subarray(0, this.#position * kvDim));
      }
      return { keys, values };
    });
    this.#capacity = capacity;
  }

  /** x += o(attention(...)) for the n new tokens of layer l; appends their keys/values. */
  #attentionBlock(l: number, x: Float64Array, n: number, cos: Float64Array, sin: Float64Array) {
    const cfg = this.model.config;
    const layer = this.model.layers[l];
    const { hiddenSize: H, numHeads: nh, numKvHeads: nkv, headDim: hd, rmsNormEps: eps } = cfg;
    const qDim = nh * hd;
    const kvDim = nkv * hd;
    const half = hd / 2;
    const start = this.#position;

    const h = new Float64Array(n * H);
    for (let t = 0; t < n; t++) {
      rmsNorm(h.subarray(t * H, (t + 1) * H), x.subarray(t * H, (t + 1) * H), layer.inputNorm, eps);
    }
    const q = new Float64Array(n * qDim);
    const { keys, values } = this.#cache[l];
    const k = keys.subarray(start * kvDim, (start + n) * kvDim);
    const v = values.subarray(start * kvDim, (start + n) * kvDim);
    matmul(q, h, layer.q, n, qDim, H);
    matmul(k, h, layer.k, n, kvDim, H);
    matmul(v, h, layer.v, n, kvDim, H);

    for (let t = 0; t < n; t++) {
      const qt = q.subarray(t * qDim, (t + 1) * qDim);
      const kt = k.subarray(t * kvDim, (t + 1) * kvDim);
      const vt = v.subarray(t * kvDim, (t + 1) * kvDim);
      if (layer.qBias) addInPlace(qt, layer.qBias);
      if (layer.kBias) addInPlace(kt, layer.kBias);
      if (layer.vBias) addInPlace(vt, layer.vBias);
      if (layer.qNorm && layer.kNorm) {
        qkNorm(qt, layer.qNorm, cfg.qkNorm === "head" ? nh : 1, eps);
        qkNorm(kt, layer.kNorm, cfg.qkNorm === "head" ? nkv : 1, eps);
      }
      const c = cos.subarray(t * half, (t + 1) * half);
      const s = sin.subarray(t * half, (t + 1) * half);
      rope(qt, nh, hd, c, s);
      rope(kt, nkv, hd, c, s);
    }

    const att = new Float64Array(n * qDim);
    const scores = new Float64Array(start + n);
    for (let t = 0; t < n; t++) {
      const qt = q.subarray(t * qDim, (t + 1) * qDim);
      const out = att.subarray(t * qDim, (t + 1) * qDim);
      attention(out, qt, keys, values, start + t + 1, nh, nkv, hd, scores);
    }
    const o = new Float64Array(n * H);
    matmul(o, att, layer.o, n, H, qDim);
    addInPlace(x, o);
  }

  /** x += ffn(rmsNorm(x)) for the n new tokens of layer l (MoE or dense). */
  #ffnBlock(l: number, x: Float64Array, n: number): void {
    const cfg = this.model.config;
    const layer = this.model.layers[l];
    const H = cfg.hiddenSize;
    const h = new Float64Array(n * H);
    for (let t = 0; t < n; t++) {
      const ht = h.subarray(t * H, (t + 1) * H);
      rmsNorm(ht, x.subarray(t * H, (t + 1) * H), layer.postAttentionNorm, cfg.rmsNormEps);
    }
    const f = layer.ffn;
    const out = new Float64Array(n * H);
    if (f.kind === "dense") {
      const scratch = new Float64Array(n * f.mlp.inter);
      mlp(out, h, n, f.mlp, H, scratch, new Float64Array(n * f.mlp.inter));
    } else {
      moe(out, h, n, f, cfg, l, this.#position, this.#observer);
    }
    addInPlace(x, out);
  }
}

/**
 * The MoE block over n tokens h [n, H] → out [n, H]. Tokens are routed one by one (the observer
 * sees each), then each expert runs once over the tokens that chose it.
 */
function moe(
  out: Float64Array,
  h: Float64Array,
  n: number,
  f: ReferenceMoe,
  cfg: ModelConfig,
  layer: number,
  start: number,
  observer?: MoeObserver,
): void {
  const H = cfg.hiddenSize;
  const { numExperts: E, topK, normTopK } = cfg.routing;
  const routerLogits = new Float64Array(n * E);
  matmul(routerLogits, h, f.router, n, E, H);

  // Route every token; collect, per expert, the tokens it serves and their weights.
  const tokensOf: number[][] = Array.from({ length: E }, () => []);
  const weightsOf: number[][] = Array.from({ length: E }, () => []);
  for (let t = 0; t < n; t++) {
    const r = route(routerLogits.subarray(t * E, (t + 1) * E), topK, normTopK);
    observer?.(layer, start + t, h.subarray(t * H, (t + 1) * H), r.experts, r.weights);
    for (let j = 0; j < topK; j++) {
      tokensOf[r.experts[j]].push(t);
      weightsOf[r.experts[j]].push(r.weights[j]);
    }
  }

  // Each chosen expert over its tokens: out[t] += w · expert(h[t]).
  const I = cfg.expertIntermediateSize;
  for (let e = 0; e < E; e++) {
    const tokens = tokensOf[e];
    const m = tokens.length;
    if (m === 0) continue;
    const xe = new Float64Array(m * H);
    for (let i = 0; i < m; i++) xe.set(h.subarray(tokens[i] * H, (tokens[i] + 1) * H), i * H);
    const ye = new Float64Array(m * H);
    mlp(ye, xe, m, f.experts[e], H, new Float64Array(m * I), new Float64Array(m * I));
    for (let i = 0; i < m; i++) {
      const w = weightsOf[e][i];
      const o = tokens[i] * H;
      for (let c = 0; c < H; c++) out[o + c] += w * ye[i * H + c];
    }
  }

  // The shared expert, optionally scaled by sigmoid(sharedGate · h).
  if (f.shared) {
    const S = f.shared.inter;
    const ys = new Float64Array(n * H);
    mlp(ys, h, n, f.shared, H, new Float64Array(n * S), new Float64Array(n * S));
    for (let t = 0; t < n; t++) {
      let g = 1;
      if (f.sharedGate) {
        let z = 0;
        for (let c = 0; c < H; c++) z += f.sharedGate[c] * h[t * H + c];
        g = 1 / (1 + Math.exp(-z));
      }
      for (let c = 0; c < H; c++) out[t * H + c] += g * ys[t * H + c];
    }
  }
}

/**
 * RMSNorm of queries or keys before RoPE: over each of `groups` equal slices of `vec` with the
 * shared weight `w` ("head": groups = heads, w is [hd]; "full": groups = 1, w spans the vector).
 */
function qkNorm(vec: Float64Array, w: Float64Array, groups: number, eps: number): void {
  const size = vec.length / groups;
  for (let g = 0; g < groups; g++) {
    const slice = vec.subarray(g * size, (g + 1) * size);
    rmsNorm(slice, slice, w, eps);
  }
}

/** cos/sin of position · invFreq for n positions from `start`: [n, hd/2] each. */
function ropeTables(invFreq: Float64Array, start: number, n: number) {
  const half = invFreq.length;
  const cos = new Float64Array(n * half);
  const sin = new Float64Array(n * half);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < half; i++) {
      const angle = (start + t) * invFreq[i];
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** a += b elementwise. */
function addInPlace(a: Float64Array, b: Float64Array): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

/**
 * The full causal forward pass over `ids` (positions 0..n−1): one logits row [vocabSize] per
 * position. Equivalent to a fresh {@link ReferenceSession}'s `feed(ids)`.
 */
export function forward(
  model: ReferenceModel,
  ids: readonly number[],
  options: ForwardOptions = {},
): Float64Array[] {
  return new ReferenceSession(model, options).feed(ids);
}
