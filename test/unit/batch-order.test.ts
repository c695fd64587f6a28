/**
 * The batching strategy: every generation step (short item) goes in whole; prompts are prefilled one after another,
 * shortest first (short ones grouped up to 64 tokens), and one passed over 8 times goes first; a prompt longer than the
 * room left continues next time; the batch is laid out in sequence-id order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BatchItem, LlamaContext, Token } from 'node-llama-cpp';
import { sequenceOrderedStrategy } from '../../src/engines/llama/batch-order.js';

/** Queued decodes as node-llama-cpp lists them: `[sequenceId, token count]` in queue order. */
function queueOf(queue: Array<[number, number]>) {
  const items: BatchItem[] = queue.map(([, count]) => ({ tokens: Array.from({ length: count }, (_, i) => i as Token), logits: [], evaluationPriority: 5 }));
  const context = { _queuedDecodes: queue.map(([sequenceId]) => ({ sequenceId })) } as unknown as LlamaContext;
  const strategy = sequenceOrderedStrategy(() => context);
  /** One decision: `[sequenceId, tokens taken]` in batch order. */
  return (size = 512) => strategy({ items, size }).map((entry) => [queue[items.indexOf(entry.item)]![0], entry.processAmount]);
}

const plan = (queue: Array<[number, number]>, size = 512) => queueOf(queue)(size);

test('generation steps all go in; of three queued prompts only the shortest is prefilled', () => {
  // Prompts of sequences 5, 2 and 7 are queued; sequences 0, 1 and 3 are generating.
  assert.deepEqual(plan([[5, 75], [1, 1], [2, 80], [0, 1], [7, 70], [3, 1]]), [[0, 1], [1, 1], [3, 1], [7, 70]]);
  // Equal lengths: queue order.
  assert.deepEqual(plan([[5, 75], [2, 75], [7, 75]]), [[5, 75]]);
});

test('a question sent while a long document is prefilled goes first; the document is not held back for ever', () => {
  const next = queueOf([[0, 2000], [1, 80]]);
  assert.deepEqual(next(), [[1, 80]]);
  // The same queue again and again (as if those prompts never finished): after 8 times passed over, the document goes.
  const decisions = Array.from({ length: 9 }, () => next()[0]![0]);
  assert.deepEqual(decisions.slice(0, 7), [1, 1, 1, 1, 1, 1, 1]);
  assert.equal(decisions[7], 0, `the document goes first once passed over 8 times: ${decisions}`);
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
