/**
 * The prompt cache's disk tier on a real (tiny, random-weight) model: a state evicted from the RAM tier spills to disk,
 * and a new cache on the same directory (a restart) finds it and restores it exactly; entries for a same-shape model
 * with other weights, or for other KV settings, are ignored and left in place; a truncated or altered state file is
 * dropped with a log line before llama.cpp reads it; the disk budget evicts the oldest entry and deletes its files.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, open as openFile, readdir, readFile, rm, stat, statfs, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';
import { PromptCache } from '../../src/engines/llama/prompt-cache/prompt-cache.js';
import { getRuntime } from '../../src/engines/llama/runtime.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { collectingLog } from '../helpers/fake-engines.js';

let modelFile: string;
let model: LlamaModel;
let context: LlamaContext;
let sequences: LlamaContextSequence[];
let stateBytes: number;
const caches: PromptCache[] = [];
const dirs: string[] = [];

const DOCUMENT = 'The quick brown fox jumps over the lazy dog. '.repeat(12);

before(async () => {
  modelFile = await ensureTinyModel();
  model = await (await getRuntime()).loadModel({ modelPath: modelFile });
  context = await model.createContext({ sequences: 3, contextSize: 1024, threads: 1 });
  sequences = [context.getSequence(), context.getSequence(), context.getSequence()];
  const probe = await open(await diskDir(), { ramBytes: 64 * 2 ** 20 });
  await prefill(sequences[0]!, variant('A'));
  await probe.cache.keep(sequences[0]!);
  stateBytes = probe.cache.bytes;
});

after(async () => {
  for (const cache of caches) await cache.close();
  await context.dispose();
  await model.dispose();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function diskDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-disk-tier-'));
  dirs.push(dir);
  return dir;
}

/** A cache whose RAM tier holds one state of DOCUMENT's size (a second one pushes the first to disk). */
async function open(dir: string, options: { ramBytes?: number; diskBytes?: number; on?: { file: string; context: LlamaContext } } = {}) {
  const log = collectingLog();
  const cache = await PromptCache.open({
    budgetBytes: options.ramBytes ?? Math.floor(stateBytes * 1.5),
    minTokens: 32,
    disk: { dir, budgetBytes: options.diskBytes ?? 64 * 2 ** 20, modelFile: options.on?.file ?? modelFile, context: options.on?.context ?? context },
    log,
  });
  caches.push(cache);
  await cache.settled();
  return { cache, log };
}

function variant(letter: string): Token[] {
  return [...model.tokenize(`${letter}: `), ...model.tokenize(DOCUMENT)];
}

async function prefill(sequence: LlamaContextSequence, tokens: Token[]): Promise<void> {
  await sequence.clearHistory();
  await sequence.evaluateWithoutGeneratingNewTokens(tokens);
}

async function greedy(sequence: LlamaContextSequence, input: Token[], count = 4): Promise<Token[]> {
  const out: Token[] = [];
  for await (const token of sequence.evaluate(input, { temperature: 0 })) {
    out.push(token);
    if (out.length === count) break;
  }
  return out;
}

/**
 * Keeps each variant in turn (each pushing the one before out of RAM), waiting for each spill: spills pending beyond
 * the RAM budget are dropped.
 */
async function keepAll(cache: PromptCache, letters: string[], exact = 0): Promise<void> {
  for (const letter of letters) {
    await prefill(sequences[0]!, variant(letter));
    assert.equal(await cache.keep(sequences[0]!, exact), true);
    await cache.settled();
  }
}

/** The disk tier's entries: directories, not temporaries. */
async function entryDirs(dir: string): Promise<string[]> {
  const names = await readdir(dir, { withFileTypes: true });
  return names.filter((entry) => entry.isDirectory() && !entry.name.endsWith('.tmp')).map((entry) => join(dir, entry.name));
}

