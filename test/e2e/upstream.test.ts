/**
 * End to end, upstream deployments served by real engines on loopback: three `kiln serve` replicas of a generated tiny
 * model behind a front Kiln that lists them as upstreams. Balancing, prefix affinity (the replica's KV cache is
 * reused), reasoning passed through from a replica, the `openai` client through the front, and a replica killed with
 * 50 streams in flight. The replicas require a key that only the front's environment holds; nothing of it, nor any
 * replica's address, may show in a response or in the front's debug log.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import type { ChatCompletionCreateParamsNonStreaming } from 'openai/resources/chat/completions';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { findLeaks, ResponseRecorder, requestCounts, requestsSince, startUpstreamCluster, type Cluster, type ReplicaAddress } from '../helpers/upstream-cluster.js';

const REPLICA_KEY = `sk-replica-${process.pid}-7f3c9a1e5b`;
const KEY_ENV = 'KILN_TEST_REPLICA_KEY';
const REPLICAS = 3;
const PARALLEL = 4;

let cluster: Cluster;
let front: string;
const recorder = new ResponseRecorder();
let client: OpenAI;

before(async () => {
  const tiny = await ensureTinyModel({ neverEnd: true });
  const r1 = await ensureTinyModel({ flavor: 'r1-distill' });
  const qwen = await ensureTinyModel({ flavor: 'qwen2.5' });
  cluster = await startUpstreamCluster({
    count: REPLICAS,
    server: { api_keys: [REPLICA_KEY] },
    models: (index) => [
      { id: 'tiny', file: tiny, parallel: PARALLEL, context_size: 1024, threads: 1 },
      ...(index === 0
        ? [
            { id: 'r1', file: r1, parallel: 1, context_size: 512, threads: 1 },
            { id: 'qwen', file: qwen, parallel: 1, context_size: 2048, threads: 1 },
          ]
        : []),
    ],
    // Generous timeouts: requests queued in a replica behind its 4 sequences wait long for their first token.
    front: (replicas) => ({
      server: { upstream: { first_token_timeout_ms: 30_000, idle_timeout_ms: 10_000, failure_threshold: 2, eject_ms: 5_000 } },
      models: [
        // Distinct names per id: ids whose upstream lists are identical, names included, share one router, built with the
        // first id's prefix_affinity (the second id's is ignored).
        { id: 'bal', upstreams: upstreamsOf(replicas, 'bal'), prefix_affinity: false },
        { id: 'aff', upstreams: upstreamsOf(replicas, 'aff'), prefix_affinity: true },
        // max_concurrency 8 on 4 sequences: each replica queues 4 more, the front queues the rest; requests failing over
        // from the killed replica find the others full and wait for a slot.
        { id: 'kill', upstreams: upstreamsOf(replicas, 'kill'), prefix_affinity: false },
        { id: 'reasoner', upstreams: [{ url: replicas[0]!.url, model: 'r1', name: 'reasoner-0', api_key_env: KEY_ENV }] },
        { id: 'tools', upstreams: [{ url: replicas[0]!.url, model: 'qwen', name: 'tools-0', api_key_env: KEY_ENV }] },
      ],
    }),
    frontEnv: { [KEY_ENV]: REPLICA_KEY },
  });
  front = cluster.front.url;
  client = new OpenAI({ baseURL: `${front}/v1`, apiKey: 'sk-front-client', maxRetries: 0, fetch: recorder.fetch });
});

after(async () => {
  // A front that died mid-run explains every later failure: show how it ended.
  const child = cluster?.front.child;
  if (child && (child.exitCode !== null || child.signalCode !== null)) {
    console.error(`# the front exited (${child.exitCode ?? child.signalCode}); its last output:\n${cluster.front.output().slice(-4000)}`);
  }
  await cluster?.stop();
});

/** `maxConcurrency` null: the default (64). */
function upstreamsOf(replicas: ReplicaAddress[], prefix: string, maxConcurrency: number | null = 2 * PARALLEL) {
  return replicas.map((replica) => ({
    url: replica.url,
    model: 'tiny',
    name: `${prefix}-${replica.name}`,
    api_key_env: KEY_ENV,
    ...(maxConcurrency !== null ? { max_concurrency: maxConcurrency } : {}),
  }));
}

