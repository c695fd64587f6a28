/** The engine under load: batching many streams, aborts freeing sequences, Pro/ priority in the queue. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

let kiln: KilnProcess;
let client: OpenAI;

before(async () => {
  const file = await ensureTinyModel({ neverEnd: true });
  const config = await writeConfig({
    models: [
      { id: 'tiny', file, parallel: 4, queue_depth: 32, context_size: 1024 },
      { id: 'Pro/tiny', file },
    ],
  });
  kiln = await startKiln(['--config', config]);
  client = new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey: 'none', maxRetries: 0 });
});

after(async () => kiln?.stop());

async function stream(model: string, content: string, maxTokens: number) {
  const chunks = await client.chat.completions.create({
    model,
    messages: [{ role: 'user', content }],
    max_tokens: maxTokens,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage: OpenAI.CompletionUsage | undefined;
  let finish: string | null | undefined;
  for await (const chunk of chunks) {
    text += chunk.choices[0]?.delta.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
    if (chunk.choices.length === 0) usage = chunk.usage ?? undefined;
  }
  return { text, usage, finish };
}

test('16 concurrent streams on 4 sequences all complete with correct usage', async () => {
  const results = await Promise.all(Array.from({ length: 16 }, (_, i) => stream('tiny', `stream number ${i}`, 24)));
  for (const result of results) {
    assert.equal(result.finish, 'length');
    assert.equal(result.usage?.completion_tokens, 24);
    assert.ok(result.usage!.prompt_tokens > 0);
    assert.equal(result.usage!.total_tokens, result.usage!.prompt_tokens + 24);
    assert.ok(result.text.length > 0);
  }
});

test('aborting 12 streams mid-generation leaves every sequence free: the next requests answer promptly', async () => {
  await Promise.all(
    Array.from({ length: 12 }, async (_, i) => {
      const controller = new AbortController();
      const chunks = await client.chat.completions.create(
        { model: 'tiny', messages: [{ role: 'user', content: `abort me ${i}` }], max_tokens: 900, stream: true },
        { signal: controller.signal },
      );
      let seen = 0;
      try {
        for await (const _chunk of chunks) if (++seen === 3) controller.abort();
      } catch (error) {
        assert.ok(controller.signal.aborted, `unexpected error: ${error}`);
      }
    }),
  );
  const started = Date.now();
  // As many requests as there are sequences: each must be admitted at once, not queued behind a leaked one.
  const results = await Promise.all(Array.from({ length: 4 }, (_, i) => stream('tiny', `after the aborts ${i}`, 8)));
  for (const result of results) assert.equal(result.usage?.completion_tokens, 8);
  assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`);
});

test('Pro/ requests wait ahead of free requests for the same model', async () => {
  // Fill all 4 sequences, then queue a free request and, after it, a Pro one.
  const busy = Array.from({ length: 4 }, (_, i) => stream('tiny', `busy ${i}`, 300));
  await new Promise((resolve) => setTimeout(resolve, 200));
  const admitted: string[] = [];
  const post = (model: string) =>
    fetch(`${kiln.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'who goes first' }], max_tokens: 4, stream: true }),
    }).then(async (response) => {
      admitted.push(model); // headers arrive when the request got a sequence
      await response.text();
    });
  const free = post('tiny');
  await new Promise((resolve) => setTimeout(resolve, 100));
  const pro = post('Pro/tiny');
  await Promise.all([free, pro, ...busy]);
  assert.deepEqual(admitted, ['Pro/tiny', 'tiny']);
});