/** The entry directory whose tokens are `tokens`. */
async function entryFor(dir: string, tokens: Token[]): Promise<string> {
  for (const entry of await entryDirs(dir)) {
    const meta = JSON.parse(await readFile(join(entry, 'meta.json'), 'utf8')) as { tokens: string };
    if (Buffer.from(meta.tokens, 'base64').length === tokens.length * 4 && Buffer.from(meta.tokens, 'base64').readUInt32LE(0) === tokens[0]) return entry;
  }
  throw new Error('no entry for these tokens');
}

const QUESTION = ' And then what happened next?';

test('a state evicted from RAM spills to disk; a cache opened on the directory later restores it exactly', async () => {
  const dir = await diskDir();
  const first = await open(dir);
  await keepAll(first.cache, ['A', 'B'], 128);
  assert.deepEqual(
    { ...first.cache.stats(), ramBudgetBytes: 0, diskBudgetBytes: 0 },
    { ramBytes: stateBytes, ramEntries: 1, ramBudgetBytes: 0, diskBytes: first.cache.stats().diskBytes, diskEntries: 1, diskBudgetBytes: 0 },
  );
  assert.ok(first.cache.stats().diskBytes > stateBytes, 'the state and its meta.json count');
  assert.equal((await entryDirs(dir)).length, 1);
  await first.cache.close();

  const { cache, log } = await open(dir);
  assert.ok(log.entries.some((entry) => entry.level === 'info' && /disk tier ready/.test(entry.message) && entry.fields.entries === 1));
  const turn1 = variant('A');
  const turn2 = [...turn1, ...model.tokenize(QUESTION)];
  const hit = cache.lookup(turn2);
  assert.equal(hit?.tokens, turn1.length);
  assert.equal(hit?.exact, 128);
  await sequences[1]!.clearHistory();
  assert.equal(await cache.restore(sequences[1]!, hit!), turn1.length);
  assert.deepEqual(sequences[1]!.contextTokens, turn1);
  const restored = await greedy(sequences[1]!, turn2.slice(turn1.length));
  await prefill(sequences[2]!, turn1);
  assert.deepEqual(restored, await greedy(sequences[2]!, turn2.slice(turn1.length)));
  assert.equal(cache.stats().diskEntries, 1, 'a restored disk entry stays on disk');
});

test('entries of a same-shape model with other weights, or of other KV settings, are ignored and left alone', async () => {
  const dir = await diskDir();
  const first = await open(dir);
  await keepAll(first.cache, ['A', 'B']);
  await first.cache.close();
  // A temporary of a process that is gone (PIDs above the kernel's maximum never run) is removed at open.
  await mkdir(join(dir, 'abc-123.9999999-deadbeef.tmp'));

  const otherFile = await ensureTinyModel({ seed: 2 });
  const otherModel = await (await getRuntime()).loadModel({ modelPath: otherFile });
  const otherContext = await otherModel.createContext({ sequences: 1, contextSize: 1024, threads: 1 });
  const flashContext = await model.createContext({ sequences: 1, contextSize: 1024, threads: 1, flashAttention: true });
  try {
    for (const on of [
      { file: otherFile, context: otherContext },
      { file: modelFile, context: flashContext },
    ]) {
      const { cache, log } = await open(dir, { on });
      assert.equal(cache.stats().diskEntries, 0);
      assert.ok(log.entries.some((entry) => /disk tier ready/.test(entry.message) && entry.fields.entries === 0));
      assert.equal(cache.lookup([...variant('A'), ...model.tokenize(QUESTION)]), undefined);
    }
  } finally {
    await otherContext.dispose();
    await flashContext.dispose();
    await otherModel.dispose();
  }
  assert.equal((await entryDirs(dir)).length, 1, 'the entry is still there for its own model');
  assert.ok(!(await readdir(dir)).some((name) => name.endsWith('.tmp')));
  const { cache } = await open(dir);
  assert.equal(cache.stats().diskEntries, 1);
});

