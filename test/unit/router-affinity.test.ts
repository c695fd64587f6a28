/**
 * Router prefix affinity: every turn of one conversation goes where its beginning is cached, different conversations
 * spread, and bounded load moves a hot conversation's overflow to other deployments.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadBound } from '../../src/service/routing/hash-ring.js';
import { conversationPrefix } from '../../src/service/routing/prefix-key.js';
import type { RoutedRun } from '../../src/service/routing/routed-run.js';
import { chatRequest, drain, failure, FakeEngine, testRouter } from '../helpers/fake-engines.js';

const never = () => new AbortController().signal;
const SYSTEM = { role: 'system', content: 'You are a helpful assistant.' };

/** Turn `turns` of conversation `id`: the first question, then answers and follow-ups appended. */
function conversation(id: number, turns: number): Array<{ role: string; content: string }> {
  const messages = [SYSTEM, { role: 'user', content: `Question ${id}: tell me about topic ${id}.` }];
  for (let turn = 1; turn < turns; turn++) messages.push({ role: 'assistant', content: `Answer ${turn}` }, { role: 'user', content: `Follow-up ${turn}` });
  return messages;
}

const affine = (count: number, behavior = {}) => {
  const engines = Array.from({ length: count }, (_, index) => new FakeEngine(`e${index}`, { ...behavior }));
  return { engines, ...testRouter(engines.map((engine) => ({ engine })), { prefixAffinity: true }) };
};

test('the key is the tools and the messages up to the first user message: turn 2 keys like turn 1', () => {
  const turn1 = chatRequest(conversation(1, 1));
  const turn3 = chatRequest(conversation(1, 3));
  assert.equal(conversationPrefix(turn1), conversationPrefix(turn3));
  assert.notEqual(conversationPrefix(turn1), conversationPrefix(chatRequest(conversation(2, 1))), 'same system prompt, another user');
  const tools = { tools: [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object', properties: {} } } }] };
  assert.notEqual(conversationPrefix(turn1), conversationPrefix(chatRequest(conversation(1, 1), tools)), 'tools are part of the prompt');
  assert.equal(conversationPrefix(chatRequest(conversation(1, 1), tools)), conversationPrefix(chatRequest(conversation(1, 2), tools)));
});

test("every turn of a conversation lands on its first turn's deployment, while conversations spread", async () => {
  const { router, engines } = affine(3);
  const home = new Map<number, string>();
  for (let turn = 1; turn <= 3; turn++) {
    for (let id = 0; id < 50; id++) {
      const run = (await router.start(chatRequest(conversation(id, turn)), never())) as RoutedRun;
      if (turn === 1) home.set(id, run.deployment);
      else assert.equal(run.deployment, home.get(id), `conversation ${id}, turn ${turn}`);
      await drain(run);
    }
  }
  const perDeployment = engines.map((engine) => engine.starts / 3);
  // 50 conversations over 3 deployments by hash: none is left out, none takes most.
  for (const count of perDeployment) assert.ok(count >= 6 && count <= 30, `conversations per deployment: ${perDeployment}`);
  await router.close();
});

test('bounded load: a hot conversation spills to other deployments, none above its bound', async () => {
  const { router, engines } = affine(3, { hold: true });
  const runs: RoutedRun[] = [];
  for (let i = 0; i < 30; i++) {
    runs.push((await router.start(chatRequest(conversation(7, 1 + (i % 3))), never())) as RoutedRun);
    const outstanding = router.stats().map((stats) => stats.outstanding);
    const total = outstanding.reduce((sum, value) => sum + value, 0);
    // Each placement respected ceil(1.25 · total · 1/3), the bound as it stood with this request counted.
    for (const value of outstanding) assert.ok(value <= loadBound(1, 3, total - 1, 1), `outstanding ${outstanding}`);
  }
  // The home deployment kept what its bound allowed (ceil(1.25 · 30 / 3) = 13); the rest spilled along the ring.
  const starts = engines.map((engine) => engine.starts).sort((a, b) => b - a);
  assert.equal(starts[0], 13, `starts ${starts}`);
  assert.ok(starts[1]! > 0 && starts[0]! + starts[1]! + starts[2]! === 30, `starts ${starts}`);
  // Once the load is gone, the conversation is back on its own deployment.
  for (const run of runs) run.dispose();
  const first = runs[0]!.deployment;
  for (let i = 0; i < 5; i++) {
    const run = (await router.start(chatRequest(conversation(7, 2)), never())) as RoutedRun;
    assert.equal(run.deployment, first);
    run.dispose();
  }
  await router.close();
});

test('a conversation whose deployment is ejected moves, and comes back once it is readmitted', async () => {
  const { router, engines, clock } = affine(3);
  const first = (await router.start(chatRequest(conversation(3, 1)), never())) as RoutedRun;
  const home = first.deployment;
  await drain(first);
  const homeEngine = engines[Number(home.slice(1))]!;
  homeEngine.behavior.failStart = failure('upstreamUnavailable');
  const elsewhere = new Set<string>();
  for (let i = 0; i < 3; i++) {
    const run = (await router.start(chatRequest(conversation(3, 2)), never())) as RoutedRun;
    assert.notEqual(run.deployment, home);
    elsewhere.add(run.deployment);
    run.dispose();
  }
  assert.equal(elsewhere.size, 1, 'failover is stable too: the next deployment on the ring');
  assert.equal(router.stats().find((stats) => stats.name === home)!.state, 'ejected');
  delete homeEngine.behavior.failStart;
  clock.now += 1_000;
  const back = (await router.start(chatRequest(conversation(3, 3)), never())) as RoutedRun;
  assert.equal(back.deployment, home);
  back.dispose();
  await router.close();
});

test('weights shape affinity too: the ring gives a weight-3 deployment most conversations', async () => {
  const engines = [new FakeEngine('heavy'), new FakeEngine('light')];
  const { router } = testRouter([{ engine: engines[0]!, weight: 3 }, { engine: engines[1]! }], { prefixAffinity: true });
  for (let id = 0; id < 200; id++) await drain(await router.start(chatRequest(conversation(id, 1)), never()));
  const share = engines[0]!.starts / 200;
  assert.ok(share > 0.6 && share < 0.9, `heavy share ${share}`);
  await router.close();
});
