/**
 * The prompt cache's disk tier through the real server: with a RAM tier too small for more than two conversations,
 * every kept conversation's state is still written to `disk_dir`; after a restart on the same directory, a
 * conversation's next turn starts from its state on disk, reports the reused tokens as cached and — with a seed —
 * answers as a server without the cache does. With the default RAM tier nothing is evicted, and a graceful stop writes
 * what the sequences hold: a conversation that never left its sequence goes on from disk after a restart. Another
 * model's server on the same directory ignores those states. A state file damaged on disk is dropped with a warning
 * and the request is answered all the same.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

const MODEL = 'tiny-disk-cached';
let file: string;
let diskDir: string;
let cachedConfig: string;
let withCache: KilnProcess | undefined;
let without: KilnProcess;

before(async () => {
  file = await ensureTinyModel();
  diskDir = await mkdtemp(join(tmpdir(), 'kiln-disk-cache-'));
  const model = { id: MODEL, file, parallel: 1, context_size: 2048, threads: 1, preload: true };
  // 1 MiB holds two states of ~1,500 tokens (272 bytes each on this model): a third pushes the oldest out of RAM.
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
async function entries(dir = diskDir): Promise<string[]> {
  const found = await readdir(dir, { withFileTypes: true });
  return found.filter((entry) => entry.isDirectory() && !entry.name.endsWith('.tmp')).map((entry) => join(dir, entry.name));
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

test('after a restart, a conversation written to disk goes on from its state there and answers as without the cache', async () => {
  // One sequence: each new conversation keeps the one before (written through to disk), and RAM pushes the oldest out.
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

test('with the default RAM tier, a conversation still in its sequence at a graceful stop goes on from disk after a restart', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-disk-cache-'));
  // Two sequences: the conversation keeps its own, so nothing is kept (let alone evicted) while the server runs.
  const model = { id: MODEL, file, parallel: 2, context_size: 2048, threads: 1, preload: true };
  const config = await writeConfig({ models: [{ ...model, prompt_cache: { disk_dir: dir } }] });
  const servers: KilnProcess[] = [];
  try {
    const [first, reference] = await Promise.all([
      startKiln(['--config', config]),
      startKiln(['--config', await writeConfig({ models: [{ ...model, prompt_cache: { ram_mb: 0 } }] })]),
    ]);
    servers.push(first, reference);
    await until('the disk tier to open', () => /disk tier ready/.test(first.output()));
    const messages = [{ role: 'user', content: `${document('lanterns')}\nSummarise the lanterns.` }];
    const answer = await ask(first, messages);
    messages.push({ role: 'assistant', content: answer.content }, { role: 'user', content: 'And what comes next?' });
    assert.deepEqual(await entries(dir), [], 'nothing on disk while the server runs');

    await first.stop(); // SIGTERM: drain, then close the engine, which writes what the sequences hold
    assert.equal(first.child.exitCode, 0, `a graceful stop:\n${first.output().slice(-2000)}`);
    assert.equal((await entries(dir)).length, 1);
    assert.doesNotMatch(first.output(), /not written to disk/);

    const second = await startKiln(['--config', config]);
    servers.push(second);
    await until('the disk tier to open', () => /disk tier ready/.test(second.output()));
    const later = await ask(second, messages);
    const cached = later.usage.prompt_tokens_details?.cached_tokens ?? 0;
    assert.ok(cached >= 200, `cached_tokens ${cached} of ${later.usage.prompt_tokens}`);
    console.log(`after a graceful restart: ${cached} of ${later.usage.prompt_tokens} prompt tokens from disk`);
    assert.equal(later.content, (await ask(reference, messages)).content, 'the same seed answers the same with the cache');
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
    await rm(dir, { recursive: true, force: true });
  }
});

test("a same-shape model with other weights on the same disk_dir ignores the first model's states and leaves them", async () => {
  const before = await entries();
  assert.ok(before.length > 0);
  const otherFile = await ensureTinyModel({ seed: 2 });
  const other = { id: MODEL, file: otherFile, parallel: 1, context_size: 2048, threads: 1, preload: true };
  const [foreign, reference] = await Promise.all([
    startKiln(['--config', await writeConfig({ models: [{ ...other, prompt_cache: { ram_mb: 1, disk_dir: diskDir } }] })]),
    startKiln(['--config', await writeConfig({ models: [{ ...other, prompt_cache: { ram_mb: 0 } }] })]),
  ]);
  try {
    await until('the disk tier to open', () => /disk tier ready/.test(foreign.output()));
    // llama.cpp would load these states without complaint (same shape); only the identity check keeps them out.
    const answer = await ask(foreign, conversations[2]!);
    assert.ok((answer.usage.prompt_tokens_details?.cached_tokens ?? 0) < 32, `cached ${answer.usage.prompt_tokens_details?.cached_tokens}`);
    assert.equal(answer.content, (await ask(reference, conversations[2]!)).content, "answers as that model's own server without a cache");
  } finally {
    await Promise.all([foreign.stop(), reference.stop()]);
  }
  const after = await entries();
  for (const entry of before) assert.ok(after.includes(entry), `the first model's entry ${entry} is left alone`);
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
