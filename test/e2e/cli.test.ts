/** The `kiln` command line: start-up refusals, quick mode, keys from the environment. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI from 'openai';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { runKiln, startKiln, writeConfig } from '../helpers/kiln-process.js';

test('binding a non-loopback host without an API key is refused', async () => {
  const model = await ensureTinyModel();
  const { code, output } = await runKiln(['serve', '--model', model, '--host', '0.0.0.0', '--port', '0'], { KILN_API_KEYS: '' });
  assert.equal(code, 2);
  assert.match(output, /refusing to listen on 0\.0\.0\.0 without an API key/);
});

test('a bad config file is refused with the field named', async () => {
  const model = await ensureTinyModel();
  const config = await writeConfig({ models: [{ id: 'a', file: model, parallel: 'many' }] });
  const { code, output } = await runKiln(['serve', '--config', config]);
  assert.equal(code, 2);
  assert.match(output, /models\[0\]\.parallel/);
});

test('a missing model file is refused with its path', async () => {
  const { code, output } = await runKiln(['serve', '--model', '/nonexistent/model.gguf']);
  assert.equal(code, 2);
  assert.match(output, /file not found: \/nonexistent\/model\.gguf/);
});

test('quick mode serves one file under its file name; KILN_API_KEYS is honoured', async () => {
  const model = await ensureTinyModel();
  const kiln = await startKiln(['--model', model], { KILN_API_KEYS: 'k1, k2' });
  try {
    const expectedId = model.split('/').pop()!.replace(/\.gguf$/, '');
    const client = new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey: 'k2', maxRetries: 0 });
    const models = await client.models.list();
    assert.deepEqual(models.data.map((entry) => entry.id), [expectedId]);
    const completion = await client.chat.completions.create({ model: expectedId, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
    assert.equal(completion.choices.length, 1);
    const denied = await fetch(`${kiln.url}/v1/models`, { headers: { authorization: 'Bearer k3' } });
    assert.equal(denied.status, 401);
  } finally {
    await kiln.stop();
  }
});
