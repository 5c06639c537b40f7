/**
 * GPU token sampler: picks the next token id from a logits buffer without any CPU readback.
 *
 * One dispatch of a single 256-thread workgroup reads `logits[vocab]` (f32), picks a token and
 * writes it as a u32 into `ids[state.pos]`, then advances `state.step` and `state.pos` by one.
 *
 * ## Buffers
 *
 * - `logits`: storage, `array<f32>` of `vocabSize` (the last position's logits).
 * - `ids`: storage, `array<u32>`; the chosen id goes to `ids[state.pos]`.
 * - `state`: storage, 8 bytes `{ step: u32, pos: u32 }`, owned by the caller. `step` is the RNG
 *   counter, `pos` the write index into `ids`. The sampler increments BOTH after writing, so a
 *   GPU-resident decode loop only initialises them once (e.g. `queue.writeBuffer(state, 0,
 *   new Uint32Array([0, promptLength]))`) and then encodes `forward → sample` repeatedly; the
 *   next forward pass reads its input token at `ids[state.pos - 1]`. Binding offsets must be
 *   multiples of `device.limits.minStorageBufferOffsetAlignment` (256).
 * - params (internal uniform): temperature, topK, topP, seed. They are written with
 *   `queue.writeBuffer`, which takes effect at the next `queue.submit`: every `encode` between
 *   two submits uses the params of the last `encode` call. One generation = one params set.
 *
 * Passing a plain number as the index instead of a state buffer writes `ids[index]` with RNG step
 * `params.step ?? index` (a small state buffer is created for that call): convenient for tests
 * and one-off draws, not meant for the hot loop.
 *
 * ## Algorithm (HF transformers semantics: temperature, then top-k, then top-p)
 *
 * 1. Argmax over order-preserving u32 keys of the logits (lowest index on ties). Temperature 0
 *    (or negative/NaN) stops here: greedy.
 * 2. e_i = exp((l_i - max) / T).
 * 3. Top-k: the k-th largest key K_k is found bit by bit (32 rounds of "how many keys ≥ cand"),
 *    keeping every token with key ≥ K_k (ties with the k-th value are kept, as in HF).
 * 4. Top-p: likewise the largest key K_p whose kept mass Σ_{key ≥ max(K_p, K_k)} e_i still
 *    reaches topP · Σ_{key ≥ K_k} e_i: the smallest prefix of the sorted distribution with mass
 *    ≥ topP (the crossing token is kept).
 * 5. u = counter-based hash (pcg2d) of (seed, step) → [0, 1); inverse CDF over the kept tokens
 *    in index order (per-thread contiguous chunks, a prefix scan of chunk sums, then one walk).
 *
 * NaN logits count as -inf; ±inf are clamped to ±FLT_MAX. {@link sampleCpu} is the float64
 * reference of the same algorithm (same keys, same RNG), usable by a CPU engine.
 *
 * @module
 */

import { DeviceError, UsageError } from "../../schemas/errors.ts";

/** Sampling parameters (see {@link GenerateOptions} in runtime/api.ts). */
export interface SamplerParams {
  /** 0 (or less) = greedy argmax. */
  temperature: number;
  /** Keep the k most likely tokens (0 = off). */
  topK: number;
  /** Nucleus mass in (0, 1]; 1 = off. */
  topP: number;
  /** RNG seed (taken modulo 2^32). */
  seed: number;
  /** RNG step for a numeric `index` (default: the index itself). Ignored with a state buffer. */
  step?: number;
}

/** Where the sampler reads and advances `{step, pos}` (8 bytes at `offset`). */
export interface SamplerStateRef {
  /** A STORAGE buffer owned by the caller. */
  buffer: GPUBuffer;
  /** Byte offset; a multiple of minStorageBufferOffsetAlignment. */
  offset: number;
}

/** A compiled sampler for one vocabulary size. */
export interface Sampler {
  /** The vocabulary size this sampler was built for. */
  readonly vocabSize: number;
  /** Resolves once the pipeline compiled; rejects with DeviceError if it did not. */
  readonly ready: Promise<void>;
  /**
   * Records one sampling dispatch: reads `logits`, writes the chosen id into `ids` at `index`
   * (a number, or the `pos` of a state buffer which is then advanced).
   */
  encode(
    encoder: GPUCommandEncoder,
    logits: GPUBuffer,
    ids: GPUBuffer,
    index: number | SamplerStateRef,
    params: SamplerParams,
  ): void;
  /** Frees the sampler's own buffers. */
  dispose(): void;
}

