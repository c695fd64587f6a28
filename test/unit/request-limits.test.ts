/**
 * Request size limits: counted before validation (messages, content parts, tools) or right after it (text bytes),
 * each a 400 naming the field, with configurable bounds; and errors about the completion limit name the field the
 * client sent.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeChatRequest, REQUEST_LIMIT_DEFAULTS, type NormalizeOptions } from '../../src/core/normalize-request.js';
import { KilnError } from '../../src/errors/catalog.js';
import { parseConfig } from '../../src/config/config.js';

const user = (content: unknown) => ({ role: 'user', content });
const body = (extra: Record<string, unknown>) => ({ model: 'tiny', messages: [user('hi')], ...extra });
const options = (extra: Partial<NormalizeOptions> = {}): NormalizeOptions => ({ maxChoices: 8, ...extra });

function rejection(request: unknown, extra: Partial<NormalizeOptions> = {}): KilnError {
  try {
    normalizeChatRequest(request, options(extra));
  } catch (error) {
    assert.ok(error instanceof KilnError);
    assert.equal(error.status, 400);
    return error;
  }
  assert.fail('accepted');
}

test('messages: the default limit and a configured one, counted before validating them', () => {
  const many = (count: number) => Array.from({ length: count }, () => user(''));
  assert.equal(normalizeChatRequest(body({ messages: many(REQUEST_LIMIT_DEFAULTS.maxMessages) }), options()).messages.length, REQUEST_LIMIT_DEFAULTS.maxMessages);
  const error = rejection(body({ messages: many(REQUEST_LIMIT_DEFAULTS.maxMessages + 1) }));
  assert.equal(error.param, 'messages');
  assert.match(error.message, /at most 1024/);
  // Invalid messages beyond the limit are not even looked at.
  const started = performance.now();
  assert.equal(rejection(body({ messages: Array.from({ length: 100_000 }, () => ({ role: 'bogus' })) })).param, 'messages');
  assert.ok(performance.now() - started < 100);
  assert.equal(rejection(body({ messages: many(11) }), { maxMessages: 10 }).param, 'messages');
});

test('content parts over all messages, tools, and text bytes name the field where the limit was passed', () => {
  const parts = (count: number) => user(Array.from({ length: count }, () => ({ type: 'text', text: 'x' })));
  assert.equal(rejection(body({ messages: [parts(3), parts(3)] }), { maxContentParts: 5 }).param, 'messages[1].content');
  normalizeChatRequest(body({ messages: [parts(3), parts(2)] }), options({ maxContentParts: 5 }));

  const tools = (count: number) => Array.from({ length: count }, (_, index) => ({ type: 'function', function: { name: `t${index}` } }));
  assert.equal(rejection(body({ tools: tools(3) }), { maxTools: 2 }).param, 'tools');
  assert.equal(normalizeChatRequest(body({ tools: tools(200) }), options({ maxTools: 200 })).tools.length, 200);

  assert.equal(rejection(body({ messages: [user('é'.repeat(5)), user('abc')] }), { maxTextBytes: 12 }).param, 'messages[1].content');
  normalizeChatRequest(body({ messages: [user('é'.repeat(5)), user('ab')] }), options({ maxTextBytes: 12 }));
  const call = { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{"a": "0123456789"}' } }] };
  assert.equal(rejection(body({ messages: [user('hi'), call] }), { maxTextBytes: 10 }).param, 'messages[1].tool_calls[0].function.arguments');
  const described = [{ type: 'function', function: { name: 'f', description: 'x'.repeat(20) } }];
  assert.equal(rejection(body({ tools: described }), { maxTextBytes: 10 }).param, 'tools[0].function.description');
  assert.equal(rejection(body({ messages: [user('x'.repeat(REQUEST_LIMIT_DEFAULTS.maxTextBytes + 1))] })).param, 'messages[0].content');
});

test("earlier tool calls' arguments nest at most as deep as a schema may, counted on the text", () => {
  const call = (args: string) => ({
    model: 'tiny',
    messages: [user('hi'), { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: args } }] }, { role: 'tool', tool_call_id: 'c1', content: 'ok' }],
  });
  const nested = (depth: number) => '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
  normalizeChatRequest(call(nested(64)), options());
  normalizeChatRequest(call(`{"text": "${'{['.repeat(500)}"}`), options()); // brackets inside strings do not count
  const error = rejection(call(nested(65)));
  assert.equal(error.param, 'messages[1].tool_calls[0].function.arguments');
  assert.match(error.message, /deeper than 64/);
  assert.equal(rejection(call(nested(20_000))).param, 'messages[1].tool_calls[0].function.arguments');
  assert.equal(rejection(call(nested(9)), { maxSchemaDepth: 8 }).param, 'messages[1].tool_calls[0].function.arguments');
});

test('the completion limit is named as the client sent it', () => {
  assert.equal(normalizeChatRequest(body({ max_completion_tokens: 5 }), options()).maxTokensParam, 'max_completion_tokens');
  assert.equal(normalizeChatRequest(body({ max_tokens: 5 }), options()).maxTokensParam, undefined);
  assert.equal(rejection(body({ max_completion_tokens: 0 })).param, 'max_completion_tokens');
});

test('server.limits in the config file', () => {
  const config = parseConfig('server:\n  limits:\n    max_messages: 10\n    max_schema_depth: 20\nmodels: [{id: a, file: a.gguf}]\n', '/');
  assert.deepEqual(config.server?.limits, { max_messages: 10, max_schema_depth: 20 });
  assert.throws(() => parseConfig('server:\n  limits:\n    max_messages: 0\nmodels: [{id: a, file: a.gguf}]\n', '/'), /server\.limits\.max_messages/);
  assert.throws(() => parseConfig('server:\n  limits:\n    max_mesages: 1\nmodels: [{id: a, file: a.gguf}]\n', '/'), /server\.limits/);
});
