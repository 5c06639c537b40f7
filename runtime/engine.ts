/**
 * The WebGPU engine: uploads an artifact's tensors once, then runs batched prefill and a
 * GPU-resident decode loop.
 *
 * Storage on the GPU: f32, f16 and bf16 matrices stay in their format (f16/bf16 as packed u16
 * pairs, unpacked in the shaders, so bf16 is exact and no shader-f16 is needed); quantized
 * matrices keep the packed codes/scales/zeros of schemas/packing.ts and are dequantized inside
 * the matmul kernels. Norm weights and biases are converted to f32. Activations are f32.
 *
 * Routed experts of a layer are grouped per projection by storage format ("precision group"),
 * each group one weight set (split so no binding exceeds 128 MiB, the WebGPU default); one
 * dispatch per group per projection.
 *
 * Two kernel styles (option `kernels`): "classic" (kernels/matmul.ts, threads cooperate on a
 * row; the default on GPUs) and "tiled" (kernels/tiled.ts, register tiles of rows × tokens; the
 * default on CPU adapters, where every scalar load costs a bounds-checked lane load and every
 * dispatch a fixed ~0.2–0.5 ms). In the tiled style the router is followed by one
 * `route_lists` dispatch that builds, on the GPU, each expert's list of routed (token, slot)
 * rows, and the expert matmuls walk those lists, so an expert touches only its tokens; the
 * gate and up projections (of experts, shared experts and dense MLPs) are stacked into one
 * matrix and fused with SwiGLU, and q/k/v are stacked into one projection when the model has no
 * q/k norm. Classic expert matmuls instead scan the router ids and exit for tiles with no hit.
 *
 * Pipelines: every plan is built at load, all pipelines are created with
 * createComputePipelineAsync in parallel, then each plan runs once on one token (software
 * adapters compile a pipeline at its first dispatch), so no request pays for compilation.
 *
 * Context shifting: `generate` may run past the KV-cache capacity `maxContext`. When the next
 * token would be fed at position maxContext, the last ⌊maxContext/2⌋ tokens (the newest one
 * included) are copied to the front of the GPU token buffer, re-prefilled at positions
 * 0 .. ⌊maxContext/2⌋ − 1 and the next token is sampled after them; decoding continues from
 * there. The ids never leave the GPU for this (no readbacks beyond the batch ones; batches are
 * capped at ⌊maxContext/2⌋ tokens so unread ids survive a shift). A generation that fits the
 * context never shifts and is unchanged.
 *
 * Decode: the sampled id is written by the GPU sampler into the token buffer that the next
 * step's embedding lookup reads; one submission per step; ids are read back every
 * `readbackEvery` steps only.
 *
 * @module
 */

import type { Engine, GenerateOptions } from "./api.ts";
import { type Artifact, floatBytesToF32, type TensorRecord } from "../schemas/artifact.ts";
import { describeAdapter, requestGpu } from "./device.ts";
import {
  DeviceError,
  InputError,
  LimitError,
  UnsupportedError,
  UsageError,
} from "../schemas/errors.ts";
import type { ModelConfig } from "../schemas/model_legacy.ts";
import {
  bindKernel,
  type Dispatch,
  encodeDispatches,
  getKernel,
  type KernelSource,
  mapStaging,
  prepareKernels,
  STEP_BYTES,
  storageBuffer,
} from "./kernels/kernel.ts";
import { tiledGroups, type TiledKey, tiledMatmulSource } from "./kernels/tiled.ts";
import type { QuantizedTensor } from "../schemas/packing.ts";
import { matmulGroups, type MatmulKey, matmulSource } from "./kernels/matmul.ts";
import {
  formatName,
  type HostMatrix,
  matrixBytes,
  uploadWeightSet,
  weightBuffers,
  type WeightFormat,
  type WeightSet,
} from "./kernels/weights.ts";
import { embedSource, EW, rmsNormSource, swigluSource } from "./kernels/ops.ts";
import {
  attentionPrefillSource,
  attentionSource,
  prefillGroups,
  prefillTile,
  ropeStoreSource,
  ropeTable as ropeTableData,
} from "./kernels/attention.ts";
import { combineSource, routeListsSource, routerSource } from "./kernels/moe.ts";
import { createSampler, type Sampler } from "./kernels/sample.ts";

/** Options of {@link createWebGpuEngine}. */
export interface WebGpuEngineOptions {
  /** Use shader-f16 when available (default true); false forces the f32-only path. */
  f16?: boolean;
  /** Use this device instead of requesting one. */
  device?: GPUDevice;
  /** KV-cache length in tokens (default min(config.maxPositions, 4096)). */
  maxContext?: number;
  /** Tokens per prefill batch (default 64). */
  prefillChunk?: number;
  /** Tokens per workgroup in prefill matmuls (default 4). */
  prefillTile?: number;
  /** Most threads per matrix row in classic matmuls (default: 64 on GPUs, 16 on CPU adapters). */
  threadsPerRow?: number;
  /**
   * Matmul kernel style: "tiled" (register-tiled, routed-token expert lists, fused gate/up and
   * q/k/v; made for CPU adapters, see kernels/tiled.ts) or "classic" (threads cooperate on a
   * row, coalesced reads; made for GPUs). Default: tiled on CPU adapters, classic otherwise.
   */
  kernels?: "tiled" | "classic";
  /** Output rows per invocation in tiled matmuls (default 8). */
  rowTile?: number;
}

/** Largest weight-set binding the engine creates for grouped experts (the WebGPU default). */
const EXPERT_SET_BYTES = 128 * 1024 * 1024;

