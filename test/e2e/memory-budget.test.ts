/**
 * The memory budget on the real server (issue 11, point 2): with room for one of two models, alternating requests to
 * both succeed and the log shows the swaps; a model larger than the budget gets 503 naming it and its need.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { LlamaEngine } from '../../src/engines/llama/llama-engine.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

let kiln: KilnProcess;
let estimates: number[];

before(async () => {
  const small = { embeddingLength: 256, layers: 8, feedForwardLength: 1024 };
  const a = await ensureTinyModel({ ...small, name: 'budget-a' });
  const b = await ensureTinyModel({ ...small, name: 'budget-b', seed: 2 });
  const big = await ensureTinyModel({ embeddingLength: 512, layers: 12, feedForwardLength: 2048, name: 'budget-big' });
  const settings = (file: string) => ({ file, parallel: 2, contextSize: 512 });
  estimates = await Promise.all([a, b, big].map(async (file) => (await LlamaEngine.estimateMemory(settings(file))).ram));
  // Room for one of the small models, not two; the big one never fits.
  const budgetMb = Math.ceil((estimates[0]! * 1.5) / 2 ** 20);
  assert.ok(estimates[2]! > budgetMb * 2 ** 20, 'the big model must exceed the budget');
  const model = (id: string, file: string) => ({ id, file, parallel: 2, context_size: 512 });
  const config = await writeConfig({ server: { memory_budget_mb: budgetMb }, models: [model('a', a), model('b', b), model('big', big)] });
  kiln = await startKiln(['--config', config]);
});

after(async () => kiln?.stop());

const logged = (message: string) =>
  kiln
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line.msg === message);

async function chat(model: string): Promise<{ status: number; json: any }> {
  const response = await fetch(`${kiln.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
  });
  return { status: response.status, json: await response.json() };
}

test('with room for one model, alternating requests to two both succeed and the log shows the swaps', async (t) => {
  for (const model of ['a', 'b', 'a', 'b']) {
    const { status, json } = await chat(model);
    assert.equal(status, 200, `${model}: ${JSON.stringify(json)}`);
  }
  const swaps = logged('unloading an idle model to make room');
  assert.equal(swaps.length, 3, 'b evicts a, a evicts b, b evicts a');
  // a, then b evicting a, a evicting b, b evicting a.
  assert.notEqual(swaps[0]!.model, swaps[1]!.model);
  assert.equal(swaps[0]!.model, swaps[2]!.model);
  assert.equal(swaps[0]!.for, swaps[1]!.model);
  assert.equal(logged('model loaded').length, 4);
  t.diagnostic(`estimates ${estimates.map((bytes) => (bytes / 2 ** 20).toFixed(0)).join(' / ')} MiB; loads ${logged('model loaded').map((line) => line.loadMs).join(', ')} ms`);
});

test('a model larger than the budget gets 503 naming it and the memory it needs', async () => {
  const { status, json } = await chat('big');
  assert.equal(status, 503);
  assert.equal(json.error.code, 'model_unavailable');
  assert.match(json.error.message, /needs about \d+ MiB of memory, larger than the whole memory budget/);
  assert.equal((await chat('a')).status, 200, 'the others keep serving');
});
