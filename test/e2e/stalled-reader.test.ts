/**
 * A client that stops reading must not slow the others, and its sequence must come free once its request is aborted
 * (stall or request timeout, client gone) even though nothing reads its generation any more. In-process, on the real
 * engine: the HTTP side of a stall (timeouts, destroying the socket) has its own tests.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { EngineEvent } from '../../src/core/engine.js';
import { normalizeChatRequest } from '../../src/core/normalize-request.js';
import { LlamaEngine } from '../../src/engines/llama/llama-engine.js';
import { READ_AHEAD_EVENTS } from '../../src/engines/llama/llama-run.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';

let engine: LlamaEngine;

before(async () => {
  const file = await ensureTinyModel({ neverEnd: true });
  // A lockstep that would wait a minute for a member: were the stalled reader still a member, the other stream would
  // crawl at a token a minute (before this was fixed, every step waited 100 ms for it).
  engine = await LlamaEngine.load({ file, parallel: 2, contextSize: 2048, lockstepWaitMs: 60_000 });
});

after(async () => engine?.close());

const request = (maxTokens: number, n = 1) =>
  normalizeChatRequest({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: maxTokens, n, seed: 1 }, { maxChoices: 8 });

async function drainTokens(events: AsyncGenerator<EngineEvent, void, undefined>): Promise<number> {
  let tokens = 0;
  for await (const event of events) if (event.type === 'text') tokens += event.tokens;
  return tokens;
}

test('a stalled reader is taken out of the lockstep: the other stream runs at its own pace, and the stalled sequence is freed on abort', async () => {
  const stalledAbort = new AbortController();
  const stalledRun = await engine.start(request(1500), stalledAbort.signal);
  const stalled = stalledRun.choice(0);
  await stalled.next(); // generating; from now on nobody reads it

  const started = performance.now();
  const readerRun = await engine.start(request(400), new AbortController().signal);
  const tokens = await drainTokens(readerRun.choice(0));
  const seconds = (performance.now() - started) / 1000;
  assert.equal(tokens, 400);
  assert.ok(seconds < 50, `400 tokens beside a stalled reader took ${seconds.toFixed(1)} s`);

  // The stalled choice ran ahead at most its read-ahead, then paused (it did not generate its 1,500 tokens).
  stalledAbort.abort(new Error('stall timeout'));
  // Its sequence comes free without anyone reading: a request needing both sequences gets them.
  const both = await engine.start(request(4, 2), new AbortController().signal);
  assert.deepEqual(await Promise.all([drainTokens(both.choice(0)), drainTokens(both.choice(1))]), [4, 4]);

  let buffered = 0;
  for await (const event of stalled) if (event.type === 'text') buffered += event.tokens;
  assert.ok(buffered <= READ_AHEAD_EVENTS + 1, `the stalled choice generated ${buffered} tokens ahead of its reader`);
});

test('a slow reader still gets every token, in order, and the end', async () => {
  const run = await engine.start(request(3 * READ_AHEAD_EVENTS), new AbortController().signal);
  let tokens = 0;
  let end: EngineEvent | undefined;
  for await (const event of run.choice(0)) {
    if (event.type === 'text') tokens += event.tokens;
    else end = event;
    if (tokens % 16 === 0) await new Promise((resolve) => setTimeout(resolve, 5)); // behind, pausing generation now and then
  }
  assert.equal(tokens, 3 * READ_AHEAD_EVENTS);
  assert.deepEqual(end, { type: 'end', reason: 'length' });
});
