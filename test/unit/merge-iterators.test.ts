/**
 * mergeIterators: values come out in the order they become ready, tagged with their source's index; every value of
 * every source is delivered; ending early (break or throw) returns every source so their `finally` blocks run.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { mergeIterators } from '../../src/core/merge-iterators.js';

/** A source that yields each value after its delay (ms) and records whether its cleanup ran. */
function timed<T>(steps: Array<[delayMs: number, value: T]>, log: string[], name: string) {
  return (async function* () {
    try {
      for (const [delay, value] of steps) {
        await sleep(delay);
        yield value;
      }
      log.push(`${name}:done`);
    } finally {
      log.push(`${name}:finally`);
    }
  })();
}

async function collect<T>(iterable: AsyncIterable<{ index: number; value: T }>): Promise<Array<[number, T]>> {
  const out: Array<[number, T]> = [];
  for await (const { index, value } of iterable) out.push([index, value]);
  return out;
}

/** A hand-made iterator, to check the merge relies only on the AsyncIterator protocol. */
class ManualSource<T> implements AsyncIterator<T> {
  returned = 0;
  private readonly waiting: Array<(result: IteratorResult<T>) => void> = [];
  next(): Promise<IteratorResult<T>> {
    return new Promise((resolve) => this.waiting.push(resolve));
  }
  emit(value: T): void {
    this.waiting.shift()!({ value, done: false });
  }
  end(): void {
    this.waiting.shift()!({ value: undefined, done: true });
  }
  return(): Promise<IteratorResult<T>> {
    this.returned++;
    for (const resolve of this.waiting.splice(0)) resolve({ value: undefined, done: true });
    return Promise.resolve({ value: undefined, done: true });
  }
}

