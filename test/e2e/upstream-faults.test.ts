/**
 * End to end, upstream failures: a front Kiln in front of fault-injecting OpenAI-compatible upstreams (hung, dead,
 * rate limited, failing, cutting streams) and of upstreams that send reasoning and tool calls in the shapes vLLM and
 * others use. Timeouts and ejection times are short so that the whole file runs in seconds. Every upstream needs the
 * key from the front's environment; neither it nor any upstream address may show in a response or in the debug log.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import type { KilnProcess } from '../helpers/kiln-process.js';
import { readEventStream } from '../helpers/kiln-process.js';
import { Fault, FaultUpstream, OK_CHUNKS, THINK_ANSWER, THINK_REASONING, TOOL_CALL, type FaultMode } from '../helpers/fault-upstream.js';
import { findLeaks, ResponseRecorder, startFront } from '../helpers/upstream-cluster.js';

const SECRET = `sk-upstream-${process.pid}-c0ffee1234abcd`;
const KEY_ENV = 'KILN_TEST_UPSTREAM_SECRET';
const POLICY = {
  connect_timeout_ms: 1000,
  first_token_timeout_ms: 500,
  idle_timeout_ms: 1000,
  total_timeout_ms: 10_000,
  max_attempts: 3,
  retry_budget_ms: 5000,
  failure_threshold: 3,
  eject_ms: 1200,
  max_eject_ms: 2400,
  health_check_interval_ms: 0,
};

const upstreams: Record<string, FaultUpstream> = {};
const recorder = new ResponseRecorder();
let front: KilnProcess;
/** A second front with active health checks (the policy is server-wide). */
let checkedFront: KilnProcess;
let client: OpenAI;
const CHECKED_POLICY = { ...POLICY, health_check_interval_ms: 200, eject_ms: 5000, max_eject_ms: 10_000 };

/** Fault upstreams by name, each serving a model named `served-<name>`, and the model ids that route to them. */
const LAYOUT: Record<string, { upstreams: Array<[string, FaultMode]>; prefix_affinity?: boolean; max_concurrency?: number }> = {
  'hang-model': { upstreams: [['hung', Fault.hang(true)], ['good', Fault.ok()]], prefix_affinity: false },
  'down-model': { upstreams: [['down-a', Fault.ok()], ['down-b', Fault.ok()]], prefix_affinity: false },
  'limited-model': { upstreams: [['limited-a', Fault.status(429, 7)], ['limited-b', Fault.status(429, 7)]], prefix_affinity: false },
  'flaky-model': { upstreams: [['failing', Fault.status(500)], ['steady', Fault.ok()]], prefix_affinity: false },
  'full-model': { upstreams: [['broken', Fault.status(502)], ['busy', Fault.slowFirstByte(300)]], prefix_affinity: false, max_concurrency: 1 },
  'slow-model': { upstreams: [['slow', Fault.slowFirstByte(2000)]] },
  'cut-model': { upstreams: [['cutting', Fault.closeMidStream(2)]] },
  'think-model': { upstreams: [['thinker', Fault.inlineThink()]] },
  'reasoning-model': { upstreams: [['reasoner', Fault.reasoningContent()]] },
  'tool-model': { upstreams: [['caller', Fault.toolCall()]] },
};

async function modelsOf(layout: typeof LAYOUT) {
  const models = [];
  for (const [id, { upstreams: list, prefix_affinity, max_concurrency = 8 }] of Object.entries(layout)) {
    const entries = [];
    for (const [name, mode] of list) {
      const upstream = await FaultUpstream.start({ mode, model: `served-${name}` });
      upstreams[name] = upstream;
      entries.push({ url: upstream.url, model: upstream.model, name, api_key_env: KEY_ENV, max_concurrency });
    }
    models.push({ id, upstreams: entries, queue_wait_ms: 3000, ...(prefix_affinity !== undefined ? { prefix_affinity } : {}) });
  }
  return models;
}

