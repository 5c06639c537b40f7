/**
 * A progress bar on stderr: redrawn in place on a terminal, silent otherwise or with --quiet.
 *
 * @module
 */

/** Reports (phase, done, total); `done()` ends the line. */
export interface Progress {
  update(phase: string, done: number, total: number): void;
  done(): void;
}

/** A progress bar that draws only when stderr is a terminal and `quiet` is false. */
export function progressBar(quiet: boolean): Progress {
  const active = !quiet && Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  let last = 0;
  let drawn = false;
  return {
    update(phase, done, total) {
      if (!active) return;
      const now = performance.now();
      if (done < total && now - last < 100) return;
      last = now;
      const width = 30;
      const filled = total > 0 ? Math.round((done / total) * width) : 0;
      const bar = "#".repeat(filled) + "-".repeat(width - filled);
      Deno.stderr.writeSync(enc.encode(`\r${phase.padEnd(12)} [${bar}] ${done}/${total}   `));
      drawn = true;
    },
    done() {
      if (active && drawn) Deno.stderr.writeSync(enc.encode("\n"));
      drawn = false;
    },
  };
}
