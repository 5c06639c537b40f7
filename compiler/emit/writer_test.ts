import assert from "node:assert/strict";
import { join } from "node:path";
import { openArtifact } from "../../schemas/artifact.ts";
import { IoError, UsageError } from "../../schemas/errors.ts";
import { TINY_MODEL } from "../../schemas/example_specs.ts";
import { expectedTensors, keyString } from "../../schemas/tensors.ts";
import { ArtifactWriter, type WriterFile } from "./writer.ts";
import { seededValues } from "./testing.ts";

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

/** Writes every tensor of the tiny model as `storage` (tensor i seeded with i + 1). */
async function addTinyTensors(w: ArtifactWriter, storage: "f32" | "bf16" = "f32") {
  for (const [i, t] of expectedTensors(TINY_MODEL).entries()) {
    const meta = { name: keyString(t), ...t, shape: [...t.shape] };
    await w.addFloatTensor(meta, seededValues(t.shape.reduce((a, b) => a * b, 1), i + 1), storage);
  }
}
const embedMeta = {
  name: "embed",
  stack: "decoder" as const,
  role: "embed",
  layer: -1,
  expert: -1,
};

Deno.test("writer: writes into <dest>.tmp-* in the destination directory, renames on finish", async () => {
  await withDir(async (dir) => {
    const dest = join(dir, "m.moeq");
    const w = await ArtifactWriter.create(dest);
    assert.equal(w.tempPath.startsWith(`${dest}.tmp-`), true);
    await addTinyTensors(w);
    assert.deepEqual(names(dir), [w.tempPath.slice(dir.length + 1)]);
    await w.finish({ model: TINY_MODEL });
    assert.deepEqual(names(dir), ["m.moeq"]);
    const a = await openArtifact(dest);
    await a.verifyAll();
    assert.deepEqual(a.model, TINY_MODEL);
    assert.deepEqual(await a.readF32(a.tensors[0]), seededValues(256, 1));
    a.close();
  });
});

Deno.test("writer: abort() removes the temp file and leaves no destination", async () => {
  await withDir(async (dir) => {
    const w = await ArtifactWriter.create(join(dir, "m.moeq"));
    await w.addFloatTensor({ ...embedMeta, shape: [4] }, seededValues(4, 1), "f16");
    await w.abort();
    assert.deepEqual(names(dir), []);
    await assert.rejects(() => w.finish({ model: TINY_MODEL }), UsageError);
  });
});

Deno.test("writer: a failing write (disk full) is an IoError and removes the temp file", async () => {
  await withDir(async (dir) => {
    let budget = 2000; // bytes the "disk" accepts
    const wrapFile = (f: Deno.FsFile): WriterFile => ({
      write: (p) => {
        if ((budget -= p.length) < 0) {
          return Promise.reject(new Deno.errors.WriteZero("No space left on device (os error 28)"));
        }
        return f.write(p);
      },
      seek: (o, w) => f.seek(o, w),
      close: () => f.close(),
    });
    const w = await ArtifactWriter.create(join(dir, "m.moeq"), { wrapFile });
    const meta = { ...embedMeta, name: "big", shape: [64, 64] };
    await assert.rejects(
      () => w.addFloatTensor(meta, seededValues(64 * 64, 3), "f32"),
      (e: unknown) =>
        e instanceof IoError && /writing tensor big failed: No space left/.test(e.message),
    );
    assert.deepEqual(names(dir), []);
  });
});

Deno.test("writer: cannot create the temp file (missing directory) is an IoError", async () => {
  await assert.rejects(() => ArtifactWriter.create("/nonexistent-dir-moeq/m.moeq"), IoError);
});

Deno.test("writer: a header that outgrows its reservation is appended after the segments", async () => {
  await withDir(async (dir) => {
    const dest = join(dir, "m.moeq");
    const w = await ArtifactWriter.create(dest, { headerReserve: 16 });
    await addTinyTensors(w, "bf16");
    await w.finish({ model: TINY_MODEL });
    const a = await openArtifact(dest);
    assert.ok(a.headerOffset > a.tensors.at(-1)!.data!.offset, "header after the segments");
    assert.equal(a.headerOffset + a.headerLength, a.fileLength);
    await a.verifyAll();
    a.close();
  });
});