/** Threads in the single sampling workgroup. */
export const SAMPLER_WORKGROUP = 256;

const FLT_MAX = 3.4028234663852886e38;

/** pcg2d (Jarzynski & Olano 2020): a counter-based hash of two u32 → u32 (first lane). */
export function pcg2d(a: number, b: number): number {
  let x = (Math.imul(a >>> 0, 1664525) + 1013904223) >>> 0;
  let y = (Math.imul(b >>> 0, 1664525) + 1013904223) >>> 0;
  x = (x + Math.imul(y, 1664525)) >>> 0;
  y = (y + Math.imul(x, 1664525)) >>> 0;
  x = (x ^ (x >>> 16)) >>> 0;
  y = (y ^ (y >>> 16)) >>> 0;
  x = (x + Math.imul(y, 1664525)) >>> 0;
  y = (y + Math.imul(x, 1664525)) >>> 0;
  x = (x ^ (x >>> 16)) >>> 0;
  return x;
}

/** The sampler's uniform draw in [0, 1) for (seed, step): 24 bits of pcg2d, exact in f32. */
export function samplerUniform(seed: number, step: number): number {
  return (pcg2d(seed >>> 0, step >>> 0) >>> 8) / 16777216;
}

const keyF32 = new Float32Array(1);
const keyU32 = new Uint32Array(keyF32.buffer);

/** Clamps a logit the way the kernel does: NaN → -FLT_MAX, ±inf → ±FLT_MAX (as f32). */
function sanitize(x: number): number {
  if (Number.isNaN(x)) return -FLT_MAX;
  return Math.max(-FLT_MAX, Math.min(FLT_MAX, x));
}

/** Order-preserving u32 key of an f32 (larger float → larger key). */
export function orderKey(x: number): number {
  keyF32[0] = sanitize(x);
  const b = keyU32[0];
  return (b & 0x80000000 ? ~b : b | 0x80000000) >>> 0;
}

/**
 * The float64 reference of the GPU sampler: same keys, thresholds and RNG, but exact sums.
 * Returns the token id for `logits` at RNG `step`.
 */
export function sampleCpu(logits: Float32Array, params: SamplerParams, step: number): number {
  const n = logits.length;
  const keys = new Uint32Array(n);
  let best = 0;
  for (let i = 0; i < n; i++) {
    keys[i] = orderKey(logits[i]);
    if (keys[i] > keys[best]) best = i;
  }
  if (!(params.temperature > 0)) return best;
  const lmax = sanitize(logits[best]);
  const e = new Float64Array(n);
  for (let i = 0; i < n; i++) e[i] = Math.exp((sanitize(logits[i]) - lmax) / params.temperature);

  // Token indices by descending key; thresholds are keys of this order.
  const order = Array.from(keys.keys()).sort((a, b) => keys[b] - keys[a]);
  let threshold = 0;
  if (params.topK > 0 && params.topK < n) threshold = keys[order[params.topK - 1]];
  if (params.topP < 1) {
    let total = 0;
    for (let i = 0; i < n; i++) if (keys[i] >= threshold) total += e[i];
    const goal = params.topP * total;
    let mass = 0;
    for (let j = 0; j < n && keys[order[j]] >= threshold; j++) {
      mass += e[order[j]];
      const endOfTies = j + 1 === n || keys[order[j + 1]] !== keys[order[j]];
      if (endOfTies && mass >= goal && mass > 0) {
        threshold = keys[order[j]];
        break;
      }
    }
  }
  let total = 0;
  for (let i = 0; i < n; i++) if (keys[i] >= threshold) total += e[i];
  const target = samplerUniform(params.seed, step) * total;
  let acc = 0;
  let last = best;
  for (let i = 0; i < n; i++) {
    if (keys[i] < threshold || e[i] === 0) continue;
    acc += e[i];
    last = i;
    if (acc > target) return i;
  }
  return last;
}

