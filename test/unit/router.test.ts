/**
 * Router: balancing over deployments (weighted least outstanding, even spread of ties, maxConcurrency), the run it
 * hands out (events through, outstanding released when choices end or the run is disposed), its description.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../../src/errors/catalog.js';
import type { RoutedRun } from '../../src/service/routing/routed-run.js';
import { chatRequest, drain, failure, FakeEngine, sleep, testRouter } from '../helpers/fake-engines.js';

const fakes = (count: number, behavior = {}) => Array.from({ length: count }, (_, index) => new FakeEngine(`e${index}`, { ...behavior }));
const never = () => new AbortController().signal;
const served = (engines: FakeEngine[]) => engines.map((engine) => engine.starts);

test('sequential requests spread evenly over 3 idle equal replicas', async () => {
  const engines = fakes(3);
  const { router } = testRouter(engines.map((engine) => ({ engine })));
  for (let i = 0; i < 30; i++) await drain(await router.start(chatRequest([{ role: 'user', content: `q${i}` }]), never()));
  assert.deepEqual(served(engines), [10, 10, 10]);
  assert.deepEqual(
    router.stats().map(({ served, outstanding }) => ({ served, outstanding })),
    [0, 1, 2].map(() => ({ served: 10, outstanding: 0 })),
  );
  await router.close();
});

test('concurrent requests held open spread evenly over 3 equal replicas', async () => {
  const engines = fakes(3, { hold: true });
  const { router } = testRouter(engines.map((engine) => ({ engine })));
  const runs = [];
  for (let i = 0; i < 30; i++) runs.push(await router.start(chatRequest([{ role: 'user', content: `q${i}` }]), never()));
  assert.deepEqual(served(engines), [10, 10, 10]);
  assert.deepEqual(router.stats().map((stats) => stats.outstanding), [10, 10, 10]);
  const drained = runs.map((run) => drain(run));
  for (const engine of engines) engine.release();
  await Promise.all(drained);
  assert.deepEqual(router.stats().map((stats) => stats.outstanding), [0, 0, 0]);
  await router.close();
});

test('weights 2:1 share both sequential and concurrent load 2:1', async () => {
  const sequential = fakes(2);
  const one = testRouter([{ engine: sequential[0]!, weight: 2 }, { engine: sequential[1]!, weight: 1 }]);
  for (let i = 0; i < 30; i++) await drain(await one.router.start(chatRequest(), never()));
  assert.deepEqual(served(sequential), [20, 10]);

  const concurrent = fakes(2, { hold: true });
  const two = testRouter([{ engine: concurrent[0]!, weight: 2 }, { engine: concurrent[1]!, weight: 1 }]);
  const runs = [];
  for (let i = 0; i < 30; i++) runs.push(await two.router.start(chatRequest(), never()));
  assert.deepEqual(served(concurrent), [20, 10]);
  for (const run of runs) run.dispose();
  await one.router.close();
  await two.router.close();
});

test('the least loaded deployment takes the next request', async () => {
  const engines = fakes(2, { hold: true });
  const { router } = testRouter(engines.map((engine) => ({ engine })));
  const first = await router.start(chatRequest(), never());
  const second = await router.start(chatRequest(), never());
  assert.notEqual((first as RoutedRun).deployment, (second as RoutedRun).deployment);
  // The first finishes: its deployment is idle, the other still busy.
  const done = drain(first);
  engines.forEach((engine) => engine.release());
  await done;
  for (let i = 0; i < 3; i++) {
    const run = (await router.start(chatRequest(), never())) as RoutedRun;
    assert.equal(run.deployment, (first as RoutedRun).deployment);
    run.dispose();
  }
  second.dispose();
  await router.close();
});

test('maxConcurrency is respected: with no room anywhere a start waits for a slot, within the retry budget', async () => {
  const engines = fakes(2, { hold: true });
  const { router } = testRouter(engines.map((engine) => ({ engine, maxConcurrency: 2 })), {}, true);
  const runs: RoutedRun[] = [];
  for (let i = 0; i < 4; i++) runs.push((await router.start(chatRequest(), never())) as RoutedRun);
  assert.deepEqual(served(engines), [2, 2]);
  const waiting = router.start(chatRequest(), never());
  await sleep(20);
  assert.deepEqual(served(engines), [2, 2], 'nothing started on a full deployment');
  runs[1]!.dispose();
  const next = (await waiting) as RoutedRun;
  assert.equal(next.deployment, runs[1]!.deployment);
  assert.deepEqual(router.stats().map((stats) => stats.outstanding), [2, 2]);
  assert.equal(router.capacity(), 4);
  for (const run of [...runs, next]) run.dispose();
  await router.close();
});

test('no room within the retry budget: 503 with Retry-After', async () => {
  const engines = fakes(2, { hold: true });
  const { router } = testRouter(engines.map((engine) => ({ engine, maxConcurrency: 1 })), { retryBudgetMs: 30 }, true);
  const runs = [await router.start(chatRequest(), never()), await router.start(chatRequest(), never())];
  const started = Date.now();
  await assert.rejects(router.start(chatRequest(), never()), (error: unknown) => {
    assert.ok(error instanceof KilnError);
    assert.equal(error.status, 503);
    assert.equal(error.kind, 'upstreamUnavailable');
    assert.equal(error.retryAfterSeconds, 1);
    return true;
  });
  assert.ok(Date.now() - started >= 25, 'it waited for room first');
  assert.deepEqual(served(engines), [1, 1]);
  for (const run of runs) run.dispose();
  await router.close();
});

test('a request failing over onto a full deployment waits for its room instead of failing', async () => {
  const broken = new FakeEngine('broken', { failStart: failure('upstreamUnavailable') });
  const busy = new FakeEngine('busy', { hold: true });
  const { router } = testRouter([{ engine: busy, maxConcurrency: 1 }, { engine: broken, maxConcurrency: 1 }], { retryBudgetMs: 5_000 }, true);
  const first = (await router.start(chatRequest(), never())) as RoutedRun;
  assert.equal(first.deployment, 'd0');
  const second = router.start(chatRequest(), never());
  await sleep(20);
  assert.equal(broken.starts, 1);
  assert.equal(busy.starts, 1, 'waiting for room on the busy one');
  const reading = drain(first);
  busy.release();
  await reading;
  const run = (await second) as RoutedRun;
  assert.equal(run.deployment, 'd0');
  assert.deepEqual(await drain(run), ['busy:0:0 busy:0:1 ']);
  await router.close();
});

test('an aborted request stops waiting for room', async () => {
  const engines = fakes(1, { hold: true });
  const { router } = testRouter(engines.map((engine) => ({ engine, maxConcurrency: 1 })), {}, true);
  const run = await router.start(chatRequest(), never());
  const controller = new AbortController();
  const waiting = router.start(chatRequest(), controller.signal);
  await sleep(10);
  const reason = new Error('client gone');
  controller.abort(reason);
  await assert.rejects(waiting, (error) => error === reason);
  run.dispose();
  assert.equal(router.stats()[0]!.outstanding, 0);
  await router.close();
});

test('a request of n choices counts n until each choice ends; dispose releases choices never started', async () => {
  const engines = fakes(1);
  const { router, capacityChanges } = testRouter(engines.map((engine) => ({ engine, maxConcurrency: 4 })));
  const run = await router.start(chatRequest(undefined, { n: 3 }), never());
  assert.equal(router.stats()[0]!.outstanding, 3);
  let text = '';
  for await (const event of run.choice(1)) if (event.type === 'text') text += event.text;
  assert.equal(text, 'e0:1:0 e0:1:1 ');
  assert.equal(router.stats()[0]!.outstanding, 2);
  const before = capacityChanges.count;
  run.dispose();
  run.dispose();
  assert.equal(router.stats()[0]!.outstanding, 0);
  assert.equal(engines[0]!.disposed, 2);
  assert.ok(capacityChanges.count > before, 'freed slots are reported');
  await router.close();
});

test('a choice the reader stops early releases its slot; usage getters read the deployment run', async () => {
  const engines = fakes(1, { events: 5 });
  const { router } = testRouter(engines.map((engine) => ({ engine })));
  const run = await router.start(chatRequest(undefined, { max_tokens: 33 }), never());
  for await (const event of run.choice(0)) {
    assert.equal(event.type, 'text');
    break;
  }
  assert.equal(router.stats()[0]!.outstanding, 0);
  assert.equal(run.promptTokens, 7);
  assert.equal(run.maxTokens, 33);
  assert.equal(run.reasoning, 'off');
  assert.equal((run as RoutedRun).deployment, 'd0');
  run.dispose();
  await router.close();
});

test('requests of more choices than a deployment allows go to one that allows them', async () => {
  const small = new FakeEngine('small', { maxChoices: 2 });
  const large = new FakeEngine('large', { maxChoices: 6 });
  const { router } = testRouter([{ engine: small }, { engine: large }]);
  assert.equal(router.description.maxChoices, 6);
  assert.equal(router.description.name, 'router:m');
  assert.equal(router.description.supportsImages, false);
  for (let i = 0; i < 4; i++) await drain(await router.start(chatRequest(undefined, { n: 4 }), never()), 4);
  assert.deepEqual(served([small, large]), [0, 4]);
  await router.close();

  const unbounded = testRouter([{ engine: small }, { engine: new FakeEngine('upstream') }]);
  assert.equal(unbounded.router.description.maxChoices, undefined);
  await unbounded.router.close();
});

test('close stops timers only: the engines stay open', async () => {
  let closed = 0;
  const engine = new FakeEngine('e');
  engine.close = async () => void closed++;
  const { router } = testRouter([{ engine }, { engine: new FakeEngine('f') }], { healthCheckIntervalMs: 10 });
  await router.close();
  assert.equal(closed, 0);
});
