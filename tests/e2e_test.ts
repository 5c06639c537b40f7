/**
 * End to end through the CLI, the way a user runs it: compile the bundled Shakespeare MoE at 2.5
 * bits (paper allocator + step-0 init) → inspect → run and logits on WebGPU vs the float64 CPU
 * reference of the same artifact → eval on both → demo.
 *
 * Tolerances: logits agree within 1e-3 of the row's largest |logit| (WebGPU f32/f16 arithmetic
 * vs float64 on identical dequantized weights); greedy ids agree except where the CPU logits
 * have a near-tie (within that tolerance) at the first divergence; held-out bits/byte agree
 * within 1e-4 absolute.
 *
 * @module
 */

import assert from "node:assert/strict";
import { runCli } from "./cli_helpers.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const MODEL = new URL("../testdata/shakespeare-moe", import.meta.url).pathname;
const INIT = `${MODEL}/init`;
const HELDOUT = `${MODEL}/heldout.txt`;
/** "ROMEO:\n" as byte ids. */
const PROMPT = Array.from(new TextEncoder().encode("ROMEO:\n"));
const LOGIT_TOL = 1e-3;
const EVAL_TOL = 1e-4;

/** Parses a command's stdout as JSON after asserting it exited 0. */
function okJson(r: { code: number; stdout: string; stderr: string }, what: string) {
  assert.equal(r.code, 0, `${what} failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Largest |a - b| relative to the largest |b| of the row. */
function relRowError(a: number[], b: number[]): number {
  assert.equal(a.length, b.length);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

Deno.test("e2e: compile → inspect → run/logits/eval (webgpu vs cpu) → demo", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "moeq_e2e_" });
  const art = `${dir}/shakespeare-2.5.moeq`;
  try {
    await t.step("compile at 2.5 bits, paper allocator, with init", async () => {
      const r = okJson(
        await runCli([
          "compile",
          MODEL,
          "--init",
          INIT,
          "--expert-bits",
          "2.5",
          "--allocator",
          "paper",
          "-o",
          art,
          "--json",
        ]),
        "compile",
      );
      assert.equal(r.path, art);
      assert.equal(r.bytes, (await Deno.stat(art)).size);
      assert.equal(r.allocation.method, "paper");
      assert.equal(r.allocation.achievedAverage, 2.5);
    });

    await t.step("inspect --json: 32 expert rows, summary average 2.5", async () => {
      const r = okJson(await runCli(["inspect", art, "--json"]), "inspect");
      assert.equal(r.experts.length, 32); // 4 layers × 8 experts
      const seen = new Set<string>();
      let bitSum = 0;
      for (const e of r.experts) {
        assert.equal(e.stack, "decoder"); // a decoder-only model: every MoE layer is the decoder's
        seen.add(`${e.layer}/${e.expert}`);
        assert.ok(e.bits === 2 || e.bits === 3, `expert ${e.layer}/${e.expert}: ${e.bits} bits`);
        assert.ok(e.bytes > 0);
        assert.ok(Number.isFinite(e.scores.lambda) && Number.isFinite(e.scores.maxVar));
        assert.ok(e.rel_error > 0 && e.rel_error < 1, `rel_error ${e.rel_error}`);
        bitSum += e.bits;
      }
      assert.equal(seen.size, 32);
      assert.equal(bitSum / 32, 2.5);
      assert.equal(r.summary.avgExpertBits, 2.5);
      // Fewer bits must mean fewer bytes for the same shape.
      const two = r.experts.find((e: { bits: number }) => e.bits === 2);
      const three = r.experts.find((e: { bits: number }) => e.bits === 3);
      assert.ok(two.bytes < three.bytes);
    });

    await t.step("logits: webgpu matches the cpu reference of the artifact", async () => {
      const ids = PROMPT.join(",");
      const gpu = okJson(await runCli(["logits", art, "--ids", ids, "--json"]), "logits webgpu");
      const cpu = okJson(
        await runCli(["logits", art, "--ids", ids, "--json", "--device", "cpu"]),
        "logits cpu",
      );
      assert.equal(gpu.logits.length, PROMPT.length);
      assert.equal(cpu.logits.length, PROMPT.length);
      for (let p = 0; p < PROMPT.length; p++) {
        assert.equal(gpu.logits[p].length, 256);
        const err = relRowError(gpu.logits[p], cpu.logits[p]);
        assert.ok(err <= LOGIT_TOL, `position ${p}: relative logit error ${err}`);
      }
    });

    await t.step("run --json greedy: 16 ids, same as --device cpu", async () => {
      const args = ["run", art, "--ids", PROMPT.join(","), "--max-tokens", "16", "--json"];
      const gpu = okJson(await runCli(args), "run webgpu");
      const cpu = okJson(await runCli([...args, "--device", "cpu"]), "run cpu");
      assert.equal(gpu.ids.length, 16);
      assert.equal(cpu.ids.length, 16);
      assert.equal(gpu.text, new TextDecoder().decode(Uint8Array.from(gpu.ids)));
      const k = gpu.ids.findIndex((id: number, i: number) => id !== cpu.ids[i]);
      if (k >= 0) {
        // Allowed only on a near-tie of the reference logits at the first divergence.
        const prefix = [...PROMPT, ...cpu.ids.slice(0, k)].join(",");
        const ref = okJson(
          await runCli(["logits", art, "--ids", prefix, "--json", "--device", "cpu"]),
          "logits at divergence",
        );
        const row: number[] = ref.logits[ref.logits.length - 1];
        const scale = Math.max(...row.map(Math.abs));
        const gap = row[cpu.ids[k]] - row[gpu.ids[k]];
        assert.ok(
          gap <= LOGIT_TOL * scale,
          `ids diverge at ${k} (${gpu.ids[k]} vs ${cpu.ids[k]}) with logit gap ${gap}`,
        );
      }
    });

    await t.step("eval --json: webgpu bits/byte matches cpu within 1e-4", async () => {
      // 129 bytes = one full 128-byte window (WebGPU eval on lavapipe is slow; 1024 bytes take
      // over a minute on 2 loaded cores).
      const args = ["eval", art, "--text", HELDOUT, "--max-bytes", "129", "--json"];
      const gpu = okJson(await runCli(args), "eval webgpu");
      const cpu = okJson(await runCli([...args, "--device", "cpu"]), "eval cpu");
      assert.equal(gpu.tokens, 128);
      assert.equal(cpu.tokens, 128);
      assert.equal(gpu.device, "webgpu");
      assert.equal(cpu.device, "cpu");
      assert.ok(gpu.bits_per_byte > 0 && gpu.bits_per_byte < 8, `bpb ${gpu.bits_per_byte}`);
      const d = Math.abs(gpu.bits_per_byte - cpu.bits_per_byte);
      assert.ok(d <= EVAL_TOL, `bits/byte differ by ${d}`);
    });

    await t.step("demo compiles and streams text", async () => {
      const out = `${dir}/demo.moeq`;
      const r = await runCli([
        "demo",
        "--max-tokens",
        "24",
        "--seed",
        "3",
        "--out",
        out,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /allocator paper: average expert bits 2\.5000/);
      assert.match(r.stdout, /compile time: \d+\.\d\d s/);
      assert.match(r.stdout, /\nROMEO:/);
      assert.match(r.stdout, /24 tokens, \d+\.\d tokens\/s on (webgpu|cpu)/);
      // The generated text between the prompt and the closing rule is 24 bytes of output.
      const body = r.stdout.slice(r.stdout.indexOf("\nROMEO:") + 7, r.stdout.lastIndexOf("\n---"));
      assert.ok(body.length >= 20, `generated text: ${JSON.stringify(body)}`);
      assert.ok((await Deno.stat(out)).size > 0);
    });

    await t.step({
      name: "demo falls back to the cpu with a one-line note when there is no adapter",
      // Deno's wgpu backend selection: asking for Metal on Linux leaves no adapter.
      ignore: Deno.build.os !== "linux",
      fn: async () => {
        const cmd = new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", CLI, "demo", "--max-tokens", "8", "--out", `${dir}/nogpu.moeq`],
          stdout: "piped",
          stderr: "piped",
          env: {
            NO_COLOR: "1",
            XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp",
            DENO_WEBGPU_BACKEND: "metal",
          },
        });
        const r = await cmd.output();
        const stdout = new TextDecoder().decode(r.stdout);
        const stderr = new TextDecoder().decode(r.stderr);
        assert.equal(r.code, 0, stderr);
        const notes = stderr.trim().split("\n");
        assert.equal(notes.length, 1, stderr);
        assert.match(notes[0], /^moeq: note: no WebGPU adapter found; using --device cpu/);
        assert.match(stdout, /8 tokens, \d+\.\d tokens\/s on cpu/);
      },
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