before(async () => {
  const models = await modelsOf(LAYOUT);
  const checkedModels = await modelsOf({ 'checked-model': { upstreams: [['sick', Fault.status(500)], ['well', Fault.ok()]], prefix_affinity: false } });
  [front, checkedFront] = await Promise.all([
    startFront({ server: { upstream: POLICY }, models }, ['--log-level', 'debug'], { [KEY_ENV]: SECRET }),
    startFront({ server: { upstream: CHECKED_POLICY }, models: checkedModels }, ['--log-level', 'debug'], { [KEY_ENV]: SECRET }),
  ]);
  client = new OpenAI({ baseURL: `${front.url}/v1`, apiKey: 'sk-front-client', maxRetries: 0, fetch: recorder.fetch });
});

after(async () => {
  await Promise.all([front?.stop(), checkedFront?.stop()]);
  await Promise.all(Object.values(upstreams).map((upstream) => upstream.stop()));
});

function post(model: string, extra: Record<string, unknown> = {}, content = 'Hi', to = front): Promise<Response> {
  return recorder.fetch(`${to.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content }], max_tokens: 16, ...extra }),
    signal: AbortSignal.timeout(15_000),
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function okCompletion(response: Response): Promise<{ content: string; served: string }> {
  const text = await response.text();
  assert.equal(response.status, 200, text);
  const body = JSON.parse(text);
  return { content: body.choices[0].message.content, served: body.model };
}

describe('a hung replica', () => {
  test('times out at first_token_timeout_ms and fails over; after failure_threshold timeouts it is ejected, then readmitted once it recovers', async (t) => {
    const hung = upstreams.hung!;
    const good = upstreams.good!;
    // Pairs at once: least-outstanding balancing sends one of each pair to each replica.
    let pairs = 0;
    while (hung.requests < POLICY.failure_threshold) {
      assert.ok(++pairs <= 6, `the hung replica got ${hung.requests} requests in ${pairs - 1} pairs`);
      // Silent after accepting, or silent after a 200 and the event-stream headers: both are hung.
      hung.setMode(Fault.hang(pairs % 2 === 0));
      const started = Date.now();
      const results = await Promise.all([post('hang-model', {}, `pair ${pairs} a`), post('hang-model', {}, `pair ${pairs} b`)]);
      for (const response of results) assert.equal((await okCompletion(response)).content, OK_CHUNKS.join(''));
      assert.ok(Date.now() - started < 5000, `a pair took ${Date.now() - started} ms`);
    }
    assert.equal(hung.requests, POLICY.failure_threshold);
    // Ejected: nothing reaches it for eject_ms (checked over the first 700 ms of it, whatever the machine's speed).
    const ejectedAt = Date.now();
    const goodBefore = good.requests;
    let sent = 0;
    while (Date.now() - ejectedAt < 700) {
      await okCompletion(await post('hang-model', {}, `ejected ${sent}`));
      sent++;
    }
    assert.ok(sent >= 2, `only ${sent} requests fitted in 700 ms`);
    assert.equal(hung.requests, POLICY.failure_threshold, 'an ejected replica gets no requests');
    assert.equal(good.requests - goodBefore, sent);

    // Recovered: a probe once eject_ms is over finds it answering, and it takes its share again.
    hung.setMode(Fault.ok());
    const readmittedBy = Date.now() + POLICY.eject_ms + 5000;
    while (hung.requests === POLICY.failure_threshold) {
      assert.ok(Date.now() < readmittedBy, 'the recovered replica was never probed');
      await okCompletion(await post('hang-model', {}, 'probe?'));
      await sleep(100);
    }
    t.diagnostic(`probed and readmitted ${Date.now() - ejectedAt} ms after its ejection (eject_ms ${POLICY.eject_ms})`);
    const probedAt = hung.requests;
    for (let i = 0; i < 4; i++) {
      const results = await Promise.all([post('hang-model', {}, `back ${i} a`), post('hang-model', {}, `back ${i} b`)]);
      for (const response of results) await okCompletion(response);
    }
    assert.ok(hung.requests - probedAt >= 2, `after readmission the replica got ${hung.requests - probedAt} of 8 requests`);
    t.diagnostic(`hung replica: ${POLICY.failure_threshold} timeouts, readmitted; good replica served ${good.requests}`);
  });
});

describe('active health checks', () => {
  test('a replica failing its checks is ejected before any request reaches it, and readmitted once its checks pass', async (t) => {
    const sick = upstreams.sick!;
    const well = upstreams.well!;
    // failure_threshold failed checks, 200 ms apart, eject it (for 5 s) without a request risked on it.
    const ejectedBy = Date.now() + 5000;
    while (sick.modelsRequests < CHECKED_POLICY.failure_threshold + 1) {
      assert.ok(Date.now() < ejectedBy, `only ${sick.modelsRequests} checks in 5 s`);
      await sleep(50);
    }
    for (let i = 0; i < 4; i++) {
      const results = await Promise.all([post('checked-model', {}, `a${i}`, checkedFront), post('checked-model', {}, `b${i}`, checkedFront)]);
      for (const response of results) await okCompletion(response);
    }
    assert.equal(sick.requests, 0, 'no request reached the replica that failed its checks');
    assert.equal(well.requests, 8);

    sick.setMode(Fault.ok());
    const recovered = Date.now();
    const readmittedBy = recovered + 3000;
    while (sick.requests === 0) {
      assert.ok(Date.now() < readmittedBy, 'the replica passing its checks again was not readmitted within 3 s (eject_ms is 5 s)');
      const results = await Promise.all([post('checked-model', {}, 'c', checkedFront), post('checked-model', {}, 'd', checkedFront)]);
      for (const response of results) await okCompletion(response);
      await sleep(50);
    }
    t.diagnostic(`readmitted by an active check ${Date.now() - recovered} ms after it recovered; checks: ${sick.modelsRequests} + ${well.modelsRequests}`);
  });
});

describe('every deployment down', () => {
  test('503 with Retry-After saying no healthy deployment serves the model; served again once they come back', async () => {
    await upstreams['down-a']!.stop();
    await upstreams['down-b']!.stop();
    let message = '';
    for (let i = 0; i < 6; i++) {
      const started = Date.now();
      const response = await post('down-model');
      const body = await response.json();
      assert.equal(response.status, 503, JSON.stringify(body));
      assert.ok(Number(response.headers.get('retry-after')) >= 1, `Retry-After ${response.headers.get('retry-after')}`);
      assert.equal(body.error.type, 'service_unavailable');
      assert.ok(Date.now() - started < 3000, `a refusal took ${Date.now() - started} ms`);
      message = body.error.message;
    }
    // By now both are ejected: the refusal says why, naming the model.
    assert.match(message, /no healthy deployment/i);
    assert.match(message, /down-model/);
    const streamed = await post('down-model', { stream: true });
    assert.equal(streamed.status, 503);
    assert.ok(Number(streamed.headers.get('retry-after')) >= 1);
    await streamed.text();

    await upstreams['down-a']!.restart(Fault.ok());
    await upstreams['down-b']!.restart(Fault.ok());
    const until = Date.now() + POLICY.max_eject_ms * 3;
    for (;;) {
      const response = await post('down-model');
      if (response.status === 200) break;
      await response.text();
      assert.ok(Date.now() < until, `still ${response.status} ${POLICY.max_eject_ms * 3} ms after the replicas came back`);
      await sleep(150);
    }
  });
});

describe('upstream errors', () => {
  test('every deployment answering 429 → 429 with Retry-After; a rate limit does not eject', async () => {
    for (const stream of [false, true]) {
      const response = await post('limited-model', stream ? { stream: true } : {});
      const body = await response.json();
      assert.equal(response.status, 429, JSON.stringify(body));
      // What the upstreams asked for (the longest of them): retrying sooner is pointless.
      assert.equal(response.headers.get('retry-after'), '7');
      assert.equal(body.error.type, 'rate_limit_error');
    }
    await assert.rejects(client.chat.completions.create({ model: 'limited-model', messages: [{ role: 'user', content: 'Hi' }] }), OpenAI.RateLimitError);
    for (let i = 0; i < 3; i++) await (await post('limited-model')).text();
    upstreams['limited-a']!.setMode(Fault.ok());
    upstreams['limited-b']!.setMode(Fault.ok());
    await okCompletion(await post('limited-model'));
  });

  test('a replica answering 500 is failed over: every request succeeds', async () => {
    for (let i = 0; i < 6; i++) {
      const results = await Promise.all([post('flaky-model', {}, `a${i}`), post('flaky-model', {}, `b${i}`)]);
      for (const response of results) assert.equal((await okCompletion(response)).content, OK_CHUNKS.join(''));
    }
    assert.ok(upstreams.failing!.requests >= 1 && upstreams.failing!.requests <= POLICY.failure_threshold + 1, `the failing replica got ${upstreams.failing!.requests}`);
  });

  test('failing over to a deployment at its max_concurrency waits for its room instead of answering 503', async () => {
    // Two requests at once, one per deployment (max_concurrency 1 each): the one sent to the broken deployment fails
    // over to the busy one, which is full until its own request ends (~300 ms, within every timeout and budget).
    const results = await Promise.all([post('full-model', {}, 'one'), post('full-model', {}, 'two')]);
    const statuses = await Promise.all(results.map(async (response) => `${response.status} ${response.status === 200 ? '' : await response.text()}`));
    assert.deepEqual(statuses, ['200 ', '200 ']);
    // Usually one request starts on each deployment; on a loaded machine the second may arrive after the first has
    // already failed on the broken one and find it idle again. Either way both end on the busy one, one waiting.
    assert.ok(upstreams.broken!.requests >= 1 && upstreams.broken!.requests <= 2, `broken got ${upstreams.broken!.requests}`);
    assert.equal(upstreams.busy!.requests, 2);
  });

  test('a first byte later than first_token_timeout_ms on the only deployment → 504, streamed or not, without hanging', async () => {
    for (const stream of [false, true]) {
      const started = Date.now();
      const response = await post('slow-model', stream ? { stream: true } : {});
      const body = await response.json();
      assert.equal(response.status, 504, JSON.stringify(body));
      assert.equal(body.error.type, 'timeout_error');
      assert.ok(Date.now() - started < 4000, `took ${Date.now() - started} ms`);
    }
  });

  test('a stream cut by the upstream ends with the error event (no [DONE]); unstreamed, an error status', async () => {
    const response = await post('cut-model', { stream: true });
    assert.equal(response.status, 200);
    const events = await readEventStream(response);
    const last = events.at(-1)!;
    assert.notEqual(last, '[DONE]');
    const error = JSON.parse(last).error;
    assert.equal(typeof error.message, 'string');
    assert.equal(typeof error.type, 'string');
    const content = events.slice(0, -1).map((event) => JSON.parse(event).choices?.[0]?.delta?.content ?? '').join('');
    assert.equal(content, OK_CHUNKS.slice(0, 2).join(''), 'what came before the cut was sent');

    const whole = await post('cut-model');
    const body = await whole.json();
    assert.ok(whole.status >= 500 && whole.status < 600, `status ${whole.status}`);
    assert.equal(typeof body.error.message, 'string');
  });
});

describe('reasoning and tool calls normalised', () => {
  for (const [model, source] of [
    ['think-model', '<think> inlined in content'],
    ['reasoning-model', 'reasoning_content deltas'],
  ] as const) {
    test(`${source} → reasoning_content and content, whole and streamed`, async () => {
      const whole = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Think.' }], max_tokens: 64 });
      const message = whole.choices[0]!.message as { content: string | null; reasoning_content?: string };
      assert.equal(message.reasoning_content, THINK_REASONING);
      assert.equal(message.content, THINK_ANSWER);
      assert.equal(whole.choices[0]!.finish_reason, 'stop');
      assert.equal(whole.model, model);

      const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Think.' }], max_tokens: 64, stream: true });
      let reasoning = '';
      let content = '';
      let finish: string | null | undefined;
      for await (const chunk of stream) {
        const delta = chunk.choices[0]?.delta as { content?: string | null; reasoning_content?: string } | undefined;
        reasoning += delta?.reasoning_content ?? '';
        content += delta?.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      assert.equal(reasoning, THINK_REASONING);
      assert.equal(content, THINK_ANSWER);
      assert.equal(finish, 'stop');
    });
  }

  test('streamed tool_calls deltas from the upstream → tool_calls in the contract shape, finish_reason tool_calls', async () => {
    const tools = [{ type: 'function' as const, function: { name: TOOL_CALL.name, parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } } } } }];
    const messages = [{ role: 'user' as const, content: 'Weather in Paris?' }];
    const whole = await client.chat.completions.create({ model: 'tool-model', messages, tools, max_tokens: 64 });
    const call = whole.choices[0]!.message.tool_calls?.[0] as { id: string; type: string; function: { name: string; arguments: string } } | undefined;
    assert.ok(call, JSON.stringify(whole.choices[0]));
    assert.match(call.id, /^call_/);
    assert.equal(call.type, 'function');
    assert.equal(call.function.name, TOOL_CALL.name);
    assert.deepEqual(JSON.parse(call.function.arguments), JSON.parse(TOOL_CALL.arguments));
    assert.equal(whole.choices[0]!.finish_reason, 'tool_calls');

    const stream = await client.chat.completions.create({ model: 'tool-model', messages, tools, max_tokens: 64, stream: true });
    const deltas = [];
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      for (const delta of chunk.choices[0]?.delta.tool_calls ?? []) deltas.push(delta);
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.ok(deltas.length >= 1);
    const [first, ...rest] = deltas;
    assert.equal(first!.index, 0);
    assert.match(first!.id!, /^call_/);
    assert.equal(first!.type, 'function');
    assert.equal(first!.function!.name, TOOL_CALL.name);
    for (const delta of rest) {
      assert.equal(delta.index, 0);
      assert.equal(delta.id, undefined, 'only the first delta of a call carries its id');
    }
    const args = deltas.map((delta) => delta.function?.arguments ?? '').join('');
    assert.deepEqual(JSON.parse(args), JSON.parse(TOOL_CALL.arguments));
    assert.equal(finish, 'tool_calls');
  });
});

test('every upstream got the key from the environment as Bearer, and its own model name', () => {
  for (const [name, upstream] of Object.entries(upstreams)) {
    // Health checks (GET /v1/models) included.
    for (const request of upstream.recorded) assert.equal(request.authorization, `Bearer ${SECRET}`, `${name} ${request.method} ${request.path}`);
    for (const body of upstream.bodies) assert.equal((body as { model: string }).model, `served-${name}`, name);
  }
  assert.ok(upstreams.good!.requests > 0);
});

test("no upstream key nor upstream address in any response or in the front's debug log", async () => {
  const ports = Object.values(upstreams).map((upstream) => upstream.port);
  const responses = await recorder.all();
  assert.ok(recorder.count >= 40, `responses recorded: ${recorder.count}`);
  assert.deepEqual(findLeaks(responses, [SECRET], ports), []);
  await sleep(100);
  const log = front.output() + checkedFront.output();
  assert.match(log, /"deployment":"hung"/, 'the log has the routing lines (so that they are checked too)');
  assert.deepEqual(findLeaks(log, [SECRET], ports), []);
});
