/**
 * node-llama-cpp batching strategy: which queued tokens go into the next decode, laid out in sequence-id order.
 *
 * node-llama-cpp keeps one KV stream per sequence, and llama.cpp then builds a micro-batch only from consecutive,
 * increasing sequence ids (`split_equal(..., sequential=true)` in llama-kv-cache.cpp): 8 generating sequences queued
 * as 3,0,5,1,… become several forward passes of 1–3 tokens instead of one of 8 — measured 250 ms per step instead of
 * 110 ms on a Qwen2.5-0.5B-shaped model. Sorting here makes the order independent of when each sequence queued.
 *
 * The strategy only sees the batch items, so the ids are read from the context's queue, which lists the same decodes
 * in the same order (an internal field of the pinned node-llama-cpp 3.21.1; without it the order is left as is).
 */
import type { BatchItem, CustomBatchingPrioritizationStrategy, LlamaContext, PrioritizedBatchItem, Token } from 'node-llama-cpp';

type QueueView = { _queuedDecodes?: ReadonlyArray<{ sequenceId?: number }> };

export function sequenceOrderedStrategy(context: () => LlamaContext | undefined): CustomBatchingPrioritizationStrategy {
  return ({ items, size }) => {
    const queue = (context() as unknown as QueueView | undefined)?._queuedDecodes;
    const chosen = shareTokens(items, size);
    if (queue === undefined || queue.length !== items.length || !queue.every((decode) => typeof decode.sequenceId === 'number')) return chosen;
    const ids = new Map(items.map((item, index) => [item, queue[index]!.sequenceId!]));
    return chosen.sort((a, b) => ids.get(a.item)! - ids.get(b.item)!);
  };
}

/** Items this short (a generation step, injected tokens, the rest of a cached prompt) always go in whole. */
const SMALL_ITEM = 16;
/** Prompts are added to a decode until it holds at least this many prompt tokens. */
const PROMPT_TOKENS_PER_DECODE = 64;
/** A prompt passed over this many times goes first: shorter prompts cannot hold a long one back for ever. */
const MAX_TIMES_PASSED_OVER = 8;

/** How often each waiting prompt (by its token array, which node-llama-cpp keeps until it decodes part of it) was passed over. */
const passedOver = new WeakMap<readonly Token[], number>();

/**
 * Every generating sequence advances one token per decode; prompts are prefilled one after another rather than all
 * together, shortest first. Prompt processing is compute-bound (about 4 ms per token on the 2-core VM whether 75 or
 * 600 tokens are decoded at once), so in a burst of 8 prompts decoded together all 8 get their first token after the
 * whole prefill, while decoded one by one the first has its token after an eighth of it: the median time to first
 * token halves and the last one is unchanged (measured: pairs gave a higher median and no more tokens/s). Shortest
 * first, a question sent while a long document is being prefilled is answered without waiting for it; a prompt passed
 * over 8 times goes first. Prompts shorter than 64 tokens (cache hits) are grouped so that no decode is spent on a few
 * tokens; a prompt longer than the batch continues in the next decode.
 */
function shareTokens(items: readonly BatchItem[], size: number): PrioritizedBatchItem[] {
  const result: PrioritizedBatchItem[] = [];
  let left = size;
  for (const item of items) {
    if (left === 0) break;
    if (item.tokens.length > SMALL_ITEM) continue;
    const amount = Math.min(item.tokens.length, left);
    result.push({ item, processAmount: amount });
    left -= amount;
  }
  const prompts = items
    .filter((item) => item.tokens.length > SMALL_ITEM)
    .map((item, order) => ({ item, order, starving: (passedOver.get(item.tokens) ?? 0) >= MAX_TIMES_PASSED_OVER }))
    .sort((a, b) => Number(b.starving) - Number(a.starving) || a.item.tokens.length - b.item.tokens.length || a.order - b.order);
  let promptTokens = 0;
  for (const { item } of prompts) {
    if (left === 0 || promptTokens >= PROMPT_TOKENS_PER_DECODE) {
      passedOver.set(item.tokens, (passedOver.get(item.tokens) ?? 0) + 1);
      continue;
    }
    const amount = Math.min(item.tokens.length, left);
    result.push({ item, processAmount: amount });
    left -= amount;
    promptTokens += amount;
  }
  return result;
}
