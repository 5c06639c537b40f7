import assert from "node:assert/strict";
import { generate, GENERATED_NAME } from "./gen.ts";

async function hasFlatc(): Promise<boolean> {
  try {
    const r = await new Deno.Command("flatc", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return r.success;
  } catch {
    return false;
  }
}

const flatcPresent = await hasFlatc();
if (!flatcPresent) console.warn("schemas/generated_test.ts: flatc not installed, skipping check");

Deno.test({
  name: "schemas/generated is up to date with artifact.fbs (flatc + gen.ts)",
  ignore: !flatcPresent,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const fresh = await Deno.readTextFile(await generate(dir));
      const committed = await Deno.readTextFile(
        new URL(`./generated/${GENERATED_NAME}`, import.meta.url),
      );
      assert.ok(
        fresh === committed,
        "schemas/generated/artifact_generated.ts is stale: run `deno run -A schemas/gen.ts`",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
