/**
 * Two Kiln processes behind one imaginary load balancer, sharing one PostgreSQL store (keys, usage ledger) and one
 * Redis (rate-limit counters), as the multi-instance set-up: a key the CLI creates works on both, its per-minute
 * limit is one limit across both, both write into one ledger, and a revocation reaches both within the key cache's
 * delay. PostgreSQL and Redis are this machine's loopback servers (DATABASE_URL / REDIS_URL); where one does not
 * answer, the tests skip and say so.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test, type TestContext } from 'node:test';
import pg from 'pg';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { runKiln, startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';
import { POSTGRES_URL, REDIS_URL, reachablePostgres, reachableRedis, scratchDatabase, type ScratchDatabase } from '../helpers/stores.js';

const ADMIN = `sk-admin-${randomBytes(16).toString('hex')}`;
const MODEL = 'tiny/shared';
const RPM = 6;
const KEY_CACHE_MS = 5_000;

/** Why the tests cannot run here, when a store does not answer. */
let unavailable: string | undefined;
let database: ScratchDatabase | undefined;
let configFile: string;
let instances: KilnProcess[] = [];
let key: string;

before(async () => {
  const [postgres, redis] = await Promise.all([reachablePostgres(), reachableRedis()]);
  if (postgres === undefined) unavailable = `PostgreSQL not reachable at ${POSTGRES_URL} (set DATABASE_URL)`;
  else if (redis === undefined) unavailable = `Redis not reachable at ${REDIS_URL} (set REDIS_URL)`;
  if (unavailable !== undefined) return;
  // A database of its own: the migrations run on an empty schema and nothing is shared with other runs. Redis needs no
  // such care: counters are keyed by the key's random id and expire with their minute.
  database = await scratchDatabase(postgres);
  configFile = await writeConfig({
    database_url: database.url,
    redis_url: redis,
    // Closed: a Redis that fails must show as 503s here, not pass unseen as per-instance limits.
    server: { admin_key: ADMIN, usage_flush_ms: 100, rate_limit_store_failure: 'closed' },
    models: [{ id: MODEL, file: await ensureTinyModel({ neverEnd: true }), parallel: 2, threads: 1, context_size: 256 }],
  });
  // Both at once: they migrate the one empty schema concurrently.
  instances = await Promise.all([startKiln(['--config', configFile]), startKiln(['--config', configFile])]);
  const created = await runKiln(['keys', 'create', '--name', 'shared', '--rpm', String(RPM), '--config', configFile]);
  assert.equal(created.code, 0, created.output);
  const match = /\b(sk-kiln-[0-9A-Za-z]{43})\b/.exec(created.output);
  assert.ok(match, created.output);
  key = match[1]!;
});

after(async () => {
  await Promise.all(instances.map((instance) => instance.stop()));
  await database?.drop();
});

/** Skips visibly when a store is missing; answers whether the test should go on. */
function available(t: TestContext): boolean {
  if (unavailable === undefined) return true;
  t.skip(unavailable);
  return false;
}

function chat(instance: KilnProcess, requestId: string): Promise<Response> {
  return fetch(`${instance.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, 'x-request-id': requestId },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 }),
  });
}

interface Answer {
  instance: number;
  requestId: string;
  status: number;
  headers: Headers;
  usage?: { prompt_tokens: number; completion_tokens: number };
}

const answers: Answer[] = [];

test('one RPM limit across two instances: 10 requests alternated, 6 served, 4 refused with Retry-After', async (t) => {
  if (!available(t)) return;
  for (let i = 0; i < 10; i++) {
    const requestId = `shared-${i}`;
    const response = await chat(instances[i % 2]!, requestId);
    const body = (await response.json()) as { usage?: Answer['usage'] };
    const usage = body.usage ? { prompt_tokens: body.usage.prompt_tokens, completion_tokens: body.usage.completion_tokens } : undefined;
    answers.push({ instance: i % 2, requestId, status: response.status, headers: response.headers, ...(usage ? { usage } : {}) });
  }
  assert.deepEqual(
    answers.map((answer) => answer.status),
    [200, 200, 200, 200, 200, 200, 429, 429, 429, 429],
  );
  // The remaining count goes down by one per request, whichever instance served it.
  const served = answers.filter((answer) => answer.status === 200);
  assert.deepEqual(
    served.map((answer) => answer.headers.get('x-ratelimit-remaining-requests')),
    ['5', '4', '3', '2', '1', '0'],
  );
  for (const answer of answers) {
    assert.equal(answer.headers.get('x-ratelimit-limit-requests'), String(RPM), answer.requestId);
    assert.match(answer.headers.get('x-ratelimit-reset-requests') ?? '', /^\d+(\.\d+)?m?s$|^\d+m\d+(\.\d+)?s$/, answer.requestId);
  }
  for (const refused of answers.filter((answer) => answer.status === 429)) {
    assert.equal(refused.headers.get('x-ratelimit-remaining-requests'), '0');
    const retryAfter = Number(refused.headers.get('retry-after'));
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After ${refused.headers.get('retry-after')}`);
  }
});

