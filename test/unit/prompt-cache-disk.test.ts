/**
 * The prompt cache's disk tier on a real (tiny, random-weight) model: a state kept in the RAM tier is written through
 * to disk (once: evicting it from RAM does not write it again), closing keeps what the sequences hold and waits for the
 * writes within a time limit, and a new cache on the same directory (a restart) finds a state and restores it exactly.
 * A queued write is dropped for a longer state of the same conversation queued after it, and when RAM evicts its state
 * while files so evicted already hold the bound. Entries for a same-shape model with other weights, or for other KV
 * settings, are ignored and left in place; a truncated or altered state file is dropped with a log line before
 * llama.cpp reads it; the disk budget evicts the oldest entry and deletes its files.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open as openFile, readdir, readFile, rm, stat, statfs, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from 'node-llama-cpp';
import { DiskTier } from '../../src/engines/llama/prompt-cache/disk-tier.js';
import { PromptCache } from '../../src/engines/llama/prompt-cache/prompt-cache.js';
import { getRuntime } from '../../src/engines/llama/runtime.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { collectingLog } from '../helpers/fake-engines.js';
import { greedy, prefill } from '../helpers/sequences.js';

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

/**
 * Keeps each variant in turn (each pushing the one before out of RAM), waiting for each write: writes pending beyond
 * the RAM budget are dropped.
 */
async function keepAll(cache: PromptCache, letters: string[], exact = 0): Promise<void> {
  for (const letter of letters) {
    await prefill(sequences[0]!, variant(letter));
    assert.equal(await cache.keep(sequences[0]!, exact), true);
    await cache.settled();
  }
}

