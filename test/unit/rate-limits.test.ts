/**
 * Rate limits: requests and tokens per minute, per key and per key+model, in memory and in a real Redis (skipped,
 * visibly, where none answers): refusals carry Retry-After and OpenAI's headers, reservations are settled to the
 * real use, a refusal takes nothing, two instances on one Redis share one limit, and a Redis that goes away is
 * survived (fail open) or refused (fail closed), each outage logged once and the recovery too.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, mock, test, type TestContext } from 'node:test';
import { KilnError } from '../../src/errors/catalog.js';
import { formatResetDuration } from '../../src/tenancy/ratelimit-headers.js';
import { RateLimits, type RateLimitStoreOptions, type RateSubject } from '../../src/tenancy/rate-limits.js';
import { reachableRedis, REDIS_URL } from '../helpers/stores.js';
import { TcpProxy, unusedPort } from '../helpers/tcp-proxy.js';

const redisTarget = new URL(REDIS_URL);
const redisUp = (await reachableRedis()) !== undefined;
const redisAbsent = `Redis not reachable at ${redisTarget.hostname}:${redisTarget.port || 6379} (set REDIS_URL)`;

class CollectingLog {
  readonly warns: string[] = [];
  readonly infos: string[] = [];
  /** Everything logged, fields and message, as one text to search. */
  text = '';
  warn(fields: object, message: string): void {
    this.warns.push(message);
    this.text += `${JSON.stringify(fields)} ${message}\n`;
  }
  info(fields: object, message: string): void {
    this.infos.push(message);
    this.text += `${JSON.stringify(fields)} ${message}\n`;
  }
}

type Store = 'memory' | 'redis';
const open: RateLimits[] = [];

async function limits(store: Store, options: Partial<RateLimitStoreOptions> = {}): Promise<RateLimits> {
  const created = await RateLimits.create({
    onStoreFailure: 'open',
    log: new CollectingLog(),
    keyPrefix: `test-${randomUUID()}`,
    ...(store === 'redis' ? { redisUrl: REDIS_URL } : {}),
    ...options,
  });
  open.push(created);
  return created;
}

async function closeAll(): Promise<void> {
  await Promise.all(open.splice(0).map((each) => each.close()));
}

