import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../checkpoint/mod.ts";
import { isExpertRole, tensorsOf } from "../ir.ts";
import { quantizeMatrix } from "../quantize/mod.ts";
import { forward, prepareReference } from "../reference/mod.ts";
import { openArtifact, PREAMBLE_SIZE } from "../../runtime/artifact.ts";
import { dequantize } from "../../schemas/packing.ts";
import { artifactToIR, emitArtifact } from "./mod.ts";

const FIXTURES = new URL("../../testdata/hf-moe/", import.meta.url).pathname;
const fixtures = [...Deno.readDirSync(FIXTURES)].filter((e) => e.isDirectory).map((e) => e.name)
  .sort();

function sameBits(a: Float32Array, b: Float32Array): boolean {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return ua.length === ub.length && ua.every((v, i) => v === ub[i]);
}

for (const name of fixtures) {
  Deno.test(`emit: ${name} checkpoint → f32 artifact → artifactToIR is bit-identical`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const ir = await loadCheckpoint(join(FIXTURES, name));
      const dest = join(dir, "m.moeq");
      const written = await emitArtifact(ir, dest, { options: { test: name } });
      const a = await openArtifact(dest);
      try {
        assert.equal(a.headerOffset, PREAMBLE_SIZE, "header sits right after the preamble");
        assert.equal(a.fileLength, written.bytes);
        assert.deepEqual(a.config, ir.config);
        assert.deepEqual(a.options, { test: name });
        await a.verifyAll();
        const back = await artifactToIR(a);
        const src = [...tensorsOf(ir)];
        const dst = [...tensorsOf(back)];
        assert.equal(dst.length, src.length);
        for (let i = 0; i < src.length; i++) {
          assert.equal(dst[i].role, src[i].role);
          assert.equal(dst[i].layer, src[i].layer);
          assert.equal(dst[i].expert, src[i].expert);
          assert.deepEqual(dst[i].ref.shape, [...src[i].ref.shape]);
          assert.ok(
            sameBits(await dst[i].ref.read(), await src[i].ref.read()),
            `${src[i].ref.name} differs`,
          );
        }
        // The CPU reference forward gives identical logits on the checkpoint and the artifact.
        const ids = [1, 5, 9, 3, 0, 7];
        const want = forward(await prepareReference(ir), ids);
        const got = forward(await prepareReference(back), ids);
        assert.equal(got.length, want.length);
        for (let p = 0; p < want.length; p++) assert.deepEqual(got[p], want[p], `position ${p}`);
        // No temp file is left behind.
        assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["m.moeq"]);
      } finally {
        a.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("emit: quantized experts round trip exactly (codes, scales, zeros and dequantized values)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ir = await loadCheckpoint(join(FIXTURES, fixtures[0]));
    const dest = join(dir, "q.moeq");
    const bitsOf = (expert: number) => ([2, 3, 4, 8] as const)[expert % 4];
    await emitArtifact(ir, dest, {
      encode: (t) =>
        isExpertRole(t.role)
          ? { storage: "q", bits: bitsOf(t.expert), groupSize: 32, method: "rtn" }
          : { storage: t.role === "embed" ? "bf16" : "f16" },
    });
    const a = await openArtifact(dest);
    try {
      await a.verifyAll();
      let nq = 0;
      for (const placed of tensorsOf(ir)) {
        const rec = a.tensorsByName.get(placed.ref.name)!;
        const w = await placed.ref.read();
        if (isExpertRole(placed.role)) {
          const [rows, cols] = placed.ref.shape;
          const want = quantizeMatrix(w, rows, cols, {
            bits: bitsOf(placed.expert),
            groupSize: 32,
            method: "rtn",
          });
          const got = await a.readQuantized(rec);
          assert.equal(got.bits, want.bits);
          assert.deepEqual(got.codes, want.codes);
          assert.deepEqual(got.scales, want.scales);
          assert.deepEqual(got.zeros, want.zeros);
          assert.ok(sameBits(await a.readF32(rec), dequantize(want)));
          nq++;
        } else {
          // f16/bf16 storage: within half-precision rounding of the source values.
          const got = await a.readF32(rec);
          const tol = rec.storage === "bf16" ? 2 ** -8 : 2 ** -11;
          for (let i = 0; i < w.length; i++) {
            assert.ok(Math.abs(got[i] - w[i]) <= tol * Math.abs(w[i]) + 1e-7, `${rec.name}[${i}]`);
          }
        }
      }
      assert.ok(nq > 0);
      assert.ok(a.summary.avgExpertBits > 2 && a.summary.avgExpertBits < 8);
    } finally {
      a.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