/**
 * The sampler's WGSL. `batch`: the batched variant ({@link createBatchSampler}): workgroup b
 * samples logits row b for slot rows[2b], with that slot's params and state, into its token
 * entries (`tokensPerSlot` apart).
 */
function shaderSource(vocabSize: number, batch?: { tokensPerSlot: number }): string {
  const code = shaderBody(vocabSize);
  if (!batch) {
    return `${SINGLE_BINDINGS}${
      code.replace("/*ENTRY*/", "").replace("/*PROLOGUE*/", "").replaceAll("STATE.", "state.")
        .replaceAll("LOGIT_BASE + ", "").replaceAll("ID_BASE + ", "")
    }`;
  }
  return `${BATCH_BINDINGS}
var<private> logitBase: u32;
${
    code.replace("/*ENTRY*/", ", @builtin(workgroup_id) wg: vec3<u32>")
      .replace(
        "/*PROLOGUE*/",
        `let slot = rows[2u * wg.x];
  let params = slotParams[slot];
  logitBase = wg.x * VOCAB;`,
      )
      .replaceAll("STATE.", "states[slot].")
      .replaceAll("LOGIT_BASE + ", "logitBase + ")
      .replaceAll("ID_BASE + ", `slot * ${batch.tokensPerSlot}u + `)
  }`;
}

const SINGLE_BINDINGS = /* wgsl */ `
struct Params { temperature: f32, top_k: u32, top_p: f32, seed: u32 }
struct State { step: u32, pos: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> state: State;
@group(0) @binding(3) var<uniform> params: Params;
`;

const BATCH_BINDINGS = /* wgsl */ `
struct Params { temperature: f32, top_k: u32, top_p: f32, seed: u32 }
struct State { step: u32, pos: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> states: array<State>;
@group(0) @binding(3) var<storage, read> slotParams: array<Params>;
@group(0) @binding(4) var<storage, read> rows: array<u32>;
`;

