/**
 * The store on SQLite (a temp dir) and PostgreSQL ($DATABASE_URL, else 127.0.0.1:5432/test, in a schema of its own
 * that is dropped after; skipped with a message when it does not answer): migrations, keys, the usage ledger and
 * its period totals; and `kiln keys` / `kiln usage` called in-process.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test, type TestContext } from 'node:test';
import pg from 'pg';
import { keysCommand } from '../../src/cli/keys-command.js';
import { usageCommand } from '../../src/cli/usage-command.js';
import { DuplicateKeyNameError, hashApiKey, openStore, storeOptionsFrom, type Store, type StoreOptions, type UsageRow } from '../../src/store/store.js';
import { POSTGRES_URL, reachablePostgres } from '../helpers/stores.js';

const PG_URL = POSTGRES_URL;
const DAY_MS = 24 * 60 * 60 * 1000;
const tempDirs: string[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-store-'));
  tempDirs.push(dir);
  return dir;
}
after(() => Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true }))));

function usageRow(overrides: Partial<UsageRow>): UsageRow {
  return {
    ts: Date.UTC(2026, 10, 30, 12),
    requestId: `req-${randomBytes(4).toString('hex')}`,
    keyId: 'key_a',
    keyName: 'alice',
    metered: true,
    model: 'Qwen/Qwen2.5-7B-Instruct',
    promptTokens: 10,
    cachedTokens: 2,
    completionTokens: 5,
    reasoningTokens: 1,
    durationMs: 100,
    status: 'completed',
    ...overrides,
  };
}

for (const kind of ['sqlite', 'postgres'] as const) {
  describe(`store on ${kind}`, () => {
    let available = kind === 'sqlite';
    let options: StoreOptions;
    let store: Store;
    const schema = `kiln_test_${randomBytes(6).toString('hex')}`;

    before(async () => {
      if (kind === 'postgres') available = (await reachablePostgres()) !== undefined;
      if (!available) return;
      options = kind === 'sqlite' ? { dataDir: join(await tempDir(), 'nested', 'data') } : { databaseUrl: PG_URL, schema };
      store = await openStore(options);
    });
    after(async () => {
      if (!available) return;
      await store.close();
      if (kind !== 'postgres') return;
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      await client.query(`drop schema if exists ${schema} cascade`);
      await client.end();
    });
    /** True when the case must be skipped (PostgreSQL absent), after saying so. */
    const absent = (t: TestContext) => {
      if (available) return false;
      t.skip(`PostgreSQL not reachable at ${PG_URL}`);
      return true;
    };

    test('opens where asked, and opening again (twice at once) finds the schema up to date', async (t) => {
      if (absent(t)) return;
      assert.equal(store.kind, kind);
      if (kind === 'sqlite') assert.equal(store.location, join(options.dataDir!, 'kiln.db'));
      else assert.doesNotMatch(store.location, /:[^/@]*@/, 'no password in the location');
      const again = await Promise.all([openStore(options), ...(kind === 'postgres' ? [openStore(options)] : [])]);
      await Promise.all(again.map((other) => other.close()));
    });

    test('keys: create, findByHash, get, list, update, revoke, countActive', async (t) => {
      if (absent(t)) return;
      const { key, record } = await store.keys.create({ name: 'alice', tier: 'pro', rpm: 60, models: ['Qwen/*'], quota: { tokens: 1000, period: 'day' } });
      assert.match(key, /^sk-kiln-[0-9A-Za-z]{43}$/);
      assert.equal(record.prefix, key.slice(0, 12));
      assert.match(record.id, /^key_/);
      assert.deepEqual({ ...record, createdAt: undefined }, { id: record.id, name: 'alice', prefix: record.prefix, tier: 'pro', rpm: 60, models: ['Qwen/*'], quota: { tokens: 1000, period: 'day' }, createdAt: undefined });
      assert.deepEqual(await store.keys.findByHash(hashApiKey(key)), record);
      assert.equal(await store.keys.findByHash(hashApiKey(`${key}x`)), undefined);
      assert.deepEqual(await store.keys.get('alice'), record);
      assert.deepEqual(await store.keys.get(record.id), record);

      const bob = await store.keys.create({ name: 'bob' });
      assert.equal(bob.record.tier, 'free');
      assert.notEqual(bob.key, key);
      assert.deepEqual((await store.keys.list()).map((listed) => listed.name), ['alice', 'bob']);
      assert.equal(await store.keys.countActive(), 2);

      const updated = await store.keys.update('alice', { rpm: null, tpm: 5000, models: null, quota: { tokens: 2000, period: 'month' }, tier: 'free' });
      assert.deepEqual({ ...updated, createdAt: undefined }, { id: record.id, name: 'alice', prefix: record.prefix, tier: 'free', tpm: 5000, quota: { tokens: 2000, period: 'month' }, createdAt: undefined });
      assert.deepEqual(await store.keys.get(record.id), updated);
      assert.equal((await store.keys.update(record.id, { name: 'alice-2', quota: null }))?.quota, undefined);
      assert.equal(await store.keys.update('nobody', { rpm: 1 }), undefined);

      const revoked = await store.keys.revoke('bob');
      assert.ok(revoked?.revokedAt instanceof Date);
      assert.deepEqual((await store.keys.revoke(bob.record.id))?.revokedAt, revoked.revokedAt, 'revoking again keeps the first time');
      assert.deepEqual((await store.keys.findByHash(hashApiKey(bob.key)))?.revokedAt, revoked.revokedAt);
      assert.deepEqual((await store.keys.list()).map((listed) => listed.name), ['alice-2']);
      assert.deepEqual((await store.keys.list({ includeRevoked: true })).map((listed) => listed.name), ['alice-2', 'bob']);
      assert.equal(await store.keys.countActive(), 1);
      assert.equal(await store.keys.revoke('nobody'), undefined);
    });

    test('keys: a name is taken once (on create and on rename); limits out of range are refused', async (t) => {
      if (absent(t)) return;
      await store.keys.create({ name: 'carol' });
      await assert.rejects(store.keys.create({ name: 'carol' }), DuplicateKeyNameError);
      await store.keys.create({ name: 'dave' });
      await assert.rejects(store.keys.update('dave', { name: 'carol' }), /a key named 'carol' already exists/);
      await assert.rejects(store.keys.create({ name: 'erin', rpm: 0 }), RangeError);
      await assert.rejects(store.keys.create({ name: ' ' }), RangeError);
      await assert.rejects(store.keys.update('dave', { quota: { tokens: 1.5, period: 'day' } }), RangeError);
    });

    test('usage: summaries by key, model and day within [from, to); period totals by UTC day and month', async (t) => {
      if (absent(t)) return;
      const midnight = Date.UTC(2026, 10, 30);
      await store.usage.insert([
        usageRow({ ts: midnight - 1, promptTokens: 100, completionTokens: 50, user: 'u1', finishReason: 'stop,length', ttftMs: 30, deployment: 'gpu-1' }),
        usageRow({ ts: midnight }),
        usageRow({ ts: midnight + 1000, model: 'deepseek-ai/DeepSeek-V3', status: 'cancelled' }),
        usageRow({ ts: midnight + 2000, keyId: 'key_b', keyName: 'bob', completionTokens: 7 }),
        usageRow({ ts: midnight + DAY_MS, keyId: 'key_b', keyName: 'bob', status: 'failed' }),
      ]);
      await store.usage.insert([]);
      const window = { from: new Date(midnight - DAY_MS), to: new Date(midnight + DAY_MS) };
      const byKey = await store.usage.summarise({ ...window, groupBy: 'key' });
      assert.deepEqual(byKey, [
        { group: 'alice', key_id: 'key_a', requests: 3, prompt_tokens: 120, cached_tokens: 6, completion_tokens: 60, reasoning_tokens: 3, total_tokens: 180 },
        { group: 'bob', key_id: 'key_b', requests: 1, prompt_tokens: 10, cached_tokens: 2, completion_tokens: 7, reasoning_tokens: 1, total_tokens: 17 },
      ]);
      const byModel = await store.usage.summarise({ ...window, groupBy: 'model' });
      assert.deepEqual(byModel.map((row) => [row.group, row.requests]), [['Qwen/Qwen2.5-7B-Instruct', 3], ['deepseek-ai/DeepSeek-V3', 1]]);
      const byDay = await store.usage.summarise({ from: new Date(0), to: new Date(midnight + 2 * DAY_MS), groupBy: 'day' });
      assert.deepEqual(byDay.map((row) => [row.group, row.requests, row.total_tokens]), [['2026-11-29', 1, 150], ['2026-11-30', 3, 47], ['2026-12-01', 1, 15]]);
      const fromMidnight = await store.usage.summarise({ from: new Date(midnight), to: new Date(midnight + 1000), groupBy: 'key' });
      assert.deepEqual(fromMidnight.map((row) => [row.group, row.requests]), [['alice', 1]], 'from inclusive, to exclusive');
      const bobOnly = await store.usage.summarise({ from: new Date(0), to: new Date(midnight + 2 * DAY_MS), groupBy: 'day', keyId: 'key_b' });
      assert.deepEqual(bobOnly.map((row) => row.group), ['2026-11-30', '2026-12-01']);

      assert.equal(await store.usage.periodTokens('key_a', 'day', new Date(midnight - DAY_MS / 2)), 150);
      assert.equal(await store.usage.periodTokens('key_a', 'day', new Date(midnight + 5)), 30);
      assert.equal(await store.usage.periodTokens('key_a', 'month', new Date(midnight)), 180);
      assert.equal(await store.usage.periodTokens('key_b', 'month', new Date(midnight + DAY_MS)), 15);
      assert.equal(await store.usage.periodTokens('nobody', 'day', new Date(midnight)), 0);
      await store.usage.insert([usageRow({ ts: midnight + 5000, promptTokens: 1, completionTokens: 2 })]);
      assert.equal(await store.usage.periodTokens('key_a', 'day', new Date(midnight)), 33, 'totals add up across batches');
      await store.usage.insert([usageRow({ ts: midnight + 6000, keyId: 'key_c', keyName: 'carol', metered: false })]);
      assert.equal(await store.usage.periodTokens('key_c', 'day', new Date(midnight)), 0, 'only keys with a quota keep totals');
    });

    test('usage: 10,000 rows in one insert, totals included', async (t) => {
      if (absent(t)) return;
      const start = Date.UTC(2027, 0, 1);
      const rows = Array.from({ length: 10_000 }, (_, index) => usageRow({ ts: start + index, keyId: `bulk_${index % 7}`, keyName: `bulk-${index % 7}` }));
      const began = performance.now();
      await store.usage.insert(rows);
      const elapsedMs = performance.now() - began;
      t.diagnostic(`${kind}: 10,000 usage rows inserted in ${elapsedMs.toFixed(0)} ms`);
      if (kind === 'sqlite') assert.ok(elapsedMs < 1_000, `took ${elapsedMs} ms`);
      const summary = await store.usage.summarise({ from: new Date(start), to: new Date(start + DAY_MS), groupBy: 'key' });
      assert.equal(summary.reduce((sum, row) => sum + row.requests, 0), 10_000);
      const month = await Promise.all(Array.from({ length: 7 }, (_, index) => store.usage.periodTokens(`bulk_${index}`, 'month', new Date(start))));
      assert.equal(month.reduce((sum, tokens) => sum + tokens, 0), 150_000);
    });
  });
}

