/**
 * End to end, full chat semantics on generated random-weight models that carry real chat templates (Qwen2.5 for
 * tools, DeepSeek-R1-Distill for reasoning): forced tool calls, JSON schema output, reasoning split, stop strings,
 * n > 1 and determinism — with the `openai` client, streamed and whole.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Ajv } from 'ajv';
import addFormatsModule from 'ajv-formats';
import OpenAI from 'openai';
import type { ChatCompletionChunk, ChatCompletionCreateParamsNonStreaming } from 'openai/resources/chat/completions';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;
const ajv = addFormats(new Ajv({ strict: false }));

const TOOLS_MODEL = 'Qwen/Qwen2.5-7B-Instruct';
const REASONING_MODEL = 'deepseek-ai/DeepSeek-R1-Distill-Qwen-7B';
/** Its weights favour `<tool_call>`, so it opens calls by itself under tool_choice "auto". */
const EAGER_MODEL = 'Qwen/Qwen2.5-Coder-7B-Instruct';

let kiln: KilnProcess;
let client: OpenAI;

before(async () => {
  const config = await writeConfig({
    models: [
      { id: TOOLS_MODEL, file: await ensureTinyModel({ flavor: 'qwen2.5' }), parallel: 4, context_size: 2048 },
      { id: REASONING_MODEL, file: await ensureTinyModel({ flavor: 'r1-distill', neverEnd: true }), parallel: 2, context_size: 1024 },
      { id: EAGER_MODEL, file: await ensureTinyModel({ flavor: 'qwen2.5', eagerToolCalls: true }), parallel: 1, context_size: 2048 },
    ],
  });
  kiln = await startKiln(['--config', config, '--insecure-no-auth']);
  client = new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => kiln?.stop());

const weatherParameters = {
  type: 'object',
  properties: {
    city: { type: 'string', maxLength: 12 },
    unit: { enum: ['celsius', 'fahrenheit'] },
    days: { type: 'integer', minimum: 1, maximum: 14 },
  },
  required: ['city'],
  additionalProperties: false,
};
const timeParameters = {
  type: 'object',
  properties: { zone: { type: 'string', format: 'date' }, precise: { type: 'boolean' } },
  required: ['zone', 'precise'],
};
const tools = [
  { type: 'function' as const, function: { name: 'get_weather', description: 'Weather for a city', parameters: weatherParameters } },
  { type: 'function' as const, function: { name: 'get-time', parameters: timeParameters } },
];
const parametersOf = (name: string) => (name === 'get_weather' ? weatherParameters : timeParameters);
const ask = [{ role: 'user' as const, content: 'What is the weather in Paris?' }];

function assertValidCall(call: { id: string; type: string; function: { name: string; arguments: string } }): void {
  assert.match(call.id, /^call_[A-Za-z0-9]+$/);
  assert.equal(call.type, 'function');
  const validate = ajv.compile(parametersOf(call.function.name));
  const args = JSON.parse(call.function.arguments);
  assert.ok(validate(args), `${call.function.name}(${call.function.arguments}): ${ajv.errorsText(validate.errors)}`);
}

/** Rebuilds whole choices from a stream, checking the OpenAI tool-call chunk order on the way. */
async function collect(stream: AsyncIterable<ChatCompletionChunk>) {
  const choices = new Map<number, { content: string; reasoning: string; calls: Array<{ id: string; type: string; function: { name: string; arguments: string } }>; finish?: string | null }>();
  let usage: ChatCompletionChunk['usage'];
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      const state = choices.get(choice.index) ?? { content: '', reasoning: '', calls: [] };
      choices.set(choice.index, state);
      const delta = choice.delta as typeof choice.delta & { reasoning_content?: string };
      state.content += delta.content ?? '';
      state.reasoning += delta.reasoning_content ?? '';
      for (const call of delta.tool_calls ?? []) {
        if (call.id !== undefined) {
          assert.equal(call.index, state.calls.length, 'a new call comes with the next index');
          assert.equal(call.type, 'function');
          assert.ok(call.function?.name, 'the first delta of a call names the function');
          state.calls.push({ id: call.id, type: 'function', function: { name: call.function.name, arguments: call.function.arguments ?? '' } });
        } else {
          assert.ok(state.calls[call.index], 'arguments follow the call they belong to');
          state.calls[call.index]!.function.arguments += call.function?.arguments ?? '';
        }
      }
      if (choice.finish_reason) state.finish = choice.finish_reason;
    }
  }
  return { choices, usage };
}

