/**
 * The prompt cache's disk tier through the real server: with a RAM tier too small for more than two conversations,
 * older conversations' states spill to `disk_dir`; after a restart on the same directory, a conversation's next turn
 * starts from its state on disk, reports the reused tokens as cached and — with a seed — answers as a server without
 * the cache does. A state file damaged on disk is dropped with a warning and the request is answered all the same.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

const MODEL = 'tiny-disk-cached';
let diskDir: string;
let cachedConfig: string;
let withCache: KilnProcess | undefined;
let without: KilnProcess;

before(async () => {
  const file = await ensureTinyModel();
  diskDir = await mkdtemp(join(tmpdir(), 'kiln-disk-cache-'));
  const model = { id: MODEL, file, parallel: 1, context_size: 2048, threads: 1, preload: true };
  // 1 MiB holds two states of ~1,500 tokens (272 bytes each on this model): a third pushes the oldest to disk.
  cachedConfig = await writeConfig({ models: [{ ...model, prompt_cache: { ram_mb: 1, disk_dir: diskDir } }] });
  [withCache, without] = await Promise.all([
    startKiln(['--config', cachedConfig]),
    startKiln(['--config', await writeConfig({ models: [{ ...model, prompt_cache: { ram_mb: 0 } }] })]),
  ]);
});

after(async () => {
  await Promise.all([withCache?.stop(), without?.stop()]);
  await rm(diskDir, { recursive: true, force: true });
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

/** About 1,500 tokens (the tiny model's vocabulary is bytes). */
function document(topic: string): string {
  return Array.from({ length: 30 }, (_, line) => `${topic} note ${line}: the ${topic} facts are listed here.`).join('\n');
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The disk tier's entry directories (temporaries end in .tmp). */
async function entries(): Promise<string[]> {
  const found = await readdir(diskDir, { withFileTypes: true });
  return found.filter((entry) => entry.isDirectory() && !entry.name.endsWith('.tmp')).map((entry) => join(diskDir, entry.name));
}

async function restart(): Promise<KilnProcess> {
  await withCache!.stop();
  withCache = await startKiln(['--config', cachedConfig]);
  const server = withCache;
  await until('the disk tier to open', () => /disk tier ready/.test(server.output()));
  return server;
}

const conversations = ['apples', 'rivers', 'stones', 'clouds', 'ferns'].map((topic) => [
  { role: 'user', content: `${document(topic)}\nSummarise the ${topic}.` },
]);

test('after a restart, a conversation spilled to disk goes on from its state there and answers as without the cache', async () => {
  // One sequence: each new conversation keeps the one before in RAM, and RAM pushes the oldest to disk.
  for (const messages of conversations) {
    const answer = await ask(withCache!, messages);
    messages.push({ role: 'assistant', content: answer.content }, { role: 'user', content: 'And what comes next?' });
  }
  await until('two states on disk', async () => (await entries()).length >= 2);

  const server = await restart();
  const later = await ask(server, conversations[0]!);
  const cached = later.usage.prompt_tokens_details?.cached_tokens ?? 0;
  assert.ok(cached >= 200, `cached_tokens ${cached} of ${later.usage.prompt_tokens}`);
  console.log(`after the restart: ${cached} of ${later.usage.prompt_tokens} prompt tokens from disk`);
  const reference = await ask(without, conversations[0]!);
  assert.equal(later.content, reference.content, 'the same seed answers the same with the cache');
});

test('a state file cut short on disk is dropped with a warning, and the request is answered', async () => {
  for (const entry of await entries()) {
    const state = join(entry, 'state');
    await truncate(state, Math.floor((await stat(state)).size / 2));
  }
  const answer = await ask(withCache!, conversations[1]!);
  assert.ok((answer.usage.prompt_tokens_details?.cached_tokens ?? 0) < 32, 'prefilled as if nothing was cached');
  const warning = withCache!
    .output()
    .split('\n')
    .find((line) => /could not be loaded/.test(line));
  assert.ok(warning !== undefined && /"level":(40|"warn")/.test(warning), `a warning in:\n${withCache!.output().slice(-2000)}`);
});
