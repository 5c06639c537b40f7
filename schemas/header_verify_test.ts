import assert from "node:assert/strict";
import { HEADER_IDENTIFIER, HEADER_ROOT, HEADER_SCHEMA } from "./header_verify.ts";

/** Parses tables/structs of a .fbs: name → field types in declaration (= field id) order. */
function parseFbs(text: string) {
  const src = text.replace(/\/\/.*$/gm, "");
  const tables: Record<string, string[]> = {};
  const structs: Record<string, string[]> = {};
  for (const m of src.matchAll(/\b(table|struct)\s+(\w+)\s*\{([^}]*)\}/g)) {
    const fields = m[3].split(";").map((f) => f.trim()).filter(Boolean)
      .map((f) => f.split(":")[1].split("=")[0].replace(/\(.*\)/, "").trim());
    (m[1] === "table" ? tables : structs)[m[2]] = fields;
  }
  const root = src.match(/root_type\s+(\w+)\s*;/)?.[1];
  const ident = src.match(/file_identifier\s+"(\w+)"\s*;/)?.[1];
  return { tables, structs, root, ident };
}

Deno.test("header_verify: HEADER_SCHEMA transcribes schemas/artifact.fbs exactly", async () => {
  const fbs = parseFbs(
    await Deno.readTextFile(new URL("../schemas/artifact.fbs", import.meta.url)),
  );
  assert.deepEqual(
    Object.fromEntries(Object.entries(HEADER_SCHEMA).map(([k, v]) => [k, [...v]])),
    fbs.tables,
  );
  assert.deepEqual(Object.keys(fbs.structs), ["Segment"]);
  assert.deepEqual(fbs.structs.Segment, ["ulong", "ulong", "uint"]); // 24 bytes, align 8
  assert.equal(fbs.root, HEADER_ROOT);
  assert.equal(fbs.ident, HEADER_IDENTIFIER);
});