/** A weight set bound with the global expert ids of its matrices. */
interface ExpertSet {
  set: WeightSet;
  gex: GPUBuffer;
}

/** A matrix per output part stacked row-wise ([gate; up] or [q; k; v]) when all share a format. */
function stackHost(parts: HostMatrix[]): HostMatrix {
  if (parts.every((p) => "raw" in p)) {
    const raws = parts.map((p) => (p as { raw: Uint8Array }).raw);
    const out = new Uint8Array(raws.reduce((a, r) => a + r.length, 0));
    let o = 0;
    for (const r of raws) {
      out.set(r, o);
      o += r.length;
    }
    return { raw: out };
  }
  const qs = parts as QuantizedTensor[];
  const cat = <A extends Uint32Array | Uint16Array | Float32Array>(arrs: A[]): A => {
    const C = arrs[0].constructor as { new (n: number): A };
    const out = new C(arrs.reduce((a, r) => a + r.length, 0));
    let o = 0;
    for (const r of arrs) {
      out.set(r as never, o);
      o += r.length;
    }
    return out;
  };
  return {
    ...qs[0],
    rows: qs.reduce((a, q) => a + q.rows, 0),
    codes: cat(qs.map((q) => q.codes)),
    scales: cat(qs.map((q) => q.scales) as Uint16Array[]),
    zeros: cat(qs.map((q) => q.zeros) as Uint16Array[]),
  };
}

interface LayerWeights {
  inputNorm: GPUBuffer;
  postNorm: GPUBuffer;
  q: WeightSet;
  k: WeightSet;
  v: WeightSet;
  o: WeightSet;
  qBias?: GPUBuffer;
  kBias?: GPUBuffer;
  vBias?: GPUBuffer;
  qNorm?: GPUBuffer;
  kNorm?: GPUBuffer;
  kind: "moe" | "dense";
  /** Tiled style: [q; k; v] stacked (when they share a format and there is no q/k norm). */
  qkv?: WeightSet;
  qkvBias?: GPUBuffer;
  router?: WeightSet;
  /** Routed experts; tiled style with equal gate/up formats: gateUp stacked, gate/up empty. */
  experts?: { gate: ExpertSet[]; up: ExpertSet[]; down: ExpertSet[]; gateUp?: ExpertSet[] };
  /** Shared expert (MoE) or the dense MLP; gateUp stacked in the tiled style. */
  mlp?: { gate?: WeightSet; up?: WeightSet; down: WeightSet; gateUp?: WeightSet };
  sharedGate?: WeightSet;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
}

/** What the logits stage of a plan computes. */
type LogitsMode = "none" | "last" | "all";

/** The WebGPU engine; see the module docs. */
export interface WebGpuEngine extends Engine {
  /** The device in use. */
  readonly device: GPUDevice;
  /** Whether shader-f16 is enabled. */
  readonly f16: boolean;
  /** KV-cache capacity in tokens. */
  readonly maxContext: number;
  /** Bytes of weights resident on the GPU. */
  readonly weightBytes: number;
  /**
   * Diagnostics: runs each dispatch of the decode plan (T = 1) or of the prefill plan (T tokens)
   * alone, `repeats` times, and returns the mean milliseconds per kernel label (summed over
   * layers). Includes the per-submission cost; uses onSubmittedWorkDone, not readbacks.
   */
  profileKernels(T: number, repeats?: number): Promise<Map<string, number>>;
  /** Kernel style in use (see {@link WebGpuEngineOptions.kernels}). */
  readonly kernels: "tiled" | "classic";
  /** Compute dispatches per decode step (one submission each), sampler excluded. */
  readonly dispatchesPerToken: number;
  /** Tokens per prefill submission. */
  readonly prefillChunk: number;
}

/** The storage format of a matrix record. */
export function formatOf(t: TensorRecord): WeightFormat {
  if (t.storage === "q") {
    const q = t.quant!;
    return { kind: "q", bits: q.bits, groupSize: q.groupSize, scaleType: q.scaleType };
  }
  return { kind: t.storage };
}

/**
 * Creates a WebGPU engine for an opened artifact: checks the model, acquires a device with the
 * limits it needs, uploads every tensor and compiles the kernels.
 */