test('two processes opening a new SQLite store at once both succeed (one migrates, the other waits)', async () => {
  const dataDir = await tempDir();
  // Each process loads the code first, then opens at the same agreed moment, so their migrations really overlap.
  const openAt = Date.now() + 3_000;
  const script = [
    `const { openStore } = await import(${JSON.stringify(new URL('../../src/store/store.ts', import.meta.url).href)});`,
    `await new Promise((resolve) => setTimeout(resolve, ${openAt} - Date.now()));`,
    `const store = await openStore({ dataDir: ${JSON.stringify(dataDir)} });`,
    'await store.keys.countActive();',
    'await store.close();',
  ].join('\n');
  const run = () =>
    new Promise<{ code: number | null; output: string }>((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (data) => (output += data));
      child.stderr.on('data', (data) => (output += data));
      child.on('exit', (code) => resolve({ code, output }));
    });
  for (const { code, output } of await Promise.all([run(), run(), run(), run()])) assert.equal(code, 0, output);
});

test('storeOptionsFrom: the config, else DATABASE_URL (empty counts as unset), else the data dir default', () => {
  const env = { HOME: '/home/k', XDG_DATA_HOME: '/xdg' };
  assert.deepEqual(storeOptionsFrom(undefined, env), { dataDir: '/xdg/kiln' });
  assert.deepEqual(storeOptionsFrom(undefined, { ...env, KILN_DATA_DIR: '/data', DATABASE_URL: '' }), { dataDir: '/data' });
  assert.deepEqual(storeOptionsFrom({ data_dir: '/cfg' }, { ...env, DATABASE_URL: 'postgres://h/db' }), { dataDir: '/cfg', databaseUrl: 'postgres://h/db' });
  assert.deepEqual(storeOptionsFrom({ database_url: 'postgres://c/db' }, { ...env, DATABASE_URL: 'postgres://h/db' }).databaseUrl, 'postgres://c/db');
});