async function refusal(promise: Promise<unknown>): Promise<KilnError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof KilnError, `expected a KilnError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected a refusal');
}

const key = (rest: Partial<RateSubject> = {}): RateSubject => ({ id: `key-${randomUUID()}`, name: 'alice', ...rest });

for (const store of ['memory', 'redis'] as const) {
  describe(`RateLimits, counters in ${store}`, () => {
    const skipped = (t: TestContext) => {
      if (store === 'redis' && !redisUp) t.skip(redisAbsent);
      return store === 'redis' && !redisUp;
    };
    test.afterEach(closeAll);

    test('rpm: the (N+1)th request in the window is refused with 429, Retry-After and headers', async (t) => {
      if (skipped(t)) return;
      const rateLimits = await limits(store);
      const alice = key({ rpm: 3 });
      for (const remaining of ['2', '1', '0']) {
        const { headers } = await rateLimits.reserve(alice, 0);
        assert.equal(headers['x-ratelimit-limit-requests'], '3');
        assert.equal(headers['x-ratelimit-remaining-requests'], remaining);
        assert.match(headers['x-ratelimit-reset-requests']!, /^(\d+(\.\d+)?s|1m0s|\d+ms)$/);
        assert.equal(headers['x-ratelimit-limit-tokens'], undefined, 'no token limit, no token headers');
      }
      const error = await refusal(rateLimits.reserve(alice, 0));
      assert.equal(error.kind, 'rateLimited');
      assert.equal(error.status, 429);
      assert.match(error.message, /requests per minute \(RPM\) on key "alice": limit 3, used 3, requested 1/);
      assert.ok(error.retryAfterSeconds !== undefined && error.retryAfterSeconds >= 1 && error.retryAfterSeconds <= 60);
      assert.equal(error.headers?.['x-ratelimit-remaining-requests'], '0');
      assert.equal(error.headers?.['x-ratelimit-limit-requests'], '3');
    });

    test('tpm: a reservation counts at once; settle gives back the unused part or takes the excess', async (t) => {
      if (skipped(t)) return;
      const rateLimits = await limits(store);
      const alice = key({ tpm: 1_000 });
      const first = await rateLimits.reserve(alice, 300);
      assert.equal(first.headers['x-ratelimit-remaining-tokens'], '700');
      assert.equal(first.headers['x-ratelimit-limit-tokens'], '1000');
      first.settle(100);
      first.settle(0); // only the first settle counts
      await rateLimits.idle();
      const second = await rateLimits.reserve(alice, 100);
      assert.equal(second.headers['x-ratelimit-remaining-tokens'], '800', '100 used, then 100 reserved');
      second.settle(250);
      await rateLimits.idle();
      const third = await rateLimits.reserve(alice, 0);
      assert.equal(third.headers['x-ratelimit-remaining-tokens'], '650');
      const refused = await refusal(rateLimits.reserve(alice, 651));
      assert.match(refused.message, /tokens per minute \(TPM\) on key "alice": limit 1000, used 350, requested 651/);
      assert.equal(refused.headers?.['x-ratelimit-remaining-tokens'], '650', 'the refused request took nothing');
    });

    test('a request needing more tokens than the tpm limit itself is "too large": 429 without Retry-After', async (t) => {
      if (skipped(t)) return;
      const rateLimits = await limits(store);
      const alice = key({ rpm: 5, tpm: 1_000 });
      const error = await refusal(rateLimits.reserve(alice, 1_001));
      assert.equal(error.kind, 'rateLimited');
      assert.match(error.message, /^Request too large for tokens per minute \(TPM\) on key "alice": limit 1000, requested 1001/);
      assert.equal(error.retryAfterSeconds, undefined);
      const { headers } = await rateLimits.reserve(alice, 1_000);
      assert.equal(headers['x-ratelimit-remaining-requests'], '4', 'the too-large request was not counted');
      assert.equal(headers['x-ratelimit-remaining-tokens'], '0');
    });

    test('key+model limits count per model, apart from the key own limits; headers report the tighter', async (t) => {
      if (skipped(t)) return;
      const rateLimits = await limits(store);
      const id = `key-${randomUUID()}`;
      const onModel = (model: string): RateSubject => ({ id, name: 'alice', rpm: 10, model: { id: model, rpm: 2 } });
      const first = await rateLimits.reserve(onModel('org/a'), 0);
      assert.equal(first.headers['x-ratelimit-limit-requests'], '2', 'the model limit is tighter');
      assert.equal(first.headers['x-ratelimit-remaining-requests'], '1');
      await rateLimits.reserve(onModel('org/a'), 0);
      const error = await refusal(rateLimits.reserve(onModel('org/a'), 0));
      assert.match(error.message, /on key "alice" for model "org\/a": limit 2, used 2/);
      const other = await rateLimits.reserve(onModel('org/b'), 0);
      assert.equal(other.headers['x-ratelimit-remaining-requests'], '1', 'another model has its own count');
      const keyOnly = await rateLimits.reserve({ id, name: 'alice', rpm: 10 }, 0);
      assert.equal(keyOnly.headers['x-ratelimit-limit-requests'], '10');
      assert.equal(keyOnly.headers['x-ratelimit-remaining-requests'], '6', '3 on a, 1 on b, this one; the refusal gave back');
    });

    test('all or nothing: a refusal on tokens gives back the request it counted, on the key and the model', async (t) => {
      if (skipped(t)) return;
      const rateLimits = await limits(store);
      const alice = key({ rpm: 5, tpm: 100, model: { id: 'org/a', rpm: 5, tpm: 1_000 } });
      await rateLimits.reserve(alice, 80);
      const error = await refusal(rateLimits.reserve(alice, 50));
      assert.match(error.message, /tokens per minute \(TPM\) on key "alice": limit 100, used 80, requested 50/);
      assert.equal(error.headers?.['x-ratelimit-remaining-requests'], '4');
      const { headers } = await rateLimits.reserve(alice, 10);
      assert.equal(headers['x-ratelimit-remaining-requests'], '3', 'two requests counted, not three');
      assert.equal(headers['x-ratelimit-remaining-tokens'], '10', '90 of 100 on the key (the model has 910 left)');
    });

    test('a subject without limits gets no headers and costs nothing', async (t) => {
      if (skipped(t)) return;
      const rateLimits = await limits(store);
      const reservation = await rateLimits.reserve(key({ model: { id: 'org/a' } }), 5_000);
      assert.deepEqual(reservation.headers, {});
      reservation.settle(10);
      await assert.rejects(rateLimits.reserve(key(), -1), RangeError);
    });
  });
}

describe('RateLimits, windows (memory, mocked clock)', () => {
  test.afterEach(() => {
    mock.timers.reset();
    return closeAll();
  });

  test('the window is fixed: it resets 60 s after the first request, and a late settle credits nothing', async () => {
    mock.timers.enable({ apis: ['Date', 'setTimeout'], now: 1_000_000 });
    const rateLimits = await limits('memory');
    const alice = key({ rpm: 1, tpm: 100 });
    const held = await rateLimits.reserve(alice, 80);
    assert.equal(held.headers['x-ratelimit-reset-requests'], '1m0s');
    mock.timers.tick(20_000);
    const error = await refusal(rateLimits.reserve(alice, 0));
    assert.equal(error.retryAfterSeconds, 40);
    assert.equal(error.headers?.['x-ratelimit-reset-requests'], '40s');
    mock.timers.tick(41_000);
    held.settle(0); // its window is over: giving 80 back would credit the next window
    await rateLimits.idle();
    const { headers } = await rateLimits.reserve(alice, 100);
    assert.equal(headers['x-ratelimit-remaining-requests'], '0');
    assert.equal(headers['x-ratelimit-remaining-tokens'], '0');
  });
});

test('reset durations are written as OpenAI writes them', () => {
  const cases: Array<[number, string]> = [
    [0, '0s'],
    [-5, '0s'],
    [0.2, '1ms'],
    [59, '59ms'],
    [1_000, '1s'],
    [8_640, '8.64s'],
    [59_999, '59.999s'],
    [60_000, '1m0s'],
    [360_000, '6m0s'],
    [3_723_000, '1h2m3s'],
  ];
  for (const [ms, text] of cases) assert.equal(formatResetDuration(ms), text, `${ms} ms`);
});

describe('RateLimits, Redis shared and lost', () => {
  test.afterEach(closeAll);

  test('two instances on one Redis enforce one limit', async (t) => {
    if (!redisUp) return t.skip(redisAbsent);
    const keyPrefix = `test-${randomUUID()}`;
    const [a, b] = await Promise.all([limits('redis', { keyPrefix }), limits('redis', { keyPrefix })]);
    const alice = key({ rpm: 3 });
    await a.reserve(alice, 0);
    await b.reserve(alice, 0);
    const third = await a.reserve(alice, 0);
    assert.equal(third.headers['x-ratelimit-remaining-requests'], '0');
    const error = await refusal(b.reserve(alice, 0));
    assert.equal(error.kind, 'rateLimited');
  });

  test('unreachable from the start: open serves with per-instance counters and logs once; closed answers 503', async () => {
    const url = `redis://:secret-password@127.0.0.1:${await unusedPort()}`;
    const log = new CollectingLog();
    const failOpen = await limits('redis', { redisUrl: url, log });
    const alice = key({ rpm: 2 });
    await failOpen.reserve(alice, 0);
    await failOpen.reserve(alice, 0);
    assert.equal((await refusal(failOpen.reserve(alice, 0))).kind, 'rateLimited', 'the per-instance limit still holds');
    assert.equal(log.warns.length, 1, log.warns.join('\n'));
    assert.match(log.warns[0]!, /per-instance counters/);
    assert.match(log.text, /"redis":"127\.0\.0\.1:\d+"/, 'the server is named by host:port');
    assert.doesNotMatch(log.text, /secret-password/);

    const closedLog = new CollectingLog();
    const failClosed = await limits('redis', { redisUrl: url, log: closedLog, onStoreFailure: 'closed' });
    for (let i = 0; i < 3; i++) {
      const error = await refusal(failClosed.reserve(alice, 0));
      assert.equal(error.kind, 'rateLimitsUnavailable');
      assert.equal(error.status, 503);
      assert.equal(error.retryAfterSeconds, 1);
      assert.match(error.message, /Rate limits cannot be checked right now/);
    }
    assert.equal(closedLog.warns.length, 1);
    assert.match(closedLog.warns[0]!, /refused \(503\)/);
  });

  for (const mode of ['open', 'closed'] as const) {
    test(`Redis lost and back (fail ${mode}): one warning, one recovery notice, shared counting again`, async (t) => {
      if (!redisUp) return t.skip(redisAbsent);
      const proxy = await TcpProxy.start(redisTarget.hostname, Number(redisTarget.port || 6379));
      t.after(() => proxy.stop());
      const keyPrefix = `test-${randomUUID()}`;
      const log = new CollectingLog();
      const viaProxy = await limits('redis', { redisUrl: `redis://127.0.0.1:${proxy.port}`, keyPrefix, log, onStoreFailure: mode });
      const direct = await limits('redis', { keyPrefix });
      const alice = key({ rpm: 100 });
      await viaProxy.reserve(alice, 0);
      await direct.reserve(alice, 0);

      await proxy.stop();
      await until(() => log.warns.length > 0);
      for (let i = 0; i < 3; i++) {
        if (mode === 'open') {
          const { headers } = await viaProxy.reserve(alice, 0);
          assert.equal(headers['x-ratelimit-remaining-requests'], String(99 - i), 'counted by this instance alone');
        } else {
          assert.equal((await refusal(viaProxy.reserve(alice, 0))).kind, 'rateLimitsUnavailable');
        }
      }

      await proxy.resume();
      await until(() => log.infos.length > 0, 5_000);
      const { headers } = await viaProxy.reserve(alice, 0);
      assert.equal(headers['x-ratelimit-remaining-requests'], '97', 'back on the shared counter: 2 before, this one');
      assert.equal(log.warns.length, 1, log.warns.join('\n'));
      assert.equal(log.infos.length, 1);
      assert.match(log.infos[0]!, /reachable again/);
    });
  }
});

