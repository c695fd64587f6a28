/**
 * normalizeChatRequest: the seed's defaults, every range boundary, the cross-field checks, and the shape of every
 * rejection (a 400 KilnError naming the field in `param` and in its message).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { REQUEST_DEFAULTS, type ChatRequest } from '../../src/core/chat-request.js';
import { formatPath, normalizeChatRequest } from '../../src/core/normalize-request.js';
import { KilnError, type ErrorKind } from '../../src/errors/catalog.js';
import { MAX_STOP_SEQUENCES, MAX_TOOLS } from '../../src/protocol/request.js';

const MAX_CHOICES = 8;
const USER = { role: 'user', content: 'Hello' } as const;
const BASE = { model: 'Qwen/Qwen2.5-7B-Instruct', messages: [USER] };

function normalize(body: unknown, maxChoices = MAX_CHOICES): ChatRequest {
  return normalizeChatRequest(body, { maxChoices });
}

function withBase(extra: Record<string, unknown>): Record<string, unknown> {
  return { ...BASE, ...extra };
}

function tool(name: string, extra: Record<string, unknown> = {}) {
  return { type: 'function', function: { name, ...extra } };
}

/** Asserts the body is rejected with a 400 KilnError whose `param` is `param` and whose message names it. */
function rejects(body: unknown, param: string, options: { kind?: ErrorKind; mentions?: string; maxChoices?: number } = {}): KilnError {
  let caught: unknown;
  try {
    normalize(body, options.maxChoices);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught !== undefined, `expected a rejection naming '${param}', but the request was accepted`);
  assert.ok(caught instanceof KilnError, `expected a KilnError, got ${String(caught)}`);
  assert.equal(caught.status, 400);
  assert.equal(caught.kind, options.kind ?? 'invalidParameter');
  assert.equal(caught.param, param);
  const mentions = options.mentions ?? param;
  assert.ok(caught.message.includes(mentions), `message ${JSON.stringify(caught.message)} should mention '${mentions}'`);
  return caught;
}

/** A request with everything that has a default stripped of its seed, for comparisons. */
function withoutSeed(request: ChatRequest): Omit<ChatRequest, 'sampling'> & { sampling: Omit<ChatRequest['sampling'], 'seed'> } {
  const { seed: _seed, ...sampling } = request.sampling;
  return { ...request, sampling };
}

const EXPECTED_DEFAULTS = {
  model: BASE.model,
  messages: [{ role: 'user', content: 'Hello' }],
  stream: false,
  includeUsage: false,
  maxTokens: 512,
  maxTokensExplicit: false,
  stop: [],
  sampling: { temperature: 0.7, topP: 0.7, topK: 50, minP: 0.05, frequencyPenalty: 0.5, presencePenalty: 0, seedExplicit: false },
  n: 1,
  responseFormat: { type: 'text' },
  tools: [],
  toolChoice: { type: 'none' },
  grammars: {},
  parallelToolCalls: true,
  enableThinking: undefined,
  thinkingBudget: 4096,
  continueLastAssistant: false,
  user: undefined,
  textBytes: 5,
};

