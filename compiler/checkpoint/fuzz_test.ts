import assert from "node:assert/strict";
import { fuzzConfig, fuzzSafetensors, fuzzSeedFile, mutate } from "./fuzz.ts";
import { openSafetensors } from "./safetensors.ts";
import { seededRandom } from "./testing.ts";

Deno.test("fuzz seed file is valid and mutations are deterministic", async () => {
  const base = fuzzSeedFile();
  const path = await Deno.makeTempFile();
  await Deno.writeFile(path, base);
  const f = await openSafetensors(path);
  assert.equal(f.tensors.size, 6);
  await Deno.remove(path);
  const a = mutate(base, seededRandom(4)), b = mutate(base, seededRandom(4));
  assert.deepEqual(a, b);
});

Deno.test("fuzz: 2000 mutations of a valid file load or throw a MoeqError", async () => {
  const report = await fuzzSafetensors(2000, { seed: 20240601, caseTimeoutMs: 2000 });
  const rejected = Object.values(report.rejected).reduce((a, b) => a + b, 0);
  assert.equal(report.loaded + rejected, 2000);
  // The mutations must exercise both outcomes, or the fuzzer is not testing anything.
  assert.ok(report.loaded > 50, `only ${report.loaded} cases loaded`);
  assert.ok(rejected > 1000, `only ${rejected} cases rejected`);
  console.log(JSON.stringify(report));
});

Deno.test("fuzz: 4500 mutated config.json objects parse or throw a MoeqError", async () => {
  for (const name of ["hf-moe/mixtral-classic", "hf-moe/qwen2-moe", "hf-oracle-extra/olmoe-clip"]) {
    const url = new URL(`../../testdata/${name}/config.json`, import.meta.url);
    const base = JSON.parse(await Deno.readTextFile(url));
    const { parsed, rejected } = fuzzConfig(base, 1500, 3);
    assert.ok(parsed > 100 && rejected > 500, `parsed ${parsed}, rejected ${rejected}`);
  }
});
