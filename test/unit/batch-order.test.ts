/**
 * The batching strategy: every generation step (short item) goes in whole; prompts are prefilled one after another in
 * queue order (short ones grouped up to 64 tokens); a prompt longer than the room left continues next time; the
 * batch is laid out in sequence-id order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BatchItem, LlamaContext, Token } from 'node-llama-cpp';
import { sequenceOrderedStrategy } from '../../src/engines/llama/batch-order.js';

/** Queued decodes as node-llama-cpp lists them: `[sequenceId, token count]` in queue order. */
function plan(queue: Array<[number, number]>, size = 512) {
  const items: BatchItem[] = queue.map(([, count]) => ({ tokens: Array.from({ length: count }, (_, i) => i as Token), logits: [], evaluationPriority: 5 }));
  const context = { _queuedDecodes: queue.map(([sequenceId]) => ({ sequenceId })) } as unknown as LlamaContext;
  const strategy = sequenceOrderedStrategy(() => context);
  const chosen = strategy({ items, size });
  return chosen.map((entry) => [queue[items.indexOf(entry.item)]![0], entry.processAmount]);
}

test('generation steps all go in; of three queued prompts only the first is prefilled', () => {
  // Sequence 5's prompt was queued first, then 2 and 7; sequences 0, 1 and 3 are generating.
  assert.deepEqual(plan([[5, 75], [1, 1], [2, 80], [0, 1], [7, 70], [3, 1]]), [[0, 1], [1, 1], [3, 1], [5, 75]]);
});

test('prompts shorter than 64 tokens are grouped until the decode holds 64 prompt tokens', () => {
  assert.deepEqual(plan([[4, 20], [6, 30], [2, 40], [1, 50]]), [[2, 40], [4, 20], [6, 30]]);
});

test('short items (injected tokens, the rest of a cached prompt) always go in whole', () => {
  assert.deepEqual(plan([[3, 100], [1, 16], [0, 1]]), [[0, 1], [1, 16], [3, 100]]);
});

test('a prompt longer than the room left is cut to it and continues in the next decode', () => {
  assert.deepEqual(plan([[2, 2000], [0, 1], [1, 1]], 512), [[0, 1], [1, 1], [2, 510]]);
});

test('without the queue (an unexpected node-llama-cpp) the choice is kept, in queue order', () => {
  const items: BatchItem[] = [{ tokens: [1 as Token], logits: [], evaluationPriority: 5 }, { tokens: Array(70).fill(1) as Token[], logits: [], evaluationPriority: 5 }];
  const chosen = sequenceOrderedStrategy(() => undefined)({ items, size: 512 });
  assert.deepEqual(chosen.map((entry) => entry.processAmount), [1, 70]);
});
