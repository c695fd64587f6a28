/**
 * StepBarrier: generating members step together; a member that joined (preparing its prompt) holds the next release
 * until it arrives; prompts sent together gather while later arrivals keep coming, up to a cap.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StepBarrier, type StepMember } from '../../src/engines/llama/step-barrier.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves to the time (ms since `t0`) at which each member was released. */
function track(member: StepMember, t0: number, log: number[]): Promise<void> {
  return member.beforeStep().then(() => {
    log.push(performance.now() - t0);
  });
}

test('generating members are released together once every one is waiting', async () => {
  const barrier = new StepBarrier(1000, 5, 1, 50);
  const a = barrier.join();
  const b = barrier.join();
  await Promise.all([a.beforeStep(), b.beforeStep()]); // their prompts (gathered)
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
  const barrier = new StepBarrier(1000, 5, 1, 50);
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
  const barrier = new StepBarrier(60, 5, 1, 50);
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

test('prompts gather while arrivals keep coming within gatherMs, and no longer than maxGatherMs', async () => {
  const barrier = new StepBarrier(1000, 25, 1, 120);
  const t0 = performance.now();
  const log: number[] = [];
  const members: StepMember[] = [];
  const releases: Array<Promise<void>> = [];
  // Six prompts 15 ms apart: 75 ms in all, each within 25 ms of the previous one, so all share one release.
  for (let i = 0; i < 6; i++) {
    const member = barrier.join();
    members.push(member);
    releases.push(track(member, t0, log));
    await sleep(15);
  }
  await Promise.all(releases);
  const spread = Math.max(...log) - Math.min(...log);
  assert.ok(spread < 5, `released together (spread ${spread.toFixed(1)} ms)`);
  assert.ok(Math.min(...log) >= 75, `after the last arrival (${Math.min(...log).toFixed(0)} ms)`);
  for (const member of members) member.leave();

  // Arrivals that never stop are cut off at maxGatherMs.
  const capped = new StepBarrier(1000, 25, 1, 60);
  const t1 = performance.now();
  const first = capped.join();
  const firstReleased = first.beforeStep().then(() => performance.now() - t1);
  const others: StepMember[] = [];
  for (let i = 0; i < 10; i++) {
    await sleep(15);
    others.push(capped.join());
  }
  const at = await firstReleased;
  assert.ok(at >= 55 && at < 120, `released at ${at.toFixed(0)} ms`);
  first.leave();
  for (const member of others) member.leave();
});
