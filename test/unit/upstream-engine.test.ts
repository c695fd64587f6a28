/**
 * The upstream engine against a canned OpenAI-compatible server: the request it sends (explicit defaults, one upstream
 * request per choice) and how streamed deltas — content, inline <think>, reasoning_content, tool calls in fragments,
 * usage or none, a whole JSON completion — come out of the shared post-processor.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type { ChatRequest } from '../../src/core/chat-request.js';
import type { EngineRun } from '../../src/core/engine.js';
import { ChoicePostProcessor, type ChoiceUpdate } from '../../src/core/postprocess/choice-processor.js';
import type { UpstreamEngineSettings } from '../../src/engines/upstream/upstream-engine.js';
import { chatRequest, chunk, collectingLog, events, startCannedUpstream, upstreamEngine, usageChunk, type CannedUpstream, type Script } from '../helpers/canned-upstream.js';

const servers: CannedUpstream[] = [];
after(() => Promise.all(servers.map((server) => server.close())));

async function serve(...args: Parameters<typeof startCannedUpstream>): Promise<CannedUpstream> {
  const server = await startCannedUpstream(...args);
  servers.push(server);
  return server;
}


interface Processed {
  content: string;
  reasoning: string;
  toolCalls: Array<{ name: string; arguments: string }>;
  finish: Extract<ChoiceUpdate, { type: 'finish' }> | undefined;
}

/** One choice through the post-processor, the way the service reads it. */
async function processed(run: EngineRun, request: ChatRequest, index = 0): Promise<Processed> {
  const processor = new ChoicePostProcessor({ stop: request.stop, reasoning: run.reasoning, tools: request.tools.length > 0 });
  const out: Processed = { content: '', reasoning: '', toolCalls: [], finish: undefined };
  for await (const event of run.choice(index)) {
    for (const update of processor.accept(event)) {
      if (update.type === 'finish') {
        out.finish = update;
        return out;
      }
      const { delta } = update;
      if (delta.content !== undefined) out.content += delta.content;
      if (delta.reasoningContent !== undefined) out.reasoning += delta.reasoningContent;
      if (delta.toolCall !== undefined) {
        if (delta.toolCall.name !== undefined) out.toolCalls.push({ name: delta.toolCall.name, arguments: '' });
        out.toolCalls[delta.toolCall.index]!.arguments += delta.toolCall.arguments;
      }
    }
  }
  return out;
}

const signal = () => new AbortController().signal;

