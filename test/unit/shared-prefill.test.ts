/** Who waits for whose prefill, and when the leader's state is kept for them (src/engines/llama/shared-prefill.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { LlamaContextSequence, Token } from 'node-llama-cpp';
import type { PromptCache } from '../../src/engines/llama/prompt-cache/prompt-cache.js';
import { PrefillBoard } from '../../src/engines/llama/shared-prefill.js';

function board(): { board: PrefillBoard; kept: Array<{ exact: number }> } {
  const kept: Array<{ exact: number }> = [];
  const cache = {
    minTokens: 32,
    keep: async (_sequence: LlamaContextSequence, exact = 0) => {
      kept.push({ exact });
      return true;
    },
  } as unknown as PromptCache;
  return { board: new PrefillBoard(cache), kept };
}

const tokens = (from: number, count: number): Token[] => Array.from({ length: count }, (_, i) => (from + i) as Token);
const sequence = {} as LlamaContextSequence;
const settled = async (promise: Promise<unknown>) => {
  let done = false;
  void promise.then(() => (done = true));
  await new Promise((resolve) => setImmediate(resolve));
  return done;
};

test('a prompt sharing most of itself with one being prefilled waits until that part is computed and kept', async () => {
  const { board: prefills, kept } = board();
  const system = tokens(0, 1000);
  const leader = prefills.begin([...system, ...tokens(5000, 20)], sequence);
  const following = prefills.follow([...system, ...tokens(6000, 20)], 0, new AbortController().signal);
  assert.equal(await settled(following), false);
  await leader.advance(768, 768);
  assert.equal(await settled(following), false, 'not before its 1,000 tokens are in');
  assert.equal(kept.length, 0);
  await leader.advance(1020, 768);
  assert.equal(await following, 1000);
  assert.deepEqual(kept, [{ exact: 768 }]);
  await leader.end(1020, 768);
  assert.equal(kept.length, 1, 'kept once: nobody else waits');
});

test('sharing only a template-sized beginning, or less than the prompt cache holds already, is not waited for', async () => {
  const { board: prefills } = board();
  prefills.begin([...tokens(0, 40), ...tokens(1000, 900)], sequence);
  const signal = new AbortController().signal;
  assert.equal(await prefills.follow([...tokens(0, 40), ...tokens(3000, 900)], 0, signal), 0);
  assert.equal(await prefills.follow([...tokens(0, 40), ...tokens(1000, 600), 7 as Token], 620, signal), 0);
});

test('a leader that fails releases its followers without keeping anything; an aborted follower stops waiting', async () => {
  const { board: prefills, kept } = board();
  const prompt = tokens(0, 500);
  const leader = prefills.begin(prompt, sequence);
  const following = prefills.follow([...prompt, 1 as Token], 0, new AbortController().signal);
  const aborter = new AbortController();
  const aborted = prefills.follow([...prompt, 2 as Token], 0, aborter.signal);
  aborter.abort(new Error('client gone'));
  await assert.rejects(aborted, /client gone/);
  await leader.end();
  assert.equal(await following, 500);
  assert.equal(kept.length, 0);
  // Ended: no longer on the board.
  assert.equal(await prefills.follow([...prompt, 3 as Token], 0, new AbortController().signal), 0);
});
