/**
 * Owns a context's sequences. A request gets an idle sequence — the one whose cached tokens share the longest prefix
 * with its prompt when that saves real work, else the lowest free slot. The service's admission (service/admission.ts)
 * lets no more choices run than there are sequences, so a request rarely waits here: only for a sequence whose last
 * request is still letting go of it, in arrival order.
 */
import type { LlamaContextSequence, Token } from 'node-llama-cpp';

/** Prompt tokens a cache hit must save to be worth taking a sequence out of the packed low slots. */
const PREFIX_WORTH_MOVING = 128;

export interface Lease {
  sequence: LlamaContextSequence;
  /** The sequence's id in its context (sequences are created in id order). */
  slot: number;
  /** Prompt tokens already in this sequence's KV cache. */
  sharedPrefix: number;
  /** Leading tokens of the sequence's KV computed in whole aligned prefill chunks (llama-run.ts, usable). */
  exact: number;
}

interface Waiter {
  tokens: readonly Token[];
  count: number;
  resolve(leases: Lease[]): void;
}

export class SequencePool {
  private readonly idle: LlamaContextSequence[];
  private readonly slots = new Map<LlamaContextSequence, number>();
  private readonly exact = new Map<LlamaContextSequence, number>();
  private readonly waiters: Waiter[] = [];

  constructor(sequences: LlamaContextSequence[]) {
    this.idle = [...sequences];
    sequences.forEach((sequence, slot) => this.slots.set(sequence, slot));
  }

  get size(): number {
    return this.slots.size;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  get idleCount(): number {
    return this.idle.length;
  }

  /** Every sequence, in slot order, with its `exact` (Lease.exact): what closing the engine keeps. */
  sequences(): Array<{ sequence: LlamaContextSequence; exact: number }> {
    return [...this.slots.keys()].map((sequence) => ({ sequence, exact: this.exact.get(sequence) ?? 0 }));
  }

  /**
   * `count` sequences at once (one per choice of an `n > 1` request; count ≤ the pool's size), so that concurrent
   * multi-choice requests can never each hold part of what they need.
   */
  acquire(tokens: readonly Token[], signal: AbortSignal, count = 1): Promise<Lease[]> {
    signal.throwIfAborted();
    if (count > this.slots.size) throw new Error(`cannot lease ${count} of ${this.slots.size} sequences`);
    if (this.idle.length >= count && this.waiters.length === 0) return Promise.resolve(this.takeMany(tokens, count));
    return new Promise<Lease[]>((resolve, reject) => {
      const onAbort = () => {
        this.remove(waiter);
        reject(signal.reason);
      };
      const waiter: Waiter = {
        tokens,
        count,
        resolve: (leases) => {
          signal.removeEventListener('abort', onAbort);
          resolve(leases);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /** `exact`: see Lease.exact, for what the sequence holds now; unset when its KV did not change. */
  release(sequence: LlamaContextSequence, exact?: number): void {
    if (exact !== undefined) this.exact.set(sequence, exact);
    this.idle.push(sequence);
    // Strictly in queue order: a waiter needing several sequences is not overtaken by smaller ones.
    while (this.waiters.length > 0 && this.waiters[0]!.count <= this.idle.length) {
      const next = this.waiters.shift()!;
      next.resolve(this.takeMany(next.tokens, next.count));
    }
  }

  private takeMany(tokens: readonly Token[], count: number): Lease[] {
    return Array.from({ length: count }, () => this.take(tokens));
  }

  private remove(waiter: Waiter): void {
    const at = this.waiters.indexOf(waiter);
    if (at !== -1) this.waiters.splice(at, 1);
  }

  /**
   * Picks an idle sequence: the lowest slot, unless another one's cache saves at least PREFIX_WORTH_MOVING more
   * prompt tokens. Keeping busy sequences packed at the low slots matters because llama.cpp decodes a step as one
   * micro-batch only over consecutive sequence ids (see step-barrier.ts); a gap costs a forward pass per step.
   */
  private take(tokens: readonly Token[]): Lease {
    let lowest = 0;
    let best = 0;
    const shared = this.idle.map((sequence) => sequence.compareContextTokens(tokens as Token[]).firstDifferentIndex);
    this.idle.forEach((sequence, index) => {
      if (this.slots.get(sequence)! < this.slots.get(this.idle[lowest]!)!) lowest = index;
      if (shared[index]! > shared[best]!) best = index;
    });
    const chosen = shared[best]! - shared[lowest]! >= PREFIX_WORTH_MOVING ? best : lowest;
    const [sequence] = this.idle.splice(chosen, 1);
    return { sequence: sequence!, slot: this.slots.get(sequence!)!, sharedPrefix: shared[chosen]!, exact: this.exact.get(sequence!) ?? 0 };
  }
}