describe('defaults', () => {
  test('REQUEST_DEFAULTS holds the seed values', () => {
    assert.deepEqual({ ...REQUEST_DEFAULTS }, {
      maxTokens: 512,
      temperature: 0.7,
      topP: 0.7,
      topK: 50,
      frequencyPenalty: 0.5,
      presencePenalty: 0,
      minP: 0.05,
      n: 1,
      thinkingBudget: 4096,
    });
  });

  test('every omitted field takes the seed default', () => {
    assert.deepEqual(withoutSeed(normalize(BASE)), EXPECTED_DEFAULTS);
  });

  test('null is treated exactly like omitted, for every optional field', () => {
    const nulls = {
      stream: null, max_tokens: null, max_completion_tokens: null, stop: null, temperature: null, top_p: null,
      top_k: null, frequency_penalty: null, presence_penalty: null, min_p: null, n: null, seed: null,
      response_format: null, tools: null, tool_choice: null, parallel_tool_calls: null, stream_options: null,
      enable_thinking: null, thinking_budget: null, user: null, logprobs: null, top_logprobs: null, logit_bias: null,
    };
    const request = normalize(withBase(nulls));
    assert.deepEqual(withoutSeed(request), EXPECTED_DEFAULTS);
    assert.ok(Number.isInteger(request.sampling.seed));
  });

  test('null optional message fields are treated as omitted', () => {
    const request = normalize(withBase({
      messages: [
        { role: 'system', content: 'sys', name: null },
        { role: 'user', content: 'hi', name: null },
        { role: 'assistant', content: 'ok', name: null, tool_calls: null, reasoning_content: null, prefix: null },
        { role: 'user', content: 'again' },
      ],
    }));
    assert.deepEqual(request.messages, [
      { role: 'system', content: 'sys' },
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'ok' },
      { role: 'user', content: 'again' },
    ]);
  });

  test('the seed is a random non-negative 31-bit integer, different per request', () => {
    const seeds = Array.from({ length: 6 }, () => normalize(BASE).sampling.seed);
    for (const seed of seeds) {
      assert.ok(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 31, `seed ${seed} out of range`);
    }
    assert.ok(new Set(seeds).size > 1, `six requests all got seed ${seeds[0]}`);
  });

  test('an explicit seed is kept, including 0 and negatives', () => {
    assert.equal(normalize(withBase({ seed: 42 })).sampling.seed, 42);
    assert.equal(normalize(withBase({ seed: 42 })).sampling.seedExplicit, true);
    assert.equal(normalize(withBase({ seed: 0 })).sampling.seed, 0);
    assert.equal(normalize(withBase({ seed: -7 })).sampling.seed, -7);
  });

  test('explicit falsy values are kept, not replaced by defaults', () => {
    const request = normalize(withBase({
      temperature: 0, top_k: 0, frequency_penalty: 0, min_p: 0, stream: false, parallel_tool_calls: false, enable_thinking: false,
    }));
    assert.equal(request.sampling.temperature, 0);
    assert.equal(request.sampling.topK, 0);
    assert.equal(request.sampling.frequencyPenalty, 0);
    assert.equal(request.sampling.minP, 0);
    assert.equal(request.stream, false);
    assert.equal(request.parallelToolCalls, false);
    assert.equal(request.enableThinking, false);
  });

  test('explicit values are passed through', () => {
    const request = normalize(withBase({
      stream: true, stream_options: { include_usage: true }, max_tokens: 100, temperature: 1.3, top_p: 0.9, top_k: 20,
      frequency_penalty: -1, presence_penalty: 1.5, min_p: 0.2, n: 3, enable_thinking: true, thinking_budget: 1024,
      user: 'alice', stop: 'END',
    }));
    assert.equal(request.stream, true);
    assert.equal(request.includeUsage, true);
    assert.equal(request.maxTokens, 100);
    assert.equal(request.maxTokensExplicit, true);
    assert.deepEqual(request.sampling, {
      temperature: 1.3, topP: 0.9, topK: 20, frequencyPenalty: -1, presencePenalty: 1.5, minP: 0.2, seed: request.sampling.seed, seedExplicit: false,
    });
    assert.equal(request.n, 3);
    assert.equal(request.enableThinking, true);
    assert.equal(request.thinkingBudget, 1024);
    assert.equal(request.user, 'alice');
    assert.deepEqual(request.stop, ['END']);
  });

  test('unknown fields are ignored, at the top level and inside messages and tools', () => {
    const request = normalize({
      ...BASE,
      frobnicate: true,
      metadata: { a: 1 },
      messages: [{ role: 'user', content: 'x', extra: 2 }],
      tools: [{ type: 'function', function: { name: 'f', whatever: 1 }, other: 3 }],
    });
    assert.deepEqual(request.messages, [{ role: 'user', content: 'x' }]);
    assert.deepEqual(request.tools, [{ name: 'f' }]);
    assert.equal('frobnicate' in request, false);
  });
});

