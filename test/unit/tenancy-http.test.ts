/**
 * Tenancy through the real HTTP layer and service, in-process over a fake engine, with a real SQLite store and
 * in-memory counters: who may call what (401, 403 by tier and by model glob, revocation within the key cache's
 * delay), quotas (SiliconFlow's 30001), per-minute limits with OpenAI's headers on success and on 429, the usage
 * ledger and /v1/usage, /metrics access, and logs that name keys without showing them.
 */
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, test } from 'node:test';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import type { FastifyInstance } from 'fastify';
import { SILENT_LOG } from '../../src/core/log.js';
import { buildHttpServer } from '../../src/http/server.js';
import { Metrics, metricsSourcesFromRegistry } from '../../src/metrics/metrics.js';
import { Admission } from '../../src/service/admission.js';
import { ChatService } from '../../src/service/chat-service.js';
import { ModelRegistry } from '../../src/service/model-registry.js';
import { openStore, type Store } from '../../src/store/store.js';
import { openTenancy, type Tenancy, type TenancyOptions } from '../../src/tenancy/tenancy.js';
import { fakeEngine } from '../helpers/fake-http.js';

const ADMIN = 'sk-admin-test-key-0001';
const KEY_CACHE_MS = 300;

interface Setup {
  app: FastifyInstance;
  store: Store;
  tenancy: Tenancy;
  logs(): string;
}

const opened: Setup[] = [];
after(async () => {
  for (const setup of opened) {
    await setup.app.close();
    await setup.tenancy.close();
  }
});

async function setup(options: Partial<TenancyOptions> & { metricsAccess?: 'open' | 'admin' | 'off'; admin?: boolean } = {}): Promise<Setup> {
  const store = await openStore({ dataDir: await mkdtemp(join(tmpdir(), 'kiln-tenancy-')) });
  const tenancy = await openTenancy({
    store,
    staticKeys: options.admin === false ? [] : [{ key: ADMIN, name: 'admin', tier: 'pro', admin: true }],
    keyCacheMs: KEY_CACHE_MS,
    log: SILENT_LOG,
    ...options,
  });
  const registry = new ModelRegistry();
  for (const id of ['fake-model', 'Pro/fake-model', 'other-model']) {
    const { engine } = fakeEngine({ pieceBytes: 4 });
    registry.add({ id, served: { engine, admission: new Admission(() => engine.capacity(), { depth: 64, waitMs: 60_000 }) }, ownedBy: 'kiln', created: 0 });
  }
  const metrics = new Metrics(metricsSourcesFromRegistry(registry), { processMetrics: false });
  const service = new ChatService(registry, {
    maxChoices: 8,
    systemFingerprint: 'test',
    gate: tenancy.gate,
    onCompletion: (record) => {
      tenancy.record(record);
      metrics.observeCompletion(record);
    },
  });
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (data) => (text += data));
  const app = buildHttpServer({
    service,
    auth: tenancy.auth,
    usage: tenancy.usage,
    metrics,
    metricsAccess: options.metricsAccess ?? 'open',
    logLevel: 'info',
    logStream: stream,
  });
  await app.ready();
  const result = { app, store, tenancy, logs: () => text };
  opened.push(result);
  return result;
}

function chat(app: FastifyInstance, key: string | undefined, body: Record<string, unknown> = {}) {
  return app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', ...(key !== undefined ? { authorization: `Bearer ${key}` } : {}) },
    payload: { model: 'fake-model', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, ...body },
  });
}