test('both instances write into the one ledger: /v1/usage on either shows the sum', async (t) => {
  if (!available(t)) return;
  const served = answers.filter((answer) => answer.status === 200);
  assert.equal(served.length, RPM, 'runs after the rate-limit test');
  const expected = {
    requests: served.length,
    prompt_tokens: served.reduce((sum, answer) => sum + answer.usage!.prompt_tokens, 0),
    completion_tokens: served.reduce((sum, answer) => sum + answer.usage!.completion_tokens, 0),
  };
  // Each instance writes its own rows (on its flush interval, or first thing on GET /v1/usage): ask until both are in.
  const deadline = Date.now() + 5_000;
  for (const instance of instances) {
    for (;;) {
      const response = await fetch(`${instance.url}/v1/usage?group_by=key`, { headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(response.status, 200);
      const row = ((await response.json()) as { data: Array<{ key: string; requests: number; prompt_tokens: number; completion_tokens: number }> }).data.find(
        (each) => each.key === 'shared',
      );
      const seen = { requests: row?.requests ?? 0, prompt_tokens: row?.prompt_tokens ?? 0, completion_tokens: row?.completion_tokens ?? 0 };
      if (seen.requests >= expected.requests || Date.now() > deadline) {
        assert.deepEqual(seen, expected, instance.url);
        break;
      }
      await sleep(100);
    }
  }
  // Row by row, from both instances, refusals not among them.
  const client = new pg.Client({ connectionString: database!.url });
  await client.connect();
  try {
    const { rows } = await client.query<{ request_id: string; prompt_tokens: number; completion_tokens: number; status: string }>(
      'select request_id, prompt_tokens, completion_tokens, status from usage order by request_id',
    );
    assert.deepEqual(
      rows.map((row) => ({ request_id: row.request_id, prompt_tokens: row.prompt_tokens, completion_tokens: row.completion_tokens, status: row.status })),
      served.map((answer) => ({ request_id: answer.requestId, ...answer.usage!, status: 'completed' })).sort((a, b) => (a.request_id < b.request_id ? -1 : 1)),
    );
  } finally {
    await client.end();
  }
});

test('a key revoked with the CLI is refused by both instances within 5 s', async (t) => {
  if (!available(t)) return;
  // Both have the key in their cache: a revocation must not wait for a restart.
  for (const instance of instances) assert.equal((await models(instance)).status, 200);
  const revoked = await runKiln(['keys', 'revoke', 'shared', '--config', configFile]);
  assert.equal(revoked.code, 0, revoked.output);
  const revokedAt = Date.now();
  const refusedAfter = await Promise.all(
    instances.map(async (instance) => {
      for (;;) {
        const status = (await models(instance)).status;
        if (status === 401) return Date.now() - revokedAt;
        assert.equal(status, 200);
        assert.ok(Date.now() - revokedAt < KEY_CACHE_MS + 5_000, `${instance.url} still accepts the revoked key`);
        await sleep(100);
      }
    }),
  );
  for (const elapsed of refusedAfter) assert.ok(elapsed <= KEY_CACHE_MS + 1_000, `refused ${elapsed} ms after the revocation`);
  t.diagnostic(`refused by the two instances ${refusedAfter.join(' and ')} ms after kiln keys revoke returned`);
});

function models(instance: KilnProcess): Promise<Response> {
  return fetch(`${instance.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
}