/** field → [accepted values, rejected values, how to read it back]. */
const RANGES: Array<{ field: string; ok: unknown[]; bad: unknown[]; read: (r: ChatRequest) => unknown }> = [
  { field: 'max_tokens', ok: [1, 16384, 512], bad: [0, -1, 16385, 1.5, '512', true], read: (r) => r.maxTokens },
  { field: 'max_completion_tokens', ok: [1, 16384], bad: [0, 16385, 2.5], read: (r) => r.maxTokens },
  { field: 'temperature', ok: [0, 2, 1.25], bad: [-0.001, 2.001, -1, 'hot', [1]], read: (r) => r.sampling.temperature },
  { field: 'top_p', ok: [1, 1e-9, 0.5], bad: [0, -0.1, 1.0001, '0.5'], read: (r) => r.sampling.topP },
  { field: 'top_k', ok: [0, 1, 1000], bad: [-1, 1.5, '50'], read: (r) => r.sampling.topK },
  { field: 'frequency_penalty', ok: [-2, 2, 0], bad: [-2.001, 2.001, 'x'], read: (r) => r.sampling.frequencyPenalty },
  { field: 'presence_penalty', ok: [-2, 2, 0.3], bad: [-2.001, 2.001, {}], read: (r) => r.sampling.presencePenalty },
  { field: 'min_p', ok: [0, 1, 0.5], bad: [-0.001, 1.001, 'low'], read: (r) => r.sampling.minP },
  { field: 'n', ok: [1, 2, MAX_CHOICES], bad: [0, -1, 1.5, '2', MAX_CHOICES + 1], read: (r) => r.n },
  { field: 'thinking_budget', ok: [128, 32768, 4096], bad: [127, 32769, 200.5, 0], read: (r) => r.thinkingBudget },
  { field: 'seed', ok: [0, 123456, -5, 2 ** 40], bad: [1.5, '7', false], read: (r) => r.sampling.seed },
  { field: 'stream', ok: [true, false], bad: ['yes', 1], read: (r) => r.stream },
  { field: 'parallel_tool_calls', ok: [true, false], bad: ['no', 0], read: (r) => r.parallelToolCalls },
  { field: 'enable_thinking', ok: [true, false], bad: ['on'], read: (r) => r.enableThinking },
  { field: 'user', ok: ['u-1', ''], bad: [5], read: (r) => r.user },
];

describe('range boundaries', () => {
  for (const { field, ok, bad, read } of RANGES) {
    test(`${field}: accepts ${ok.map((v) => JSON.stringify(v)).join(', ')}`, () => {
      for (const value of ok) assert.equal(read(normalize(withBase({ [field]: value }))), value, `${field}=${JSON.stringify(value)}`);
    });
    test(`${field}: rejects ${bad.map((v) => JSON.stringify(v)).join(', ')} naming '${field}'`, () => {
      for (const value of bad) rejects(withBase({ [field]: value }), field);
    });
  }

  test('n is bounded by the configured maxChoices, whatever it is', () => {
    assert.equal(normalize(withBase({ n: 2 }), 2).n, 2);
    const error = rejects(withBase({ n: 3 }), 'n', { maxChoices: 2 });
    assert.match(error.message, /2/);
    assert.equal(normalize(withBase({ n: 64 }), 64).n, 64);
  });

  test('out-of-range messages state the bound', () => {
    assert.match(rejects(withBase({ max_tokens: 16385 }), 'max_tokens').message, /16384/);
    assert.match(rejects(withBase({ temperature: 3 }), 'temperature').message, /2/);
    assert.match(rejects(withBase({ thinking_budget: 100 }), 'thinking_budget').message, /128/);
    assert.match(rejects(withBase({ top_p: 0 }), 'top_p').message, /> 0/);
  });

  test('wrong-type messages describe the type problem (not "is required")', () => {
    const temperature = rejects(withBase({ temperature: 'hot' }), 'temperature');
    assert.doesNotMatch(temperature.message, /is required/);
    assert.match(temperature.message, /number/);
    assert.match(temperature.message, /string/);
    const messages = rejects(withBase({ messages: 'hi' }), 'messages');
    assert.doesNotMatch(messages.message, /is required/);
    assert.match(messages.message, /array/);
  });

  test('a genuinely missing required field is reported as required', () => {
    assert.match(rejects({ messages: [USER] }, 'model').message, /required/);
    assert.match(rejects({ model: 'm' }, 'messages').message, /required/);
    rejects({ model: '', messages: [USER] }, 'model');
  });
});

