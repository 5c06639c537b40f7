// `cli.ts logits <checkpoint> --device cpu --json` prints the float64 logits the reference
// computed: within 1e-9 of transformers' strict float64 logits (rows rounded to float32 would be
// ~1e-7 off).

import assert from "node:assert/strict";
import { runCli } from "./cli_helpers.ts";

const TESTDATA = new URL("../testdata/", import.meta.url).pathname;

for (const dir of ["hf-oracle/qwen2_moe-a", "hf-oracle-extra/olmoe-clip"]) {
  Deno.test(`logits --device cpu --json on ${dir}: the float64 values, unrounded`, async () => {
    const ref = JSON.parse(await Deno.readTextFile(`${TESTDATA}${dir}/reference.json`));
    const ids: number[] = ref.input_ids;
    const out = await runCli([
      "logits",
      `${TESTDATA}${dir}`,
      "--ids",
      ids.join(","),
      "--device",
      "cpu",
      "--json",
    ]);
    assert.equal(out.code, 0, out.stderr);
    const rows: number[][] = JSON.parse(out.stdout).logits;
    assert.equal(rows.length, ids.length);
    const want: number[] = ref.hf_logits_f64strict;
    const V = rows[0].length;
    let err = 0;
    let rounded = 0;
    rows.forEach((row, t) =>
      row.forEach((x, i) => {
        err = Math.max(err, Math.abs(x - want[t * V + i]));
        rounded = Math.max(rounded, Math.abs(Math.fround(x) - want[t * V + i]));
      })
    );
    console.log(
      `  ${dir}: max |Δ| ${err.toExponential(3)} (as float32: ${rounded.toExponential(3)})`,
    );
    assert.ok(err < 1e-9, `max error ${err}`);
    assert.ok(rounded > 1e-9, "float32 rounding would pass too: the test could not fail");
  });
}