/** The sampler's code after the bindings, with the markers shaderSource fills in. */
function shaderBody(vocabSize: number): string {
  return /* wgsl */ `
const WG: u32 = ${SAMPLER_WORKGROUP}u;
const VOCAB: u32 = ${vocabSize}u;
const CHUNK: u32 = ${Math.ceil(vocabSize / SAMPLER_WORKGROUP)}u;
const FLT_MAX: f32 = 3.4028234663852886e38;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> sh_u: f32;
var<workgroup> sh_total: f32;
var<workgroup> sh_pick: atomic<u32>;
var<workgroup> sh_last: atomic<u32>;

fn pcg2d(a: u32, b: u32) -> u32 {
  var v = vec2<u32>(a, b) * 1664525u + 1013904223u;
  v.x += v.y * 1664525u;
  v.y += v.x * 1664525u;
  v = v ^ (v >> vec2<u32>(16u));
  v.x += v.y * 1664525u;
  v.y += v.x * 1664525u;
  v = v ^ (v >> vec2<u32>(16u));
  return v.x;
}

// NaN -> -FLT_MAX, +-inf -> +-FLT_MAX (bit tests: the compiler may assume no NaN/inf in floats).
fn logit(i: u32) -> f32 {
  let b = bitcast<u32>(logits[LOGIT_BASE + i]);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return -FLT_MAX; }
  if (b == 0x7f800000u) { return FLT_MAX; }
  if (b == 0xff800000u) { return -FLT_MAX; }
  return bitcast<f32>(b);
}

fn key_of(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x80000000u) != 0u) { return ~b; }
  return b | 0x80000000u;
}

fn float_of(k: u32) -> f32 {
  if ((k & 0x80000000u) != 0u) { return bitcast<f32>(k & 0x7fffffffu); }
  return bitcast<f32>(~k);
}

fn reduce_sum_f(lid: u32, v: f32) -> f32 {
  red_f[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red_f[lid] = red_f[lid] + red_f[lid + s]; }
    workgroupBarrier();
  }
  let r = red_f[0];
  workgroupBarrier();
  return r;
}

fn reduce_sum_u(lid: u32, v: u32) -> u32 {
  red_u[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red_u[lid] = red_u[lid] + red_u[lid + s]; }
    workgroupBarrier();
  }
  let r = red_u[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(${SAMPLER_WORKGROUP})
fn main(@builtin(local_invocation_index) lid: u32/*ENTRY*/) {
  /*PROLOGUE*/
  // Argmax over keys, lowest index on ties.
  var best_k = 0u;
  var best_i = 0xffffffffu;
  for (var i = lid; i < VOCAB; i += WG) {
    let k = key_of(logit(i));
    if (k > best_k || best_i == 0xffffffffu) { best_k = k; best_i = i; }
  }
  red_u[lid] = best_k;
  red_i[lid] = best_i;
  if (lid == 0u) {
    sh_u = f32(pcg2d(params.seed, STATE.step) >> 8u) / 16777216.0;
    atomicStore(&sh_pick, 0xffffffffu);
    atomicStore(&sh_last, 0u);
  }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let ko = red_u[lid + s];
      let io = red_i[lid + s];
      if (io != 0xffffffffu &&
          (ko > red_u[lid] || (ko == red_u[lid] && io < red_i[lid]) || red_i[lid] == 0xffffffffu)) {
        red_u[lid] = ko;
        red_i[lid] = io;
      }
    }
    workgroupBarrier();
  }
  let kmax = red_u[0];
  let imax = red_i[0];
  workgroupBarrier();

  if (!(params.temperature > 0.0)) {
    if (lid == 0u) {
      ids[ID_BASE + STATE.pos] = imax;
      STATE.step = STATE.step + 1u;
      STATE.pos = STATE.pos + 1u;
    }
    return;
  }

  let lmax = float_of(kmax);
  let inv_t = 1.0 / params.temperature;

  // Top-k: the largest key K with count(key >= K) >= top_k.
  var kk = 0u;
  if (params.top_k > 0u && params.top_k < VOCAB) {
    for (var bit = 31i; bit >= 0i; bit--) {
      let cand = kk | (1u << u32(bit));
      var n = 0u;
      for (var i = lid; i < VOCAB; i += WG) {
        if (key_of(logit(i)) >= cand) { n += 1u; }
      }
      if (reduce_sum_u(lid, n) >= params.top_k) { kk = cand; }
    }
  }

  // Top-p: the largest key K whose kept mass reaches top_p of the top-k mass.
  var kp = kk;
  if (params.top_p < 1.0) {
    var z = 0.0;
    for (var i = lid; i < VOCAB; i += WG) {
      let l = logit(i);
      if (key_of(l) >= kk) { z += exp((l - lmax) * inv_t); }
    }
    let goal = params.top_p * reduce_sum_f(lid, z);
    var k = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
      let cand = k | (1u << u32(bit));
      let lo = max(cand, kk);
      var m = 0.0;
      for (var i = lid; i < VOCAB; i += WG) {
        let l = logit(i);
        if (key_of(l) >= lo) { m += exp((l - lmax) * inv_t); }
      }
      let mass = reduce_sum_f(lid, m);
      if (mass >= goal && mass > 0.0) { k = cand; }
    }
    kp = max(kk, k);
  }

  // Inverse CDF in index order: contiguous chunks, exclusive scan of chunk sums, one walk.
  let start = min(lid * CHUNK, VOCAB);
  let stop = min(start + CHUNK, VOCAB);
  var s_t = 0.0;
  for (var i = start; i < stop; i++) {
    let l = logit(i);
    if (key_of(l) >= kp) { s_t += exp((l - lmax) * inv_t); }
  }
  red_f[lid] = s_t;
  workgroupBarrier();
  if (lid == 0u) {
    var acc = 0.0;
    for (var t = 0u; t < WG; t++) {
      let v = red_f[t];
      red_f[t] = acc;
      acc += v;
    }
    sh_total = acc;
  }
  workgroupBarrier();
  let goal_u = sh_u * sh_total;
  let prefix = red_f[lid];
  var last = 0u;
  var acc = prefix;
  let mine = s_t > 0.0 && prefix <= goal_u && goal_u < prefix + s_t;
  for (var i = start; i < stop; i++) {
    let l = logit(i);
    let e = exp((l - lmax) * inv_t);
    if (key_of(l) >= kp && e > 0.0) {
      last = i + 1u;
      acc += e;
      if (mine && acc > goal_u) {
        atomicMin(&sh_pick, i);
        break;
      }
    }
  }
  if (mine && last > 0u) { atomicMin(&sh_pick, last - 1u); }
  if (last > 0u) { atomicMax(&sh_last, last); }
  workgroupBarrier();
  if (lid == 0u) {
    var pick = atomicLoad(&sh_pick);
    if (pick == 0xffffffffu) {
      let l = atomicLoad(&sh_last);
      pick = select(imax, l - 1u, l > 0u);
    }
    ids[ID_BASE + STATE.pos] = pick;
    STATE.step = STATE.step + 1u;
    STATE.pos = STATE.pos + 1u;
  }
}
`;
}

