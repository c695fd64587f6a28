/**
 * examples/kiln.yaml — the seed's whole catalog — starts on a machine with nothing downloaded: nothing loads until
 * asked, local ids answer 503 saying how to get their file, and the catalog lists all 32 ids.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { startKiln, type KilnProcess } from '../helpers/kiln-process.js';

let kiln: KilnProcess;
let modelsDir: string;
let startupMs: number;

before(async () => {
  modelsDir = await mkdtemp(join(tmpdir(), 'kiln-example-'));
  const began = performance.now();
  kiln = await startKiln(['--config', resolve(import.meta.dirname, '../../examples/kiln.yaml')], { KILN_MODELS_DIR: modelsDir });
  startupMs = performance.now() - began;
});

after(async () => {
  await kiln?.stop();
  await rm(modelsDir, { recursive: true, force: true });
});

test('the whole catalog starts with nothing downloaded and nothing loaded', async (t) => {
  const models = (await (await fetch(`${kiln.url}/v1/models`)).json()) as { data: Array<{ id: string; kiln?: { state: string; present: boolean | null } }> };
  assert.equal(models.data.length, 32);
  const local = models.data.find((model) => model.id === 'Qwen/Qwen2-1.5B-Instruct')!;
  assert.equal(local.kiln?.state, 'unloaded');
  assert.equal(local.kiln?.present, false);
  const response = await fetch(`${kiln.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'Qwen/Qwen2-1.5B-Instruct', messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(response.status, 503);
  assert.ok(Number(response.headers.get('retry-after')) >= 1);
  assert.match(((await response.json()) as any).error.message, /not downloaded yet: run `kiln pull Qwen\/Qwen2-1.5B-Instruct`/);
  t.diagnostic(`listening after ${startupMs.toFixed(0)} ms (process start included)`);
});