describe('max_tokens and max_completion_tokens', () => {
  test('max_completion_tokens alone sets maxTokens', () => {
    const request = normalize(withBase({ max_completion_tokens: 77 }));
    assert.equal(request.maxTokens, 77);
    assert.equal(request.maxTokensExplicit, true);
  });

  test('both equal is accepted', () => {
    assert.equal(normalize(withBase({ max_tokens: 64, max_completion_tokens: 64 })).maxTokens, 64);
  });

  test('both different is rejected naming max_tokens and mentioning the other', () => {
    const error = rejects(withBase({ max_tokens: 64, max_completion_tokens: 65 }), 'max_tokens');
    assert.match(error.message, /max_completion_tokens/);
  });
});

describe('stop', () => {
  test('a string becomes a one-element list', () => {
    assert.deepEqual(normalize(withBase({ stop: '\n\n' })).stop, ['\n\n']);
  });

  test(`up to ${MAX_STOP_SEQUENCES} strings are kept in order`, () => {
    assert.deepEqual(normalize(withBase({ stop: ['a', 'b', 'c', 'd'] })).stop, ['a', 'b', 'c', 'd']);
    assert.deepEqual(normalize(withBase({ stop: [] })).stop, []);
  });

  test('five strings are rejected naming stop', () => {
    const error = rejects(withBase({ stop: ['a', 'b', 'c', 'd', 'e'] }), 'stop');
    assert.match(error.message, /4/);
  });

  test('an empty string is rejected', () => {
    rejects(withBase({ stop: '' }), 'stop');
    rejects(withBase({ stop: ['a', ''] }), 'stop[1]');
  });

  test('a non-string is rejected naming stop', () => {
    rejects(withBase({ stop: 3 }), 'stop');
    rejects(withBase({ stop: { a: 1 } }), 'stop');
  });
});