async function eventually(what: string, check: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
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

/** The state files in the RAM tier's own directory. */
async function ramFiles(cache: PromptCache): Promise<string[]> {
  return readdir((cache as unknown as { dir: string }).dir);
}

test('a kept state is written through to disk at once, and not written again when RAM evicts it', async () => {
  const dir = await diskDir();
  const { cache } = await open(dir);
  await prefill(sequences[0]!, variant('A'));
  assert.equal(await cache.keep(sequences[0]!), true);
  await cache.settled();
  const [written, ...others] = await entryDirs(dir);
  assert.ok(written !== undefined && others.length === 0, 'one entry on disk, with nothing evicted');
  assert.deepEqual({ ram: cache.stats().ramEntries, disk: cache.stats().diskEntries }, { ram: 1, disk: 1 });
  assert.equal((await ramFiles(cache)).length, 1, 'the RAM file stays');

  // B pushes A (written) out of RAM; C pushes B out while B's write is still queued or under way.
  await prefill(sequences[0]!, variant('B'));
  assert.equal(await cache.keep(sequences[0]!), true);
  await prefill(sequences[0]!, variant('C'));
  assert.equal(await cache.keep(sequences[0]!), true);
  await cache.settled();
  const after = await entryDirs(dir);
  assert.equal(after.length, 3, 'A, B and C once each');
  assert.ok(after.includes(written), "A's entry is the one written first");
  assert.deepEqual({ ram: cache.stats().ramEntries, disk: cache.stats().diskEntries }, { ram: 1, disk: 3 });
  assert.equal((await ramFiles(cache)).length, 1, "the evicted states' RAM files are gone");
  for (const letter of ['A', 'B', 'C']) await entryFor(dir, variant(letter));
});

test('a cache opened on the directory later restores a state written there exactly', async () => {
  const dir = await diskDir();
  const first = await open(dir);
  await keepAll(first.cache, ['A', 'B'], 128);
  assert.deepEqual(
    { ...first.cache.stats(), ramBudgetBytes: 0, diskBudgetBytes: 0 },
    { ramBytes: stateBytes, ramEntries: 1, ramBudgetBytes: 0, diskBytes: first.cache.stats().diskBytes, diskEntries: 2, diskBudgetBytes: 0 },
  );
  assert.ok(first.cache.stats().diskBytes > 2 * stateBytes, 'the states and their meta.json count');
  assert.equal((await entryDirs(dir)).length, 2);
  await first.cache.close();

  const { cache, log } = await open(dir);
  assert.ok(log.entries.some((entry) => entry.level === 'info' && /disk tier ready/.test(entry.message) && entry.fields.entries === 2));
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
  assert.equal(cache.stats().diskEntries, 2, 'a restored disk entry stays on disk');
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
  assert.equal((await entryDirs(dir)).length, 2, 'the entries are still there for their own model');
  assert.ok(!(await readdir(dir)).some((name) => name.endsWith('.tmp')));
  const { cache } = await open(dir);
  assert.equal(cache.stats().diskEntries, 2);
});

test('a truncated state file and one with altered bytes are dropped with a log line before loading; restore returns 0', async () => {
  const dir = await diskDir();
  const first = await open(dir);
  await keepAll(first.cache, ['A', 'B']);
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
  await eventually('their files to go too', async () => (await entryDirs(dir)).length === 0);
});

test('the disk budget evicts the least recently used entry and deletes its files', async () => {
  const dir = await diskDir();
  const { cache } = await open(dir, { diskBytes: Math.floor(stateBytes * 2.5) });
  await keepAll(cache, ['A', 'B', 'C', 'D']);
  assert.equal(cache.stats().diskEntries, 2);
  assert.ok(cache.stats().diskBytes <= stateBytes * 2.5);
  assert.equal(cache.lookup(variant('A')), undefined, 'the oldest went');
  assert.equal(cache.lookup(variant('B')), undefined, 'and the next');
  // C is on disk only (RAM holds D).
  const kept = cache.lookup(variant('C'));
  assert.equal(kept?.tokens, variant('C').length);
  kept!.release();
  await eventually('its files to go too', async () => (await entryDirs(dir)).length === 2);
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

test('closing keeps what the sequences hold and waits for its write: a restart finds it', async () => {
  const dir = await diskDir();
  const first = await open(dir, { ramBytes: 64 * 2 ** 20 });
  await prefill(sequences[1]!, variant('E'));
  await first.cache.close([{ sequence: sequences[1]!, exact: 128 }]);
  assert.equal((await entryDirs(dir)).length, 1);

  const { cache } = await open(dir);
  const hit = cache.lookup([...variant('E'), ...model.tokenize(QUESTION)]);
  assert.equal(hit?.tokens, variant('E').length);
  assert.equal(hit?.exact, 128);
  hit!.release();
});

/** Files of `bytes` random bytes standing in for state files: the disk tier copies them without reading them. */
async function sources(count: number, bytes: number): Promise<string[]> {
  const dir = await diskDir();
  return Promise.all(
    Array.from({ length: count }, async (_, at) => {
      const path = join(dir, `source-${at}`);
      await writeFile(path, randomBytes(bytes));
      return path;
    }),
  );
}

function tokenRange(from: number, to: number): Uint32Array {
  return Uint32Array.from({ length: to - from }, (_, at) => from + at);
}

test('a queued write is dropped for a longer state of the same conversation queued after it', async () => {
  const dir = await diskDir();
  const tier = new DiskTier({ dir, budgetBytes: 64 * 2 ** 20, modelFile, context }, collectingLog());
  const [other, turn1, turn2] = await sources(3, 4096);
  // In one tick: the first job starts (and waits for the tier to open), the next two are still queued.
  const writes = [
    tier.writeThrough(other!, tokenRange(1000, 1100), 0, 4096, 64 * 2 ** 20),
    tier.writeThrough(turn1!, tokenRange(0, 100), 0, 4096, 64 * 2 ** 20),
    tier.writeThrough(turn2!, tokenRange(0, 200), 0, 4096, 64 * 2 ** 20),
  ];
  await tier.settled();
  assert.deepEqual(
    tier.index.entries().map((entry) => entry.tokens.length),
    [100, 200],
    'the other conversation and the second turn',
  );
  assert.ok(existsSync(turn1!), 'a source the RAM tier holds stays until released');
  for (const write of writes) write!.release(false);
  await eventually('released sources to be deleted', () => ![other, turn1, turn2].some((path) => existsSync(path!)));
  await tier.close();
});

test('a write not begun is dropped when RAM evicts its state while files so evicted already hold the bound', async () => {
  const dir = await diskDir();
  const log = collectingLog();
  const tier = new DiskTier({ dir, budgetBytes: 64 * 2 ** 20, modelFile, context }, log);
  const [first, second, third] = await sources(3, 4096);
  const limit = 4096 * 2.5;
  const writes = [
    tier.writeThrough(first!, tokenRange(0, 100), 0, 4096, limit),
    tier.writeThrough(second!, tokenRange(1000, 1100), 0, 4096, limit),
    tier.writeThrough(third!, tokenRange(2000, 2100), 0, 4096, limit),
  ];
  // Evicted from RAM in the same tick: the first is being written (it goes on), the second fits, the third does not.
  for (const write of writes) write!.release(false);
  await tier.settled();
  assert.deepEqual(
    tier.index.entries().map((entry) => entry.tokens[0]),
    [0, 1000],
  );
  assert.ok(log.entries.some((entry) => /the disk tier is behind/.test(entry.message)));
  await eventually('the sources to be deleted', () => ![first, second, third].some((path) => existsSync(path!)));
  await tier.close();
});

test('at close, writes not done within the time limit are dropped and logged', async () => {
  const dir = await diskDir();
  const log = collectingLog();
  const tier = new DiskTier({ dir, budgetBytes: 256 * 2 ** 20, modelFile, context }, log);
  await tier.settled();
  const [big, small] = await sources(2, 32 * 2 ** 20);
  tier.writeThrough(big!, tokenRange(0, 100), 0, 32 * 2 ** 20, Infinity);
  tier.writeThrough(small!, tokenRange(1000, 1100), 0, 32 * 2 ** 20, Infinity);
  await tier.close(1);
  const warning = log.entries.find((entry) => entry.level === 'warn' && /time limit at close/.test(entry.message));
  assert.equal(warning?.fields.notWritten, 2);
  await eventually('the stopped write to clean up', async () => (await readdir(dir)).length === 1);
  assert.equal(tier.index.size, 0);
  assert.deepEqual(await readdir(dir), ['model-hashes.json'], 'no entry, no temporary left');
});
