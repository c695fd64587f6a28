/** EventQueue: the bounded buffer between an engine's generation and a reader that may stall. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventQueue } from '../../src/core/event-queue.js';

test('items arrive in order, then the end; an error ends the iteration after the items pushed before it', async () => {
  const queue = new EventQueue<number>(4);
  queue.push(1);
  queue.push(2);
  queue.end(new Error('boom'));
  const seen: number[] = [];
  await assert.rejects(async () => {
    for await (const item of queue.drain()) seen.push(item);
  }, /boom/);
  assert.deepEqual(seen, [1, 2]);
});

test('a full queue makes the producer wait until the reader has taken it down to half', async () => {
  const queue = new EventQueue<number>(4);
  for (let i = 0; i < 4; i++) queue.push(i);
  assert.equal(queue.full, true);
  let resumed = false;
  const room = queue.room(new AbortController().signal).then(() => (resumed = true));
  const reader = queue.drain();
  await reader.next();
  await reader.next();
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(resumed, false, 'two of four left: not yet');
  await reader.next();
  await room;
  assert.equal(resumed, true);
});

test('the producer stops waiting when the request is aborted or the reader stops', async () => {
  const aborted = new EventQueue<number>(1);
  aborted.push(0);
  const abort = new AbortController();
  const waiting = aborted.room(abort.signal);
  abort.abort();
  await waiting;

  const closed = new EventQueue<number>(1);
  closed.push(0);
  const reader = closed.drain();
  await reader.next();
  closed.push(1);
  const room = closed.room(new AbortController().signal);
  await reader.return();
  await room;
  assert.equal(closed.closed, true);
  closed.push(2); // ignored once closed
});