describe('body and messages', () => {
  for (const [label, body] of [['null', null], ['an array', [BASE]], ['a string', 'hello'], ['a number', 42], ['undefined', undefined]] as const) {
    test(`a body that is ${label} is a 400 invalid-parameter error mentioning the body`, () => {
      let caught: unknown;
      try {
        normalize(body);
      } catch (error) {
        caught = error;
      }
      assert.ok(caught instanceof KilnError);
      assert.equal(caught.status, 400);
      assert.equal(caught.kind, 'invalidParameter');
      assert.match(caught.message, /body/);
    });
  }

  test('a non-object body is rejected as a whole (param null)', () => {
    for (const body of [null, [], 'text']) {
      assert.throws(
        () => normalize(body),
        (error: unknown) => error instanceof KilnError && error.status === 400 && error.param === null && /body/.test(error.message),
      );
    }
  });

  test('empty messages are rejected', () => {
    rejects(withBase({ messages: [] }), 'messages');
  });

  test('messages that are not an array are rejected', () => {
    rejects(withBase({ messages: 'hi' }), 'messages');
    rejects(withBase({ messages: { role: 'user', content: 'x' } }), 'messages');
    rejects(withBase({ messages: null }), 'messages');
  });

  test('a bad or missing role is rejected naming messages[i].role and listing the roles', () => {
    const error = rejects(withBase({ messages: [USER, { role: 'robot', content: 'x' }] }), 'messages[1].role');
    assert.match(error.message, /"user"/);
    rejects(withBase({ messages: [{ content: 'x' }] }), 'messages[0].role');
  });

  test('a message that is not an object is rejected naming it', () => {
    const error = rejects(withBase({ messages: [USER, 'hello'] }), 'messages[1]', { mentions: 'messages[1]' });
    assert.ok(error.param?.startsWith('messages[1]'));
  });

  test('user content null or of the wrong type is rejected naming messages[i].content', () => {
    rejects(withBase({ messages: [{ role: 'user', content: null }] }), 'messages[0].content');
    rejects(withBase({ messages: [{ role: 'user', content: 5 }] }), 'messages[0].content');
    rejects(withBase({ messages: [{ role: 'user', content: [{ type: 'audio', data: 'x' }] }] }), 'messages[0].content');
    rejects(withBase({ messages: [{ role: 'user', content: [{ type: 'text' }] }] }), 'messages[0].content');
  });

  test('developer role is mapped to system', () => {
    const request = normalize(withBase({ messages: [{ role: 'developer', content: 'be brief' }, USER] }));
    assert.deepEqual(request.messages, [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'Hello' }]);
  });

  test('text parts are joined with newlines and do not set hasImage', () => {
    const request = normalize(withBase({
      messages: [{ role: 'user', content: [{ type: 'text', text: 'first' }, { type: 'text', text: 'second' }] }],
    }));
    assert.deepEqual(request.messages, [{ role: 'user', content: 'first\nsecond' }]);
  });

  test('an image part sets hasImage and contributes no text', () => {
    const request = normalize(withBase({
      messages: [{
        role: 'user',
        content: [{ type: 'text', text: 'what is this?' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } }],
      }],
    }));
    assert.deepEqual(request.messages, [{ role: 'user', content: 'what is this?', hasImage: true }]);
  });

  test('an image part without image_url.url is rejected', () => {
    rejects(withBase({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }), 'messages[0].content');
  });

  test('an assistant message with neither content nor tool_calls is rejected', () => {
    for (const assistant of [{ role: 'assistant' }, { role: 'assistant', content: null }, { role: 'assistant', content: null, tool_calls: [] }]) {
      const error = rejects(withBase({ messages: [USER, assistant, USER] }), 'messages[1].content', { mentions: 'messages[1]' });
      assert.match(error.message, /content/);
      assert.match(error.message, /tool_calls/);
    }
  });

  test('an assistant message with empty-string content is fine', () => {
    const request = normalize(withBase({ messages: [USER, { role: 'assistant', content: '' }, USER] }));
    assert.deepEqual(request.messages[1], { role: 'assistant', content: '' });
  });

  test('prefix on the last assistant message continues it; elsewhere it is rejected', () => {
    assert.equal(normalize(withBase({ messages: [USER, { role: 'assistant', content: 'Once', prefix: true }] })).continueLastAssistant, true);
    assert.equal(normalize(withBase({ messages: [USER, { role: 'assistant', content: 'Once' }] })).continueLastAssistant, false);
    rejects(withBase({ messages: [USER, { role: 'assistant', content: 'x', prefix: true }, USER] }), 'messages[1].prefix');
  });
});

describe('tool calls in the conversation', () => {
  const call = (id: string, name = 'get_weather') => ({ id, type: 'function', function: { name, arguments: '{"city":"Paris"}' } });

  test('an assistant tool call and its tool answer are normalized', () => {
    const request = normalize(withBase({
      messages: [
        USER,
        { role: 'assistant', content: null, tool_calls: [call('call_1')] },
        { role: 'tool', tool_call_id: 'call_1', content: '{"temp":20}' },
      ],
    }));
    assert.deepEqual(request.messages.slice(1), [
      { role: 'assistant', content: '', toolCalls: [{ id: 'call_1', name: 'get_weather', arguments: '{"city":"Paris"}' }] },
      { role: 'tool', content: '{"temp":20}', toolCallId: 'call_1' },
    ]);
  });

  test('a tool message answering no earlier tool call is rejected naming messages[i].tool_call_id', () => {
    const error = rejects(withBase({
      messages: [USER, { role: 'assistant', content: null, tool_calls: [call('call_1')] }, { role: 'tool', tool_call_id: 'call_2', content: 'x' }],
    }), 'messages[2].tool_call_id');
    assert.match(error.message, /call_2/);
  });

  test('a tool message before the assistant call it answers is rejected', () => {
    rejects(withBase({
      messages: [USER, { role: 'tool', tool_call_id: 'call_1', content: 'x' }, { role: 'assistant', content: null, tool_calls: [call('call_1')] }],
    }), 'messages[1].tool_call_id');
  });

  test('a tool message without tool_call_id is rejected', () => {
    rejects(withBase({ messages: [USER, { role: 'tool', content: 'x' }] }), 'messages[1].tool_call_id');
  });

  test('a malformed assistant tool call is rejected naming it', () => {
    const error = rejects(withBase({
      messages: [USER, { role: 'assistant', tool_calls: [{ id: 'c', type: 'function', function: { name: 'f' } }] }],
    }), 'messages[1].tool_calls[0].function.arguments');
    assert.equal(error.kind, 'invalidParameter');
  });
});