test('Redis failing without a disconnect (replies stalled): fail open logs it once and notices when it works again', async (t) => {
  if (!redisUp) return t.skip(redisAbsent);
  const proxy = await TcpProxy.start(redisTarget.hostname, Number(redisTarget.port || 6379));
  t.after(() => proxy.stop());
  const log = new CollectingLog();
  const rateLimits = await limits('redis', { redisUrl: `redis://127.0.0.1:${proxy.port}`, log });
  t.after(closeAll);
  const alice = key({ rpm: 100 });
  await rateLimits.reserve(alice, 0);
  proxy.stall();
  for (let i = 0; i < 2; i++) {
    const { headers } = await rateLimits.reserve(alice, 0); // each waits for the command timeout, then falls back
    assert.equal(headers['x-ratelimit-remaining-requests'], String(99 - i));
  }
  assert.equal(log.warns.length, 1, log.warns.join('\n'));
  proxy.flow();
  await until(() => log.infos.length > 0, 3_000);
  const { headers } = await rateLimits.reserve(alice, 0);
  // The shared counter again. The stalled increments reached Redis too (a timed-out write may or may not have
  // happened): they count there as well as in the fallback, erring on the side of the limit.
  assert.equal(headers['x-ratelimit-remaining-requests'], '96');
  assert.equal(log.warns.length, 1);
});

async function until(condition: () => boolean, ms = 3_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