function post(body: unknown, signal?: AbortSignal): Promise<Response> {
  return recorder.fetch(`${front}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });
}

const words = (seed: number, count: number) => Array.from({ length: count }, (_, i) => `w${(seed * 7919 + i * 104_729) % 100_000}`).join(' ');

describe('through the front', () => {
  test('the openai client, whole and streamed, gets the front id back and the replica key never reaches it', async () => {
    const completion = await client.chat.completions.create({ model: 'bal', messages: [{ role: 'user', content: 'Hello there.' }], max_tokens: 6 });
    assert.equal(completion.object, 'chat.completion');
    assert.equal(completion.model, 'bal');
    assert.match(completion.id, /^[0-9a-f]{32}$/);
    assert.equal(completion.choices[0]!.finish_reason, 'length');
    assert.equal(typeof completion.choices[0]!.message.content, 'string');
    assert.equal(completion.usage!.completion_tokens, 6);
    assert.ok(completion.usage!.prompt_tokens > 5, `prompt_tokens ${completion.usage!.prompt_tokens}`);
    assert.equal(completion.usage!.total_tokens, completion.usage!.prompt_tokens + 6);

    const stream = await client.chat.completions.create({
      model: 'bal',
      messages: [{ role: 'user', content: 'Hello again.' }],
      max_tokens: 6,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.equal(chunks[0]!.choices[0]!.delta.role, 'assistant');
    assert.equal(new Set(chunks.map((chunk) => chunk.id)).size, 1);
    for (const chunk of chunks) assert.equal(chunk.model, 'bal');
    assert.equal(chunks.filter((chunk) => chunk.choices[0]?.finish_reason).length, 1);
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage!.completion_tokens, 6);
    assert.equal(chunks.filter((chunk) => chunk.usage).length, 1);
  });

  test('balancing: 30 distinct conversations, 10 at a time, spread over the 3 replicas (each ≥ 5)', async () => {
    const before = requestCounts(cluster.replicas);
    for (let wave = 0; wave < 3; wave++) {
      const responses = await Promise.all(
        Array.from({ length: 10 }, (_, i) => post({ model: 'bal', messages: [{ role: 'user', content: words(wave * 10 + i, 6) }], max_tokens: 4 })),
      );
      for (const response of responses) {
        assert.equal(response.status, 200);
        assert.equal((await response.json()).choices[0].finish_reason, 'length');
      }
    }
    const served = await requestsSince(cluster.replicas, before, 30);
    assert.equal(served.reduce((sum, count) => sum + count, 0), 30, `per replica ${served}`);
    for (const count of served) assert.ok(count >= 5, `per replica ${served}`);
  });

  test("prefix affinity: each conversation's 2 turns go to one replica, whose cache serves the second turn's prefix", async (t) => {
    const placements: number[] = [];
    for (let conversation = 0; conversation < 3; conversation++) {
      // ~450 byte tokens of system prompt (the tiny model's vocabulary is byte-level).
      const system = { role: 'system', content: `Conversation ${conversation}. ${words(1000 + conversation, 60)}` };
      const firstTurn = [system, { role: 'user', content: 'First question?' }];
      const before1 = requestCounts(cluster.replicas);
      const first = await post({ model: 'aff', messages: firstTurn, max_tokens: 8, temperature: 0 });
      assert.equal(first.status, 200);
      const firstBody = await first.json();
      const turn1 = await requestsSince(cluster.replicas, before1, 1);
      assert.equal(turn1.reduce((sum, count) => sum + count, 0), 1, `turn 1 per replica ${turn1}`);

      const before2 = requestCounts(cluster.replicas);
      const second = await post({
        model: 'aff',
        messages: [...firstTurn, { role: 'assistant', content: firstBody.choices[0].message.content }, { role: 'user', content: 'And the second?' }],
        max_tokens: 8,
      });
      assert.equal(second.status, 200);
      const secondBody = await second.json();
      const turn2 = await requestsSince(cluster.replicas, before2, 1);
      assert.deepEqual(turn2, turn1, `conversation ${conversation}: turn 1 went to ${turn1}, turn 2 to ${turn2}`);
      const cached = secondBody.usage.prompt_tokens_details?.cached_tokens ?? 0;
      assert.ok(cached >= 400, `conversation ${conversation}: cached_tokens ${cached} of ${secondBody.usage.prompt_tokens} (first turn: ${firstBody.usage.prompt_tokens})`);
      placements.push(turn1.indexOf(1));
    }
    t.diagnostic(`conversations placed on replicas ${placements}`);
  });

  test('reasoning from a Kiln replica (reasoning_content) comes through split the same, whole and streamed', async () => {
    const body = { messages: [{ role: 'user', content: 'Why is the sky blue?' }], max_tokens: 64, temperature: 0, seed: 3 };
    // The replica itself, asked directly, is the reference.
    const direct = await fetch(`${cluster.replicas[0]!.url}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${REPLICA_KEY}` },
      body: JSON.stringify({ ...body, model: 'r1' }),
    });
    assert.equal(direct.status, 200);
    const reference = (await direct.json()).choices[0].message;
    assert.ok(reference.reasoning_content?.length > 0, `the tiny R1 model reasons: ${JSON.stringify(reference)}`);

    const whole = await client.chat.completions.create({ ...body, model: 'reasoner' } as ChatCompletionCreateParamsNonStreaming);
    const message = whole.choices[0]!.message as { content: string | null; reasoning_content?: string };
    assert.equal(message.reasoning_content, reference.reasoning_content);
    assert.equal(message.content ?? '', reference.content ?? '');
    for (const text of [message.reasoning_content ?? '', message.content ?? '']) assert.doesNotMatch(text, /<\/?think>/);

    const stream = await client.chat.completions.create({ ...body, model: 'reasoner', stream: true });
    let reasoning = '';
    let content = '';
    for await (const chunk of stream) {
      const delta = chunk.choices[0]?.delta as { content?: string | null; reasoning_content?: string } | undefined;
      reasoning += delta?.reasoning_content ?? '';
      content += delta?.content ?? '';
    }
    assert.equal(reasoning, reference.reasoning_content);
    assert.equal(content, reference.content ?? '');
  });

  test("a client leaving mid-stream ends the replica's generation too", async () => {
    const gone = () => cluster.replicas.reduce((sum, replica) => sum + (replica.process.output().match(/client disconnected before the response finished/g)?.length ?? 0), 0);
    const before = gone();
    // Not through the recorder: its clone of the body would keep reading after this reader is cancelled.
    const response = await fetch(`${front}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'bal', messages: [{ role: 'user', content: 'Talk for a long time.' }], max_tokens: 900, stream: true }),
    });
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    for (let i = 0; i < 3; i++) await reader.read();
    await reader.cancel();
    const until = Date.now() + 5000;
    while (gone() === before) {
      assert.ok(Date.now() < until, 'no replica saw its client (the front) leave within 5 s');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });

  test('a tool call forced by a Kiln replica comes through as tool_calls deltas in the contract shape, the same call as the replica made', async () => {
    const parameters = { type: 'object', properties: { unit: { enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['unit', 'days'], additionalProperties: false };
    const tools = [{ type: 'function' as const, function: { name: 'get_weather', description: 'Weather', parameters } }];
    const body = { messages: [{ role: 'user' as const, content: 'Weather?' }], tools, tool_choice: 'required' as const, parallel_tool_calls: false, max_tokens: 200, seed: 4, temperature: 1 };
    const direct = await fetch(`${cluster.replicas[0]!.url}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${REPLICA_KEY}` },
      body: JSON.stringify({ ...body, model: 'qwen' }),
    });
    assert.equal(direct.status, 200);
    const reference = (await direct.json()).choices[0];
    assert.equal(reference.finish_reason, 'tool_calls');

    const whole = await client.chat.completions.create({ ...body, model: 'tools' });
    const call = whole.choices[0]!.message.tool_calls![0]! as { id: string; type: string; function: { name: string; arguments: string } };
    assert.equal(whole.choices[0]!.finish_reason, 'tool_calls');
    assert.equal(whole.choices[0]!.message.content, null);
    assert.match(call.id, /^call_/);
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), JSON.parse(reference.message.tool_calls[0].function.arguments));

    const stream = await client.chat.completions.create({ ...body, model: 'tools', stream: true });
    const deltas = [];
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      for (const delta of chunk.choices[0]?.delta.tool_calls ?? []) deltas.push(delta);
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(finish, 'tool_calls');
    const [first, ...rest] = deltas;
    assert.equal(first!.index, 0);
    assert.match(first!.id!, /^call_/);
    assert.equal(first!.type, 'function');
    assert.equal(first!.function!.name, 'get_weather');
    for (const delta of rest) {
      assert.equal(delta.index, 0);
      assert.equal(delta.id, undefined, 'only the first delta of a call carries its id');
      assert.equal(delta.function?.name, undefined);
    }
    assert.deepEqual(JSON.parse(deltas.map((delta) => delta.function?.arguments ?? '').join('')), JSON.parse(call.function.arguments));
  });
});