describe('tools and tool_choice', () => {
  test('tools are normalized, optional fields only when given', () => {
    const parameters = { type: 'object', properties: { city: { type: 'string' } } };
    const request = normalize(withBase({
      tools: [tool('get_weather', { description: 'Weather', parameters, strict: true }), tool('plain-name_2')],
    }));
    assert.deepEqual(request.tools, [{ name: 'get_weather', description: 'Weather', parameters, strict: true }, { name: 'plain-name_2' }]);
    assert.deepEqual(request.toolChoice, { type: 'auto' });
  });

  test(`${MAX_TOOLS} tools are accepted, ${MAX_TOOLS + 1} rejected naming tools`, () => {
    const many = (count: number) => Array.from({ length: count }, (_, index) => tool(`t${index}`));
    assert.equal(normalize(withBase({ tools: many(MAX_TOOLS) })).tools.length, MAX_TOOLS);
    const error = rejects(withBase({ tools: many(MAX_TOOLS + 1) }), 'tools');
    assert.match(error.message, /128/);
  });

  test('tool names: 64 chars of [a-zA-Z0-9_-] accepted; longer, empty or other characters rejected', () => {
    const name64 = 'a'.repeat(63) + 'Z';
    assert.equal(normalize(withBase({ tools: [tool(name64)] })).tools[0]!.name, name64);
    for (const bad of ['a'.repeat(65), '', 'bad name', 'dot.name', 'slash/name', 'ünïcode', 'semi;colon']) {
      rejects(withBase({ tools: [tool('ok'), tool(bad)] }), 'tools[1].function.name');
    }
  });

  test('duplicate tool names are rejected naming the second one', () => {
    const error = rejects(withBase({ tools: [tool('a'), tool('b'), tool('a')] }), 'tools[2].function.name');
    assert.match(error.message, /duplicate/);
    assert.match(error.message, /'a'/);
  });

  test('a tool that is not type function is rejected naming it', () => {
    rejects(withBase({ tools: [tool('a'), { type: 'retrieval', function: { name: 'b' } }] }), 'tools[1].type');
  });

  test('tool_choice defaults: auto with tools, none without', () => {
    assert.deepEqual(normalize(withBase({ tools: [tool('a')] })).toolChoice, { type: 'auto' });
    assert.deepEqual(normalize(BASE).toolChoice, { type: 'none' });
  });

  test('tool_choice strings are kept', () => {
    for (const choice of ['none', 'auto', 'required'] as const) {
      assert.deepEqual(normalize(withBase({ tools: [tool('a')], tool_choice: choice })).toolChoice, { type: choice });
    }
  });

  test('a named tool_choice in tools is kept', () => {
    const request = normalize(withBase({ tools: [tool('a'), tool('b')], tool_choice: { type: 'function', function: { name: 'b' } } }));
    assert.deepEqual(request.toolChoice, { type: 'function', name: 'b' });
  });

  test('"none" is allowed without tools', () => {
    assert.deepEqual(normalize(withBase({ tool_choice: 'none' })).toolChoice, { type: 'none' });
  });

  test('tool_choice other than none without tools is rejected naming tool_choice', () => {
    for (const choice of ['auto', 'required', { type: 'function', function: { name: 'a' } }]) {
      const error = rejects(withBase({ tool_choice: choice }), 'tool_choice');
      assert.match(error.message, /tools/);
    }
    rejects(withBase({ tools: [], tool_choice: 'required' }), 'tool_choice');
  });

  test('a named tool_choice not in tools is rejected naming tool_choice.function.name', () => {
    const error = rejects(withBase({ tools: [tool('a')], tool_choice: { type: 'function', function: { name: 'zzz' } } }), 'tool_choice.function.name');
    assert.match(error.message, /zzz/);
  });

  test('an unknown tool_choice is rejected naming tool_choice', () => {
    rejects(withBase({ tools: [tool('a')], tool_choice: 'sometimes' }), 'tool_choice');
    rejects(withBase({ tools: [tool('a')], tool_choice: 3 }), 'tool_choice');
  });
});