describe('kiln keys and kiln usage, in-process on SQLite', () => {
  let store: Store;
  before(async () => (store = await openStore({ dataDir: await tempDir() })));
  after(() => store.close());

  async function run(command: typeof keysCommand, args: string[]) {
    const out = new PassThrough();
    const err = new PassThrough();
    const code = await command(args, { store, out, err });
    return { code, out: String(out.read() ?? ''), err: String(err.read() ?? '') };
  }

  test('create prints the key once; list, update and revoke never show it', async () => {
    const created = await run(keysCommand, ['create', '--name', 'alice', '--tier', 'pro', '--rpm', '60', '--models', 'Qwen/*, deepseek-ai/*', '--quota-tokens', '1000', '--quota-period', 'day']);
    assert.equal(created.code, 0, created.err);
    const key = /\b(sk-kiln-\w+)/.exec(created.out)?.[1];
    assert.ok(key !== undefined, created.out);
    assert.match(created.out, /will not be shown again/);
    const id = /id (key_\w+)/.exec(created.out)![1]!;

    const listed = await run(keysCommand, ['list']);
    assert.match(listed.out, /^NAME\s+ID\s+PREFIX\s+TIER\s+RPM\s+TPM\s+MODELS\s+QUOTA\s+CREATED \(UTC\)\s+REVOKED \(UTC\)\n/);
    assert.match(listed.out, new RegExp(`\\nalice\\s+${id}\\s+${key.slice(0, 12)}…\\s+pro\\s+60\\s+-\\s+Qwen/\\*,deepseek-ai/\\*\\s+1000/day\\s+\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d\\s+-\\n`));
    const json = await run(keysCommand, ['list', '--json']);
    assert.equal(JSON.parse(json.out)[0].id, id);

    const updated = await run(keysCommand, ['update', 'alice', '--rpm', 'none', '--tpm', '500', '--quota-tokens', '2000']);
    assert.equal(updated.code, 0, updated.err);
    assert.deepEqual((await store.keys.get(id))?.quota, { tokens: 2000, period: 'day' });
    assert.equal((await store.keys.get(id))?.rpm, undefined);

    assert.equal((await run(keysCommand, ['revoke', id])).code, 0);
    assert.equal((await run(keysCommand, ['list'])).out, 'No active keys (--all shows revoked ones).\n');
    const all = await run(keysCommand, ['list', '--all']);
    assert.match(all.out, /\nalice\s.*\d\d:\d\d\n$/);
    for (const output of [listed, json, updated, all]) {
      assert.ok(!output.out.includes(key) && !output.out.includes(hashApiKey(key)), 'neither the key nor its hash is shown');
    }
  });

  test('bad input exits 2 with a message; an unknown key or a taken name exits 1', async () => {
    const cases: [string[], number, RegExp][] = [
      [['create'], 2, /create needs --name/],
      [['create', '--name', 'x', '--tier', 'gold'], 2, /--tier must be free or pro/],
      [['create', '--name', 'x', '--rpm', '0'], 2, /--rpm must be a positive integer/],
      [['create', '--name', 'x', '--quota-tokens', '5'], 2, /together/],
      [['create', '--name', 'x', '--bogus'], 2, /Unknown option '--bogus'/],
      [['list', '--rpm', '5'], 2, /--rpm does not apply to list/],
      [['rotate'], 2, /unknown subcommand 'rotate'/],
      [['update', 'nobody', '--rpm', '5'], 1, /no key with the name or id 'nobody'/],
      [['revoke', 'nobody'], 1, /no key with the name or id 'nobody'/],
    ];
    for (const [args, expected, message] of cases) {
      const { code, err } = await run(keysCommand, args);
      assert.equal(code, expected, args.join(' '));
      assert.match(err, message, args.join(' '));
    }
    assert.equal((await run(keysCommand, ['create', '--name', 'taken'])).code, 0);
    const taken = await run(keysCommand, ['create', '--name', 'taken']);
    assert.equal(taken.code, 1);
    assert.match(taken.err, /a key named 'taken' already exists/);
    assert.equal((await run(keysCommand, ['update', 'taken'])).code, 2);
  });

  test('usage: a table with totals, JSON, and bad times refused', async () => {
    await store.usage.insert([usageRow({ ts: Date.UTC(2026, 10, 2) }), usageRow({ ts: Date.UTC(2026, 10, 3), model: 'm2', promptTokens: 90 })]);
    const table = await run(usageCommand, ['--from', '2026-11-01', '--to', '2026-12-01', '--group-by', 'model']);
    assert.equal(table.code, 0, table.err);
    assert.match(table.out, /^Usage from 2026-11-01T00:00:00\.000Z to 2026-12-01T00:00:00\.000Z \(exclusive\), by model:\nMODEL\s+REQUESTS\s+PROMPT\s+CACHED\s+COMPLETION\s+REASONING\s+TOTAL TOKENS\n/);
    assert.match(table.out, /\nm2\s+1\s+90\s+2\s+5\s+1\s+95\n/);
    assert.match(table.out, /\nTOTAL\s+2\s+100\s+4\s+10\s+2\s+110\n$/);
    const json = await run(usageCommand, ['--from', String(Date.UTC(2026, 10, 1) / 1000), '--to', '2026-11-03T00:00:00Z', '--json']);
    assert.deepEqual(JSON.parse(json.out).totals, { requests: 1, prompt_tokens: 10, cached_tokens: 2, completion_tokens: 5, reasoning_tokens: 1, total_tokens: 15 });
    const empty = await run(usageCommand, ['--to', '2020-01-01']);
    assert.match(empty.out, /by key:\nNo requests recorded in this window\.\n$/);
    assert.equal((await run(usageCommand, ['--from', 'yesterday'])).code, 2);
    assert.equal((await run(usageCommand, ['--from', '2026-12-01', '--to', '2026-11-01'])).code, 2);
    assert.equal((await run(usageCommand, ['--group-by', 'user'])).code, 2);
  });
});