async function waitFor(check: () => Promise<boolean>, withinMs: number): Promise<number> {
  const began = performance.now();
  while (!(await check())) {
    if (performance.now() - began > withinMs) assert.fail(`not within ${withinMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return performance.now() - began;
}

test('a server with no key anywhere is open; the first stored key closes it within the key cache delay', async () => {
  const { app, store } = await setup({ admin: false });
  assert.equal((await chat(app, undefined)).statusCode, 200);
  const { key } = await store.keys.create({ name: 'first' });
  await waitFor(async () => (await chat(app, undefined)).statusCode === 401, KEY_CACHE_MS * 3);
  assert.equal((await chat(app, key)).statusCode, 200);
});

test('keys: 401 without or with an unknown key, 403 by tier and by model glob, revocation within the cache delay', async () => {
  const { app, store } = await setup();
  const missing = await chat(app, undefined);
  assert.equal(missing.statusCode, 401);
  assert.equal(missing.json().error.code, 'missing_api_key');
  assert.equal((await chat(app, 'sk-kiln-not-a-key')).json().error.code, 'invalid_api_key');

  const { key } = await store.keys.create({ name: 'alice', tier: 'free', models: ['fake-*'] });
  assert.equal((await chat(app, key)).statusCode, 200);
  const pro = await chat(app, key, { model: 'Pro/fake-model' });
  assert.equal(pro.statusCode, 403);
  assert.equal(pro.json().code, 30003);
  const other = await chat(app, key, { model: 'other-model' });
  assert.equal(other.statusCode, 403);
  assert.equal(other.json().error.type, 'permission_error');
  assert.match(other.json().message, /limited to fake-\*/);

  await store.keys.revoke('alice');
  const waited = await waitFor(async () => (await chat(app, key)).statusCode === 401, KEY_CACHE_MS * 3);
  assert.ok(waited <= KEY_CACHE_MS + 200, `refused after ${waited} ms`);
});

test('a key past its token quota gets the balance error (30001) until the period turns', async () => {
  const { app, store } = await setup();
  // The fake engine's prompt is 3 tokens; max_tokens 4 → 7 tokens a request.
  const { key } = await store.keys.create({ name: 'capped', quota: { tokens: 20, period: 'day' } });
  for (let index = 0; index < 3; index++) assert.equal((await chat(app, key)).statusCode, 200);
  const refused = await chat(app, key);
  assert.equal(refused.statusCode, 403);
  assert.equal(refused.json().code, 30001);
  assert.match(refused.json().message, /quota of 20 tokens this day/);
  // Written to the store, the count is the same.
  await store.keys.update('capped', { quota: { tokens: 22, period: 'day' } });
  await new Promise((resolve) => setTimeout(resolve, KEY_CACHE_MS + 50));
  assert.equal((await chat(app, key)).statusCode, 200, 'a raised quota applies');
});

test('requests per minute: headers on every success, 429 with Retry-After and headers past the limit', async () => {
  const { app, store } = await setup();
  const { key } = await store.keys.create({ name: 'rpm2', rpm: 2 });
  const first = await chat(app, key);
  assert.equal(first.headers['x-ratelimit-limit-requests'], '2');
  assert.equal(first.headers['x-ratelimit-remaining-requests'], '1');
  assert.match(String(first.headers['x-ratelimit-reset-requests']), /^(\d+m)?\d+(\.\d+)?m?s$/);
  const streamed = await chat(app, key, { stream: true });
  assert.equal(streamed.statusCode, 200);
  assert.equal(streamed.headers['x-ratelimit-remaining-requests'], '0', 'a stream carries the headers too');
  const refused = await chat(app, key);
  assert.equal(refused.statusCode, 429);
  assert.equal(refused.json().error.type, 'rate_limit_error');
  assert.ok(Number(refused.headers['retry-after']) >= 1);
  assert.equal(refused.headers['x-ratelimit-remaining-requests'], '0');
  assert.match(refused.json().message, /requests per minute/i);
});

test('tokens per minute: the reservation is settled to the real use; a request larger than the limit says so', async () => {
  const { app, store } = await setup();
  const { key } = await store.keys.create({ name: 'tpm', tpm: 100 });
  const tooLarge = await chat(app, key, { max_tokens: 200 });
  assert.equal(tooLarge.statusCode, 429);
  assert.match(tooLarge.json().message, /100/);
  const first = await chat(app, key, { max_tokens: 40 });
  assert.equal(first.statusCode, 200);
  const used = first.json().usage.total_tokens as number;
  // The next request's headers show what is left after the first's real use, minus its own reservation.
  const second = await chat(app, key, { max_tokens: 1 });
  const reserved = Math.ceil(2 / 4) + 4 + 1;
  assert.equal(Number(second.headers['x-ratelimit-remaining-tokens']), 100 - used - reserved);
});

test('per-key limits on one model apply there only', async () => {
  const { app } = await setup({ modelLimits: (model) => (model === 'other-model' ? { rpm: 1 } : undefined) });
  assert.equal((await chat(app, ADMIN, { model: 'other-model' })).statusCode, 200);
  assert.equal((await chat(app, ADMIN, { model: 'other-model' })).statusCode, 429);
  assert.equal((await chat(app, ADMIN)).statusCode, 200);
});

test('usage: the ledger sums what clients received, by key, model and day; admin only', async () => {
  const { app, store } = await setup();
  const { key: bob } = await store.keys.create({ name: 'bob' });
  const received = { bob: 0, admin: 0 };
  for (let index = 0; index < 4; index++) received.bob += (await chat(app, bob, { max_tokens: 2 + index })).json().usage.total_tokens;
  received.admin += (await chat(app, ADMIN, { model: 'other-model' })).json().usage.total_tokens;

  assert.equal((await app.inject({ url: '/v1/usage', headers: { authorization: `Bearer ${bob}` } })).statusCode, 404, 'normal keys do not see it');
  const byKey = (await app.inject({ url: '/v1/usage?group_by=key', headers: { authorization: `Bearer ${ADMIN}` } })).json();
  const rows = Object.fromEntries(byKey.data.map((row: { key: string; total_tokens: number; requests: number }) => [row.key, row]));
  assert.equal(rows.bob.total_tokens, received.bob);
  assert.equal(rows.bob.requests, 4);
  assert.equal(rows.admin.total_tokens, received.admin);
  const byModel = (await app.inject({ url: '/v1/usage?group_by=model', headers: { authorization: `Bearer ${ADMIN}` } })).json();
  assert.deepEqual(byModel.data.map((row: { model: string }) => row.model), ['fake-model', 'other-model']);
  const today = new Date().toISOString().slice(0, 10);
  const byDay = (await app.inject({ url: `/v1/usage?group_by=day&from=${today}`, headers: { authorization: `Bearer ${ADMIN}` } })).json();
  assert.equal(byDay.data[0].day, today);
  assert.equal(byDay.data[0].total_tokens, received.bob + received.admin);
  const bad = await app.inject({ url: '/v1/usage?group_by=user', headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(bad.statusCode, 400);
  assert.equal(bad.json().error.param, 'group_by');
  assert.equal((await app.inject({ url: '/v1/usage?from=yesterday', headers: { authorization: `Bearer ${ADMIN}` } })).statusCode, 400);
  // The admin route of issue 11 answers 404 to normal keys too.
  assert.equal((await app.inject({ method: 'POST', url: '/admin/reload', headers: { authorization: `Bearer ${bob}` } })).statusCode, 404);
});

test('/metrics: open by default and matches the traffic; admin-only when so configured', async () => {
  const open = await setup();
  await chat(open.app, ADMIN);
  await chat(open.app, ADMIN, { model: 'nope' });
  const scraped = await open.app.inject({ url: '/metrics' });
  assert.equal(scraped.statusCode, 200);
  const families = parsePrometheusTextFormat(scraped.body) as Array<{ name: string; metrics: Array<{ value?: string; labels?: Record<string, string> }> }>;
  const value = (name: string, labels: Record<string, string>) =>
    Number(families.find((family) => family.name === name)?.metrics.find((metric) => Object.entries(labels).every(([label, want]) => metric.labels?.[label] === want))?.value);
  assert.equal(value('kiln:requests_total', { model_name: 'fake-model', status: 'completed' }), 1);
  assert.equal(value('kiln:requests_rejected_total', { code: '400' }), 1);

  const closed = await setup({ metricsAccess: 'admin' });
  const { key } = await closed.store.keys.create({ name: 'carol' });
  assert.equal((await closed.app.inject({ url: '/metrics', headers: { authorization: `Bearer ${key}` } })).statusCode, 404);
  assert.equal((await closed.app.inject({ url: '/metrics' })).statusCode, 401);
  assert.equal((await closed.app.inject({ url: '/metrics', headers: { authorization: `Bearer ${ADMIN}` } })).statusCode, 200);
});

test('logs name the key and never show it', async () => {
  const { app, store, logs } = await setup();
  const { key } = await store.keys.create({ name: 'dave' });
  await chat(app, key);
  await chat(app, 'sk-kiln-wrong-key-value');
  const lines = logs().split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>);
  const completion = lines.find((line) => line.msg === 'completion');
  assert.equal(completion?.key, 'dave');
  assert.equal((completion?.completion as { keyName: string }).keyName, 'dave');
  assert.ok(!logs().includes(key) && !logs().includes('sk-kiln-wrong-key-value') && !logs().includes(ADMIN));
});

test('/v1/models lists the ids a key may use', async () => {
  const { app, store } = await setup();
  const { key } = await store.keys.create({ name: 'erin', tier: 'free', models: ['*-model'] });
  const ids = (await app.inject({ url: '/v1/models', headers: { authorization: `Bearer ${key}` } })).json().data.map((model: { id: string }) => model.id);
  assert.deepEqual(ids.sort(), ['fake-model', 'other-model']);
  const all = (await app.inject({ url: '/v1/models', headers: { authorization: `Bearer ${ADMIN}` } })).json().data;
  assert.equal(all.length, 3);
});
