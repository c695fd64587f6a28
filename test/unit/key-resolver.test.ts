/**
 * The key resolver against a counting store: keys are read once and then served from memory while the store's change
 * counter stands still (one counter read per interval, however many keys are in use); a change drops the cache;
 * an unreachable store keeps known keys working and refuses unknown ones with 503, never with full access.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../../src/errors/catalog.js';
import { hashApiKey } from '../../src/store/api-keys.js';
import { KeyResolver, type KeyLookup, type StoredKey } from '../../src/tenancy/key-resolver.js';

class CountingStore implements KeyLookup {
  readonly keys = new Map<string, StoredKey>();
  version = 0;
  reads = 0;
  counterReads = 0;
  down = false;
  add(key: string, stored: Omit<StoredKey, 'id'>): void {
    this.keys.set(hashApiKey(key), { id: `id-${stored.name}`, ...stored });
    this.version++;
  }
  async findByHash(hash: string) {
    if (this.down) throw new Error('connection refused');
    this.reads++;
    return this.keys.get(hash);
  }
  async countActive() {
    if (this.down) throw new Error('connection refused');
    return [...this.keys.values()].filter((key) => key.revokedAt === undefined).length;
  }
  async changes() {
    this.counterReads++;
    if (this.down) throw new Error('connection refused');
    return this.version;
  }
}

function setup(cacheMs = 1000) {
  const store = new CountingStore();
  let now = 0;
  const resolver = new KeyResolver({ staticKeys: [], store, cacheMs, now: () => now, tierLimits: { free: { rpm: 7 } } });
  return { store, resolver, advance: (ms: number) => (now += ms) };
}

test('a thousand keys are read once each; steady traffic then costs one counter read per interval', async () => {
  const { store, resolver, advance } = setup();
  for (let index = 0; index < 1000; index++) store.add(`sk-${index}`, { name: `k${index}`, tier: 'free' });
  for (let round = 0; round < 5; round++) {
    for (let index = 0; index < 1000; index++) assert.equal((await resolver.resolve(`sk-${index}`)).name, `k${index}`);
    advance(400);
  }
  assert.equal(store.reads, 1000);
  assert.ok(store.counterReads <= 3, `${store.counterReads} counter reads over 2 s`);
  assert.equal((await resolver.resolve('sk-1')).rpm, 7, 'tier limits apply to keys that set none');
});

test('a revocation applies within one interval; an unknown key created later is found', async () => {
  const { store, resolver, advance } = setup();
  store.add('sk-a', { name: 'a', tier: 'pro' });
  await resolver.resolve('sk-a');
  await assert.rejects(resolver.resolve('sk-b'), (error: KilnError) => error.kind === 'invalidApiKey');
  store.keys.get(hashApiKey('sk-a'))!.revokedAt = new Date();
  store.version++;
  store.add('sk-b', { name: 'b', tier: 'free' });
  assert.equal((await resolver.resolve('sk-a')).name, 'a', 'still cached inside the interval');
  advance(1000);
  await assert.rejects(resolver.resolve('sk-a'), (error: KilnError) => error.kind === 'invalidApiKey');
  assert.equal((await resolver.resolve('sk-b')).pro, false);
});

test('an unreachable store: known keys keep working, unknown keys get 503, nobody gets in without a key', async () => {
  const { store, resolver, advance } = setup();
  store.add('sk-a', { name: 'a', tier: 'pro' });
  await resolver.resolve('sk-a');
  store.down = true;
  advance(2000);
  assert.equal((await resolver.resolve('sk-a')).name, 'a');
  await assert.rejects(resolver.resolve('sk-unknown'), (error: KilnError) => error.kind === 'keysUnavailable' && error.status === 503);
  await assert.rejects(resolver.resolve(undefined), (error: KilnError) => error.status === 401 || error.status === 503);
});
