/**
 * The prompt cache's host tier through the real server: with more conversations than sequences, a conversation's
 * later turn starts from its state kept in the cache, reports the reused tokens as cached, and — with an explicit
 * seed — answers as a server without the cache does; requests arriving together with one long system prompt prefill
 * it once.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

const MODEL = 'tiny-cached';
let withCache: KilnProcess;
let without: KilnProcess;
let burst: KilnProcess;

before(async () => {
  const file = await ensureTinyModel();
  const model = { id: MODEL, file, parallel: 1, context_size: 2048, threads: 1, preload: true };
  [withCache, without, burst] = await Promise.all([
    startKiln(['--config', await writeConfig({ models: [{ ...model, prompt_cache: { ram_mb: 64 } }] })]),
    startKiln(['--config', await writeConfig({ models: [{ ...model, prompt_cache: { ram_mb: 0 } }] })]),
    // The default cache (server-wide setting absent): on.
    startKiln(['--config', await writeConfig({ models: [{ ...model, parallel: 4 }] })]),
  ]);
});

after(async () => {
  await Promise.all([withCache?.stop(), without?.stop(), burst?.stop()]);
});

interface Turn {
  content: string;
  usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } };
}

async function ask(server: KilnProcess, messages: Array<{ role: string; content: string }>, extra: object = { seed: 7 }): Promise<Turn> {
  const response = await fetch(`${server.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages, max_tokens: 12, temperature: 0.8, ...extra }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  const body = (await response.json()) as { choices: Array<{ message: { content: string } }>; usage: Turn['usage'] };
  return { content: body.choices[0]!.message.content, usage: body.usage };
}

const cachedOf = (turn: Turn) => turn.usage.prompt_tokens_details?.cached_tokens ?? 0;

function document(topic: string, lines: number): string {
  return Array.from({ length: lines }, (_, line) => `${topic} note ${line}: the ${topic} facts are listed here in order.`).join('\n');
}

test('with one sequence and three conversations, later turns start from the cache and answer as without it (seeded)', async () => {
  // Documents of different lengths (the tiny model's vocabulary is bytes: ~50 tokens a line), so the cached prefixes
  // end at different places relative to the aligned prefill pieces.
  const conversations = [['apples', 6], ['rivers', 13], ['stones', 22]].map(([topic, lines]) => [
    { role: 'user', content: `${document(topic as string, lines as number)}\nSummarise the ${topic}.` },
  ]);
  // Turn 1 of each, in turn: each takes the only sequence, so the others' states survive only in the cache.
  for (const messages of conversations) {
    const answer = await ask(withCache, messages);
    assert.equal((await ask(without, messages)).content, answer.content, 'first turns agree');
    messages.push({ role: 'assistant', content: answer.content }, { role: 'user', content: 'And what comes next?' });
  }
  for (const messages of conversations) {
    const later = await ask(withCache, messages);
    const reference = await ask(without, messages);
    console.log(`later turn: ${cachedOf(later)} of ${later.usage.prompt_tokens} prompt tokens from the cache`);
    // A seeded request reuses whole aligned pieces only (256 tokens each).
    assert.ok(cachedOf(later) >= 256 * Math.floor((later.usage.prompt_tokens - 60) / 256), `cached_tokens ${cachedOf(later)} of ${later.usage.prompt_tokens}`);
    assert.ok(cachedOf(later) > 0);
    assert.ok(cachedOf(reference) < 32, 'without the cache the turn is prefilled again');
    assert.equal(later.content, reference.content, 'the same seed answers the same with the cache');
  }
});

test('without a seed, a later turn reuses all of its cached history', async () => {
  const conversations = ['clouds', 'forests'].map((topic) => [{ role: 'user', content: `${document(topic, 8)}\nSummarise the ${topic}.` }]);
  for (const messages of conversations) {
    const answer = await ask(withCache, messages, {});
    messages.push({ role: 'assistant', content: answer.content }, { role: 'user', content: 'Go on.' });
  }
  const later = await ask(withCache, conversations[0]!, {});
  // All but the new turn and the re-rendered end of the answer.
  assert.ok(cachedOf(later) >= later.usage.prompt_tokens - 60, `cached_tokens ${cachedOf(later)} of ${later.usage.prompt_tokens}`);
});

test('requests arriving together with one long system prompt prefill it once; the others start from its state', async () => {
  const system = `Round ${Date.now()}.\n${document('policy', 14)}`;
  const questions = ['What is first?', 'What is last?', 'Who wrote it?', 'Why so long?'];
  const answers = await Promise.all(
    questions.map((question) =>
      ask(burst, [{ role: 'system', content: system }, { role: 'user', content: question }], { max_tokens: 4 }),
    ),
  );
  const cached = answers.map(cachedOf).sort((a, b) => a - b);
  console.log(`burst: cached tokens ${cached.join(', ')} of ~${answers[0]!.usage.prompt_tokens}`);
  // One computes the system prompt; the three others restore it (all of it but the differing question).
  assert.ok(cached[0]! < 32, `the first prefilled it: ${cached.join(', ')}`);
  for (const tokens of cached.slice(1)) assert.ok(tokens >= answers[0]!.usage.prompt_tokens - 40, `cached ${cached.join(', ')}`);
});