test('a truncated state file and one with altered bytes are dropped with a log line before loading; restore returns 0', async () => {
  const dir = await diskDir();
  const first = await open(dir);
  await keepAll(first.cache, ['A', 'B', 'C']);
  await first.cache.close();
  const { cache, log } = await open(dir);
  assert.equal(cache.stats().diskEntries, 2);

  const truncated = join(await entryFor(dir, variant('A')), 'state');
  await truncate(truncated, (await stat(truncated)).size - 1024);
  const altered = join(await entryFor(dir, variant('B')), 'state');
  const handle = await openFile(altered, 'r+');
  const at = (await handle.stat()).size - 2048;
  const bytes = Buffer.alloc(1024);
  await handle.read(bytes, 0, 1024, at);
  await handle.write(bytes.map((byte) => byte ^ 0xff), 0, 1024, at);
  await handle.close();

  for (const [letter, reason] of [
    ['A', /bytes, not the/],
    ['B', /checksum/],
  ] as const) {
    const prompt = [...variant(letter), ...model.tokenize(QUESTION)];
    const hit = cache.lookup(prompt)!;
    assert.equal(hit.tokens, variant(letter).length);
    assert.equal(await cache.restore(sequences[1]!, hit), 0);
    assert.ok(
      log.entries.some((entry) => entry.level === 'warn' && /could not be loaded/.test(entry.message) && reason.test(String(entry.fields.err))),
      `a warning for ${letter}`,
    );
    assert.equal(cache.lookup(prompt), undefined);
    // The sequence is usable afterwards.
    await prefill(sequences[1]!, variant(letter).slice(0, 10));
    assert.equal(sequences[1]!.contextTokens.length, 10);
  }
  assert.equal(cache.stats().diskEntries, 0);
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal((await entryDirs(dir)).length, 0, 'their files went too');
});

test('the disk budget evicts the least recently used entry and deletes its files', async () => {
  const dir = await diskDir();
  const { cache } = await open(dir, { diskBytes: Math.floor(stateBytes * 2.5) });
  await keepAll(cache, ['A', 'B', 'C', 'D']);
  assert.equal(cache.stats().diskEntries, 2);
  assert.ok(cache.stats().diskBytes <= stateBytes * 2.5);
  assert.equal(cache.lookup(variant('A')), undefined, 'the oldest went');
  const kept = cache.lookup(variant('B'));
  assert.equal(kept?.tokens, variant('B').length);
  kept!.release();
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal((await entryDirs(dir)).length, 2, 'its files too');
});

test('unset, the RAM budget is 8 GiB or half the free space where the states go, and is logged', async () => {
  const log = collectingLog();
  const dir = await diskDir();
  const cache = await PromptCache.open({ dir, minTokens: 32, log });
  caches.push(cache);
  const { bavail, bsize } = await statfs(dir);
  assert.equal(cache.stats().ramBudgetBytes, Math.min(8 * 2 ** 30, Math.floor((bavail * bsize) / 2)));
  assert.deepEqual({ ...cache.stats(), ramBudgetBytes: 0 }, { ramBytes: 0, ramEntries: 0, ramBudgetBytes: 0, diskBytes: 0, diskEntries: 0, diskBudgetBytes: 0 });
  assert.ok(log.entries.some((entry) => entry.level === 'info' && /RAM tier sized by default/.test(entry.message)));
});

test('the same tokens are kept again only with more exact tokens, and a hit returns the exact count', async () => {
  const { cache } = await open(await diskDir(), { ramBytes: 64 * 2 ** 20 });
  await prefill(sequences[0]!, variant('A'));
  assert.equal(await cache.keep(sequences[0]!, 0), true);
  assert.equal(await cache.keep(sequences[0]!, 0), false);
  assert.equal(await cache.keep(sequences[0]!, 256), true);
  assert.equal(cache.entries, 1);
  const hit = cache.lookup([...variant('A'), ...model.tokenize(QUESTION)]);
  assert.equal(hit?.exact, 256);
  hit!.release();
});
