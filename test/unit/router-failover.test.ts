/**
 * Router failover before the first byte: a retryable failure moves the request to another deployment, within
 * maxAttempts and the retry budget; what cannot be retried passes through; exhausted attempts answer the most telling
 * error (429 with the longest Retry-After, 504, else 503) without any upstream's URL.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../../src/errors/catalog.js';
import type { RoutedRun } from '../../src/service/routing/routed-run.js';
import { chatRequest, drain, failure, FakeEngine, sleep, testRouter, type FakeBehavior } from '../helpers/fake-engines.js';

const never = () => new AbortController().signal;

function routerOver(behaviors: FakeBehavior[], policy = {}) {
  const engines = behaviors.map((behavior, index) => new FakeEngine(`e${index}`, behavior));
  return { engines, ...testRouter(engines.map((engine) => ({ engine })), policy) };
}

async function rejection(promise: Promise<unknown>): Promise<KilnError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof KilnError, `a KilnError, not ${String(error)}`);
    return error;
  }
  assert.fail('resolved');
}

test('a retryable failure on one deployment is served by another', async () => {
  const { router, engines } = routerOver([{ failStart: failure('upstreamUnavailable') }, {}]);
  for (let i = 0; i < 8; i++) {
    const run = (await router.start(chatRequest(), never())) as RoutedRun;
    assert.equal(run.deployment, 'd1');
    assert.deepEqual(await drain(run), ['e1:0:0 e1:0:1 ']);
  }
  const [broken, healthy] = router.stats();
  assert.equal(healthy!.served, 8);
  assert.equal(broken!.served, 0);
  assert.equal(broken!.outstanding, 0, 'a failed start releases what it took');
  // Ejected after its third failure (failureThreshold): later requests did not try it.
  assert.equal(engines[0]!.starts, 3);
  assert.equal(broken!.state, 'ejected');
  await router.close();
});

test('attempts are bounded by maxAttempts, each deployment tried at most once; the answer says how many', async () => {
  const { router, engines } = routerOver(Array.from({ length: 5 }, () => ({ failStart: failure('upstreamUnavailable') })), { maxAttempts: 3, failureThreshold: 10 });
  const error = await rejection(router.start(chatRequest(), never()));
  assert.equal(error.status, 503);
  assert.equal(error.kind, 'upstreamUnavailable');
  assert.equal(error.retryAfterSeconds, 1);
  assert.match(error.message, /tried 3 deployments/);
  assert.doesNotMatch(error.message, /https?:/);
  assert.equal(engines.reduce((sum, engine) => sum + engine.starts, 0), 3);
  assert.ok(engines.every((engine) => engine.starts <= 1));

  const single = routerOver([{ failStart: failure('upstreamUnavailable') }], { maxAttempts: 3 });
  assert.match((await rejection(single.router.start(chatRequest(), never()))).message, /tried 1 deployment\b/);
  assert.equal(single.engines[0]!.starts, 1);
  await router.close();
  await single.router.close();
});

test('no attempt starts once the retry budget is spent', async () => {
  const failing = { failStart: failure('upstreamUnavailable') };
  const { router, engines, clock } = routerOver([failing, failing, failing, failing, failing], { maxAttempts: 5, retryBudgetMs: 50, failureThreshold: 10 });
  // Each attempt takes 30 ms of the router's clock.
  for (const engine of engines) {
    const start = engine.start.bind(engine);
    engine.start = (request, signal) => {
      clock.now += 30;
      return start(request, signal);
    };
  }
  const error = await rejection(router.start(chatRequest(), never()));
  assert.equal(error.status, 503);
  // 0 ms: first; 30 ms: second (within 50); 60 ms: budget spent.
  assert.equal(engines.reduce((sum, engine) => sum + engine.starts, 0), 2);
  await router.close();
});

test('a non-retryable failure passes its error through at once', async () => {
  const refused = failure('invalidParameter', { retryable: false, unhealthy: false });
  const { router, engines } = routerOver([{ failStart: refused }, { failStart: refused }]);
  const error = await rejection(router.start(chatRequest(), never()));
  assert.equal(error, refused.error);
  assert.equal(engines[0]!.starts + engines[1]!.starts, 1);
  assert.ok(router.stats().every((stats) => stats.failures === 0), 'not unhealthy: not counted');
  await router.close();
});

test("an error that is not a deployment's failure (the local engine's 400) is rethrown as is, not counted", async () => {
  const tooLong = new KilnError('contextLengthExceeded');
  const { router, engines } = routerOver([{ failStart: tooLong }, { failStart: tooLong }]);
  assert.equal(await rejection(router.start(chatRequest(), never())), tooLong);
  assert.equal(engines[0]!.starts + engines[1]!.starts, 1);
  assert.ok(router.stats().every((stats) => stats.failures === 0 && stats.outstanding === 0));
  await router.close();
});

test('all rate limited: 429 with the longest Retry-After, and the deployments stay in service', async () => {
  const { router } = routerOver([
    { failStart: failure('upstreamRateLimited', { unhealthy: false, retryAfterSeconds: 3 }) },
    { failStart: failure('upstreamRateLimited', { unhealthy: false, retryAfterSeconds: 7 }) },
    { failStart: failure('upstreamRateLimited', { unhealthy: false }) },
  ]);
  for (let i = 0; i < 4; i++) {
    const error = await rejection(router.start(chatRequest(), never()));
    assert.equal(error.status, 429);
    assert.equal(error.kind, 'upstreamRateLimited');
    assert.equal(error.retryAfterSeconds, 7);
  }
  assert.ok(router.stats().every((stats) => stats.state === 'healthy' && stats.failures === 0));
  await router.close();
});

test('all timed out: 504; a mix of timeouts and others: 503', async () => {
  const timeout = failure('upstreamTimeout');
  const timeouts = routerOver([{ failStart: timeout }, { failStart: timeout }]);
  const error = await rejection(timeouts.router.start(chatRequest(), never()));
  assert.equal(error.status, 504);
  assert.equal(error.kind, 'upstreamTimeout');

  const mixed = routerOver([{ failStart: timeout }, { failStart: failure('upstreamRateLimited', { unhealthy: false, retryAfterSeconds: 9 }) }]);
  const other = await rejection(mixed.router.start(chatRequest(), never()));
  assert.equal(other.status, 503);
  assert.equal(other.retryAfterSeconds, 1);
  await timeouts.router.close();
  await mixed.router.close();
});

test('an aborted request stops failing over and rejects with the reason, counting against nobody', async () => {
  const { router, engines } = routerOver([{ hang: true }, { hang: true }]);
  const controller = new AbortController();
  const started = router.start(chatRequest(), controller.signal);
  await sleep(5);
  const reason = new KilnError('timeout');
  controller.abort(reason);
  await assert.rejects(started, (error) => error === reason);
  assert.equal(engines[0]!.starts + engines[1]!.starts, 1);
  assert.ok(router.stats().every((stats) => stats.failures === 0 && stats.outstanding === 0));
  const aborted = new AbortController();
  aborted.abort(reason);
  await assert.rejects(router.start(chatRequest(), aborted.signal), (error) => error === reason);
  await router.close();
});
