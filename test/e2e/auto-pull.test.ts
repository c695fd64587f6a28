/**
 * Models named by their `source` (issue 11, point 4) on the real server: the server starts without the file; a model
 * with auto_pull downloads on its first request, which gets 503 + Retry-After saying how far the download is, then
 * serves; one without auto_pull says how to get it.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startFakeHub, type FakeHub } from '../helpers/fake-hub.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

let kiln: KilnProcess;
let hub: FakeHub;
let dir: string;

before(async () => {
  const data = await readFile(await ensureTinyModel());
  // Slow enough that the first requests see the download under way.
  hub = await startFakeHub({ chunkDelayMs: 150 });
  const source = hub.add({ repo: 'kiln-test/Tiny-GGUF', path: 'tiny.gguf', data });
  dir = await mkdtemp(join(tmpdir(), 'kiln-auto-pull-'));
  const config = await writeConfig({
    models_dir: dir,
    models: [
      { id: 'pulled', source, auto_pull: true },
      { id: 'manual', source: hub.add({ repo: 'kiln-test/Other-GGUF', path: 'other.gguf', data }) },
    ],
  });
  kiln = await startKiln(['--config', config], { HF_ENDPOINT: hub.url });
});

after(async () => {
  await kiln?.stop();
  await hub?.close();
  await rm(dir, { recursive: true, force: true });
});

async function chat(model: string): Promise<{ status: number; retryAfter: string | null; json: any }> {
  const response = await fetch(`${kiln.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
  });
  return { status: response.status, retryAfter: response.headers.get('retry-after'), json: await response.json() };
}

test('auto_pull: the first request starts the download and gets 503 with its progress; then the model serves', async (t) => {
  const first = await chat('pulled');
  assert.equal(first.status, 503);
  assert.ok(first.retryAfter !== null && Number(first.retryAfter) >= 1);
  assert.match(first.json.error.message, /'pulled' is downloading \((starting|\d+% of [\d.]+ [KM]i?B)\)/);
  const began = performance.now();
  let last = first;
  const progress: string[] = [];
  while (last.status === 503 && performance.now() - began < 30_000) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    last = await chat('pulled');
    if (last.status === 503) progress.push(/\((.*)\)/.exec(last.json.error.message)![1]!);
  }
  assert.ok(progress.some((line) => /\d+% of/.test(line)), `progress was reported: ${progress.join(', ')}`);
  assert.equal(last.status, 200, JSON.stringify(last.json));
  // @huggingface/hub reads the size with a one-byte ranged GET; the body comes in one transfer.
  const gets = hub.requests.filter((request) => request.method === 'GET' && request.url.includes('tiny.gguf') && request.range !== 'bytes=0-0');
  assert.equal(gets.length, 1, `one download for all the requests that asked meanwhile: ${JSON.stringify(hub.requests)}`);
  t.diagnostic(`served ${((performance.now() - began) / 1000).toFixed(1)} s after the first request`);
});

test('without auto_pull, a missing model says how to get it, and nothing is downloaded', async () => {
  const { status, json } = await chat('manual');
  assert.equal(status, 503);
  assert.match(json.error.message, /'manual' is not downloaded yet: run `kiln pull manual`/);
  assert.equal(hub.requests.filter((request) => request.url.includes('other.gguf')).length, 0);
});