describe('upstream engine: the request it sends', { timeout: 15_000 }, () => {
  let upstream: CannedUpstream;

  test('every parameter is explicit, n fans out to n requests of one choice with seed + i', async () => {
    upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'ok' }, 'stop')], usage: usageChunk(3, 1) }));
    const engine = upstreamEngine(upstream);
    const request = chatRequest({ n: 3, seed: 4294967295 });
    const run = await engine.start(request, signal());
    for (let index = 0; index < 3; index++) await events(run, index);
    run.dispose();
    const unseeded = await engine.start(chatRequest({ n: 2 }), signal());
    for (let index = 0; index < 2; index++) await events(unseeded, index);
    unseeded.dispose();
    await engine.close();

    const posts = upstream.requests.filter((r) => r.method === 'POST').slice(0, 3);
    assert.deepEqual(posts.map((r) => r.body!.seed).sort(), [0, 1, 4294967295].sort());
    const later = upstream.requests.filter((r) => r.method === 'POST').slice(3);
    assert.equal(later.length, 2);
    for (const post of later) assert.equal('seed' in post.body!, false, 'without a seed from the client, none goes upstream');
    for (const post of posts) {
      assert.equal(post.url, '/v1/chat/completions');
      assert.equal(post.headers.authorization, 'Bearer sk-upstream-secret');
      assert.equal(post.headers['content-type'], 'application/json');
      assert.equal(post.headers.accept, 'text/event-stream');
      const { seed: _seed, ...body } = post.body!;
      assert.deepEqual(body, {
        model: 'served-model',
        messages: [{ role: 'user', content: 'Hi there' }],
        max_tokens: 512,
        temperature: 0.7,
        top_p: 0.7,
        top_k: 50,
        min_p: 0.05,
        frequency_penalty: 0.5,
        presence_penalty: 0,
        thinking_budget: 4096,
        stream: true,
        stream_options: { include_usage: true },
      });
    }
  });

  test('tools, tool history, response_format, stop, thinking, prefix continuation and user are forwarded', async () => {
    upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'ok' }, 'stop')] }));
    const engine = upstreamEngine(upstream, { apiKey: undefined });
    const tool = { type: 'function', function: { name: 'get_weather', description: 'Weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } };
    const request = chatRequest({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '18C' },
        { role: 'assistant', content: 'It is', prefix: true },
      ],
      tools: [tool],
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      parallel_tool_calls: false,
      response_format: { type: 'json_schema', json_schema: { name: 'w', schema: { type: 'object' }, strict: true } },
      stop: ['END'],
      enable_thinking: false,
      max_tokens: 77,
      temperature: 0.1,
      user: 'u-1',
      seed: 9,
    });
    const run = await engine.start(request, signal());
    await events(run);
    await engine.close();
    const body = upstream.requests[0]!.body!;
    assert.equal(upstream.requests[0]!.headers.authorization, undefined);
    assert.deepEqual(body.messages, [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', content: '18C', tool_call_id: 'call_1' },
      { role: 'assistant', content: 'It is', prefix: true },
    ]);
    assert.deepEqual(body.tools, [tool]);
    assert.deepEqual(body.tool_choice, { type: 'function', function: { name: 'get_weather' } });
    assert.equal(body.parallel_tool_calls, false);
    assert.deepEqual(body.response_format, { type: 'json_schema', json_schema: { name: 'w', schema: { type: 'object' }, strict: true } });
    assert.deepEqual(body.stop, ['END']);
    assert.deepEqual(body.chat_template_kwargs, { enable_thinking: false });
    assert.equal(body.enable_thinking, false);
    assert.equal(body.continue_final_message, true);
    assert.equal(body.add_generation_prompt, false);
    assert.equal(body.max_tokens, 77);
    assert.equal(body.temperature, 0.1);
    assert.equal(body.user, 'u-1');
    assert.equal(body.seed, 9);
    assert.equal('n' in body, false);
  });
});

