/** The `kiln` command line: start-up refusals, quick mode, keys from the environment. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
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

test('a bad --drain-timeout-ms is refused before anything starts', async () => {
  const model = await ensureTinyModel();
  const { code, output } = await runKiln(['serve', '--model', model, '--port', '0', '--drain-timeout-ms', 'soon']);
  assert.equal(code, 2);
  assert.match(output, /--drain-timeout-ms must be a non-negative integer, got 'soon'/);
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

test('key tiers: a free key gets 403 on Pro/ ids and is served the free id; --api-key keys may use both', async () => {
  const model = await ensureTinyModel();
  const config = await writeConfig({
    server: { api_keys: [{ key: 'free-key', tier: 'free' }, { key: 'pro-key', tier: 'pro' }] },
    models: [
      { id: 'Qwen/Qwen2.5-7B-Instruct', file: model },
      { id: 'Pro/Qwen/Qwen2.5-7B-Instruct', file: model },
    ],
  });
  const kiln = await startKiln(['--config', config, '--api-key', 'cli-key']);
  try {
    const ask = (key: string, id: string) =>
      fetch(`${kiln.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: id, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
      });
    const denied = await ask('free-key', 'Pro/Qwen/Qwen2.5-7B-Instruct');
    assert.equal(denied.status, 403);
    const body = (await denied.json()) as { code: number; error: { type: string; param: string } };
    assert.equal(body.error.type, 'permission_error');
    assert.equal(body.error.param, 'model');
    assert.equal(typeof body.code, 'number');
    assert.equal((await ask('free-key', 'Qwen/Qwen2.5-7B-Instruct')).status, 200);
    assert.equal((await ask('pro-key', 'Pro/Qwen/Qwen2.5-7B-Instruct')).status, 200);
    assert.equal((await ask('cli-key', 'Pro/Qwen/Qwen2.5-7B-Instruct')).status, 200);
    // The openai client maps it to its PermissionDeniedError.
    const client = new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey: 'free-key', maxRetries: 0 });
    await assert.rejects(
      client.chat.completions.create({ model: 'Pro/Qwen/Qwen2.5-7B-Instruct', messages: [{ role: 'user', content: 'hi' }] }),
      (error: unknown) => error instanceof OpenAI.PermissionDeniedError,
    );
  } finally {
    await kiln.stop();
  }
});

test('server.request_timeout_ms: a generation still running ends with 504, in-band when streaming', async () => {
  const model = await ensureTinyModel({ neverEnd: true });
  // 16,000 tokens take several seconds even at the tiny model's pace, well past the timeout; a 2-token request stays far
  // below it even on a loaded machine.
  const config = await writeConfig({ server: { request_timeout_ms: 1500 }, models: [{ id: 'slow', file: model, parallel: 2, context_size: 16384 }] });
  const kiln = await startKiln(['--config', config]);
  try {
    const body = { model: 'slow', messages: [{ role: 'user', content: 'hi' }], max_tokens: 16_000 };
    const whole = await fetch(`${kiln.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    assert.equal(whole.status, 504);
    const error = (await whole.json()) as { error: { type: string } };
    assert.equal(error.error.type, 'timeout_error');

    const streamed = await fetch(`${kiln.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...body, stream: true }),
    });
    assert.equal(streamed.status, 200);
    const text = await streamed.text();
    const last = text.trim().split('\n\n').pop()!;
    assert.match(last, /^data: \{"code":50507.*"type":"timeout_error"/);
    // Short requests are unaffected.
    const quick = await fetch(`${kiln.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, max_tokens: 2 }) });
    assert.equal(quick.status, 200);
  } finally {
    await kiln.stop();
  }
});

test('weights are read into memory by default; --load mmap maps the file; a bad --load is refused', { skip: process.platform !== 'linux' && 'reads /proc' }, async () => {
  const model = await ensureTinyModel();
  for (const load of ['memory', 'mmap'] as const) {
    const kiln = await startKiln(['--model', model, '--model-id', 'm', ...(load === 'mmap' ? ['--load', 'mmap'] : [])]);
    try {
      const maps = await readFile(`/proc/${kiln.child.pid}/maps`, 'utf8');
      assert.equal(maps.includes(model), load === 'mmap', `${load}: is the model file mapped?`);
      const client = new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey: 'none', maxRetries: 0 });
      const completion = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
      assert.ok(completion.usage!.completion_tokens > 0);
    } finally {
      await kiln.stop();
    }
  }
  const { code, output } = await runKiln(['serve', '--model', model, '--load', 'disk']);
  assert.equal(code, 2);
  assert.match(output, /--load must be memory or mmap, got 'disk'/);
});
