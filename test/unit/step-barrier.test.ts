/**
 * StepBarrier: generating members step together; a member that joined (preparing its prompt) holds the next release
 * until it arrives, or for at most maxWaitMs.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StepBarrier } from '../../src/engines/llama/step-barrier.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));


test('generating members are released together once every one is waiting', async () => {
  const barrier = new StepBarrier(1000, 1);
  const a = barrier.join();
  const b = barrier.join();
  await Promise.all([a.beforeStep(), b.beforeStep()]); // their prompts
  a.afterStep();
  b.afterStep();
  let released = false;
  const stepA = a.beforeStep().then(() => (released = true));
  await sleep(20);
  assert.equal(released, false, 'a waits while b is still with its consumer');
  const stepB = b.beforeStep();
  await Promise.all([stepA, stepB]);
  a.leave();
  b.leave();
});

test('a member that joined but has not arrived yet holds the next step until it does', async () => {
  const barrier = new StepBarrier(1000, 1);
  const a = barrier.join();
  await a.beforeStep();
  a.afterStep();
  const late = barrier.join(); // e.g. erasing its sequence's cache behind the running decode
  let released = false;
  const stepA = a.beforeStep().then(() => (released = true));
  await sleep(30);
  assert.equal(released, false, 'the release waits for the new member');
  const first = late.beforeStep();
  await Promise.all([stepA, first]);
  a.leave();
  late.leave();
});

test('a new member that never arrives holds the others for at most maxWaitMs', async () => {
  const barrier = new StepBarrier(60, 1);
  const a = barrier.join();
  await a.beforeStep();
  a.afterStep();
  const stuck = barrier.join();
  const t0 = performance.now();
  await a.beforeStep();
  const waited = performance.now() - t0;
  assert.ok(waited >= 50 && waited < 1000, `waited ${waited} ms`);
  stuck.leave();
  a.leave();
});
