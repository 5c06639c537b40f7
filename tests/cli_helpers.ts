/**
 * Helpers for tests that run `cli.ts` as a subprocess, the way users do.
 *
 * @module
 */

/** What a CLI run produced. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Options of {@link runCli}. */
export interface RunCliOptions {
  /** Working directory of the subprocess. */
  cwd?: string;
  /** Extra `deno run` flags placed before cli.ts (e.g. `--preload=fault.ts`). */
  denoArgs?: string[];
  /**
   * Run under `ulimit -f` (POSIX sh: 512-byte blocks; this many bytes, rounded up) with SIGXFSZ
   * ignored, so writes past the limit fail with EFBIG the way they fail on a full disk.
   */
  fileSizeLimitBytes?: number;
}

/** Runs `deno run -A cli.ts ...args` and captures its output. */
export async function runCli(args: string[], opts: RunCliOptions = {}): Promise<CliResult> {
  const deno = ["run", "-A", ...(opts.denoArgs ?? []), CLI, ...args];
  const limited = opts.fileSizeLimitBytes !== undefined;
  const out = await new Deno.Command(limited ? "/bin/sh" : Deno.execPath(), {
    args: limited
      ? [
        "-c",
        `trap '' XFSZ; ulimit -f ${Math.ceil(opts.fileSizeLimitBytes! / 512)}; exec "$0" "$@"`,
        Deno.execPath(),
        ...deno,
      ]
      : deno,
    cwd: opts.cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** True when stderr is exactly one "moeq: ..." line without a stack trace. */
export function isOneLineError(stderr: string): boolean {
  const lines = stderr.trim().split("\n");
  return lines.length === 1 && lines[0].startsWith("moeq: ") && !/\n\s+at /.test(stderr);
}
