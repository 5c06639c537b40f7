import assert from "node:assert/strict";
import { UsageError } from "../schemas/errors.ts";
import {
  parseDenseStorage,
  parseExpertStorage,
  parseWidthList,
  parseWidths,
} from "./compile_flags.ts";

Deno.test("parseExpertStorage: averages in [2, 8] and float types; others name the flag", () => {
  assert.deepEqual(parseExpertStorage("2.5"), { kind: "bits", average: 2.5 });
  assert.deepEqual(parseExpertStorage("8"), { kind: "bits", average: 8 });
  assert.deepEqual(parseExpertStorage("bf16"), { kind: "float", storage: "bf16" });
  for (const bad of ["1.5", "9", "", "q4", "NaN"]) {
    assert.throws(() => parseExpertStorage(bad), UsageError, bad);
  }
  assert.throws(() => parseExpertStorage("x"), /--expert-bits must be a number in \[2, 8\]/);
});

Deno.test("parseDenseStorage: supported widths and float types only", () => {
  assert.deepEqual(parseDenseStorage("4"), { kind: "bits", bits: 4 });
  assert.deepEqual(parseDenseStorage("f32"), { kind: "float", storage: "f32" });
  for (const bad of ["5", "2.5", "", "f8"]) assert.throws(() => parseDenseStorage(bad), UsageError);
  assert.throws(() => parseDenseStorage("6", "--dense"), /--dense must be 2, 3, 4, 8/);
});

Deno.test("parseWidths: every value a supported width", () => {
  assert.deepEqual(parseWidths([2, 3, 8]), [2, 3, 8]);
  assert.throws(() => parseWidths([2, 5]), /--widths: 5 is not one of 2,3,4,mxfp4,8/);
  assert.deepEqual(parseWidthList("3, mxfp4", "--widths"), [3, 4.25]);
  assert.throws(() => parseWidthList("3,mxfp8", "--widths"), /--widths: "mxfp8" is not a width/);
  assert.deepEqual(parseExpertStorage("mxfp4"), { kind: "bits", average: 4.25 });
});
