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

test('members mid-step are waited for however long the step takes (no split into groups taking turns)', async () => {
  const barrier = new StepBarrier(30, 1);
  const a = barrier.join();
  const b = barrier.join();
  await Promise.all([a.beforeStep(), b.beforeStep()]); // their prompts
  a.afterStep();
  b.afterStep();
  await Promise.all([a.beforeStep(), b.beforeStep()]); // a generation step
  a.afterStep(); // b's token is still being decoded or sampled: a slower step than maxWaitMs
  let released = false;
  const stepA = a.beforeStep().then(() => (released = true));
  await sleep(120);
  assert.equal(released, false, 'a is not sent ahead of b, whose step is still running');
  b.afterStep();
  const stepB = b.beforeStep();
  await Promise.all([stepA, stepB]);
  a.leave();
  b.leave();
});

test("a prompt decoded with the others' step gets about two samplings' time to join the next release", async () => {
  const barrier = new StepBarrier(1000, 1);
  const g1 = barrier.join();
  const g2 = barrier.join();
  await Promise.all([g1.beforeStep(), g2.beforeStep()]);
  g1.afterStep();
  g2.afterStep();
  const prompt = barrier.join();
  await Promise.all([g1.beforeStep(), g2.beforeStep(), prompt.beforeStep()]); // one decode: two tokens and a prompt
  // node-llama-cpp samples them one after another, 60 ms apart here; the prompt's first token comes last.
  g1.afterStep();
  await sleep(60);
  g2.afterStep();
  const order: string[] = [];
  const steps = [g1.beforeStep().then(() => order.push('g1')), g2.beforeStep().then(() => order.push('g2'))];
  await sleep(40);
  order.push('prompt arrives');
  prompt.afterStep();
  steps.push(prompt.beforeStep().then(() => order.push('prompt')));
  await Promise.all(steps);
  assert.equal(order[0], 'prompt arrives', `the others waited for the prompt's first token: ${order.join(', ')}`);
  for (const member of [g1, g2, prompt]) member.leave();
});

test('once only a prompt is missing, the wait is the short prefill grace, not maxWaitMs', async () => {
  const barrier = new StepBarrier(2000, 5);
  const g1 = barrier.join();
  const g2 = barrier.join();
  await Promise.all([g1.beforeStep(), g2.beforeStep()]);
  g1.afterStep();
  g2.afterStep();
  const prompt = barrier.join();
  await Promise.all([g1.beforeStep(), g2.beforeStep(), prompt.beforeStep()]);
  g1.afterStep();
  const next = g1.beforeStep();
  g2.afterStep(); // g1 now waits for g2's consumer: up to maxWaitMs…
  const t0 = performance.now();
  await Promise.all([next, g2.beforeStep()]); // …but g2 is back at once, and the prompt (still sampling) only gets the grace
  const waited = performance.now() - t0;
  assert.ok(waited < 1000, `released after ${waited.toFixed(0)} ms`);
  for (const member of [g1, g2, prompt]) member.leave();
});
