import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KilnError } from '../../src/errors/catalog.js';
import { Admission, type Permit } from '../../src/service/admission.js';

const never = new AbortController().signal;
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe('Admission', () => {
  test('runs up to the capacity in units, queues the rest and lets them in as permits are released', async () => {
    const admission = new Admission(() => 4, { depth: 8, waitMs: 10_000 });
    const first = await admission.acquire(3, never);
    let second: Permit | undefined;
    void admission.acquire(2, never).then((permit) => (second = permit));
    await settle();
    assert.equal(second, undefined, 'a request of 2 must wait while 3 of 4 units run');
    assert.equal(admission.waiting, 1);
    first.release();
    await settle();
    assert.ok(second !== undefined);
    assert.equal(admission.runningUnits, 2);
    first.release(); // a second release changes nothing
    assert.equal(admission.runningUnits, 2);
  });

  test('Pro requests are let in before waiting free ones, FIFO within a tier', async () => {
    const admission = new Admission(() => 1, { depth: 8, waitMs: 10_000 });
    const running = await admission.acquire(1, never);
    const order: string[] = [];
    const wait = (name: string, priority: number) =>
      admission.acquire(1, never, priority).then((permit) => {
        order.push(name);
        permit.release();
      });
    const all = [wait('free-1', 0), wait('pro-1', 1), wait('free-2', 0), wait('pro-2', 1)];
    running.release();
    await Promise.all(all);
    assert.deepEqual(order, ['pro-1', 'pro-2', 'free-1', 'free-2']);
  });

  test('a full queue answers 429 at once; a wait past the deadline answers 503, both with Retry-After', async () => {
    const admission = new Admission(() => 1, { depth: 1, waitMs: 50 });
    await admission.acquire(1, never);
    const waiting = admission.acquire(1, never);
    await assert.rejects(admission.acquire(1, never), (error: KilnError) => error.status === 429 && error.retryAfterSeconds === 1);
    await assert.rejects(waiting, (error: KilnError) => error.status === 503 && error.retryAfterSeconds! >= 1);
    assert.equal(admission.waiting, 0);
  });

  test('an aborted wait leaves the queue with the abort reason', async () => {
    const admission = new Admission(() => 1, { depth: 4, waitMs: 10_000 });
    await admission.acquire(1, never);
    const controller = new AbortController();
    const waiting = admission.acquire(1, controller.signal);
    controller.abort(new Error('client gone'));
    await assert.rejects(waiting, /client gone/);
    assert.equal(admission.waiting, 0);
  });

  test('capacity is asked on every decision: poke lets waiters in when it grows', async () => {
    let capacity = 1;
    const admission = new Admission(() => capacity, { depth: 4, waitMs: 10_000 });
    await admission.acquire(1, never);
    let admitted = false;
    void admission.acquire(1, never).then(() => (admitted = true));
    await settle();
    assert.equal(admitted, false);
    capacity = 2;
    admission.poke();
    await settle();
    assert.equal(admitted, true);
  });

  test('a request larger than the whole capacity runs alone rather than waiting forever', async () => {
    const admission = new Admission(() => 2, { depth: 4, waitMs: 10_000 });
    const permit = await admission.acquire(4, never);
    assert.equal(admission.runningUnits, 4);
    permit.release();
  });
});