export async function createWebGpuEngine(
  artifact: Artifact,
  opts: WebGpuEngineOptions = {},
): Promise<WebGpuEngine> {
  const cfg = artifact.config;
  const file = artifact.path;
  if (cfg.activation !== "silu") throw new UnsupportedError(`activation ${cfg.activation}`);
  if (cfg.routing.scoring !== "softmax") {
    throw new UnsupportedError(`router scoring ${cfg.routing.scoring}`);
  }
  if (cfg.headDim % 2 !== 0) throw new UnsupportedError(`odd head_dim ${cfg.headDim}`);
  const maxContext = opts.maxContext ?? Math.min(cfg.maxPositions || 4096, 4096);
  // Default chunk: up to 128 tokens (fewer submissions and dispatches per prompt), fewer for
  // large vocabularies so the logits buffer stays within 64 MiB.
  const defaultChunk = Math.max(16, Math.min(128, Math.floor(2 ** 26 / (cfg.vocabSize * 4))));
  const chunk = Math.max(
    1,
    Math.min(opts.prefillChunk ?? defaultChunk, maxContext, Math.floor(4096 / cfg.routing.topK)),
  );

  // Index the tensors.
  const byKey = new Map<string, TensorRecord>();
  for (const t of artifact.tensors) byKey.set(`${t.role}/${t.layer}/${t.expert}`, t);
  const find = (role: string, layer = -1, expert = -1) => byKey.get(`${role}/${layer}/${expert}`);
  const need = (role: string, layer = -1, expert = -1, shape?: number[]): TensorRecord => {
    const t = find(role, layer, expert);
    const where = `${role}${layer >= 0 ? ` layer ${layer}` : ""}${
      expert >= 0 ? ` expert ${expert}` : ""
    }`;
    if (!t) throw new InputError(`missing tensor ${where}`, file);
    if (shape && (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))) {
      throw new InputError(
        `tensor ${t.name} (${where}) has shape [${t.shape}], expected [${shape}]`,
        file,
      );
    }
    return t;
  };

  // Largest dense binding: decides the device limits we ask for.
  let maxBinding = 0;
  for (const t of artifact.tensors) {
    if (t.shape.length !== 2) continue;
    const b = matrixBytes(formatOf(t), t.shape[0], t.shape[1]);
    if (!t.role.startsWith("expert_")) maxBinding = Math.max(maxBinding, b);
  }
  const H = cfg.hiddenSize, V = cfg.vocabSize, nh = cfg.numHeads, nkv = cfg.numKvHeads;
  const hd = cfg.headDim, E = cfg.routing.numExperts, K = cfg.routing.topK;
  const I = cfg.expertIntermediateSize;
  const wideI = Math.max(K * I, cfg.sharedIntermediateSize, cfg.denseIntermediateSize);
  maxBinding = Math.max(maxBinding, chunk * V * 4, chunk * wideI * 4, maxContext * nkv * hd * 4);

  let device: GPUDevice, f16: boolean, cpu: boolean;
  if (opts.device) {
    device = opts.device;
    cpu = describeAdapter((device as { adapterInfo?: GPUAdapterInfo }).adapterInfo).cpu;
    f16 = (opts.f16 ?? true) && device.features.has("shader-f16");
    if (device.limits.maxStorageBufferBindingSize < maxBinding) {
      throw new LimitError(
        `the model needs maxStorageBufferBindingSize = ${maxBinding} but the device offers ${device.limits.maxStorageBufferBindingSize}`,
      );
    }
  } else {
    const ctx = await requestGpu({
      f16: opts.f16,
      needs: {
        maxBufferSize: maxBinding,
        maxStorageBufferBindingSize: Math.max(maxBinding, EXPERT_SET_BYTES),
        maxStorageBuffersPerShaderStage: 7,
      },
    });
    device = ctx.device;
    f16 = ctx.f16;
    cpu = ctx.cpu;
  }
  const tpr = opts.threadsPerRow ?? (cpu ? 16 : 64);
  const tiled = (opts.kernels ?? (cpu ? "tiled" : "classic")) === "tiled";
  const tile = opts.prefillTile ?? (tiled ? 8 : 4);
  const rowTile = opts.rowTile ?? 8;
  device.pushErrorScope("validation");
  device.pushErrorScope("out-of-memory");

  // ---- uploads
  let weightBytes = 0;
  const readFloat = async (t: TensorRecord) => {
    if (!t.data) throw new InputError(`tensor ${t.name} has no data segment`, file);
    return await artifact.read(t.data, t.name);
  };
  const readHost = async (t: TensorRecord): Promise<HostMatrix> =>
    t.storage === "q" ? await artifact.readQuantized(t) : { raw: await readFloat(t) };
  const matrix = async (t: TensorRecord): Promise<WeightSet> => {
    const set = uploadWeightSet(
      device,
      formatOf(t),
      t.shape[0],
      t.shape[1],
      [await readHost(t)],
      t.name,
    );
    weightBytes += set.bytes;
    return set;
  };
  const vector = async (t: TensorRecord): Promise<GPUBuffer> => {
    if (t.storage === "q") throw new InputError(`vector ${t.name} cannot be quantized`, file);
    const v = floatBytesToF32(await readFloat(t), t.storage);
    weightBytes += v.byteLength;
    return storageBuffer(device, v.byteLength, t.name, v);
  };
  /** Same storage format for every record? */
  const sameFormat = (ts: TensorRecord[]) =>
    ts.every((t) => formatName(formatOf(t)) === formatName(formatOf(ts[0])));
  /**
   * Uploads the routed experts of `roles` (one role, or several stacked row-wise per expert,
   * e.g. [gate, up]) grouped by storage format, each group split so no binding exceeds
   * EXPERT_SET_BYTES.
   */
  const expertSets = async (
    roles: string[],
    layer: number,
    shape: number[],
  ): Promise<ExpertSet[]> => {
    const groups = new Map<string, TensorRecord[][]>();
    for (let e = 0; e < E; e++) {
      const ts = roles.map((role) => need(role, layer, e, shape));
      const key = formatName(formatOf(ts[0]));
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key)!.push(ts);
    }
    const rows = shape[0] * roles.length;
    const out: ExpertSet[] = [];
    for (const members of groups.values()) {
      const fmt = formatOf(members[0][0]);
      const per = matrixBytes(fmt, rows, shape[1]);
      const n = Math.max(1, Math.floor(EXPERT_SET_BYTES / per));
      for (let i = 0; i < members.length; i += n) {
        const part = members.slice(i, i + n);
        const mats = [];
        for (const ts of part) {
          const hosts = [];
          for (const t of ts) hosts.push(await readHost(t));
          mats.push(hosts.length === 1 ? hosts[0] : stackHost(hosts));
        }
        const label = `${roles.join("+")}.${layer}`;
        const set = uploadWeightSet(device, fmt, rows, shape[1], mats, label);
        weightBytes += set.bytes;
        const ids = new Uint32Array(part.map((ts) => ts[0].expert));
        out.push({ set, gex: storageBuffer(device, ids.byteLength, "gex", ids) });
      }
    }
    return out;
  };
  /** Uploads several same-format matrices stacked row-wise as one weight set. */
  const stacked = async (ts: TensorRecord[]): Promise<WeightSet> => {
    const hosts = [];
    for (const t of ts) hosts.push(await readHost(t));
    const rows = ts.reduce((a, t) => a + t.shape[0], 0);
    const set = uploadWeightSet(
      device,
      formatOf(ts[0]),
      rows,
      ts[0].shape[1],
      [stackHost(hosts)],
      ts.map((t) => t.name).join("+"),
    );
    weightBytes += set.bytes;
    return set;
  };
  /** Dense MLP (or shared expert) weights: gate/up stacked in the tiled style when possible. */
  const mlpWeights = async (prefix: string, layer: number, I: number) => {
    const g = need(`${prefix}_gate`, layer, -1, [I, H]);
    const up = need(`${prefix}_up`, layer, -1, [I, H]);
    const down = await matrix(need(`${prefix}_down`, layer, -1, [H, I]));
    const fits = matrixBytes(formatOf(g), 2 * I, H) <= device.limits.maxStorageBufferBindingSize;
    if (tiled && fits && sameFormat([g, up])) return { gateUp: await stacked([g, up]), down };
    return { gate: await matrix(g), up: await matrix(up), down };
  };

  const embedT = need("embed", -1, -1, [V, H]);
  const embed = await matrix(embedT);
  const lmHead = cfg.tieWordEmbeddings ? embed : await matrix(need("lm_head", -1, -1, [V, H]));
  const finalNorm = await vector(need("final_norm", -1, -1, [H]));
  const cacheBytes = maxContext * nkv * hd * 4;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const qn = cfg.qkNorm === "head" ? [hd] : [nh * hd];
    const kn = cfg.qkNorm === "head" ? [hd] : [nkv * hd];
    const qT = need("attn_q", l, -1, [nh * hd, H]);
    const kT = need("attn_k", l, -1, [nkv * hd, H]);
    const vT = need("attn_v", l, -1, [nkv * hd, H]);
    const bindLimit = device.limits.maxStorageBufferBindingSize;
    const fuseQkv = tiled && cfg.qkNorm === "none" && sameFormat([qT, kT, vT]) &&
      matrixBytes(formatOf(qT), (nh + 2 * nkv) * hd, H) <= bindLimit;
    const L: LayerWeights = {
      inputNorm: await vector(need("input_norm", l, -1, [H])),
      postNorm: await vector(need("post_attention_norm", l, -1, [H])),
      qkv: fuseQkv ? await stacked([qT, kT, vT]) : undefined,
      q: fuseQkv ? undefined! : await matrix(qT),
      k: fuseQkv ? undefined! : await matrix(kT),
      v: fuseQkv ? undefined! : await matrix(vT),
      o: await matrix(need("attn_o", l, -1, [H, nh * hd])),
      qBias: cfg.qkvBias ? await vector(need("attn_q_bias", l, -1, [nh * hd])) : undefined,
      kBias: cfg.qkvBias ? await vector(need("attn_k_bias", l, -1, [nkv * hd])) : undefined,
      vBias: cfg.qkvBias ? await vector(need("attn_v_bias", l, -1, [nkv * hd])) : undefined,
      qNorm: cfg.qkNorm !== "none" ? await vector(need("attn_q_norm", l, -1, qn)) : undefined,
      kNorm: cfg.qkNorm !== "none" ? await vector(need("attn_k_norm", l, -1, kn)) : undefined,
      kind: cfg.layerKinds[l] ?? "moe",
      kCache: storageBuffer(device, cacheBytes, `kcache.${l}`),
      vCache: storageBuffer(device, cacheBytes, `vcache.${l}`),
    };
    if (fuseQkv && cfg.qkvBias) {
      // One bias vector [q; k; v] for the stacked projection.
      const all = new Float32Array((nh + 2 * nkv) * hd);
      const parts = [["attn_q_bias", nh * hd, 0], ["attn_k_bias", nkv * hd, nh * hd], [
        "attn_v_bias",
        nkv * hd,
        (nh + nkv) * hd,
      ]] as const;
      for (const [role, n, at] of parts) {
        const t = need(role, l, -1, [n]);
        if (t.storage === "q") throw new InputError(`vector ${t.name} cannot be quantized`, file);
        all.set(floatBytesToF32(await readFloat(t), t.storage), at);
      }
      weightBytes += all.byteLength;
      L.qkvBias = storageBuffer(device, all.byteLength, `qkv_bias.${l}`, all);
    }
    if (L.kind === "moe") {
      L.router = await matrix(need("router", l, -1, [E, H]));
      let fuseGateUp = tiled;
      for (let e = 0; e < E && fuseGateUp; e++) {
        fuseGateUp = sameFormat([
          need("expert_gate", l, e, [I, H]),
          need("expert_up", l, e, [I, H]),
        ]);
      }
      L.experts = fuseGateUp
        ? {
          gate: [],
          up: [],
          gateUp: await expertSets(["expert_gate", "expert_up"], l, [I, H]),
          down: await expertSets(["expert_down"], l, [H, I]),
        }
        : {
          gate: await expertSets(["expert_gate"], l, [I, H]),
          up: await expertSets(["expert_up"], l, [I, H]),
          down: await expertSets(["expert_down"], l, [H, I]),
        };
      const S = cfg.sharedIntermediateSize;
      if (S > 0) {
        L.mlp = await mlpWeights("shared", l, S);
        if (cfg.sharedExpertGated) {
          L.sharedGate = await matrix(need("shared_expert_gate", l, -1, [1, H]));
        }
      }
    } else {
      L.mlp = await mlpWeights("dense", l, cfg.denseIntermediateSize);
    }
    layers.push(L);
  }

  // ---- activations and state
  const act = (floats: number, label: string) => storageBuffer(device, floats * 4, label);
  const buf = {
    x: act(chunk * H, "x"),
    xn: act(chunk * H, "xn"),
    q: act(chunk * nh * hd, "q"),
    qkv: act(chunk * (nh + 2 * nkv) * hd, "qkv"),
    route: storageBuffer(device, (E + E * chunk) * 4, "route"),
    k: act(chunk * nkv * hd, "k"),
    v: act(chunk * nkv * hd, "v"),
    att: act(chunk * nh * hd, "att"),
    rlog: act(chunk * E, "router_logits"),
    ids: act(chunk * K, "expert_ids"),
    wts: act(chunk * K, "expert_weights"),
    hg: act(chunk * wideI, "hidden_gate"),
    hu: act(chunk * wideI, "hidden_up"),
    ye: act(chunk * K * H, "expert_out"),
    ys: act(chunk * H, "shared_out"),
    sg: act(chunk, "shared_gate"),
    logits: act(chunk * V, "logits"),
    tok: storageBuffer(device, (maxContext + 1) * 4, "tokens"),
    cs: ropeTable(device, hd, cfg.ropeTheta, maxContext),
  };
  const step = device.createBuffer({
    label: "step",
    size: STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  const samplerState = storageBuffer(device, 8, "sampler.state");
  const shiftTmp = storageBuffer(device, (maxContext + 1) * 4, "shift");
  const sampler: Sampler = createSampler(device, V);

  // ---- plans
  /** A dispatch before its pipeline exists: built first, compiled all at once, then bound. */
  interface Pending {
    src: KernelSource;
    bufs: Record<string, GPUBuffer>;
    groups: (T: number) => [number, number, number];
  }
  const weightBufs = weightBuffers;
  const ew =
    (width: number, rows: (T: number) => number) => (T: number): [number, number, number] => [
      Math.ceil(width / EW),
      rows(T),
      1,
    ];
  const QKV = (nh + 2 * nkv) * hd;

  /** `prefill`: the plan may run T > 1 tokens (false for the one-token decode plan). */
  function buildPlan(tt: number, logits: LogitsMode, prefill: boolean): Pending[] {
    const list: Pending[] = [];
    const dispatch = (
      src: KernelSource,
      bufs: Record<string, GPUBuffer>,
      groups: (T: number) => [number, number, number],
    ) => list.push({ src, bufs: { step, ...bufs }, groups });
    /** Dense matmul y = W x (+ bias) (+ y), either kernel style. */
    const mm = (
      set: WeightSet,
      x: GPUBuffer,
      y: GPUBuffer,
      extra: { accumulate?: boolean; fixedT?: number; gateUp?: boolean } = {},
      bias?: GPUBuffer,
    ) => {
      const bufs: Record<string, GPUBuffer> = { x, y, ...weightBufs(set) };
      if (bias) bufs.bias = bias;
      if (tiled) {
        const key: TiledKey = {
          format: set.format,
          rows: extra.gateUp ? set.rows / 2 : set.rows,
          cols: set.cols,
          rowTile,
          tokenTile: extra.fixedT ? 1 : tt,
          mode: "dense",
          bias: bias !== undefined,
          ...extra,
        };
        dispatch(tiledMatmulSource(key), bufs, (T) => tiledGroups(key, T));
        return;
      }
      const key: MatmulKey = {
        format: set.format,
        rows: set.rows,
        cols: set.cols,
        tokenTile: extra.fixedT ? 1 : tt,
        mode: "dense",
        bias: bias !== undefined,
        maxThreadsPerRow: tpr,
        accumulate: extra.accumulate,
        fixedT: extra.fixedT,
      };
      dispatch(matmulSource(key), bufs, (T) => matmulGroups(key, T));
    };
    /** Classic style: experts select their tokens from the router ids (early-exit tiles). */
    const mmExperts = (sets: ExpertSet[], x: GPUBuffer, y: GPUBuffer, xRows: "token" | "slot") => {
      for (const { set, gex } of sets) {
        const key: MatmulKey = {
          format: set.format,
          rows: set.rows,
          cols: set.cols,
          tokenTile: tt,
          mode: "expert",
          xRows,
          topK: K,
          maxThreadsPerRow: tpr,
        };
        dispatch(
          matmulSource(key),
          { x, y, expertIds: buf.ids, setExperts: gex, ...weightBufs(set) },
          (T) => matmulGroups(key, T, set.count),
        );
      }
    };
    /** Tiled style: experts walk their GPU-built token lists. */
    const mmLists = (
      sets: ExpertSet[],
      x: GPUBuffer,
      y: GPUBuffer,
      xRows: "token" | "slot",
      gateUp: boolean,
    ) => {
      for (const { set, gex } of sets) {
        const key: TiledKey = {
          format: set.format,
          rows: gateUp ? set.rows / 2 : set.rows,
          cols: set.cols,
          rowTile,
          tokenTile: tt,
          mode: "list",
          xRows,
          topK: K,
          numExperts: E,
          capacity: chunk,
          gateUp,
        };
        dispatch(
          tiledMatmulSource(key),
          { x, y, routes: buf.route, setExperts: gex, ...weightBufs(set) },
          (T) => tiledGroups(key, T, set.count),
        );
      }
    };
    const norm = (
      x: GPUBuffer,
      w: GPUBuffer,
      out: GPUBuffer | null,
      width: number,
      per: number,
    ) => {
      const src = rmsNormSource({ width, rowsPerToken: per, eps: cfg.rmsNormEps, inPlace: !out });
      dispatch(src, out ? { x, w, out } : { x, w }, (T) => [T * per, 1, 1]);
    };
    /** gate/up/SwiGLU of a dense MLP into buf.hg. */
    const mlpUp = (m: NonNullable<LayerWeights["mlp"]>, width: number) => {
      if (m.gateUp) {
        mm(m.gateUp, buf.xn, buf.hg, { gateUp: true });
        return;
      }
      mm(m.gate!, buf.xn, buf.hg);
      mm(m.up!, buf.xn, buf.hu);
      dispatch(swigluSource(width, 1), { gate: buf.hg, up: buf.hu }, ew(width, tokens));
    };
    const tokens = (T: number) => T;
    /**
     * Attention over the KV cache: one token (decode) splits the keys over lanes; more tokens
     * (prefill) use the query-tiled kernel, which loads each key/value once per query tile.
     * Both are recorded; the one that does not apply gets zero workgroups.
     */
    const attention = (q: GPUBuffer, L: LayerWeights, qStride: number) => {
      const bufs = { q, kCache: L.kCache, vCache: L.vCache, out: buf.att };
      const none: [number, number, number] = [0, 0, 0];
      const akey = {
        numHeads: nh,
        numKvHeads: nkv,
        headDim: hd,
        qStride,
        scale: 1 / Math.sqrt(hd),
      };
      if (!prefill) {
        dispatch(attentionSource(akey), bufs, (T) => [nh, T, 1]);
        return;
      }
      dispatch(attentionSource(akey), bufs, (T) => T === 1 ? [nh, 1, 1] : none);
      const pt = prefillTile(akey);
      dispatch(
        attentionPrefillSource(akey, pt),
        bufs,
        (T) => T > 1 ? prefillGroups(akey, pt, T) : none,
      );
    };

    dispatch(
      embedSource(embed.format, H),
      { tokens: buf.tok, ...weightBufs(embed), out: buf.x },
      ew(H, tokens),
    );
    for (const L of layers) {
      norm(buf.x, L.inputNorm, buf.xn, H, 1);
      if (L.qkv) {
        mm(L.qkv, buf.xn, buf.qkv, {}, L.qkvBias);
        dispatch(
          ropeStoreSource({ numHeads: nh, numKvHeads: nkv, headDim: hd, packed: true, clip: null }),
          { qkv: buf.qkv, rope: buf.cs, kCache: L.kCache, vCache: L.vCache },
          ew(nh * hd / 2 + nkv * hd / 2 + nkv * hd, tokens),
        );
        attention(buf.qkv, L, QKV);
      } else {
        mm(L.q, buf.xn, buf.q, {}, L.qBias);
        mm(L.k, buf.xn, buf.k, {}, L.kBias);
        mm(L.v, buf.xn, buf.v, {}, L.vBias);
        if (cfg.qkNorm === "head") {
          norm(buf.q, L.qNorm!, null, hd, nh);
          norm(buf.k, L.kNorm!, null, hd, nkv);
        } else if (cfg.qkNorm === "full") {
          norm(buf.q, L.qNorm!, null, nh * hd, 1);
          norm(buf.k, L.kNorm!, null, nkv * hd, 1);
        }
        dispatch(
          ropeStoreSource({
            numHeads: nh,
            numKvHeads: nkv,
            headDim: hd,
            packed: false,
            clip: null,
          }),
          { q: buf.q, k: buf.k, v: buf.v, rope: buf.cs, kCache: L.kCache, vCache: L.vCache },
          ew(nh * hd / 2 + nkv * hd / 2 + nkv * hd, tokens),
        );
        attention(buf.q, L, nh * hd);
      }
      mm(L.o, buf.att, buf.x, { accumulate: true });
      norm(buf.x, L.postNorm, buf.xn, H, 1);
      if (L.kind === "moe") {
        mm(L.router!, buf.xn, buf.rlog);
        const ex = L.experts!;
        if (tiled) {
          dispatch(
            routeListsSource(
              { numExperts: E, topK: K, normTopK: cfg.routing.normTopK, scale: 1 },
              chunk,
            ),
            {
              routerLogits: buf.rlog,
              expertIds: buf.ids,
              expertWeights: buf.wts,
              routes: buf.route,
            },
            () => [1, 1, 1],
          );
          if (ex.gateUp) {
            mmLists(ex.gateUp, buf.xn, buf.hg, "token", true);
          } else {
            mmLists(ex.gate, buf.xn, buf.hg, "token", false);
            mmLists(ex.up, buf.xn, buf.hu, "token", false);
            dispatch(swigluSource(I, K), { gate: buf.hg, up: buf.hu }, ew(I, (T) => T * K));
          }
          mmLists(ex.down, buf.hg, buf.ye, "slot", false);
        } else {
          dispatch(
            routerSource({ numExperts: E, topK: K, normTopK: cfg.routing.normTopK, scale: 1 }),
            { routerLogits: buf.rlog, expertIds: buf.ids, expertWeights: buf.wts },
            (T) => [Math.ceil(T / EW), 1, 1],
          );
          mmExperts(ex.gate, buf.xn, buf.hg, "token");
          mmExperts(ex.up, buf.xn, buf.hu, "token");
          dispatch(swigluSource(I, K), { gate: buf.hg, up: buf.hu }, ew(I, (T) => T * K));
          mmExperts(ex.down, buf.hg, buf.ye, "slot");
        }
        let shared: "none" | "plain" | "gated" = "none";
        const extra: Record<string, GPUBuffer> = {};
        if (L.mlp) {
          mlpUp(L.mlp, cfg.sharedIntermediateSize);
          mm(L.mlp.down, buf.hg, buf.ys);
          shared = "plain";
          extra.sharedOut = buf.ys;
          if (L.sharedGate) {
            mm(L.sharedGate, buf.xn, buf.sg);
            shared = "gated";
            extra.sharedGate = buf.sg;
          }
        }
        dispatch(
          combineSource({ hidden: H, topK: K, shared, residualScale: 1 }),
          { x: buf.x, expertOut: buf.ye, expertWeights: buf.wts, ...extra },
          ew(H, tokens),
        );
      } else {
        mlpUp(L.mlp!, cfg.denseIntermediateSize);
        mm(L.mlp!.down, buf.hg, buf.x, { accumulate: true });
      }
    }
    if (logits === "all") {
      norm(buf.x, finalNorm, buf.xn, H, 1);
      mm(lmHead, buf.xn, buf.logits);
    } else if (logits === "last") {
      const src = rmsNormSource({
        width: H,
        rowsPerToken: 1,
        eps: cfg.rmsNormEps,
        inPlace: false,
        lastOnly: true,
      });
      dispatch(src, { x: buf.x, w: finalNorm, out: buf.xn }, () => [1, 1, 1]);
      mm(lmHead, buf.xn, buf.logits, { fixedT: 1 });
    }
    return list;
  }

  // Build every plan, compile all their pipelines in parallel, then bind: no pipeline is
  // created at first use.
  const modes: [number, LogitsMode][] = [[tile, "all"], [tile, "none"], [tile, "last"], [
    1,
    "last",
  ]];
  const pending = modes.map(([tt, mode], i) => buildPlan(tt, mode, i < 3));
  await Promise.all([
    prepareKernels(device, pending.flat().map((p) => p.src)),
    sampler.ready,
  ]);
  const plans = new Map<string, Dispatch[]>();
  modes.forEach(([tt, mode], i) => {
    plans.set(
      `${tt}/${mode}`,
      pending[i].map((p) => {
        const kernel = getKernel(device, p.src);
        return { kernel, bindGroup: bindKernel(device, kernel, p.bufs), groups: p.groups };
      }),
    );
  });
  const plan = (tt: number, mode: LogitsMode) => plans.get(`${tt}/${mode}`)!;
  const oom = await device.popErrorScope();
  const invalid = await device.popErrorScope();
  if (oom) throw new LimitError(`GPU out of memory while loading ${file}: ${oom.message}`);
  if (invalid) {
    throw new DeviceError(`WebGPU validation failed while loading ${file}: ${invalid.message}`);
  }

  // ---- running
  const stepData = new Uint32Array(4);
  /** Encodes one forward of T tokens at position pos0 (optionally sampling) and submits it. */
  function submitForward(
    T: number,
    pos0: number,
    dispatches: Dispatch[],
    after?: (enc: GPUCommandEncoder) => void,
  ): void {
    stepData[0] = T;
    stepData[1] = pos0;
    device.queue.writeBuffer(step, 0, stepData);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encodeDispatches(pass, dispatches, T);
    pass.end();
    after?.(enc);
    device.queue.submit([enc.finish()]);
  }

  // Warm-up: software adapters (lavapipe) JIT-compile a pipeline at its first dispatch, so run
  // every plan once now (load time) rather than at the first request: the prefill plans on two
  // tokens so that their T > 1 kernels (prefill attention) run too.
  {
    for (const mode of ["all", "none", "last"] as LogitsMode[]) {
      submitForward(Math.min(2, chunk), 0, plan(tile, mode));
    }
    submitForward(1, 0, plan(1, "last"), (enc) => {
      device.queue.writeBuffer(samplerState, 0, new Uint32Array([0, 1]));
      sampler.encode(enc, buf.logits, buf.tok, { buffer: samplerState, offset: 0 }, {
        temperature: 1,
        topK: 0,
        topP: 0.9,
        seed: 0,
      });
    });
    await device.queue.onSubmittedWorkDone();
  }

  let busy = false;
  let disposed = false;
  const enter = () => {
    if (disposed) throw new UsageError("the engine was disposed");
    if (busy) throw new UsageError("the engine is busy with another request");
    busy = true;
  };
  const checkIds = (ids: number[], what: string) => {
    if (ids.length === 0) throw new UsageError(`${what}: no input ids`);
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new UsageError(`${what}: token id ${id} is outside the vocabulary [0, ${V})`);
      }
    }
    if (ids.length > maxContext) {
      throw new LimitError(`${what}: ${ids.length} tokens exceed the context of ${maxContext}`);
    }
  };

  async function logits(ids: number[]): Promise<Float32Array[]> {
    checkIds(ids, "logits");
    enter();
    try {
      const n = ids.length;
      device.queue.writeBuffer(buf.tok, 0, new Uint32Array(ids));
      const staging = device.createBuffer({
        size: n * V * 4,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
      for (let s = 0; s < n; s += chunk) {
        const T = Math.min(chunk, n - s);
        submitForward(T, s, plan(tile, "all"), (enc) => {
          enc.copyBufferToBuffer(buf.logits, 0, staging, s * V * 4, T * V * 4);
        });
      }
      const bytes = await mapStaging(staging, n * V * 4);
      staging.destroy();
      const all = new Float32Array(bytes.buffer, bytes.byteOffset, n * V);
      return Array.from({ length: n }, (_, i) => all.slice(i * V, (i + 1) * V));
    } finally {
      busy = false;
    }
  }

  async function* generate(
    promptIds: number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<number> {
    checkIds(promptIds, "generate");
    const n = promptIds.length;
    const maxTokens = options.maxTokens ?? 64;
    // Context shifting keeps the last `keep` tokens; a readback batch never exceeds it, so the
    // tokens not yet read back always survive a shift.
    const keep = Math.max(1, Math.floor(maxContext / 2));
    const every = Math.max(1, Math.min(keep, Math.floor(options.readbackEvery ?? 8)));
    const stop = new Set(options.stopIds ?? cfg.eosTokenIds);
    const params = {
      temperature: options.temperature ?? 0,
      topK: options.topK ?? 0,
      topP: options.topP ?? 1,
      seed: options.seed ?? 0,
    };
    if (maxTokens <= 0) return;
    enter();
    const staging = device.createBuffer({
      size: every * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      device.queue.writeBuffer(buf.tok, 0, new Uint32Array(promptIds));
      const sample = (pos: number, s: number) => (enc: GPUCommandEncoder) => {
        device.queue.writeBuffer(samplerState, 0, new Uint32Array([s, pos]));
        sampler.encode(enc, buf.logits, buf.tok, { buffer: samplerState, offset: 0 }, params);
      };
      // Prefill: all chunks but the last compute no logits; the last samples token n.
      for (let s = 0; s < n; s += chunk) {
        const T = Math.min(chunk, n - s);
        const last = s + T >= n;
        submitForward(T, s, plan(tile, last ? "last" : "none"), last ? sample(n, 0) : undefined);
      }
      // Absolute token a (prompt 0..n-1, then generated) lives at tok[a - base].
      let base = 0;
      let produced = 1; // tokens sampled so far (absolute n .. n + produced)
      let yielded = 0;
      const decode = plan(1, "last");
      while (yielded < maxTokens) {
        // Run decode steps until a readback is due.
        const target = Math.min(maxTokens, yielded + every);
        while (produced < target) {
          if (options.signal?.aborted) return;
          const pos = n + produced - 1 - base; // position of the newest token, fed now
          if (pos < maxContext) {
            submitForward(1, pos, decode, sample(pos + 1, produced));
          } else {
            // Context shift: the KV cache is full. Move the last `keep` tokens (the newest,
            // unfed one included) to the front of the token buffer on the GPU, re-prefill
            // them at positions 0..keep-1 and sample the next token after them.
            const from = n + produced - keep - base;
            const enc = device.createCommandEncoder();
            enc.copyBufferToBuffer(buf.tok, from * 4, shiftTmp, 0, keep * 4);
            enc.copyBufferToBuffer(shiftTmp, 0, buf.tok, 0, keep * 4);
            device.queue.submit([enc.finish()]);
            base = n + produced - keep;
            for (let s = 0; s < keep; s += chunk) {
              const T = Math.min(chunk, keep - s);
              const last = s + T >= keep;
              submitForward(
                T,
                s,
                plan(tile, last ? "last" : "none"),
                last ? sample(keep, produced) : undefined,
              );
            }
          }
          produced++;
        }
        const count = produced - yielded;
        const enc = device.createCommandEncoder();
        enc.copyBufferToBuffer(buf.tok, (n + yielded - base) * 4, staging, 0, count * 4);
        device.queue.submit([enc.finish()]);
        const bytes = await mapStaging(staging, count * 4);
        const got = new Uint32Array(bytes.buffer, bytes.byteOffset, count);
        for (const id of got) {
          if (options.signal?.aborted) return;
          yielded++;
          yield id;
          if (stop.has(id)) return;
        }
      }
    } finally {
      staging.destroy();
      busy = false;
    }
  }

  return {
    config: cfg,
    device,
    f16,
    maxContext,
    weightBytes,
    kernels: tiled ? "tiled" : "classic",
    dispatchesPerToken: plan(1, "last").length,
    prefillChunk: chunk,
    logits,
    generate,
    async profileKernels(T: number, repeats = 5) {
      if (T < 1 || T > chunk) throw new UsageError(`profileKernels: T must be in [1, ${chunk}]`);
      const out = new Map<string, number>();
      for (const d of T === 1 ? plan(1, "last") : plan(tile, "all")) {
        await device.queue.onSubmittedWorkDone();
        const t0 = performance.now();
        for (let r = 0; r < repeats; r++) submitForward(T, 0, [d]);
        await device.queue.onSubmittedWorkDone();
        const key = d.kernel.label.replace(/\.\d+x\d+/, "");
        out.set(key, (out.get(key) ?? 0) + (performance.now() - t0) / repeats);
      }
      return out;
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      sampler.dispose();
      if (!opts.device) device.destroy();
    },
  };
}

/**
 * RoPE table: cs[pos, i] = (cos, sin)(pos · inv_freq[i]) with inv_freq[i] = 1 / θ^(2i/hd) rounded
 * to f32 as transformers computes it; angles and cos/sin in float64 on the host, stored as f32.
 */
function ropeTable(device: GPUDevice, hd: number, theta: number, n: number): GPUBuffer {
  const data = ropeTableData(hd, theta, n);
  return storageBuffer(device, data.byteLength, "rope", data);
}

/** Re-exported for callers that type configs next to the engine. */
export type { ModelConfig };
