import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint, SUPPORTED_MODEL_TYPES } from "../checkpoint/mod.ts";
import { moeLayers } from "../ir.ts";
import { quantizeMatrix } from "../quantize/mod.ts";
import { forward, forwardSeq2Seq, prepareReference } from "../reference/mod.ts";
import { openArtifact, PREAMBLE_SIZE } from "../../schemas/artifact.ts";
import { InputError } from "../../schemas/errors.ts";
import { MIXTRAL_LIKE, SWITCH_LIKE, TINY_MODEL } from "../../schemas/example_specs.ts";
import { dequantize } from "../../schemas/packing.ts";
import { isExpertMatrixRole, keyString } from "../../schemas/tensors.ts";
import { buildArtifact } from "../../schemas/testing.ts";
import { artifactToIR, emitArtifact } from "./mod.ts";
import { syntheticIR } from "./testing.ts";

const TESTDATA = new URL("../../testdata/", import.meta.url).pathname;
/** Every checkpoint fixture of a family the front end reads (hf-moe and hf-oracle). */
const CHECKPOINTS = ["hf-moe", "hf-oracle"].flatMap((group) =>
  [...Deno.readDirSync(join(TESTDATA, group))]
    .filter((e) => e.isDirectory)
    .map((e) => join(TESTDATA, group, e.name))
    .filter((dir) => {
      const config = JSON.parse(Deno.readTextFileSync(join(dir, "config.json")));
      return SUPPORTED_MODEL_TYPES.includes(config.model_type);
    })
    .sort()
);
const FIRST = join(TESTDATA, "hf-moe", "mixtral-classic");

function sameBits(a: Float32Array, b: Float32Array): boolean {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return ua.length === ub.length && ua.every((v, i) => v === ub[i]);
}