describe('mergeIterators', () => {
  test('no sources: ends immediately', async () => {
    assert.deepEqual(await collect(mergeIterators<number>([])), []);
  });

  test('one source: all its values in order, index 0', async () => {
    const log: string[] = [];
    assert.deepEqual(await collect(mergeIterators([timed([[0, 'a'], [0, 'b'], [0, 'c']], log, 's')])), [[0, 'a'], [0, 'b'], [0, 'c']]);
    assert.deepEqual(log, ['s:done', 's:finally']);
  });

  test('interleaves by readiness and tags each value with its source index', async () => {
    const sources = [new ManualSource<string>(), new ManualSource<string>(), new ManualSource<string>()];
    const merged = mergeIterators<string>(sources);
    // Each step: make one source ready, then the merge must hand exactly that value out next.
    const script: Array<[number, string]> = [[2, 'c1'], [0, 'a1'], [0, 'a2'], [1, 'b1'], [2, 'c2'], [0, 'a3'], [1, 'b2']];
    for (const [index, value] of script) {
      const next = merged.next();
      await sleep(0);
      sources[index]!.emit(value);
      assert.deepEqual(await next, { value: { index, value }, done: false }, `expected ${value} from source ${index}`);
    }
    const last = merged.next();
    await sleep(0);
    for (const source of sources) source.end();
    assert.deepEqual(await last, { value: undefined, done: true });
  });

  test('with real timers, values come out in the order they become ready', async () => {
    const log: string[] = [];
    // Widely spaced so that a loaded machine does not reorder them: a1 at 0, b1 at ~60, a2 at ~120.
    const merged = mergeIterators([timed([[0, 'a1'], [120, 'a2']], log, 'a'), timed([[60, 'b1']], log, 'b')]);
    assert.deepEqual(await collect(merged), [[0, 'a1'], [1, 'b1'], [0, 'a2']]);
    assert.deepEqual(log.sort(), ['a:done', 'a:finally', 'b:done', 'b:finally']);
  });

  test('a first source that never becomes ready does not hold back the others', async () => {
    const slow = new ManualSource<string>();
    const fast = new ManualSource<string>();
    const merged = mergeIterators<string>([slow, fast]);
    for (const value of ['f1', 'f2', 'f3']) {
      const next = merged.next();
      await sleep(0);
      fast.emit(value);
      assert.deepEqual(await next, { value: { index: 1, value }, done: false });
    }
    const next = merged.next();
    await sleep(0);
    fast.end();
    slow.emit('slow');
    assert.deepEqual(await next, { value: { index: 0, value: 'slow' }, done: false });
    const end = merged.next();
    await sleep(0);
    slow.end();
    assert.deepEqual(await end, { value: undefined, done: true });
  });

  test('delivers every value of every source exactly once, whatever the timing', async () => {
    const log: string[] = [];
    const sources = Array.from({ length: 5 }, (_, source) =>
      timed(Array.from({ length: 8 }, (_, step) => [(source * 7 + step * 3) % 5, `${source}-${step}`] as [number, string]), log, `s${source}`));
    const out = await collect(mergeIterators(sources));
    assert.equal(out.length, 40);
    for (let source = 0; source < 5; source++) {
      const mine = out.filter(([index]) => index === source).map(([, value]) => value);
      assert.deepEqual(mine, Array.from({ length: 8 }, (_, step) => `${source}-${step}`), `source ${source} in order`);
    }
  });

  test('sources that end at different times: the others keep going', async () => {
    const a = new ManualSource<string>();
    const b = new ManualSource<string>();
    const merged = mergeIterators<string>([a, b]);
    const first = merged.next();
    a.end();
    b.emit('b1');
    assert.deepEqual(await first, { value: { index: 1, value: 'b1' }, done: false });
    const second = merged.next();
    await sleep(0);
    b.emit('b2');
    assert.deepEqual(await second, { value: { index: 1, value: 'b2' }, done: false });
    const third = merged.next();
    await sleep(0);
    b.end();
    assert.deepEqual(await third, { value: undefined, done: true });
  });

  test('breaking early returns every source: their finally blocks run before the loop exits', async () => {
    const log: string[] = [];
    const sources = [
      timed([[10, 'a1'], [30, 'a2'], [30, 'a3'], [30, 'a4']], log, 'a'),
      timed([[20, 'b1'], [30, 'b2'], [30, 'b3']], log, 'b'),
      timed([[1, 'c1']], log, 'c'), // usually finishes on its own before the break
    ];
    const seen: string[] = [];
    for await (const { value } of mergeIterators(sources)) {
      seen.push(value);
      if (seen.length === 3) break;
    }
    assert.equal(seen.length, 3);
    assert.ok(log.includes('a:finally'), `a's finally did not run: ${log.join(', ')}`);
    assert.ok(log.includes('b:finally'), `b's finally did not run: ${log.join(', ')}`);
    assert.ok(log.includes('c:finally'));
    assert.equal(log.includes('a:done') || log.includes('b:done'), false, 'interrupted sources must not run to completion');
  });

  test('breaking early calls return() on every source, finished ones included', async () => {
    const a = new ManualSource<number>();
    const b = new ManualSource<number>();
    const c = new ManualSource<number>();
    const merged = mergeIterators<number>([a, b, c]);
    const first = merged.next();
    c.end();
    b.emit(1);
    assert.deepEqual(await first, { value: { index: 1, value: 1 }, done: false });
    assert.deepEqual(await merged.return(undefined), { value: undefined, done: true });
    assert.deepEqual([a.returned, b.returned, c.returned], [1, 1, 1]);
  });

  test('a source blocked mid-step when the consumer breaks runs its finally once that step settles', async () => {
    const log: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const blocked = (async function* () {
      try {
        await gate;
        yield 'late';
        log.push('blocked:after-yield');
      } finally {
        log.push('blocked:finally');
      }
    })();
    const ready = (async function* () {
      try {
        yield 'now';
        yield 'never consumed';
      } finally {
        log.push('ready:finally');
      }
    })();
    let ended = false;
    const consumer = (async () => {
      for await (const { value } of mergeIterators([blocked, ready])) {
        assert.equal(value, 'now');
        break;
      }
      ended = true;
    })();
    await sleep(10);
    assert.deepEqual(log, ['ready:finally'], 'the ready source is returned at once');
    assert.equal(ended, false, 'the break waits for the blocked source to be returned');
    release();
    await consumer;
    assert.deepEqual(log, ['ready:finally', 'blocked:finally']);
  });

  test('a source that throws: the error reaches the consumer and the other sources are returned', async () => {
    const log: string[] = [];
    const failing = (async function* () {
      try {
        await sleep(5);
        yield 'x1';
        await sleep(5);
        throw new Error('source failed');
      } finally {
        log.push('failing:finally');
      }
    })();
    const seen: string[] = [];
    await assert.rejects(async () => {
      for await (const { value } of mergeIterators([failing, timed([[3, 'h1'], [40, 'h2'], [40, 'h3']], log, 'healthy')])) seen.push(value);
    }, /source failed/);
    assert.deepEqual(seen.sort(), ['h1', 'x1']);
    assert.ok(log.includes('failing:finally'));
    assert.ok(log.includes('healthy:finally'), `healthy source was not returned: ${log.join(', ')}`);
    assert.equal(log.includes('healthy:done'), false);
  });

  test('an error thrown by the consumer returns every source', async () => {
    const log: string[] = [];
    await assert.rejects(async () => {
      for await (const _ of mergeIterators([timed([[1, 1], [1, 2]], log, 'a'), timed([[2, 3], [2, 4]], log, 'b')])) {
        throw new Error('consumer gave up');
      }
    }, /consumer gave up/);
    assert.deepEqual(log.filter((entry) => entry.endsWith(':finally')).sort(), ['a:finally', 'b:finally']);
  });
});

test('a read still in flight when the consumer stops, rejecting afterwards, is not an unhandled rejection', async () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  try {
    // Like an upstream stream whose next read is pending when the client leaves: it rejects with the abort reason.
    let fail!: (error: Error) => void;
    let reads = 0;
    const source: AsyncIterator<number> = {
      next: () => (reads++ === 0 ? Promise.resolve({ value: 1, done: false }) : new Promise((_, reject) => (fail = reject))),
      return: async () => ({ value: undefined, done: true }),
    };
    for await (const _ of mergeIterators<number>([source])) break;
    fail(new Error('client gone'));
    await sleep(20);
    assert.deepEqual(unhandled, []);
  } finally {
    process.off('unhandledRejection', onUnhandled);
  }
});
