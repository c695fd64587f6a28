/**
 * Models the way operators expect (issue 11, point 1) on the real server: nothing is loaded at start, concurrent first
 * requests share one load, an idle model unloads (its memory goes back) and loads again on demand, and a corrupt
 * GGUF answers 503 with the reason while the other models keep serving.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

let kiln: KilnProcess;
let startupMs: number;
const KEEP_ALIVE_MS = 1_500;

before(async () => {
  // Large enough (~35 MB of weights, read into memory) for its unload to show in the process's RSS.
  const file = await ensureTinyModel({ embeddingLength: 256, layers: 8, feedForwardLength: 1024, name: 'lifecycle' });
  const corrupt = join(tmpdir(), `kiln-corrupt-${process.pid}.gguf`);
  await writeFile(corrupt, Buffer.concat([Buffer.from('GGUF'), Buffer.alloc(4096, 7)]));
  const config = await writeConfig({
    models: [
      { id: 'lazy', file, keep_alive: `${KEEP_ALIVE_MS}ms`, context_size: 512 },
      { id: 'broken', file: corrupt },
    ],
  });
  const began = performance.now();
  kiln = await startKiln(['--config', config]);
  startupMs = performance.now() - began;
});

after(async () => kiln?.stop());

const logLines = () =>
  kiln
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
const logged = (message: string) => logLines().filter((line) => line.msg === message);

async function rssMiB(): Promise<number> {
  const status = await readFile(`/proc/${kiln.child.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

async function chat(model: string): Promise<{ status: number; json: any; ms: number }> {
  const began = performance.now();
  const response = await fetch(`${kiln.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
  });
  return { status: response.status, json: await response.json(), ms: performance.now() - began };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('nothing is loaded at start; 10 concurrent first requests share one load', async (t) => {
  assert.equal(logged('model loaded').length, 0);
  const idle = await rssMiB();
  const results = await Promise.all(Array.from({ length: 10 }, () => chat('lazy')));
  for (const result of results) assert.equal(result.status, 200, JSON.stringify(result.json));
  const loads = logged('model loaded');
  assert.equal(loads.length, 1, 'one load for all ten');
  const loaded = await rssMiB();
  t.diagnostic(
    `start-up ${startupMs.toFixed(0)} ms; load ${loads[0]!.loadMs} ms; cold first requests ${Math.min(...results.map((r) => r.ms)).toFixed(0)}–${Math.max(...results.map((r) => r.ms)).toFixed(0)} ms; RSS idle ${idle.toFixed(0)} MiB, loaded ${loaded.toFixed(0)} MiB`,
  );
});

test('an idle model unloads after keep_alive, its memory goes back, and it loads again on demand', async (t) => {
  const loaded = await rssMiB();
  const warm = await chat('lazy');
  assert.equal(warm.status, 200);
  await sleep(KEEP_ALIVE_MS + 1_000);
  const unloads = logged('model unloaded');
  assert.equal(unloads.length, 1, 'unloaded once while idle');
  const unloaded = await rssMiB();
  assert.ok(unloaded < loaded - 20, `RSS ${loaded.toFixed(0)} → ${unloaded.toFixed(0)} MiB: the weights (~35 MB) should have gone`);
  const cold = await chat('lazy');
  assert.equal(cold.status, 200);
  assert.equal(logged('model loaded').length, 2);
  t.diagnostic(`warm request ${warm.ms.toFixed(0)} ms; unload ${unloads[0]!.unloadMs} ms; RSS loaded ${loaded.toFixed(0)} → unloaded ${unloaded.toFixed(0)} MiB; cold request after the unload ${cold.ms.toFixed(0)} ms`);
});

test('a corrupt GGUF answers 503 with the reason, is not reloaded on every request, and the others keep serving', async () => {
  const first = await chat('broken');
  assert.equal(first.status, 503);
  assert.equal(first.json.error.code, 'model_unavailable');
  assert.match(first.json.error.message, /could not be loaded: GGUF version \d+ is not supported/);
  assert.match(first.json.error.message, /tried again in \d+ s/);
  const second = await chat('broken');
  assert.equal(second.status, 503);
  assert.equal(logged('model failed to load').length, 1, 'not retried on every request');
  assert.equal((await chat('lazy')).status, 200);
  assert.equal((await fetch(`${kiln.url}/health`)).status, 200);
});
