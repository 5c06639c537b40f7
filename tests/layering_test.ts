/**
 * The layering rule, checked on the import graph: `compiler/` never imports `runtime/`,
 * `runtime/` never imports `compiler/` (tests included), and `schemas/` (the format layer both
 * read) imports neither; none of the three imports `bench/` (the dev-only comparison with
 * llama.cpp). `cli/`, `tests/`, `bench/` and `examples/` may import anything.
 *
 * Every .ts file of the repository is scanned for its static imports and re-exports
 * (`import … from`, `import "…"`, `export … from`, type-only ones included) and its dynamic
 * `import("…")` calls with a literal specifier; relative specifiers are resolved against the
 * file. A small lexer skips comments, strings, template literals and regular expressions, so an
 * import spelled inside a comment or a string does not count.
 *
 * @module
 */

import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";

/** A token of the lexer: a word, a string literal (its value), or one punctuation character. */
type Token = { kind: "word"; text: string } | { kind: "string"; text: string } | {
  kind: "punct";
  text: string;
};

/** Words after which a `/` starts a regular expression rather than a division. */
const REGEX_AFTER_WORDS = new Set([
  "return",
  "typeof",
  "instanceof",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "case",
  "do",
  "else",
  "yield",
  "await",
]);

/**
 * Splits TypeScript source into words, string literals and punctuation, dropping comments,
 * template literal text (their `${…}` expressions are lexed) and regular expression literals.
 */
export function lex(src: string): Token[] {
  const out: Token[] = [];
  /** Brace depth at which each open template literal's `${` expression started. */
  const templates: number[] = [];
  let depth = 0;
  let i = 0;
  const n = src.length;
  const regexAllowed = () => {
    const prev = out.at(-1);
    if (!prev) return true;
    if (prev.kind === "word") return REGEX_AFTER_WORDS.has(prev.text);
    if (prev.kind === "string") return false;
    return !")]}".includes(prev.text);
  };
  /** Skips template text from i (just after ` or }) to the closing ` or an opening ${. */
  const templateText = () => {
    while (i < n) {
      const c = src[i];
      if (c === "\\") i += 2;
      else if (c === "`") {
        i++;
        out.push({ kind: "string", text: "" }); // a template is a value, like a string
        return;
      } else if (c === "$" && src[i + 1] === "{") {
        i += 2;
        templates.push(depth);
        depth++;
        return;
      } else i++;
    }
  };
  while (i < n) {
    const c = src[i];
    if (c === "/" && src[i + 1] === "/") {
      while (i < n && src[i] !== "\n") i++;
    } else if (c === "/" && src[i + 1] === "*") {
      const end = src.indexOf("*/", i + 2);
      i = end < 0 ? n : end + 2;
    } else if (c === '"' || c === "'") {
      let text = "";
      i++;
      while (i < n && src[i] !== c && src[i] !== "\n") {
        if (src[i] === "\\") {
          text += src[i + 1];
          i += 2;
        } else text += src[i++];
      }
      i++;
      out.push({ kind: "string", text });
    } else if (c === "`") {
      i++;
      templateText();
    } else if (c === "/" && regexAllowed()) {
      let inClass = false;
      i++;
      while (i < n && src[i] !== "\n") {
        const r = src[i];
        if (r === "\\") i += 2;
        else if (r === "[") (inClass = true), i++;
        else if (r === "]") (inClass = false), i++;
        else if (r === "/" && !inClass) break;
        else i++;
      }
      i++;
      while (i < n && /[a-z]/i.test(src[i])) i++; // flags
      out.push({ kind: "string", text: "" }); // a regex is a value
    } else if (/[A-Za-z_$0-9]/.test(c)) {
      let j = i;
      while (j < n && /[A-Za-z_$0-9]/.test(src[j])) j++;
      out.push({ kind: "word", text: src.slice(i, j) });
      i = j;
    } else if (/\s/.test(c)) {
      i++;
    } else {
      if (c === "{") depth++;
      if (c === "}") {
        depth--;
        if (templates.length && templates.at(-1) === depth) {
          templates.pop();
          i++;
          templateText();
          continue;
        }
      }
      out.push({ kind: "punct", text: c });
      i++;
    }
  }
  return out;
}

/** One import of a file: its specifier and whether it is a dynamic `import()`. */
export interface ImportRef {
  specifier: string;
  dynamic: boolean;
}

/** Words that may appear in an import/export clause before `from`. */
function isClauseToken(t: Token): boolean {
  return t.kind === "word" || (t.kind === "punct" && "{},*".includes(t.text));
}

