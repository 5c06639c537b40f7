/**
 * The slots of an engine: `parallel` sequence slots handed out first come, first served. A call
 * that finds none free waits in line; aborting its signal while it waits takes it out of the
 * line.
 *
 * @module
 */

import { UsageError } from "../../schemas/errors.ts";

interface Waiter {
  resolve(slot: number | null): void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** A FIFO pool of slot numbers 0 .. size − 1. */
export class SlotPool {
  readonly #free: number[];
  readonly #line: Waiter[] = [];
  #closed = false;

  constructor(readonly size: number) {
    this.#free = Array.from({ length: size }, (_, i) => i);
  }

  /** Slots in use. */
  get active(): number {
    return this.size - this.#free.length;
  }

  /** Calls waiting for a slot. */
  get queued(): number {
    return this.#line.length;
  }

  /**
   * A free slot, at once or after the calls already waiting; null when `signal` aborts first.
   * Throws UsageError once the pool is closed.
   */
  acquire(signal?: AbortSignal): Promise<number | null> {
    if (this.#closed) return Promise.reject(new UsageError("the engine was disposed"));
    if (signal?.aborted) return Promise.resolve(null);
    if (this.#line.length === 0 && this.#free.length > 0) {
      return Promise.resolve(this.#free.shift()!);
    }
    return new Promise((resolve) => {
      const w: Waiter = { resolve, signal };
      if (signal) {
        w.onAbort = () => {
          const i = this.#line.indexOf(w);
          if (i >= 0) this.#line.splice(i, 1);
          resolve(null);
        };
        signal.addEventListener("abort", w.onAbort, { once: true });
      }
      this.#line.push(w);
    });
  }

  /** Returns a slot: the first waiting call gets it. */
  release(slot: number): void {
    const w = this.#line.shift();
    if (!w) {
      this.#free.push(slot);
      this.#free.sort((a, b) => a - b);
      return;
    }
    if (w.onAbort) w.signal!.removeEventListener("abort", w.onAbort);
    w.resolve(slot);
  }

  /** Refuses later calls (waiting calls get no slot: null). */
  close(): void {
    this.#closed = true;
    for (const w of this.#line.splice(0)) {
      if (w.onAbort) w.signal!.removeEventListener("abort", w.onAbort);
      w.resolve(null);
    }
  }
}