/**
 * The sampler's 16-byte parameter block (temperature f32, top-k u32, top-p f32, seed u32), checked:
 * one layout for the one-sequence and the batched sampler.
 */
function packSamplerParams(p: SamplerParams): ArrayBuffer {
  if (!Number.isFinite(p.topK) || p.topK < 0) {
    throw new UsageError(`sampler: topK must be a non-negative integer, got ${p.topK}`);
  }
  if (Number.isNaN(p.topP) || Number.isNaN(p.temperature)) {
    throw new UsageError("sampler: temperature and topP must be numbers");
  }
  const data = new ArrayBuffer(16);
  const f = new Float32Array(data);
  const u = new Uint32Array(data);
  f[0] = p.temperature;
  u[1] = Math.min(Math.floor(p.topK), 0xffffffff);
  f[2] = p.topP;
  u[3] = p.seed >>> 0;
  return data;
}

/**
 * Compiles the sampler for `vocabSize` tokens on `device`.
 * Throws UsageError for a bad vocabulary size, DeviceError when the shader fails to compile.
 */
export function createSampler(device: GPUDevice, vocabSize: number): Sampler {
  if (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize > 2 ** 24) {
    throw new UsageError(
      `createSampler: vocabSize must be an integer in [1, 2^24], got ${vocabSize}`,
    );
  }
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ label: "sample", code: shaderSource(vocabSize) });
  const pipeline = device.createComputePipeline({
    label: "sample",
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const ready = device.popErrorScope().then((error) => {
    if (error) throw new DeviceError(`sample shader: ${error.message.trim().split("\n")[0]}`);
  });
  ready.catch(() => {}); // reported to whoever awaits `ready`
  const paramsBuffer = device.createBuffer({
    label: "sample.params",
    size: 16,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  let lastParams = "";
  let cached: { key: unknown[]; group: GPUBindGroup } | null = null;

  function writeParams(p: SamplerParams): void {
    const data = packSamplerParams(p);
    const key = Array.from(new Uint32Array(data)).join(",");
    if (key !== lastParams) {
      device.queue.writeBuffer(paramsBuffer, 0, data);
      lastParams = key;
    }
  }

  function bindGroup(logits: GPUBuffer, ids: GPUBuffer, state: GPUBuffer, offset: number) {
    const key = [logits, ids, state, offset];
    if (cached && cached.key.every((v, i) => v === key[i])) return cached.group;
    const group = device.createBindGroup({
      label: "sample",
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: logits, size: vocabSize * 4 } },
        { binding: 1, resource: { buffer: ids } },
        { binding: 2, resource: { buffer: state, offset, size: 8 } },
        { binding: 3, resource: { buffer: paramsBuffer } },
      ],
    });
    cached = { key, group };
    return group;
  }

  return {
    vocabSize,
    ready,
    encode(encoder, logits, ids, index, params) {
      if (logits.size < vocabSize * 4) {
        throw new UsageError(
          `sampler: logits buffer holds ${logits.size} bytes, need ${vocabSize * 4}`,
        );
      }
      writeParams(params);
      let state: SamplerStateRef;
      if (typeof index === "number") {
        if (!Number.isInteger(index) || index < 0 || (index + 1) * 4 > ids.size) {
          throw new UsageError(
            `sampler: index ${index} is outside the ids buffer (${ids.size} bytes)`,
          );
        }
        const buffer = device.createBuffer({
          label: "sample.state",
          size: 8,
          usage: GPUBufferUsage.STORAGE,
          mappedAtCreation: true,
        });
        new Uint32Array(buffer.getMappedRange()).set([(params.step ?? index) >>> 0, index]);
        buffer.unmap();
        state = { buffer, offset: 0 };
      } else {
        state = index;
      }
      const pass = encoder.beginComputePass({ label: "sample" });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup(logits, ids, state.buffer, state.offset));
      pass.dispatchWorkgroups(1);
      pass.end();
    },
    dispose() {
      paramsBuffer.destroy();
      cached = null;
    },
  };
}