/** The static and dynamic import specifiers of a TypeScript source. */
export function importsOf(src: string): ImportRef[] {
  const t = lex(src);
  const out: ImportRef[] = [];
  const isPunct = (k: number, text: string) => t[k]?.kind === "punct" && t[k].text === text;
  /** From k, skips a clause (words, braces, commas, *) and returns the `from` string, if any. */
  const fromAfter = (k: number): string | null => {
    while (k < t.length && isClauseToken(t[k])) {
      if (t[k].kind === "word" && t[k].text === "from" && t[k + 1]?.kind === "string") {
        return t[k + 1].text;
      }
      k++;
    }
    return null;
  };
  for (let k = 0; k < t.length; k++) {
    const tok = t[k];
    if (tok.kind !== "word") continue;
    const prevDot = isPunct(k - 1, ".");
    if (tok.text === "import" && !prevDot) {
      if (isPunct(k + 1, "(")) {
        if (t[k + 2]?.kind === "string" && (isPunct(k + 3, ")") || isPunct(k + 3, ","))) {
          out.push({ specifier: t[k + 2].text, dynamic: true });
        }
      } else if (t[k + 1]?.kind === "string") {
        out.push({ specifier: t[k + 1].text, dynamic: false });
      } else if (!isPunct(k + 1, ".")) {
        const spec = fromAfter(k + 1);
        if (spec !== null) out.push({ specifier: spec, dynamic: false });
      }
    } else if (tok.text === "export" && !prevDot) {
      const next = t[k + 1];
      const clause = isPunct(k + 1, "{") || isPunct(k + 1, "*") ||
        (next?.kind === "word" && next.text === "type" &&
          (isPunct(k + 2, "{") || isPunct(k + 2, "*")));
      if (clause) {
        const spec = fromAfter(k + 1);
        if (spec !== null) out.push({ specifier: spec, dynamic: false });
      }
    }
  }
  return out;
}

/** The rule: which top-level folders a folder must not import. */
const FORBIDDEN: Record<string, readonly string[]> = {
  compiler: ["runtime", "bench"],
  runtime: ["compiler", "bench"],
  schemas: ["compiler", "runtime", "bench"],
};

const ROOT = new URL("..", import.meta.url).pathname;

/** Every .ts file under `dir` (repository-relative), skipping dot folders and testdata. */
function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(join(ROOT, dir))) {
    const path = dir ? `${dir}/${e.name}` : e.name;
    if (e.isDirectory) {
      if (e.name.startsWith(".") || e.name === "node_modules" || e.name === "testdata") continue;
      out.push(...tsFiles(path));
    } else if (e.isFile && e.name.endsWith(".ts")) out.push(path);
  }
  return out;
}

/** The violations of the layering rule in the repository, one line each. */
function violations(): string[] {
  const out: string[] = [];
  for (const file of tsFiles("")) {
    const top = file.split("/")[0];
    const forbidden = FORBIDDEN[top];
    if (!forbidden) continue;
    for (const imp of importsOf(Deno.readTextFileSync(join(ROOT, file)))) {
      if (!imp.specifier.startsWith(".")) continue; // npm:, node:, bare: outside the repository
      const target = relative(ROOT, normalize(join(ROOT, dirname(file), imp.specifier)));
      const targetTop = target.split("/")[0];
      if (forbidden.includes(targetTop)) {
        out.push(
          `${file} ${imp.dynamic ? "dynamically imports" : "imports"} ${
            JSON.stringify(imp.specifier)
          } (${targetTop}/ is off limits to ${top}/)`,
        );
      }
    }
  }
  return out;
}

Deno.test("layering: the import scanner finds static, type, re-export and dynamic imports only", () => {
  const src = `
    import a from "./a.ts";
    import type { B } from "../b.ts";
    import * as c from "./c.ts";
    import {
      d1,
      type d2, // import { x } from "./in-comment.ts";
    } from "./d.ts";
    import "./side.ts";
    export { e } from "./e.ts";
    export * from "./f.ts";
    export type { G } from "./g.ts";
    export const notAnImport = Array.from([1]);
    /* import z from "./block-comment.ts"; */
    const s = 'import y from "./in-string.ts"';
    const t = \`import w from "./in-template.ts" \${await import("./in-template-expr.ts")}\`;
    const r = /import v from "\\.\\/in-regex.ts"/;
    const m = import.meta.url;
    const lazy = await import("./lazy.ts");
    const computed = await import(name);
    function f() { return import("./returned.ts"); }
    const q = x / 2; const k = "import u from './after-division.ts'";
  `;
  assert.deepEqual(importsOf(src), [
    { specifier: "./a.ts", dynamic: false },
    { specifier: "../b.ts", dynamic: false },
    { specifier: "./c.ts", dynamic: false },
    { specifier: "./d.ts", dynamic: false },
    { specifier: "./side.ts", dynamic: false },
    { specifier: "./e.ts", dynamic: false },
    { specifier: "./f.ts", dynamic: false },
    { specifier: "./g.ts", dynamic: false },
    { specifier: "./in-template-expr.ts", dynamic: true },
    { specifier: "./lazy.ts", dynamic: true },
    { specifier: "./returned.ts", dynamic: true },
  ]);
});

Deno.test("layering: compiler/ ↛ runtime/, runtime/ ↛ compiler/, schemas/ ↛ either, none ↛ bench/", () => {
  const found = violations();
  assert.ok(found.length === 0, `${found.length} layering violations:\n${found.join("\n")}`);
});
