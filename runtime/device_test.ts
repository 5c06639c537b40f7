import assert from "node:assert/strict";
import { describeAdapter, negotiateLimits, requestGpu } from "./device.ts";
import { LimitError } from "../schemas/errors.ts";

const limits = {
  maxBufferSize: 1 << 30,
  maxStorageBufferBindingSize: 1 << 28,
  maxStorageBuffersPerShaderStage: 10,
  maxComputeWorkgroupStorageSize: 32768,
  maxComputeWorkgroupsPerDimension: 65535,
} as unknown as GPUSupportedLimits;

Deno.test("negotiateLimits asks for what the model needs, at least the defaults", () => {
  const got = negotiateLimits(limits, { maxStorageBufferBindingSize: 200_000_000 });
  assert.equal(got.maxStorageBufferBindingSize, 200_000_000);
  assert.equal(got.maxStorageBuffersPerShaderStage, 8);
  assert.equal(got.maxBufferSize, 268435456);
});

Deno.test("negotiateLimits names the limit and both sizes when the model does not fit", () => {
  assert.throws(
    () => negotiateLimits(limits, { maxBufferSize: 2 ** 31 }),
    (e: unknown) =>
      e instanceof LimitError && /maxBufferSize = 2147483648/.test(e.message) &&
      /offers 1073741824/.test(e.message),
  );
});

Deno.test("requestGpu honours f16: false", async () => {
  const ctx = await requestGpu({ f16: false });
  assert.equal(ctx.f16, false);
  assert.equal(ctx.device.features.has("shader-f16"), false);
  ctx.device.destroy();
});

Deno.test("describeAdapter recognises software adapters", () => {
  assert.equal(describeAdapter({ description: "llvmpipe (LLVM 15)" } as GPUAdapterInfo).cpu, true);
  assert.equal(describeAdapter({ description: "NVIDIA H100" } as GPUAdapterInfo).cpu, false);
});

Deno.test("negotiateLimits asks for a wanted limit up to the adapter's, never failing on it", () => {
  const got = negotiateLimits(limits, {}, {
    maxStorageBufferBindingSize: 622_329_856,
    maxBufferSize: 200_000_000,
  });
  assert.equal(got.maxStorageBufferBindingSize, 1 << 28);
  assert.equal(got.maxBufferSize, 268435456);
  const more = negotiateLimits(limits, {}, { maxBufferSize: 500_000_000 });
  assert.equal(more.maxBufferSize, 500_000_000);
});
