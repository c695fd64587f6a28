/**
 * Admission to one served model, whatever engine serves it: at most the engine's capacity in choices runs at once;
 * more requests wait in a bounded queue (`Pro/` ids first, FIFO within a tier) and are turned away at once with 429
 * when the queue is full, or with 503 when their wait exceeds the deadline — never left hanging.
 */
import { KilnError } from '../errors/catalog.js';

export interface QueueSettings {
  /** Requests that may wait; more are refused with 429. */
  depth: number;
  /** Longest wait before 503. */
  waitMs: number;
}

/** Held while a request runs; release it exactly once, when the request's engine work has ended. */
export interface Permit {
  release(): void;
}

interface Waiter {
  units: number;
  priority: number;
  grant(): void;
}

export class Admission {
  private running = 0;
  private readonly waiters: Waiter[] = [];

  /** `capacity` is asked on every decision: an engine's capacity may change (an upstream ejected or readmitted). */
  constructor(
    private readonly capacity: () => number,
    private readonly queue: QueueSettings,
  ) {}

  get waiting(): number {
    return this.waiters.length;
  }

  get runningUnits(): number {
    return this.running;
  }

  /**
   * Waits for `units` (a request's `n`) of the capacity. A request larger than the whole capacity runs alone once
   * nothing else does, so that it is not refused by a capacity that shrank for a while.
   */
  acquire(units: number, signal: AbortSignal, priority = 0): Promise<Permit> {
    signal.throwIfAborted();
    if (this.waiters.length === 0 && this.fits(units)) return Promise.resolve(this.grantNow(units));
    if (this.waiters.length >= this.queue.depth) {
      return Promise.reject(new KilnError('queueFull', { retryAfterSeconds: 1 }));
    }
    return new Promise<Permit>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.remove(waiter);
        cleanup();
        reject(new KilnError('modelOverloaded', { retryAfterSeconds: Math.max(1, Math.ceil(this.queue.waitMs / 1000)) }));
      }, this.queue.waitMs);
      const onAbort = () => {
        this.remove(waiter);
        cleanup();
        reject(signal.reason);
      };
      const cleanup = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = {
        units,
        priority,
        grant: () => {
          cleanup();
          resolve(this.grantNow(units));
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      // Higher priority first; FIFO within a priority.
      const at = this.waiters.findIndex((other) => other.priority < priority);
      this.waiters.splice(at === -1 ? this.waiters.length : at, 0, waiter);
    });
  }

  /** Capacity may have grown (an upstream readmitted): let waiters in. */
  poke(): void {
    // Strictly in queue order: a request needing several units is not overtaken by smaller ones.
    while (this.waiters.length > 0 && this.fits(this.waiters[0]!.units)) this.waiters.shift()!.grant();
  }

  private fits(units: number): boolean {
    return this.running + units <= this.capacity() || (this.running === 0 && this.capacity() > 0);
  }

  private grantNow(units: number): Permit {
    this.running += units;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.running -= units;
        this.poke();
      },
    };
  }

  private remove(waiter: Waiter): void {
    const at = this.waiters.indexOf(waiter);
    if (at !== -1) this.waiters.splice(at, 1);
  }
}