describe('response_format', () => {
  test('omitted, null and text are text', () => {
    assert.deepEqual(normalize(BASE).responseFormat, { type: 'text' });
    assert.deepEqual(normalize(withBase({ response_format: null })).responseFormat, { type: 'text' });
    assert.deepEqual(normalize(withBase({ response_format: { type: 'text' } })).responseFormat, { type: 'text' });
  });

  test('json_object', () => {
    assert.deepEqual(normalize(withBase({ response_format: { type: 'json_object' } })).responseFormat, { type: 'json_object' });
  });

  test('json_schema keeps name and schema; strict defaults to false', () => {
    const schema = { type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] };
    assert.deepEqual(normalize(withBase({ response_format: { type: 'json_schema', json_schema: { name: 'answer', schema } } })).responseFormat, {
      type: 'json_schema', name: 'answer', schema, strict: false,
    });
    assert.deepEqual(
      normalize(withBase({ response_format: { type: 'json_schema', json_schema: { name: 'answer', schema, strict: true } } })).responseFormat,
      { type: 'json_schema', name: 'answer', schema, strict: true },
    );
  });

  test('json_schema without schema is rejected naming response_format.json_schema.schema', () => {
    rejects(withBase({ response_format: { type: 'json_schema', json_schema: { name: 'x' } } }), 'response_format.json_schema.schema');
    rejects(withBase({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: null } } }), 'response_format.json_schema.schema');
  });

  test('json_schema without the json_schema object or with a bad name is rejected naming it', () => {
    rejects(withBase({ response_format: { type: 'json_schema' } }), 'response_format.json_schema');
    rejects(withBase({ response_format: { type: 'json_schema', json_schema: { name: 'bad name', schema: {} } } }), 'response_format.json_schema.name');
  });

  test('an unknown type is rejected naming response_format.type', () => {
    rejects(withBase({ response_format: { type: 'xml' } }), 'response_format.type');
    rejects(withBase({ response_format: {} }), 'response_format.type');
  });
});

describe('unsupported parameters', () => {
  test('logprobs: true is a 400 notSupported naming logprobs', () => {
    const error = rejects(withBase({ logprobs: true }), 'logprobs', { kind: 'notSupported' });
    assert.equal(error.entry.code, 'unsupported_parameter');
  });

  test('logprobs: false is accepted', () => {
    assert.equal(normalize(withBase({ logprobs: false })).model, BASE.model);
  });

  test('a non-empty logit_bias is notSupported; an empty one is accepted', () => {
    rejects(withBase({ logit_bias: { '50256': -100 } }), 'logit_bias', { kind: 'notSupported' });
    assert.equal(normalize(withBase({ logit_bias: {} })).model, BASE.model);
  });
});

describe('formatPath', () => {
  test('joins keys with dots and indexes with brackets', () => {
    assert.equal(formatPath(['messages', 1, 'content']), 'messages[1].content');
    assert.equal(formatPath(['tools', 0, 'function', 'name']), 'tools[0].function.name');
    assert.equal(formatPath(['models', 1, 'parallel']), 'models[1].parallel');
    assert.equal(formatPath(['temperature']), 'temperature');
    assert.equal(formatPath(['stop', 2]), 'stop[2]');
    assert.equal(formatPath([0, 'a']), '[0].a');
    assert.equal(formatPath([]), '');
  });
});
