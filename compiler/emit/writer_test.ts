import assert from "node:assert/strict";
import { join } from "node:path";
import {
  encodePreamble,
  FORMAT_VERSION,
  openArtifact,
  PREAMBLE_SIZE,
  type TensorRecord,
} from "../../schemas/artifact.ts";
import { crc32c } from "../../schemas/crc32c.ts";
import { IoError, UsageError } from "../../schemas/errors.ts";
import { encodeHeader } from "../../schemas/header.ts";
import { ArtifactWriter, type WriterFile } from "./writer.ts";
import { headerOf, seededValues, TINY_CONFIG, writeTinyArtifact } from "./testing.ts";

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

Deno.test("writer: writes into <dest>.tmp-* in the destination directory, renames on finish", async () => {
  await withDir(async (dir) => {
    const dest = join(dir, "m.moeq");
    const w = await ArtifactWriter.create(dest);
    assert.equal(w.tempPath.startsWith(`${dest}.tmp-`), true);
    await w.addFloatTensor(
      { name: "embed", role: "embed", layer: -1, expert: -1, shape: [8, 32] },
      seededValues(256, 9),
      "f32",
    );
    assert.deepEqual(names(dir), [w.tempPath.slice(dir.length + 1)]);
    await w.finish({ config: TINY_CONFIG });
    assert.deepEqual(names(dir), ["m.moeq"]);
    const a = await openArtifact(dest);
    await a.verifyAll();
    assert.deepEqual(await a.readF32(a.tensors[0]), seededValues(256, 9));
    a.close();
  });
});

Deno.test("writer: abort() removes the temp file and leaves no destination", async () => {
  await withDir(async (dir) => {
    const w = await ArtifactWriter.create(join(dir, "m.moeq"));
    await w.addFloatTensor(
      { name: "x", role: "embed", layer: -1, expert: -1, shape: [4] },
      seededValues(4, 1),
      "f16",
    );
    await w.abort();
    assert.deepEqual(names(dir), []);
    await assert.rejects(
      () => w.finish({ config: TINY_CONFIG }),
      UsageError,
    );
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
    const meta = { name: "big", role: "embed", layer: -1, expert: -1, shape: [64, 64] };
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
    await w.addFloatTensor(
      { name: "embed", role: "embed", layer: -1, expert: -1, shape: [8, 32] },
      seededValues(256, 4),
      "bf16",
    );
    await w.finish({ config: TINY_CONFIG });
    const a = await openArtifact(dest);
    assert.ok(a.headerOffset > a.tensors[0].data!.offset, "header after the segment");
    assert.equal(a.headerOffset + a.headerLength, a.fileLength);
    await a.verifyAll();
    a.close();
  });
});

Deno.test("header: encoded size ignores segment values (placeholder sizing is exact)", async () => {
  await withDir(async (dir) => {
    const h = headerOf(await writeTinyArtifact(join(dir, "t.moeq")));
    const size = encodeHeader(h).length;
    for (const t of h.tensors) {
      for (const s of t.quant ? [t.quant.codes, t.quant.scales, t.quant.zeros] : [t.data!]) {
        s.offset = 0;
        s.length = 0;
        s.crc32c = 0;
      }
    }
    h.tokenizer.json = { offset: 0, length: 0, crc32c: 0 };
    h.summary = { ...h.summary, totalBytes: 0, expertBytes: 0, avgExpertBits: 0 };
    assert.equal(encodeHeader(h).length, size);
  });
});

Deno.test("writer: segment offsets beyond 4 GiB read back exactly (sparse file)", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "big.moeq");
    const values = seededValues(8 * 32, 11);
    const bytes = new Uint8Array(values.buffer);
    const offset = 2 ** 32 + 3 * 2 ** 28; // 4.75 GiB, 256-aligned
    const tensor: TensorRecord = {
      name: "embed",
      role: "embed",
      layer: -1,
      expert: -1,
      shape: [8, 32],
      storage: "f32",
      data: { offset, length: bytes.length, crc32c: crc32c(bytes) },
      quant: null,
    };
    const tensors = [tensor];
    const header = encodeHeader({
      generator: "test",
      config: TINY_CONFIG,
      tensors,
      experts: [],
      tokenizer: { json: null, chatTemplate: null },
      optionsJson: "{}",
      summary: {
        numTensors: 1,
        totalBytes: bytes.length,
        expertBytes: 0,
        expertParams: 0,
        avgExpertBits: 0,
        expertBitsPerWeight: 0,
      },
    });
    const fileLength = offset + bytes.length;
    const f = await Deno.open(path, { write: true, create: true });
    await f.write(encodePreamble({
      version: FORMAT_VERSION,
      headerOffset: PREAMBLE_SIZE,
      headerLength: header.length,
      fileLength,
      headerCrc32c: crc32c(header),
    }));
    await f.write(header);
    await f.seek(offset, Deno.SeekMode.Start);
    await f.write(bytes);
    f.close();
    const a = await openArtifact(path);
    try {
      assert.equal(a.fileLength, fileLength);
      assert.equal(a.tensors[0].data!.offset, offset);
      assert.deepEqual(await a.readF32(a.tensors[0]), values);
    } finally {
      a.close();
    }
  });
});
