/**
 * Prompts being prefilled right now, so that a request arriving meanwhile whose prompt shares a long beginning with
 * one of them waits for that beginning to be computed once and then starts from its state (through the prompt cache),
 * instead of prefilling the same tokens alongside it. This is the agent case — one system prompt and tool list in many
 * concurrent requests — and the `n > 1` case, whose choices share a whole prompt.
 *
 * On a CPU prefill is compute-bound: eight sequences prefilling the same 1,000 tokens together take about eight times
 * as long as one does, and a restore costs about 1/1000 of a prefill (docs/prompt-cache.md). So a follower that waits
 * for the leader and restores gets its first token sooner than one that prefills alongside it, and so does the leader.
 *
 * A follower waits outside the lockstep (step-barrier.ts) and holds only its idle sequence.
 */
import type { LlamaContextSequence, Token } from 'node-llama-cpp';
import type { PromptCache } from './prompt-cache/prompt-cache.js';

interface Waiter {
  /** Prompt tokens the follower wants computed. */
  need: number;
  resolve(): void;
}

/** One prompt being prefilled: its run reports progress, and keeps its state in the cache for followers. */
export class Prefill {
  private waiters: Waiter[] = [];
  private ended = false;

  constructor(
    readonly prompt: readonly Token[],
    private readonly sequence: LlamaContextSequence,
    private readonly board: PrefillBoard,
  ) {}

  /**
   * After each piece of the prompt: keeps the sequence's state once the followers' part is computed. `exact` is what
   * the cache records with the state (llama-run.ts, usable).
   */
  async advance(position: number, exact: number): Promise<void> {
    const ready = this.waiters.filter((waiter) => waiter.need <= position);
    if (ready.length === 0) return;
    this.waiters = this.waiters.filter((waiter) => waiter.need > position);
    await this.board.cache.keep(this.sequence, exact);
    for (const waiter of ready) waiter.resolve();
  }

  /**
   * The prompt is all in (`position`), or the run failed (undefined): followers still waiting take what is there —
   * the run keeps it first — or nothing.
   */
  async end(position?: number, exact = 0): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.board.remove(this);
    const waiting = this.waiters;
    this.waiters = [];
    if (position !== undefined && waiting.length > 0) await this.board.cache.keep(this.sequence, exact).catch(() => false);
    for (const waiter of waiting) waiter.resolve();
  }

  wait(need: number, signal: AbortSignal): Promise<void> {
    if (this.ended) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.waiters = this.waiters.filter((other) => other !== waiter);
        reject(signal.reason);
      };
      const waiter: Waiter = {
        need,
        resolve: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      // Even when the part is computed already, it is kept at the leader's next piece or end: the leader owns its
      // sequence, and a save between two of its own calls cannot race them.
      this.waiters.push(waiter);
    });
  }
}

export class PrefillBoard {
  private readonly running = new Set<Prefill>();

  constructor(readonly cache: PromptCache) {}

  /** Registers a prompt about to be prefilled into `sequence`; its run must end it. */
  begin(prompt: readonly Token[], sequence: LlamaContextSequence): Prefill {
    const prefill = new Prefill(prompt, sequence, this);
    this.running.add(prefill);
    return prefill;
  }

  remove(prefill: Prefill): void {
    this.running.delete(prefill);
  }

  /**
   * Waits, when a prompt being prefilled shares with `prompt` most of what the follower lacks (it has `have` tokens
   * already), until those are computed and kept; resolves at once when none does. Returns the tokens waited for (0:
   * none). Sharing little is not worth waiting for: every chat template starts with the same few dozen tokens, and a
   * request that waited for another's first piece of prompt to get them would start up to a piece's time later.
   */
  async follow(prompt: readonly Token[], have: number, signal: AbortSignal): Promise<number> {
    let leader: Prefill | undefined;
    let shared = Math.max(have + this.cache.minTokens, have + Math.ceil((prompt.length - have) / 2)) - 1;
    for (const prefill of this.running) {
      const length = sharedLength(prefill.prompt, prompt);
      if (length > shared) [leader, shared] = [prefill, length];
    }
    if (leader === undefined) return 0;
    await leader.wait(shared, signal);
    return shared;
  }
}

/** Leading tokens two prompts share, short of the follower's last (always evaluated again for its logits). */
function sharedLength(leader: readonly Token[], follower: readonly Token[]): number {
  const limit = Math.min(leader.length, follower.length - 1);
  let length = 0;
  while (length < limit && leader[length] === follower[length]) length++;
  return length;
}