/** A compiled batched sampler ({@link createBatchSampler}). */
export interface BatchSampler {
  /** Resolves once the pipeline compiled; rejects with DeviceError if it did not. */
  readonly ready: Promise<void>;
  /** Per-slot `{step, pos}` (8 bytes a slot), advanced by every sample of the slot. */
  readonly states: GPUBuffer;
  /** Writes slot `slot`'s params (taking effect at the next submit). */
  setParams(slot: number, params: SamplerParams): void;
  /** Writes slot `slot`'s `{step, pos}` (taking effect at the next submit). */
  setState(slot: number, step: number, pos: number): void;
  /**
   * Records one dispatch sampling `count` rows: logits row b (of `vocabSize`) for slot
   * rows[2b], written to ids[slot · tokensPerSlot + states[slot].pos].
   */
  encode(encoder: GPUCommandEncoder, count: number): void;
  /** Frees the sampler's own buffers. */
  dispose(): void;
}

/**
 * The sampler of a multi-slot engine: one workgroup per logits row, each with its own slot's
 * params, RNG step and write position (same algorithm and draws as {@link createSampler}, so a
 * slot samples exactly what a one-sequence engine would). `logits` holds the rows, `ids` the
 * slots' token entries (`tokensPerSlot` apart), `rows` the (slot, position) pairs of the rows
 * (kernels/slots.ts; only the slots are read).
 */
export function createBatchSampler(
  device: GPUDevice,
  vocabSize: number,
  slots: number,
  tokensPerSlot: number,
  buffers: { logits: GPUBuffer; ids: GPUBuffer; rows: GPUBuffer },
): BatchSampler {
  if (!Number.isInteger(vocabSize) || vocabSize < 1 || vocabSize > 2 ** 24) {
    throw new UsageError(
      `createBatchSampler: vocabSize must be an integer in [1, 2^24], got ${vocabSize}`,
    );
  }
  const code = shaderSource(vocabSize, { tokensPerSlot });
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ label: "sample.batch", code });
  const pipeline = device.createComputePipeline({
    label: "sample.batch",
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const ready = device.popErrorScope().then((error) => {
    if (error) throw new DeviceError(`sample shader: ${error.message.trim().split("\n")[0]}`);
  });
  ready.catch(() => {}); // reported to whoever awaits `ready`
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const states = device.createBuffer({ label: "sample.states", size: slots * 8, usage });
  const params = device.createBuffer({ label: "sample.slotParams", size: slots * 16, usage });
  const group = device.createBindGroup({
    label: "sample.batch",
    layout: pipeline.getBindGroupLayout(0),
    entries: [buffers.logits, buffers.ids, states, params, buffers.rows].map((buffer, i) => ({
      binding: i,
      resource: { buffer },
    })),
  });
  const check = (slot: number) => {
    if (!Number.isInteger(slot) || slot < 0 || slot >= slots) {
      throw new UsageError(`sampler: slot ${slot} is outside [0, ${slots})`);
    }
  };
  return {
    ready,
    states,
    setParams(slot, p) {
      check(slot);
      device.queue.writeBuffer(params, slot * 16, packSamplerParams(p));
    },
    setState(slot, step, pos) {
      check(slot);
      device.queue.writeBuffer(states, slot * 8, new Uint32Array([step >>> 0, pos >>> 0]));
    },
    encode(encoder, count) {
      if (count < 1) return;
      const pass = encoder.beginComputePass({ label: "sample.batch" });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(count);
      pass.end();
    },
    dispose() {
      states.destroy();
      params.destroy();
    },
  };
}
