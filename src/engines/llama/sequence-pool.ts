/**
 * Owns a context's sequences. A request gets the idle sequence whose cached tokens share the longest prefix with its
 * prompt (ties: least recently used); when none is idle it waits in a bounded queue, and is turned away at once
 * (429) when the queue is full or with 503 when its wait exceeds the deadline — never left hanging.
 */
import type { LlamaContextSequence, Token } from 'node-llama-cpp';
import { KilnError } from '../../errors/catalog.js';

export interface QueueSettings {
  /** Requests that may wait for a sequence; more are refused with 429. */
  depth: number;
  /** Longest wait for a sequence before 503. */
  waitMs: number;
}

export interface Lease {
  sequence: LlamaContextSequence;
  /** Prompt tokens already in this sequence's KV cache. */
  sharedPrefix: number;
}

interface Waiter {
  tokens: readonly Token[];
  priority: number;
  resolve(lease: Lease): void;
  reject(error: unknown): void;
}

export class SequencePool {
  private readonly idle: LlamaContextSequence[];
  private readonly lastUsed = new Map<LlamaContextSequence, number>();
  private readonly waiters: Waiter[] = [];
  private useCounter = 0;

  constructor(
    sequences: LlamaContextSequence[],
    private readonly queue: QueueSettings,
  ) {
    this.idle = [...sequences];
  }

  get waiting(): number {
    return this.waiters.length;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  acquire(tokens: readonly Token[], signal: AbortSignal, priority = 0): Promise<Lease> {
    signal.throwIfAborted();
    if (this.idle.length > 0 && this.waiters.length === 0) return Promise.resolve(this.take(tokens));
    if (this.waiters.length >= this.queue.depth) {
      return Promise.reject(new KilnError('queueFull', { retryAfterSeconds: 1 }));
    }
    return new Promise<Lease>((resolve, reject) => {
      const waiter: Waiter = {
        tokens,
        priority,
        resolve: (lease) => {
          cleanup();
          resolve(lease);
        },
        reject: (error) => {
          cleanup();
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.remove(waiter);
        waiter.reject(new KilnError('modelOverloaded', { retryAfterSeconds: Math.max(1, Math.ceil(this.queue.waitMs / 1000)) }));
      }, this.queue.waitMs);
      const onAbort = () => {
        this.remove(waiter);
        waiter.reject(signal.reason);
      };
      const cleanup = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      // Higher priority first; FIFO within a priority.
      const at = this.waiters.findIndex((other) => other.priority < priority);
      this.waiters.splice(at === -1 ? this.waiters.length : at, 0, waiter);
    });
  }

  release(sequence: LlamaContextSequence): void {
    this.lastUsed.set(sequence, ++this.useCounter);
    this.idle.push(sequence);
    const next = this.waiters.shift();
    if (next !== undefined) next.resolve(this.take(next.tokens));
  }

  private remove(waiter: Waiter): void {
    const at = this.waiters.indexOf(waiter);
    if (at !== -1) this.waiters.splice(at, 1);
  }

  private take(tokens: readonly Token[]): Lease {
    let bestIndex = 0;
    let bestShared = -1;
    let bestUse = Infinity;
    this.idle.forEach((sequence, index) => {
      const shared = sequence.compareContextTokens(tokens as Token[]).firstDifferentIndex;
      const use = this.lastUsed.get(sequence) ?? 0;
      if (shared > bestShared || (shared === bestShared && use < bestUse)) {
        bestIndex = index;
        bestShared = shared;
        bestUse = use;
      }
    });
    const [sequence] = this.idle.splice(bestIndex, 1);
    return { sequence: sequence!, sharedPrefix: Math.max(0, bestShared) };
  }
}