interface StreamOutcome {
  status: number;
  events: string[];
  /** Events received when the replica was killed. */
  eventsAtKill: number;
  error?: string;
}

/** Reads an SSE response incrementally, so that the test knows which streams have begun. */
async function readStream(response: Response, outcome: StreamOutcome, onEvent: () => void): Promise<void> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ')) throw new Error(`bad SSE event ${JSON.stringify(event)}`);
      outcome.events.push(event.slice('data: '.length));
      onEvent();
    }
  }
  if (buffer !== '') throw new Error(`stream ends inside an event: ${JSON.stringify(buffer)}`);
}

describe('a replica killed mid-run', () => {
  test('50 concurrent streams: those not begun fail over and finish, those cut end with the error event; then all is well', async (t) => {
    const MAX_TOKENS = 160;
    const victim = cluster.replicas[1]!;
    const outcomes: StreamOutcome[] = [];
    const victimBefore = victim.requestCount();
    let killedAt: number | undefined;
    let finishedBeforeKill = 0;
    let begun = 0;
    let killing: Promise<void> | undefined;
    const kill = () => {
      killedAt = Date.now();
      outcomes.forEach((outcome) => (outcome.eventsAtKill = outcome.events.length));
      finishedBeforeKill = outcomes.filter((outcome) => outcome.events.at(-1) === '[DONE]').length;
      killing = victim.kill();
    };
    const started = Date.now();
    const requests = Array.from({ length: 50 }, async (_, i) => {
      const outcome: StreamOutcome = { status: 0, events: [], eventsAtKill: 0 };
      outcomes.push(outcome);
      const response = await post(
        { model: 'kill', messages: [{ role: 'user', content: words(5000 + i, 5) }], max_tokens: MAX_TOKENS, stream: true, stream_options: { include_usage: true } },
        AbortSignal.timeout(45_000),
      );
      outcome.status = response.status;
      if (response.status !== 200) {
        outcome.error = await response.text();
        return outcome;
      }
      let counted = false;
      await readStream(response, outcome, () => {
        // A stream has begun once it has content (the role chunk may come first). Kill once 9 of the 12 sequences'
        // streams have begun and the victim has its 4 (from its log), or at the latest when a stream is half done
        // (on a loaded machine the replicas start their streams unevenly).
        if (!counted && outcome.events.length >= 3) {
          counted = true;
          begun++;
        }
        if (killedAt !== undefined) return;
        if ((begun >= 9 && victim.requestCount() - victimBefore >= PARALLEL) || outcome.events.length >= MAX_TOKENS / 2) kill();
      });
      return outcome;
    });
    const settled = await Promise.allSettled(requests);
    await killing;
    const elapsed = Date.now() - started;

    let full = 0;
    let cut = 0;
    const wrong: string[] = [];
    for (const [index, outcome] of outcomes.entries()) {
      if (outcome.status !== 200) {
        wrong.push(`#${index}: status ${outcome.status} ${outcome.error}`);
        continue;
      }
      const last = outcome.events.at(-1);
      if (last === '[DONE]') {
        const chunks = outcome.events.slice(0, -1).map((event) => JSON.parse(event));
        const usage = chunks.at(-1).usage;
        const finish = chunks.filter((chunk) => chunk.choices?.[0]?.finish_reason).map((chunk) => chunk.choices[0].finish_reason);
        if (chunks.some((chunk) => chunk.error) || usage?.completion_tokens !== MAX_TOKENS || finish.join() !== 'length') {
          wrong.push(`#${index}: a stream that ends in [DONE] but is not whole: usage ${JSON.stringify(usage)}, finish ${finish}`);
        } else full++;
        continue;
      }
      const error = last === undefined ? undefined : JSON.parse(last).error;
      if (error === undefined || typeof error.message !== 'string' || typeof error.type !== 'string') {
        wrong.push(`#${index}: ended neither with [DONE] nor with an error event: ${JSON.stringify(outcome.events.slice(-2))}`);
        continue;
      }
      // Begun = content reached the client before the error (the front answers only after the upstream's first token,
      // so a stream cut before any content would have failed over). Events counted at the kill are not the measure:
      // chunks already sent may still be on their way to the client.
      const hadContent = outcome.events.slice(0, -1).some((event) => {
        const delta = JSON.parse(event).choices?.[0]?.delta;
        return typeof delta?.content === 'string' && delta.content !== '';
      });
      if (!hadContent) wrong.push(`#${index}: cut before any content reached the client: ${last}`);
      cut++;
    }

    // What the victim had received: the streams cut on it, and requests waiting in its queue, which had to fail over.
    const receivedByVictim = victim.requestCount() - victimBefore;
    const failedOver = receivedByVictim - cut;
    // The front's own account: attempts on the victim that failed before their first byte (then tried elsewhere), and
    // runs it cut mid-stream.
    const victimLines = cluster.front.output().split('\n').filter((line) => line.includes(`"deployment":"kill-${victim.name}"`));
    const attemptsFailed = victimLines.filter((line) => line.includes('deployment attempt failed')).length;
    const failedMidStream = victimLines.filter((line) => line.includes('failed mid-stream')).length;
    const figures =
      `killed ${victim.name} ${killedAt === undefined ? 'never' : `${killedAt - started} ms in`}; ${full} whole streams, ${cut} cut mid-stream, ` +
      `${outcomes.length - full - cut} wrong; the victim had received ${receivedByVictim} (so ${failedOver} waiting there had to fail over); ` +
      `front log: ${attemptsFailed} attempts on the victim failed over, ${failedMidStream} runs failed mid-stream; ` +
      `all done in ${elapsed} ms; requests per replica ${requestCounts(cluster.replicas)}`;
    t.diagnostic(figures);
    console.log(`# kill test: ${figures}`);

    const thrown = settled.filter((result) => result.status === 'rejected').map((result) => String((result as PromiseRejectedResult).reason));
    assert.deepEqual(thrown, [], 'no request may hang or lose its connection without an answer');
    assert.ok(killedAt !== undefined, 'the replica was killed while streams ran');
    assert.equal(finishedBeforeKill, 0, 'no stream finished before the kill (the kill must land mid-run)');
    assert.deepEqual(wrong, []);
    assert.equal(full + cut, 50);
    assert.ok(cut >= 1, 'some streams were running on the killed replica');
    assert.ok(failedOver >= 1, 'some requests waiting on the killed replica failed over');

    const health = await recorder.fetch(`${front}/health`);
    assert.equal(health.status, 200);
    await health.text();
    for (let i = 0; i < 3; i++) {
      const after = await post({ model: 'kill', messages: [{ role: 'user', content: `after ${i}` }], max_tokens: 4 });
      assert.equal(after.status, 200, await after.clone().text());
      assert.equal((await after.json()).usage.completion_tokens, 4);
    }
  });
});

test("no replica key nor replica address in any response or in the front's log", async () => {
  const ports = cluster.replicas.map((replica) => replica.port);
  const responses = await recorder.all();
  assert.ok(recorder.count >= 90, `responses recorded: ${recorder.count}`);
  assert.deepEqual(findLeaks(responses, [REPLICA_KEY], ports), []);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const log = cluster.front.output();
  assert.match(log, /"deployment":"kill-replica-1"/, 'the log has the routing lines (so that they are checked too)');
  assert.deepEqual(findLeaks(log, [REPLICA_KEY], ports), []);
});