for (const path of CHECKPOINTS) {
  const name = path.slice(TESTDATA.length);
  Deno.test(`emit: ${name} checkpoint → f32 artifact → artifactToIR is bit-identical`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const ir = await loadCheckpoint(path);
      const dest = join(dir, "m.moeq");
      const written = await emitArtifact(ir, dest, { options: { test: name } });
      const a = await openArtifact(dest);
      try {
        assert.equal(a.headerOffset, PREAMBLE_SIZE, "header sits right after the preamble");
        assert.equal(a.fileLength, written.bytes);
        assert.deepEqual(a.model, ir.spec);
        assert.deepEqual(a.options, { test: name });
        await a.verifyAll();
        const back = await artifactToIR(a);
        assert.deepEqual(back.spec, ir.spec);
        const src = ir.tensors;
        const dst = back.tensors;
        assert.equal(dst.length, src.length);
        for (let i = 0; i < src.length; i++) {
          assert.equal(keyString(dst[i]), keyString(src[i]));
          assert.equal(dst[i].ref.name, src[i].ref.name);
          assert.deepEqual(dst[i].ref.shape, [...src[i].ref.shape]);
          assert.ok(
            sameBits(await dst[i].ref.read(), await src[i].ref.read()),
            `${src[i].ref.name} differs`,
          );
        }
        // The CPU reference forward gives identical logits on the checkpoint and the artifact.
        const ids = [1, 5, 9, 3, 0, 7];
        const run = async (model: typeof ir) => {
          const ref = await prepareReference(model);
          return model.spec.encoder ? forwardSeq2Seq(ref, ids, [0, ...ids]) : forward(ref, ids);
        };
        const want = await run(ir);
        const got = await run(back);
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
    const ir = await loadCheckpoint(FIRST);
    const dest = join(dir, "q.moeq");
    const bitsOf = (expert: number) => ([2, 3, 4, 8] as const)[expert % 4];
    await emitArtifact(ir, dest, {
      encode: (t) =>
        isExpertMatrixRole(t.role)
          ? { storage: "q", bits: bitsOf(t.expert), groupSize: 32, method: "rtn" }
          : { storage: t.role === "embed" ? "bf16" : "f16" },
    });
    const a = await openArtifact(dest);
    try {
      await a.verifyAll();
      let nq = 0;
      for (const placed of ir.tensors) {
        const rec = a.tensorAt(placed)!;
        assert.equal(rec.name, placed.ref.name);
        const w = await placed.ref.read();
        if (isExpertMatrixRole(placed.role)) {
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

Deno.test("emit: shakespeare-moe (BF16) stored in its native dtype round trips bit-identically", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ir = await loadCheckpoint(
      new URL("../../testdata/shakespeare-moe", import.meta.url).pathname,
    );
    const dest = join(dir, "s.moeq");
    const t0 = performance.now();
    const written = await emitArtifact(ir, dest, {
      encode: (t) => ({
        storage: t.ref.dtype === "BF16" ? "bf16" : t.ref.dtype === "F16" ? "f16" : "f32",
      }),
    });
    const ms = performance.now() - t0;
    const a = await openArtifact(dest);
    try {
      await a.verifyAll();
      console.log(
        `shakespeare-moe: ${a.tensors.length} tensors, ${written.bytes} bytes, emitted in ${
          ms.toFixed(0)
        } ms`,
      );
      const back = await artifactToIR(a);
      const src = ir.tensors;
      const dst = back.tensors;
      for (let i = 0; i < src.length; i++) {
        assert.equal(dst[i].ref.dtype, src[i].ref.dtype);
        assert.ok(sameBits(await dst[i].ref.read(), await src[i].ref.read()), src[i].ref.name);
      }
    } finally {
      a.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("emit: report function, lazy GPTQ Hessian and value callbacks", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ir = await loadCheckpoint(FIRST);
    const dest = join(dir, "g.moeq");
    const seen = { values: 0, quantized: 0, hessians: 0, reportCalls: 0 };
    let maxErr = 0;
    const experts = moeLayers(ir).flatMap((l) => l.experts);
    await emitArtifact(ir, dest, {
      encode: (t) => {
        if (!isExpertMatrixRole(t.role)) return { storage: "f32" };
        const cols = t.ref.shape[1];
        return {
          storage: "q",
          bits: 4,
          groupSize: 32,
          method: "gptq",
          hessian: () => {
            seen.hessians++;
            const h = new Float64Array(cols * cols);
            for (let i = 0; i < cols; i++) h[i * cols + i] = 1 + i / cols;
            return Promise.resolve(h);
          },
        };
      },
      experts: () => {
        seen.reportCalls++;
        return experts.map((e) => ({
          stack: e.stack,
          layer: e.layer,
          expert: e.index,
          bits: 4,
          bytes: 0,
          rank: e.index,
          relError: seen.reportCalls > 1 ? maxErr : 0,
          scores: { lambda: e.index / 10 },
        }));
      },
      onValues: () => void seen.values++,
      onQuantized: (_p, original, deq) => {
        seen.quantized++;
        for (let i = 0; i < original.length; i++) {
          maxErr = Math.max(maxErr, Math.abs(original[i] - deq[i]));
        }
      },
    });
    const a = await openArtifact(dest);
    try {
      assert.equal(a.headerOffset, PREAMBLE_SIZE, "report function sized the header exactly");
      assert.equal(seen.reportCalls, 2);
      assert.equal(seen.values, ir.tensors.length);
      assert.equal(seen.quantized, experts.length * 3);
      assert.equal(seen.hessians, experts.length * 3);
      assert.ok(maxErr > 0);
      assert.equal(a.experts.length, experts.length);
      assert.equal(a.experts[0].relError, maxErr, "the rows stored are the final ones");
      assert.equal(a.tensors.find((t) => t.quant)!.quant!.quantizer, "gptq");
    } finally {
      a.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("emit: an f32 synthetic IR is byte for byte the format layer's in-memory artifact", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const spec of [TINY_MODEL, MIXTRAL_LIKE, SWITCH_LIKE]) {
      const dest = join(dir, `${spec.family}.moeq`);
      await emitArtifact(syntheticIR(spec), dest);
      assert.deepEqual(await Deno.readFile(dest), buildArtifact(spec), spec.family);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("emit: the IR must hold exactly the described tensors; nothing is written otherwise", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const dest = join(dir, "bad.moeq");
    const cases: [string, (ir: ReturnType<typeof syntheticIR>) => void, RegExp][] = [
      ["missing", (ir) => ir.tensors.splice(3, 1), /implies layer 0 attn_k, which the IR lacks/],
      [
        "duplicate",
        (ir) => ir.tensors.push({ ...ir.tensors[3] }),
        /layer 0 attn_k appears twice in the IR/,
      ],
      [
        "extra",
        (ir) => ir.tensors.push({ ...ir.tensors[3], role: "attn_sinks" }),
        /layer 0 attn_sinks is not part of the model description/,
      ],
      [
        "shape",
        (
          ir,
        ) => (ir.tensors[3] = { ...ir.tensors[3], ref: { ...ir.tensors[3].ref, shape: [16, 16] } }),
        /layer 0 attn_k \(decoder\/0\/-1\/attn_k\) is \[16,16\], the description implies \[16,32\]/,
      ],
      [
        "spec",
        (ir) => (ir.spec = { ...ir.spec, vocabSize: 0 }),
        /synthetic \(model description\): model\.vocabSize is 0/,
      ],
    ];
    for (const [what, edit, pattern] of cases) {
      const ir = syntheticIR(TINY_MODEL);
      edit(ir);
      await assert.rejects(() => emitArtifact(ir, dest), (e: unknown) => {
        assert.ok(e instanceof InputError, `${what}: ${e}`);
        assert.match(e.message, pattern, what);
        return true;
      });
      assert.deepEqual([...Deno.readDirSync(dir)], [], `${what}: nothing written`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
