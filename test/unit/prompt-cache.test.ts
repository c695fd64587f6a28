/**
 * The prompt cache's host tier on a real (tiny, random-weight) model: a sequence's state kept and restored into
 * another sequence gives the same next tokens as prefilling the same prompt there; the longest cached prefix wins; a
 * prefix too short, or already kept, is not saved again; a truncated state file is dropped with a log line and the
 * caller is told nothing was restored; the budget evicts the least recently used state and deletes its file.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';
import { PromptCache } from '../../src/engines/llama/prompt-cache/prompt-cache.js';
import { getRuntime } from '../../src/engines/llama/runtime.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { collectingLog } from '../helpers/fake-engines.js';
import { greedy, prefill } from '../helpers/sequences.js';

let model: LlamaModel;
let context: LlamaContext;
let sequences: LlamaContextSequence[];
const caches: PromptCache[] = [];

before(async () => {
  model = await (await getRuntime()).loadModel({ modelPath: await ensureTinyModel() });
  context = await model.createContext({ sequences: 3, contextSize: 1024, threads: 1 });
  sequences = [context.getSequence(), context.getSequence(), context.getSequence()];
});

after(async () => {
  for (const cache of caches) await cache.close();
  await context.dispose();
  await model.dispose();
});

async function open(budgetBytes = 64 * 2 ** 20, minTokens = 32) {
  const log = collectingLog();
  const cache = await PromptCache.open({ budgetBytes, minTokens, log });
  caches.push(cache);
  return { cache, log };
}

function tokensOf(text: string): Token[] {
  return model.tokenize(text);
}

const DOCUMENT = 'The quick brown fox jumps over the lazy dog. '.repeat(20);

test('a kept state restored into another sequence continues exactly as a prefill would', async () => {
  const { cache } = await open();
  const turn1 = tokensOf(DOCUMENT);
  const turn2 = [...turn1, ...tokensOf(' And then what happened next?')];
  await prefill(sequences[0]!, turn1);
  assert.equal(await cache.keep(sequences[0]!), true);
  assert.equal(await cache.keep(sequences[0]!), false, 'the same tokens are not kept twice');
  assert.equal(cache.entries, 1);

  const hit = cache.lookup(turn2);
  assert.equal(hit?.tokens, turn1.length);
  await sequences[1]!.clearHistory();
  assert.equal(await cache.restore(sequences[1]!, hit!), turn1.length);
  assert.deepEqual(sequences[1]!.contextTokens, turn1);
  const restored = await greedy(sequences[1]!, turn2.slice(turn1.length));

  await prefill(sequences[2]!, turn2.slice(0, turn1.length));
  const prefilled = await greedy(sequences[2]!, turn2.slice(turn1.length));
  assert.deepEqual(restored, prefilled);
});

test('the longest cached prefix wins; one shorter than minTokens is neither kept nor found', async () => {
  const { cache } = await open(64 * 2 ** 20, 16);
  const long = tokensOf(DOCUMENT);
  const half = long.slice(0, Math.floor(long.length / 2));
  await prefill(sequences[0]!, half);
  await cache.keep(sequences[0]!);
  await prefill(sequences[0]!, long);
  await cache.keep(sequences[0]!);
  const hit = cache.lookup([...long, ...tokensOf(' more')]);
  assert.equal(hit?.tokens, long.length);
  hit!.release();
  assert.equal(cache.lookup([...long], long.length - 8), undefined, 'must beat what an idle sequence already shares by minTokens');
  await prefill(sequences[0]!, long.slice(0, 8));
  assert.equal(await cache.keep(sequences[0]!), false);
});

test('a truncated state file is dropped with a log line and nothing counts as restored', async () => {
  const { cache, log } = await open();
  const tokens = tokensOf(DOCUMENT);
  await prefill(sequences[0]!, tokens);
  await cache.keep(sequences[0]!);
  const dir = await cacheDir(cache);
  const [file] = await readdir(dir);
  await truncate(join(dir, file!), Math.floor((await stat(join(dir, file!))).size / 3));
  const hit = cache.lookup([...tokens, ...tokensOf(' x')])!;
  assert.equal(await cache.restore(sequences[1]!, hit), 0);
  assert.ok(log.entries.some((entry) => entry.level === 'warn' && /could not be loaded/.test(entry.message)));
  assert.equal(cache.entries, 0);
  assert.equal(cache.lookup([...tokens, ...tokensOf(' x')]), undefined);
  // The sequence is usable afterwards.
  await prefill(sequences[1]!, tokens.slice(0, 10));
  assert.equal(sequences[1]!.contextTokens.length, 10);
});

test('the budget evicts the least recently used state and deletes its file', async () => {
  const tokens = tokensOf(DOCUMENT);
  await prefill(sequences[0]!, tokens);
  const probe = await open();
  await probe.cache.keep(sequences[0]!);
  const size = probe.cache.bytes;
  const { cache } = await open(Math.floor(size * 2.5));
  const variants = ['A', 'B', 'C'].map((letter) => [...tokensOf(`${letter}: `), ...tokens]);
  for (const variant of variants) {
    await prefill(sequences[0]!, variant);
    assert.equal(await cache.keep(sequences[0]!), true);
  }
  assert.equal(cache.entries, 2);
  assert.ok(cache.bytes <= size * 2.5);
  assert.equal(cache.lookup(variants[0]!), undefined, 'the oldest went');
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal((await readdir(await cacheDir(cache))).length, 2, 'its file too');
});

/** The cache's directory: the one directory of its kind under /dev/shm or the temporary directory it made. */
async function cacheDir(cache: PromptCache): Promise<string> {
  return (cache as unknown as { dir: string }).dir;
}