describe('tools', () => {
  test('tool_choice "required": every call is a valid call of an offered tool, finish_reason tool_calls', async () => {
    for (let seed = 1; seed <= 6; seed++) {
      const completion = await client.chat.completions.create({ model: TOOLS_MODEL, messages: ask, tools, tool_choice: 'required', seed, temperature: 1, max_tokens: 400 });
      const [choice] = completion.choices;
      assert.equal(choice!.finish_reason, 'tool_calls', `seed ${seed}`);
      assert.ok(choice!.message.tool_calls!.length >= 1);
      for (const call of choice!.message.tool_calls!) {
        assert.ok(call.type === 'function');
        assertValidCall(call);
      }
    }
  });

  test('a named tool_choice, streamed: id, type and name first, then argument fragments; the same as whole', async () => {
    const request = {
      model: TOOLS_MODEL,
      messages: ask,
      tools,
      tool_choice: { type: 'function' as const, function: { name: 'get-time' } },
      parallel_tool_calls: false,
      seed: 7,
      max_tokens: 400,
    };
    const { choices } = await collect(await client.chat.completions.create({ ...request, stream: true }));
    const streamed = choices.get(0)!;
    assert.equal(streamed.finish, 'tool_calls');
    assert.equal(streamed.calls.length, 1);
    assert.equal(streamed.calls[0]!.function.name, 'get-time');
    assertValidCall(streamed.calls[0]!);
    const whole = (await client.chat.completions.create(request)).choices[0]!;
    assert.equal(whole.message.content, null);
    assert.deepEqual(
      whole.message.tool_calls!.map((call) => (call.type === 'function' ? [call.function.name, call.function.arguments] : [])),
      streamed.calls.map((call) => [call.function.name, call.function.arguments]),
    );
  });

  test('tool_choice "auto": a call the model opens itself is completed under the grammar, streamed and whole', async () => {
    for (let seed = 1; seed <= 3; seed++) {
      const request = { model: EAGER_MODEL, messages: ask, tools, seed, temperature: 1, max_tokens: 600 };
      const whole = (await client.chat.completions.create(request)).choices[0]!;
      assert.equal(whole.finish_reason, 'tool_calls', `seed ${seed}: ${JSON.stringify(whole.message)}`);
      for (const call of whole.message.tool_calls!) if (call.type === 'function') assertValidCall(call);
      const { choices } = await collect(await client.chat.completions.create({ ...request, stream: true }));
      assert.deepEqual(
        choices.get(0)!.calls.map((call) => [call.function.name, call.function.arguments]),
        whole.message.tool_calls!.map((call) => (call.type === 'function' ? [call.function.name, call.function.arguments] : [])),
      );
    }
    const single = await client.chat.completions.create({ model: EAGER_MODEL, messages: ask, tools, parallel_tool_calls: false, seed: 4, max_tokens: 600 });
    assert.equal(single.choices[0]!.message.tool_calls!.length, 1);
    assert.equal(single.choices[0]!.finish_reason, 'tool_calls');
    const none = await client.chat.completions.create({ model: EAGER_MODEL, messages: ask, tools, tool_choice: 'none', seed: 4, max_tokens: 20 });
    assert.equal(none.choices[0]!.message.tool_calls, undefined, 'tool_choice "none" never reports calls');
  });

  test('a tool round trip: assistant tool_calls and the tool result render through the template and are answered', async () => {
    const completion = await client.chat.completions.create({
      model: TOOLS_MODEL,
      tools,
      messages: [
        ...ask,
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_abc', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_abc', content: '{"temperature": 21}' },
      ],
      max_tokens: 8,
    });
    // A random-weight model may end its turn (or open another call) within 8 tokens: any regular finish is an answer.
    assert.ok(['length', 'stop', 'tool_calls'].includes(completion.choices[0]!.finish_reason), completion.choices[0]!.finish_reason);
    assert.ok(completion.usage!.completion_tokens <= 8);
    assert.ok(completion.usage!.prompt_tokens > 100, 'the tools, the call and its result are in the prompt');
  });

  test('tool parameter schemas Kiln cannot honour are a 400 naming the tool', async () => {
    const response = await fetch(`${kiln.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: TOOLS_MODEL,
        messages: ask,
        tools: [tools[0], { type: 'function', function: { name: 'bad', parameters: { type: 'object', properties: { a: { type: 'string', pattern: '^a+$' } } } } }],
        tool_choice: 'required',
      }),
    });
    assert.equal(response.status, 400);
    const body = await response.json();
    assert.equal(body.error.param, 'tools[1].function.parameters');
    assert.match(body.error.message, /pattern/);
  });
});

describe('structured output', () => {
  const schemas: Record<string, unknown>[] = [
    { type: 'object', properties: { name: { type: 'string', maxLength: 8 }, age: { type: 'integer', minimum: 0, maximum: 120 } }, required: ['name', 'age'] },
    { type: 'object', properties: { tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, minItems: 1, maxItems: 3 }, note: { type: 'string', maxLength: 5 } }, required: ['tags'] },
    {
      type: 'object',
      properties: { shape: { anyOf: [{ $ref: '#/$defs/circle' }, { $ref: '#/definitions/square' }] } },
      required: ['shape'],
      $defs: { circle: { type: 'object', properties: { r: { type: 'number' } }, required: ['r'] } },
      definitions: { square: { type: 'object', properties: { side: { type: 'integer' } }, required: ['side'] } },
    },
    { type: 'object', properties: { ok: { const: true }, when: { type: 'string', format: 'date' }, maybe: { type: ['string', 'null'], maxLength: 4 } }, required: ['ok', 'when', 'maybe'] },
  ];

  test('json_schema outputs that finish with "stop" all parse and validate', async () => {
    let finished = 0;
    let total = 0;
    for (const [i, schema] of schemas.entries()) {
      const validate = ajv.compile(schema);
      for (let seed = 1; seed <= 4; seed++) {
        total++;
        const completion = await client.chat.completions.create({
          model: TOOLS_MODEL,
          messages: [{ role: 'user', content: 'Give me JSON.' }],
          response_format: { type: 'json_schema', json_schema: { name: `schema_${i}`, schema, strict: true } },
          seed,
          temperature: 1,
          max_tokens: 300,
        });
        const choice = completion.choices[0]!;
        if (choice.finish_reason !== 'stop') continue;
        finished++;
        const value = JSON.parse(choice.message.content!);
        assert.ok(validate(value), `schema ${i} seed ${seed}: ${choice.message.content} — ${ajv.errorsText(validate.errors)}`);
        assert.doesNotMatch(choice.message.content!, /^\s|\s$|\n/, 'no padding whitespace');
      }
    }
    assert.ok(finished >= total / 2, `${finished}/${total} finished`);
  });

  test('json_object gives a JSON object; an unsupported schema is a 400', async () => {
    const completion = await client.chat.completions.create({
      model: TOOLS_MODEL,
      messages: [{ role: 'user', content: 'JSON please.' }],
      response_format: { type: 'json_object' },
      seed: 3,
      max_tokens: 300,
    });
    if (completion.choices[0]!.finish_reason === 'stop') {
      const value = JSON.parse(completion.choices[0]!.message.content!);
      assert.equal(typeof value, 'object');
      assert.ok(value !== null && !Array.isArray(value));
    } else {
      assert.match(completion.choices[0]!.message.content!, /^\{/);
    }
    await assert.rejects(
      client.chat.completions.create({
        model: TOOLS_MODEL,
        messages: ask,
        response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { n: { type: 'number', multipleOf: 3 } } } } },
      }),
      (error: unknown) => error instanceof OpenAI.BadRequestError && /multipleOf/.test(error.message),
    );
  });
});

describe('reasoning', () => {
  test('the R1 template opens <think>: reasoning goes to reasoning_content, capped by thinking_budget, then the answer', async () => {
    const request = { model: REASONING_MODEL, messages: ask, max_tokens: 200, seed: 11, thinking_budget: 128 } as ChatCompletionCreateParamsNonStreaming;
    const completion = await client.chat.completions.create(request);
    const message = completion.choices[0]!.message as typeof completion.choices[0]['message'] & { reasoning_content?: string };
    assert.ok(message.reasoning_content && message.reasoning_content.length > 0, 'reasoning_content is filled');
    assert.ok(message.content && message.content.length > 0, 'the answer follows the capped reasoning');
    for (const text of [message.reasoning_content, message.content]) assert.doesNotMatch(text, /<\/?think>/);
    const details = completion.usage!.completion_tokens_details!;
    // The budget is a cap: the closing tag Kiln writes counts inside it.
    assert.ok(details.reasoning_tokens! >= 100 && details.reasoning_tokens! <= 128, `reasoning_tokens ${details.reasoning_tokens}`);
    assert.equal(completion.usage!.completion_tokens, 200);

    const { choices, usage } = await collect(await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } }));
    assert.equal(choices.get(0)!.reasoning, message.reasoning_content);
    assert.equal(choices.get(0)!.content, message.content);
    assert.equal(usage!.completion_tokens_details!.reasoning_tokens, details.reasoning_tokens);
  });

  test('reasoning first, then the JSON answer under its schema', async () => {
    const schema = { type: 'object', properties: { answer: { enum: ['yes', 'no'] } }, required: ['answer'] };
    const completion = await client.chat.completions.create({
      model: REASONING_MODEL,
      messages: ask,
      response_format: { type: 'json_schema', json_schema: { name: 'verdict', schema } },
      thinking_budget: 128,
      max_tokens: 300,
      seed: 4,
    } as ChatCompletionCreateParamsNonStreaming);
    const message = completion.choices[0]!.message as { content: string | null; reasoning_content?: string };
    assert.ok(message.reasoning_content!.length > 0);
    assert.equal(completion.choices[0]!.finish_reason, 'stop');
    assert.ok(ajv.validate(schema, JSON.parse(message.content!)), message.content!);
  });

  test('enable_thinking false: no reasoning at all', async () => {
    const completion = await client.chat.completions.create({ model: REASONING_MODEL, messages: ask, max_tokens: 20, seed: 2, enable_thinking: false } as ChatCompletionCreateParamsNonStreaming);
    const message = completion.choices[0]!.message as { content: string | null; reasoning_content?: string };
    assert.equal(message.reasoning_content, undefined);
    assert.ok(message.content!.length > 0);
    assert.equal(completion.usage!.completion_tokens_details!.reasoning_tokens, 0);
  });

  test('earlier turns\' reasoning is not fed back into the prompt', async () => {
    const base = { model: REASONING_MODEL, max_tokens: 1 } as const;
    const short = await client.chat.completions.create({ ...base, messages: [...ask, { role: 'assistant', content: 'Sunny.' }, { role: 'user', content: 'Thanks' }] });
    const withReasoning = await client.chat.completions.create({
      ...base,
      messages: [...ask, { role: 'assistant', content: 'Sunny.', reasoning_content: 'a very long chain of thought '.repeat(20) } as never, { role: 'user', content: 'Thanks' }],
    });
    assert.equal(withReasoning.usage!.prompt_tokens, short.usage!.prompt_tokens);
  });
});

describe('stop, n and determinism', () => {
  const messages = [{ role: 'user' as const, content: 'Tell me a story.' }];

  test('a stop string from the middle of a greedy output ends it exactly before the stop, streamed and whole', async () => {
    const greedy = await client.chat.completions.create({ model: TOOLS_MODEL, messages, temperature: 0, max_tokens: 60 });
    const text = greedy.choices[0]!.message.content!;
    assert.ok(text.length >= 30, `greedy output long enough: ${JSON.stringify(text)}`);
    const stop = text.slice(20, 26);
    const expected = text.slice(0, text.indexOf(stop));
    const whole = await client.chat.completions.create({ model: TOOLS_MODEL, messages, temperature: 0, max_tokens: 60, stop: [stop, 'never-there'] });
    assert.equal(whole.choices[0]!.message.content, expected);
    assert.equal(whole.choices[0]!.finish_reason, 'stop');
    const { choices } = await collect(await client.chat.completions.create({ model: TOOLS_MODEL, messages, temperature: 0, max_tokens: 60, stop, stream: true }));
    assert.equal(choices.get(0)!.content, expected);
  });

  test('n=3 returns three choices, streamed interleaved by index, usage summed', async () => {
    const completion = await client.chat.completions.create({ model: TOOLS_MODEL, messages, n: 3, max_tokens: 12, seed: 5 });
    assert.deepEqual(completion.choices.map((choice) => choice.index), [0, 1, 2]);
    assert.equal(completion.usage!.completion_tokens, 36);
    assert.equal(new Set(completion.choices.map((choice) => choice.message.content)).size, 3, 'choices differ');

    const { choices, usage } = await collect(await client.chat.completions.create({ model: TOOLS_MODEL, messages, n: 3, max_tokens: 12, seed: 5, stream: true, stream_options: { include_usage: true } }));
    assert.deepEqual([...choices.keys()].sort(), [0, 1, 2]);
    for (const [index, choice] of choices) {
      assert.equal(choice.finish, 'length');
      assert.equal(choice.content, completion.choices[index]!.message.content, 'same seed, same choice');
    }
    assert.equal(usage!.completion_tokens, 36);
  });

  test('n above the model\'s parallel sequences is a 400', async () => {
    await assert.rejects(client.chat.completions.create({ model: REASONING_MODEL, messages, n: 3 }), (error: unknown) => error instanceof OpenAI.BadRequestError && /'n'/.test(error.message));
  });

  test('the same seed and parameters give the same output, whether the prompt was cached or not', async () => {
    let differs = 0;
    for (let seed = 1; seed <= 6; seed++) {
      // Longer than one 512-token batch, and new to the server: the first request evaluates it all, the second reuses it.
      const long = [{ role: 'system' as const, content: `Determinism check ${seed} ${Date.now()}. ${'Remember this sentence. '.repeat(40)}` }, ...messages];
      const request = { model: TOOLS_MODEL, messages: long, max_tokens: 60, seed, temperature: 1.2 };
      const first = await client.chat.completions.create(request);
      const second = await client.chat.completions.create(request);
      assert.ok(first.usage!.prompt_tokens_details!.cached_tokens! < 32, 'the first request evaluates the long prompt');
      assert.ok(second.usage!.prompt_tokens_details!.cached_tokens! > 512);
      assert.equal(second.choices[0]!.message.content, first.choices[0]!.message.content, `seed ${seed}`);
      const other = await client.chat.completions.create({ ...request, seed: seed + 100 });
      if (other.choices[0]!.message.content !== first.choices[0]!.message.content) differs++;
    }
    assert.ok(differs >= 5, 'another seed gives another output');
  });
});
