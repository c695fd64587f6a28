/**
 * End to end: the real server (bin/kiln.cjs) with a generated random-weight GGUF, driven by the `openai` client and by
 * raw HTTP for framing and error cases.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { readEventStream, startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

const KEY = 'sk-test-key';
const MODEL = 'Qwen/Qwen2.5-7B-Instruct';
const PRO_MODEL = 'Pro/Qwen/Qwen2.5-7B-Instruct';
const CONTEXT_SIZE = 512;

let kiln: KilnProcess;
let client: OpenAI;

before(async () => {
  const file = await ensureTinyModel();
  const config = await writeConfig({
    server: { api_keys: [KEY], body_limit_bytes: 64 * 1024 },
    models: [
      { id: MODEL, file, parallel: 2, context_size: CONTEXT_SIZE },
      { id: PRO_MODEL, file },
      { id: 'Vendor-A/Qwen/Qwen2.5-72B-Instruct', file },
    ],
  });
  kiln = await startKiln(['--config', config]);
  client = new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey: KEY, maxRetries: 0 });
});

after(async () => {
  await kiln?.stop();
});

function post(body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${kiln.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

const hello = [{ role: 'user' as const, content: 'Say hello.' }];

describe('models', () => {
  test('GET /v1/models lists every configured id, slashes and prefixes included', async () => {
    const models = await client.models.list();
    const ids = models.data.map((model) => model.id).sort();
    assert.deepEqual(ids, [PRO_MODEL, MODEL, 'Vendor-A/Qwen/Qwen2.5-72B-Instruct'].sort());
    for (const model of models.data) assert.equal(model.object, 'model');
  });

  test("SiliconFlow's type/sub_type filters", async () => {
    const get = async (query: string) =>
      (await (await fetch(`${kiln.url}/v1/models?${query}`, { headers: { authorization: `Bearer ${KEY}` } })).json()).data.length;
    assert.equal(await get('type=text&sub_type=chat'), 3);
    assert.equal(await get('type=image'), 0);
  });
});

describe('non-streaming', () => {
  test('answers with the seed shape, real usage and finish_reason length at max_tokens', async () => {
    const completion = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 8, seed: 7 });
    assert.match(completion.id, /^[0-9a-f]{32}$/);
    assert.equal(completion.object, 'chat.completion');
    assert.equal(completion.model, MODEL);
    assert.ok(completion.system_fingerprint);
    const [choice] = completion.choices;
    assert.equal(choice?.index, 0);
    assert.equal(choice?.message.role, 'assistant');
    assert.equal(typeof choice?.message.content, 'string');
    assert.ok(choice?.finish_reason === 'length' || choice?.finish_reason === 'stop');
    const usage = completion.usage!;
    assert.ok(usage.prompt_tokens > 5, `prompt_tokens ${usage.prompt_tokens}`);
    assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens <= 8);
    if (choice?.finish_reason === 'length') assert.equal(usage.completion_tokens, 8);
    assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  });

  test('the requested id is echoed, Pro/ prefix included', async () => {
    const completion = await client.chat.completions.create({ model: PRO_MODEL, messages: hello, max_tokens: 2 });
    assert.equal(completion.model, PRO_MODEL);
  });

  test('same seed and parameters give the same output; streamed equals whole', async () => {
    const params = { model: MODEL, messages: hello, max_tokens: 24, seed: 1234, temperature: 1.2, top_p: 1, top_k: 0 };
    const first = await client.chat.completions.create(params);
    const second = await client.chat.completions.create(params);
    assert.equal(second.choices[0]?.message.content, first.choices[0]?.message.content);
    const stream = await client.chat.completions.create({ ...params, stream: true });
    let streamed = '';
    for await (const chunk of stream) streamed += chunk.choices[0]?.delta.content ?? '';
    assert.equal(streamed, first.choices[0]?.message.content);
  });

  test('a stop string from the middle of a greedy output cuts the text right before it', async () => {
    const params = { model: MODEL, messages: hello, max_tokens: 48, temperature: 0, frequency_penalty: 0 };
    const full = (await client.chat.completions.create(params)).choices[0]!.message.content!;
    assert.ok(full.length >= 12, `greedy output too short to cut: ${JSON.stringify(full)}`);
    const stop = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
    const expected = full.slice(0, full.indexOf(stop));
    const cut = await client.chat.completions.create({ ...params, stop: [stop] });
    assert.equal(cut.choices[0]?.message.content, expected);
    assert.equal(cut.choices[0]?.finish_reason, 'stop');
    const stream = await client.chat.completions.create({ ...params, stop, stream: true });
    let streamed = '';
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(streamed, expected);
    assert.equal(finish, 'stop');
  });

  test('a second turn reuses the cached prefix', async () => {
    const system = { role: 'system' as const, content: 'You are a terse assistant. '.repeat(8) };
    const first = await client.chat.completions.create({ model: MODEL, messages: [system, ...hello], max_tokens: 4, temperature: 0 });
    const answer = first.choices[0]!.message.content!;
    const second = await client.chat.completions.create({
      model: MODEL,
      messages: [system, ...hello, { role: 'assistant', content: answer }, { role: 'user', content: 'Again.' }],
      max_tokens: 4,
    });
    const cached = (second.usage as { prompt_tokens_details?: { cached_tokens?: number } }).prompt_tokens_details?.cached_tokens ?? 0;
    assert.ok(cached >= first.usage!.prompt_tokens - 1, `cached ${cached} of ${second.usage!.prompt_tokens}`);
  });
});

describe('streaming', () => {
  test('openai client: role first, content deltas, finish_reason, usage chunk', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: hello,
      max_tokens: 10,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.equal(chunks[0]?.choices[0]?.delta.role, 'assistant');
    const ids = new Set(chunks.map((chunk) => chunk.id));
    assert.equal(ids.size, 1);
    const finishing = chunks.filter((chunk) => chunk.choices[0]?.finish_reason);
    assert.equal(finishing.length, 1);
    const last = chunks[chunks.length - 1]!;
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage && last.usage.completion_tokens >= 1 && last.usage.completion_tokens <= 10);
    // Exactly one chunk carries usage: clients that sum every chunk's usage (LangChain) must not count it twice.
    assert.equal(chunks.filter((chunk) => chunk.usage).length, 1);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
  });

  test('raw SSE framing: data lines, usage on the final chunk, [DONE] last', async () => {
    const response = await post({ model: MODEL, messages: hello, max_tokens: 5, stream: true });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
    assert.ok(response.headers.get('x-request-id'));
    const events = await readEventStream(response);
    assert.equal(events[events.length - 1], '[DONE]');
    const chunks = events.slice(0, -1).map((event) => JSON.parse(event));
    for (const chunk of chunks) assert.equal(chunk.object, 'chat.completion.chunk');
    const final = chunks[chunks.length - 1];
    assert.ok(final.choices[0].finish_reason);
    assert.equal(final.usage.total_tokens, final.usage.prompt_tokens + final.usage.completion_tokens);
    assert.equal(chunks.filter((chunk) => chunk.usage).length, 1);
  });

  test('a client that disconnects mid-stream frees its sequence', async () => {
    // parallel is 2: abort more streams than that, then a new request must still be served promptly.
    for (let i = 0; i < 4; i++) {
      const response = await post({ model: MODEL, messages: hello, max_tokens: 400, stream: true });
      const reader = response.body!.getReader();
      await reader.read();
      await reader.cancel();
    }
    const started = Date.now();
    const completion = await client.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 2 });
    assert.equal(completion.choices.length, 1);
    assert.ok(Date.now() - started < 20_000);
  });
});

describe('requests and errors', () => {
  test('x-request-id is echoed when given, generated otherwise', async () => {
    const echoed = await post({ model: MODEL, messages: hello, max_tokens: 1 }, { 'x-request-id': 'trace-abc-123' });
    assert.equal(echoed.headers.get('x-request-id'), 'trace-abc-123');
    const generated = await post('{', {});
    assert.match(generated.headers.get('x-request-id') ?? '', /^[0-9a-f]{32}$/);
  });

  const cases: Array<{ name: string; body: unknown; status: number; code: number; param: string | null; headers?: Record<string, string> }> = [
    { name: 'malformed JSON', body: '{"model": ', status: 400, code: 20015, param: null },
    { name: 'unknown model', body: { model: 'no/such-model', messages: hello }, status: 400, code: 20012, param: 'model' },
    { name: 'missing model', body: { messages: hello }, status: 400, code: 20015, param: 'model' },
    { name: 'empty messages', body: { model: MODEL, messages: [] }, status: 400, code: 20015, param: 'messages' },
    { name: 'bad role', body: { model: MODEL, messages: [{ role: 'robot', content: 'x' }] }, status: 400, code: 20015, param: 'messages[0].role' },
    { name: 'content of wrong type', body: { model: MODEL, messages: [{ role: 'user', content: 5 }] }, status: 400, code: 20015, param: 'messages[0].content' },
    { name: 'temperature out of range', body: { model: MODEL, messages: hello, temperature: 2.5 }, status: 400, code: 20015, param: 'temperature' },
    { name: 'temperature of wrong type', body: { model: MODEL, messages: hello, temperature: 'hot' }, status: 400, code: 20015, param: 'temperature' },
    { name: 'max_tokens above 16384', body: { model: MODEL, messages: hello, max_tokens: 16385 }, status: 400, code: 20015, param: 'max_tokens' },
    { name: 'max_tokens of 0', body: { model: MODEL, messages: hello, max_tokens: 0 }, status: 400, code: 20015, param: 'max_tokens' },
    { name: 'top_p of 0', body: { model: MODEL, messages: hello, top_p: 0 }, status: 400, code: 20015, param: 'top_p' },
    { name: 'five stop strings', body: { model: MODEL, messages: hello, stop: ['a', 'b', 'c', 'd', 'e'] }, status: 400, code: 20015, param: 'stop' },
    { name: 'n above the server maximum', body: { model: MODEL, messages: hello, n: 99 }, status: 400, code: 20015, param: 'n' },
    { name: "n above the model's parallel sequences", body: { model: MODEL, messages: hello, n: 3 }, status: 400, code: 20015, param: 'n' },
    {
      name: 'tool parameters with a keyword Kiln cannot enforce',
      body: { model: MODEL, messages: hello, tools: [{ type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { type: 'string', pattern: '^[A-Z]+$' } } } } }] },
      status: 400,
      code: 20015,
      param: 'tools[0].function.parameters',
    },
    {
      name: 'bad tool name',
      body: { model: MODEL, messages: hello, tools: [{ type: 'function', function: { name: 'bad name!' } }] },
      status: 400,
      code: 20015,
      param: 'tools[0].function.name',
    },
    {
      name: 'json_schema with an unsatisfiable schema',
      body: { model: MODEL, messages: hello, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', minLength: 5, maxLength: 2 } } } },
      status: 400,
      code: 20015,
      param: 'response_format.json_schema.schema',
    },
    {
      name: 'image on a text-only model',
      body: { model: MODEL, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:,' } }] }] },
      status: 400,
      code: 20015,
      param: 'messages[0].content',
    },
    {
      name: 'prompt longer than the context',
      body: { model: MODEL, messages: [{ role: 'user', content: 'word '.repeat(CONTEXT_SIZE * 2) }] },
      status: 400,
      code: 20015,
      param: 'messages',
    },
    { name: 'explicit max_tokens beyond the context', body: { model: MODEL, messages: hello, max_tokens: CONTEXT_SIZE }, status: 400, code: 20015, param: 'max_tokens' },
    { name: 'body too large', body: { model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(70 * 1024) }] }, status: 413, code: 20015, param: null },
  ];

  for (const testCase of cases) {
    test(`${testCase.name} → ${testCase.status} naming ${testCase.param ?? 'no field'}`, async () => {
      const response = await post(testCase.body, testCase.headers);
      assert.equal(response.status, testCase.status);
      const body = await response.json();
      assert.equal(body.code, testCase.code);
      assert.equal(body.data, null);
      assert.equal(typeof body.message, 'string');
      assert.equal(body.error.message, body.message);
      assert.equal(body.error.type, 'invalid_request_error');
      assert.equal(body.error.param, testCase.param);
      if (testCase.param !== null && testCase.code === 20015) assert.ok(body.message.includes(testCase.param.split('[')[0]!), body.message);
    });
  }

  test('the openai client surfaces errors as BadRequestError with the message', async () => {
    await assert.rejects(
      client.chat.completions.create({ model: 'no/such-model', messages: hello }),
      (error: unknown) => error instanceof OpenAI.BadRequestError && /Model does not exist/.test(error.message),
    );
  });

  test('missing or wrong API key → 401', async () => {
    for (const authorization of [undefined, 'Bearer wrong-key', 'Basic abc']) {
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (authorization) headers.authorization = authorization;
      const response = await fetch(`${kiln.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify({ model: MODEL, messages: hello }) });
      assert.equal(response.status, 401);
      const body = await response.json();
      assert.equal(body.error.type, 'authentication_error');
      assert.equal(body.code, 20001);
    }
    const models = await fetch(`${kiln.url}/v1/models`);
    assert.equal(models.status, 401);
  });

  test('unknown path → 404 in the contract format', async () => {
    const response = await fetch(`${kiln.url}/v1/nothing-here`, { headers: { authorization: `Bearer ${KEY}` } });
    assert.equal(response.status, 404);
    const body = await response.json();
    assert.equal(body.error.type, 'not_found_error');
  });
});