describe('upstream engine: streamed answers through the post-processor', { timeout: 15_000 }, () => {
  const answers: Record<string, Script> = {
    plain: { kind: 'sse', chunks: [chunk({ role: 'assistant', content: '' }), chunk({ content: 'Hello' }), chunk({ content: ', world' }), chunk({}, 'stop')], usage: usageChunk(11, 2, { cached: 4, reasoning: 0 }) },
    inlineThink: { kind: 'sse', chunks: [chunk({ content: '<think>hmm' }), chunk({ content: ' let me see</think>\n\n' }), chunk({ content: 'Answer' }, 'stop')], usage: usageChunk(5, 3) },
    reasoningContent: {
      kind: 'sse',
      chunks: [chunk({ role: 'assistant', content: null, reasoning_content: 'Think' }), chunk({ reasoning_content: 'ing.' }), chunk({ content: 'Done' }), chunk({}, 'stop')],
      usage: usageChunk(5, 4, { reasoning: 2 }),
    },
    reasoningOnly: { kind: 'sse', chunks: [chunk({ reasoning: 'only thoughts' }), chunk({}, 'length')] },
    toolCalls: {
      kind: 'sse',
      chunks: [
        chunk({ content: null, tool_calls: [{ index: 0, id: 'a', type: 'function', function: { name: 'get_weather', arguments: '' } }] }),
        chunk({ tool_calls: [{ index: 0, function: { arguments: '{"ci' } }] }),
        chunk({ tool_calls: [{ index: 0, function: { arguments: 'ty": "Paris"}' } }] }),
        chunk({ tool_calls: [{ index: 1, id: 'b', type: 'function', function: { name: 'now', arguments: '' } }] }),
        chunk({}, 'tool_calls'),
      ],
      usage: usageChunk(20, 9),
    },
    json: {
      kind: 'json',
      body: {
        id: 'x',
        object: 'chat.completion',
        choices: [{ index: 0, message: { role: 'assistant', content: 'Whole answer', reasoning_content: 'why' }, finish_reason: 'length' }],
        usage: { prompt_tokens: 8, completion_tokens: 6, total_tokens: 14 },
      },
    },
    jsonTools: {
      kind: 'json',
      body: {
        choices: [
          {
            index: 0,
            message: {
              role: 'assistant',
              content: null,
              tool_calls: [
                { type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
                { type: 'function', function: { name: 'now', arguments: {} } },
              ],
            },
            finish_reason: 'tool_calls',
          },
        ],
      },
    },
    noUsage: { kind: 'sse', chunks: [chunk({ content: 'a' }), chunk({ content: 'b' }), chunk({}, 'stop')] },
  };
  let upstream: CannedUpstream;

  const run = async (name: string, extra: Record<string, unknown> = {}, settings: Partial<UpstreamEngineSettings> = {}) => {
    upstream = await serve(() => answers[name]!);
    const engine = upstreamEngine(upstream, settings);
    const request = chatRequest(extra);
    const started = await engine.start(request, signal());
    return { engine, request, run: started };
  };

  test('content and usage: events, then the end with the upstream counts', async () => {
    const { engine, run: started } = await run('plain');
    const got = await events(started);
    assert.deepEqual(got, [
      { type: 'text', text: 'Hello', tokens: 1 },
      { type: 'text', text: ', world', tokens: 1 },
      { type: 'end', reason: 'eog', usage: { completionTokens: 2, reasoningTokens: 0 } },
    ]);
    assert.equal(started.promptTokens, 11);
    assert.equal(started.cachedTokens, 4);
    assert.equal(started.reasoning, 'optional');
    assert.equal(started.maxTokens, 512);
    await engine.close();
  });

  test('inline <think> passes through and is split by the post-processor', async () => {
    const { engine, request, run: started } = await run('inlineThink');
    const out = await processed(started, request);
    assert.equal(out.reasoning, 'hmm let me see');
    assert.equal(out.content, 'Answer');
    assert.equal(out.finish?.finishReason, 'stop');
    assert.equal(out.finish?.completionTokens, 3);
    await engine.close();
  });

  test('reasoning_content becomes <think> … </think> before the content', async () => {
    const { engine, request, run: started } = await run('reasoningContent');
    const texts = (await events(started)).flatMap((event) => (event.type === 'text' ? [event.text] : []));
    assert.equal(texts.join(''), '<think>Thinking.</think>Done');
    await engine.close();

    const again = await run('reasoningContent');
    const out = await processed(again.run, again.request);
    assert.deepEqual([out.reasoning, out.content, out.finish?.reasoningTokens, out.finish?.completionTokens], ['Thinking.', 'Done', 2, 4]);
    void request;
    await again.engine.close();
  });

  test('reasoning cut off by the length limit is closed at the end', async () => {
    const { engine, request, run: started } = await run('reasoningOnly');
    const out = await processed(started, request);
    assert.equal(out.reasoning, 'only thoughts');
    assert.equal(out.content, '');
    assert.equal(out.finish?.finishReason, 'length');
    await engine.close();
  });

  test('reasoning: off drops reasoning text and reports no reasoning', async () => {
    const { engine, request, run: started } = await run('reasoningContent', {}, { reasoning: 'off' });
    assert.equal(started.reasoning, 'off');
    const out = await processed(started, request);
    assert.deepEqual([out.reasoning, out.content], ['', 'Done']);
    await engine.close();
  });

  test('streamed tool calls in fragments become Hermes blocks and come out as tool calls', async () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }, { type: 'function', function: { name: 'now' } }];
    const { engine, run: started } = await run('toolCalls', { tools });
    const text = (await events(started)).flatMap((event) => (event.type === 'text' ? [event.text] : [])).join('');
    assert.equal(text, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>');
    await engine.close();

    const again = await run('toolCalls', { tools });
    const out = await processed(again.run, again.request);
    assert.deepEqual(out.toolCalls, [
      { name: 'get_weather', arguments: '{"city": "Paris"}' },
      { name: 'now', arguments: '{}' },
    ]);
    assert.equal(out.content, '');
    assert.equal(out.finish?.finishReason, 'tool_calls');
    await again.engine.close();
  });

  test('a whole JSON completion gives the same events', async () => {
    const { engine, request, run: started } = await run('json');
    const out = await processed(started, request);
    assert.deepEqual([out.reasoning, out.content, out.finish?.finishReason, out.finish?.completionTokens], ['why', 'Whole answer', 'length', 6]);
    assert.equal(started.promptTokens, 8);
    await engine.close();
  });

  test('a whole JSON completion with tool calls (no index, arguments as an object)', async () => {
    const tools = [{ type: 'function', function: { name: 'get_weather' } }, { type: 'function', function: { name: 'now' } }];
    const { engine, request, run: started } = await run('jsonTools', { tools });
    const out = await processed(started, request);
    assert.deepEqual(out.toolCalls, [
      { name: 'get_weather', arguments: '{"city":"Paris"}' },
      { name: 'now', arguments: '{}' },
    ]);
    assert.equal(out.finish?.finishReason, 'tool_calls');
    await engine.close();
  });

  test('without usage the counts are estimated and the engine warns once', async () => {
    const { log, lines } = collectingLog();
    const { engine, run: first } = await run('noUsage', { messages: [{ role: 'user', content: 'x'.repeat(41) }] }, { log });
    const got = await events(first);
    assert.deepEqual(got.at(-1), { type: 'end', reason: 'eog' });
    assert.equal(first.promptTokens, 11); // ceil(41 / 4)
    assert.equal(first.cachedTokens, 0);
    const second = await engine.start(chatRequest(), signal());
    await events(second);
    const warnings = lines.filter((line) => line.level === 'warn');
    assert.deepEqual(warnings, [{ level: 'warn', fields: { deployment: 'canned' }, message: 'upstream sent no usage; token counts are estimated' }]);
    await engine.close();
  });

  test('a stop string ends the choice early and the upstream request is aborted', async () => {
    upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'one STOP two' }), chunk({ content: 'three' }), chunk({}, 'stop')], hangAfter: 2 }));
    const engine = upstreamEngine(upstream);
    const request = chatRequest({ stop: ['STOP'] });
    const started = await engine.start(request, signal());
    const out = await processed(started, request);
    assert.equal(out.content, 'one ');
    assert.equal(out.finish?.finishReason, 'stop');
    await upstream.waitForAborted(1);
    await engine.close();
  });

  test('a finished stream keeps its connection for the next request', async () => {
    upstream = await serve(() => answers.plain!);
    const engine = upstreamEngine(upstream);
    for (let i = 0; i < 3; i++) {
      const started = await engine.start(chatRequest(), signal());
      await events(started);
      started.dispose();
      // The end of the body after [DONE] is read in the background: give it a moment to return the connection.
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.equal(upstream.sockets, 1);
    assert.equal(upstream.abortedResponses, 0);
    await engine.close();
  });

  test('description and capacity', async () => {
    upstream = await serve(() => answers.plain!);
    const engine = upstreamEngine(upstream, { maxConcurrency: 7 });
    assert.equal(engine.description.name, 'upstream:canned');
    assert.equal(engine.capacity(), 7);
    assert.equal(JSON.stringify(engine.description).includes(String(upstream.port)), false);
    await engine.close();
  });
});