test('a state that goes on past where the next prompt parts from it serves the shared part', async () => {
  const { cache } = await open();
  const turn1 = tokensOf(DOCUMENT);
  const answered = [...turn1, ...tokensOf(' an answer as the model generated it')];
  const turn2 = [...turn1, ...tokensOf(' the answer as the template renders it, then a question')];
  await prefill(sequences[0]!, answered);
  await cache.keep(sequences[0]!);
  const shared = turn1.length + tokensOf(' an answer as the model generated it').findIndex((token, at) => token !== turn2[turn1.length + at]);
  const hit = cache.lookup(turn2)!;
  assert.equal(hit.tokens, shared);
  assert.equal(await cache.restore(sequences[1]!, hit), shared);
  assert.deepEqual(sequences[1]!.contextTokens, turn2.slice(0, shared));
  const restored = await greedy(sequences[1]!, turn2.slice(shared));
  await prefill(sequences[2]!, turn2.slice(0, shared));
  assert.deepEqual(restored, await greedy(sequences[2]!, turn2.slice(shared)));
});

test('directories of Kiln processes that are gone are removed when a cache opens; live ones stay', async () => {
  const base = await mkdtemp(join(tmpdir(), 'kiln-cache-base-'));
  // PIDs above the kernel's maximum (4,194,304) are never alive.
  await mkdir(join(base, 'kiln-prompt-cache-9999999-abcd1234'));
  await writeFile(join(base, 'kiln-prompt-cache-9999999-abcd1234', 'x.state'), 'state');
  await mkdir(join(base, `kiln-prompt-cache-${process.ppid}-live0000`));
  await mkdir(join(base, 'unrelated'));
  const log = collectingLog();
  const cache = await PromptCache.open({ dir: base, budgetBytes: 1024, minTokens: 32, log });
  caches.push(cache);
  const left = (await readdir(base)).sort();
  assert.ok(!left.includes('kiln-prompt-cache-9999999-abcd1234'));
  assert.ok(left.includes(`kiln-prompt-cache-${process.ppid}-live0000`) && left.includes('unrelated'));
  assert.ok(log.entries.some((entry) => /a Kiln process that is gone/.test(entry.message)));
  await rm(base, { recursive: true, force: true });
});
