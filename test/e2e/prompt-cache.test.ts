/**
 * The prompt cache's host tier through the real server (work in progress, issue 13): with more conversations than
 * sequences, a conversation's later turn starts from its state kept in the cache, reports the reused tokens as
 * cached, and — with an explicit seed — answers as a server without the cache does.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

const MODEL = 'tiny-cached';
let withCache: KilnProcess;
let without: KilnProcess;

before(async () => {
  const file = await ensureTinyModel();
  const model = { id: MODEL, file, parallel: 1, context_size: 2048, threads: 1, preload: true };
  [withCache, without] = await Promise.all([
    startKiln(['--config', await writeConfig({ models: [{ ...model, prompt_cache: { ram_mb: 64 } }] })]),
    startKiln(['--config', await writeConfig({ models: [model] })]),
  ]);
});

after(async () => {
  await Promise.all([withCache?.stop(), without?.stop()]);
});

interface Turn {
  content: string;
  usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } };
}

async function ask(server: KilnProcess, messages: Array<{ role: string; content: string }>): Promise<Turn> {
  const response = await fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages, max_tokens: 12, seed: 7, temperature: 0.8 }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  const body = (await response.json()) as { choices: Array<{ message: { content: string } }>; usage: Turn['usage'] };
  return { content: body.choices[0]!.message.content, usage: body.usage };
}

function document(topic: string): string {
  return Array.from({ length: 6 }, (_, line) => `${topic} note ${line}: the ${topic} facts are listed here in order.`).join('\n');
}

test('with one sequence and two conversations, a later turn starts from the cache and answers as without it', async () => {
  const conversations = ['apples', 'rivers'].map((topic) => [{ role: 'user', content: `${document(topic)}\nSummarise the ${topic}.` }]);
  // Turn 1 of each, alternating: the second takes the only sequence, so the first's state survives only in the cache.
  for (const messages of conversations) {
    const answer = await ask(withCache, messages);
    await ask(without, messages);
    messages.push({ role: 'assistant', content: answer.content }, { role: 'user', content: 'And what comes next?' });
  }
  const later = await ask(withCache, conversations[0]!);
  const cached = later.usage.prompt_tokens_details?.cached_tokens ?? 0;
  assert.ok(cached >= 200, `cached_tokens ${cached} of ${later.usage.prompt_tokens}`);
  console.log(`later turn: ${cached} of ${later.usage.prompt_tokens} prompt tokens from the cache`);
  const reference = await ask(without, conversations[0]!);
  assert.ok((reference.usage.prompt_tokens_details?.cached_tokens ?? 0) < 32, 'without the cache the turn is prefilled again');
  assert.equal(later.content, reference.content, 'the same seed answers the same with the cache');
});
