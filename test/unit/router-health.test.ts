/**
 * Router health: consecutive failures eject a deployment, its capacity leaves with it, a probe after the ejection
 * readmits it or doubles the wait, active checks readmit a recovered one, mid-stream errors count unless the client
 * went away, and every deployment out answers 503 with Retry-After at once.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../../src/errors/catalog.js';
import type { RoutedRun } from '../../src/service/routing/routed-run.js';
import { chatRequest, drain, failure, FakeEngine, sleep, testRouter, type FakeBehavior } from '../helpers/fake-engines.js';

const never = () => new AbortController().signal;
const broken = () => failure('upstreamUnavailable');

function routerOver(behaviors: FakeBehavior[], policy = {}, realClock = false) {
  const engines = behaviors.map((behavior, index) => new FakeEngine(`e${index}`, behavior));
  return { engines, ...testRouter(engines.map((engine) => ({ engine, maxConcurrency: 4 })), policy, realClock) };
}

const state = (router: { stats(): Array<{ state: string }> }, index: number) => router.stats()[index]!.state;

async function until(condition: () => boolean, ms = 1_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail('condition not met in time');
    await sleep(5);
  }
}

test('consecutive failures eject a deployment: its capacity leaves, the ejection is logged by name', async () => {
  const { router, log } = routerOver([{ failStart: broken() }, {}], { failureThreshold: 2 });
  assert.equal(router.capacity(), 8);
  await drain(await router.start(chatRequest(), never()));
  await drain(await router.start(chatRequest(), never()));
  assert.equal(state(router, 0), 'healthy', 'one failure so far (the ties alternate)');
  await drain(await router.start(chatRequest(), never()));
  assert.equal(state(router, 0), 'ejected');
  assert.equal(router.capacity(), 4);
  const ejected = log.entries.filter((entry) => entry.message === 'deployment ejected');
  assert.equal(ejected.length, 1);
  assert.equal(ejected[0]!.level, 'warn');
  assert.equal(ejected[0]!.fields.deployment, 'd0');
  assert.doesNotMatch(JSON.stringify(log.entries), /https?:/);
  assert.equal(router.unavailable(), undefined, 'one deployment still serves');
  await router.close();
});

test('every deployment ejected: unavailable() is a 503 with the seconds until the soonest probe', async () => {
  const { router, clock } = routerOver([{ failStart: broken() }, { failStart: broken() }], { failureThreshold: 1, ejectMs: 2_500 });
  await assert.rejects(router.start(chatRequest(), never()));
  assert.equal(router.capacity(), 0);
  const error = router.unavailable();
  assert.ok(error instanceof KilnError);
  assert.equal(error.status, 503);
  assert.equal(error.kind, 'modelUnavailable');
  assert.equal(error.retryAfterSeconds, 3);
  assert.equal(error.message, "No healthy deployment serves 'm' right now; it is being retried. Please retry in 3 s.");
  clock.now += 2_000;
  assert.equal(router.unavailable()!.retryAfterSeconds, 1);
  // A start that races with the ejection answers the same.
  await assert.rejects(router.start(chatRequest(), never()), (thrown: unknown) => thrown instanceof KilnError && thrown.kind === 'modelUnavailable');
  clock.now += 500;
  assert.equal(router.unavailable(), undefined, 'due for a probe');
  await router.close();
});

test('after ejectMs one request probes; success readmits (capacity back, waiters told)', async () => {
  const { router, engines, clock, log, capacityChanges } = routerOver([{ failStart: broken() }], { failureThreshold: 1, ejectMs: 1_000 });
  await assert.rejects(router.start(chatRequest(), never()));
  assert.equal(state(router, 0), 'ejected');
  clock.now += 999;
  assert.equal(state(router, 0), 'ejected');
  clock.now += 1;
  assert.equal(state(router, 0), 'probing');
  assert.equal(router.capacity(), 1, 'due for a probe: room for the probe only');

  // While the probe is in flight nothing else is routed there.
  engines[0]!.behavior = { hang: true };
  const controller = new AbortController();
  const probe = router.start(chatRequest(), controller.signal);
  await sleep(5);
  await assert.rejects(router.start(chatRequest(), never()), (error: unknown) => error instanceof KilnError && error.status === 503);
  assert.equal(engines[0]!.starts, 2);
  // A probe the client abandoned decides nothing: the next request probes.
  controller.abort(new Error('client gone'));
  await assert.rejects(probe);
  assert.equal(state(router, 0), 'probing');

  engines[0]!.behavior = {};
  const before = capacityChanges.count;
  const run = await router.start(chatRequest(), never());
  assert.equal(state(router, 0), 'healthy');
  assert.equal(router.capacity(), 4);
  assert.ok(capacityChanges.count > before);
  const readmitted = log.entries.filter((entry) => entry.message === 'deployment readmitted');
  assert.deepEqual(readmitted.map((entry) => [entry.level, entry.fields.deployment]), [['info', 'd0']]);
  await drain(run);
  await router.close();
});

test('a failed probe ejects again for twice as long, up to maxEjectMs; a clean run resets the backoff', async () => {
  const { router, engines, clock } = routerOver([{ failStart: broken() }], { failureThreshold: 1, ejectMs: 1_000, maxEjectMs: 3_000 });
  const ejectedFor = async (): Promise<number> => {
    await assert.rejects(router.start(chatRequest(), never()));
    let waited = 0;
    while (state(router, 0) === 'ejected') {
      clock.now += 100;
      waited += 100;
    }
    return waited;
  };
  assert.equal(await ejectedFor(), 1_000);
  assert.equal(await ejectedFor(), 2_000);
  assert.equal(await ejectedFor(), 3_000, 'capped');
  assert.equal(await ejectedFor(), 3_000);
  engines[0]!.behavior = {};
  await drain(await router.start(chatRequest(), never()));
  assert.equal(state(router, 0), 'healthy');
  engines[0]!.behavior = { failStart: broken() };
  assert.equal(await ejectedFor(), 1_000, 'backoff reset by the clean run');
  await router.close();
});

test('the end of an ejection tells admission that capacity is back, once the clock says so', async () => {
  const { router, capacityChanges, clock } = routerOver([{ failStart: broken() }, { failStart: broken() }], { failureThreshold: 1, ejectMs: 20 });
  await assert.rejects(router.start(chatRequest(), never()));
  assert.equal(router.capacity(), 0);
  const before = capacityChanges.count;
  // The timers have run out, the router's clock has not moved: nothing to tell yet.
  await sleep(60);
  assert.equal(capacityChanges.count, before);
  assert.equal(router.capacity(), 0);
  clock.now += 20;
  await until(() => capacityChanges.count >= before + 2);
  assert.equal(router.capacity(), 2, 'one probe each');
  await router.close();
});

test('a mid-stream error counts against the deployment; a started run does not reset the count', async () => {
  const { router } = routerOver([{ events: 1, failMidStream: new Error('connection reset') }], { failureThreshold: 2 });
  await assert.rejects(drain(await router.start(chatRequest(), never())), /connection reset/);
  assert.deepEqual(router.stats()[0], { name: 'd0', state: 'healthy', outstanding: 0, served: 1, failures: 1, consecutiveFailures: 1 });
  // n = 2, both choices break: one failure of the deployment, not two.
  await assert.rejects(drain(await router.start(chatRequest(undefined, { n: 2 }), never()), 2));
  assert.equal(router.stats()[0]!.failures, 2);
  assert.equal(state(router, 0), 'ejected');
  assert.equal(router.stats()[0]!.outstanding, 0);
  await router.close();
});

test('a clean run resets the consecutive failures', async () => {
  const { router, engines } = routerOver([{ events: 1, failMidStream: new Error('reset') }], { failureThreshold: 2 });
  await assert.rejects(drain(await router.start(chatRequest(), never())));
  engines[0]!.behavior = {};
  await drain(await router.start(chatRequest(), never()));
  assert.equal(router.stats()[0]!.consecutiveFailures, 0);
  engines[0]!.behavior = { events: 1, failMidStream: new Error('reset') };
  await assert.rejects(drain(await router.start(chatRequest(), never())));
  assert.equal(state(router, 0), 'healthy');
  await router.close();
});

test('an error after the client went away does not count', async () => {
  const { router } = routerOver([{ hold: true, events: 3 }], { failureThreshold: 1 });
  const controller = new AbortController();
  const run = (await router.start(chatRequest(), controller.signal)) as RoutedRun;
  const reading = drain(run);
  await sleep(5);
  controller.abort(new Error('client gone'));
  await assert.rejects(reading, /client gone/);
  assert.deepEqual(router.stats()[0], { name: 'd0', state: 'healthy', outstanding: 0, served: 1, failures: 0, consecutiveFailures: 0 });
  await router.close();
});

test('active checks eject a deployment that fails them and readmit it once it passes, without traffic', async () => {
  const { router, engines, log, capacityChanges } = routerOver([{ probe: 'fail' }, { probe: 'ok' }], { failureThreshold: 2, ejectMs: 60_000, healthCheckIntervalMs: 15 }, true);
  await until(() => state(router, 0) === 'ejected');
  assert.equal(state(router, 1), 'healthy');
  assert.equal(router.capacity(), 4);
  const before = capacityChanges.count;
  engines[0]!.behavior.probe = 'ok';
  await until(() => state(router, 0) === 'healthy');
  assert.equal(router.capacity(), 8);
  assert.ok(capacityChanges.count > before);
  assert.ok(log.entries.some((entry) => entry.message === 'deployment readmitted' && entry.fields.deployment === 'd0'));
  await router.close();
  const probes = engines[1]!.probes;
  await sleep(50);
  assert.equal(engines[1]!.probes, probes, 'close stops the checks');
});

test('an active check that does not answer in time is a failed one', async () => {
  const { router } = routerOver([{ probe: 'hang' }, { probe: 'ok' }], { failureThreshold: 2, ejectMs: 60_000, healthCheckIntervalMs: 15 }, true);
  await until(() => state(router, 0) === 'ejected');
  assert.equal(state(router, 1), 'healthy');
  await router.close();
});
