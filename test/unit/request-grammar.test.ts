/** The grammars a request needs, and the 400s for schemas Kiln cannot enforce (param names the field). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ChatRequest } from '../../src/core/chat-request.js';
import { cachedRequestGrammars, requestGrammars } from '../../src/core/grammar/request-grammar.js';
import { KilnError } from '../../src/errors/catalog.js';

type GrammarRequest = Pick<ChatRequest, 'tools' | 'toolChoice' | 'responseFormat' | 'parallelToolCalls'>;
const weather = { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } };
const time = { name: 'get_time' };
const base: GrammarRequest = { tools: [], toolChoice: { type: 'auto' }, responseFormat: { type: 'text' }, parallelToolCalls: true };

test('no tools and text output: no grammar', () => {
  assert.deepEqual(requestGrammars(base), {});
});

test('tool_choice auto constrains only the call body; none constrains nothing', () => {
  const auto = requestGrammars({ ...base, tools: [weather, time] });
  assert.equal(auto.answer, undefined);
  assert.match(auto.toolCallBody!, /^root ::= "\\n" call "\\n<\/tool_call>"/);
  assert.match(auto.toolCallBody!, /get_weather/);
  assert.match(auto.toolCallBody!, /get_time/);
  assert.deepEqual(requestGrammars({ ...base, tools: [weather], toolChoice: { type: 'none' } }), {});
});

test('required and named tool choices constrain the whole answer; a named one offers only that tool', () => {
  const required = requestGrammars({ ...base, tools: [weather, time], toolChoice: { type: 'required' } });
  assert.match(required.answer!, /^root ::= "<tool_call>\\n" call "\\n<\/tool_call>" \("\\n<tool_call>\\n" call "\\n<\/tool_call>"\)\{0,7\}/);
  const named = requestGrammars({ ...base, tools: [weather, time], toolChoice: { type: 'function', name: 'get_time' }, parallelToolCalls: false });
  assert.match(named.answer!, /^root ::= "<tool_call>\\n" call "\\n<\/tool_call>"\n/);
  assert.doesNotMatch(named.answer!, /get_weather/);
});

test('json_object and json_schema constrain the answer', () => {
  assert.ok(requestGrammars({ ...base, responseFormat: { type: 'json_object' } }).answer);
  const schema = requestGrammars({ ...base, responseFormat: { type: 'json_schema', name: 'x', strict: true, schema: { type: 'object', properties: { a: { type: 'integer' } }, required: ['a'] } } });
  assert.match(schema.answer!, /\\"a\\": /);
});

test('schemas Kiln cannot enforce are a 400 naming the field, whatever the tool_choice', () => {
  const bad = { name: 'bad', parameters: { type: 'object', properties: { a: { type: 'string', pattern: '^x$' } } } };
  for (const toolChoice of [{ type: 'none' }, { type: 'auto' }, { type: 'function', name: 'get_time' }] as const) {
    assert.throws(
      () => requestGrammars({ ...base, tools: [time, bad], toolChoice }),
      (error: unknown) => error instanceof KilnError && error.param === 'tools[1].function.parameters' && /pattern/.test(error.message) && /\/properties\/a/.test(error.message),
    );
  }
  assert.throws(
    () => requestGrammars({ ...base, responseFormat: { type: 'json_schema', name: 'x', strict: true, schema: { type: 'number', minimum: 1 } } }),
    (error: unknown) => error instanceof KilnError && error.param === 'response_format.json_schema.schema',
  );
});

test('the grammar size budget covers all tools of a request together, whatever the tool_choice', () => {
  // ~0.45 of the budget each: one or two are fine, the third crosses it.
  const big = (name: string) => ({
    name,
    parameters: { type: 'object', properties: Object.fromEntries(Array.from({ length: 100 }, (_, index) => [`p${index}`, { type: 'string', maxLength: 900 + index }])) },
  });
  requestGrammars({ ...base, tools: [big('a'), big('b')], toolChoice: { type: 'none' } });
  for (const toolChoice of [{ type: 'none' }, { type: 'auto' }] as const) {
    assert.throws(
      () => requestGrammars({ ...base, tools: [big('a'), big('b'), big('c')], toolChoice }),
      (error: unknown) => error instanceof KilnError && error.param === 'tools[2].function.parameters' && /grows too large/.test(error.message),
    );
  }
});

test('grammars are remembered by tools and format; a refused schema is refused every time', () => {
  const tool = { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } };
  const request = { ...base, tools: [tool], toolChoice: { type: 'auto' as const } };
  const first = cachedRequestGrammars(request);
  assert.ok(first.toolCallBody !== undefined);
  assert.equal(cachedRequestGrammars(structuredClone(request)), first, 'the same tools sent again hit the cache');
  assert.notEqual(cachedRequestGrammars({ ...request, parallelToolCalls: !request.parallelToolCalls }), first);
  assert.deepEqual(cachedRequestGrammars({ ...base, tools: [], toolChoice: { type: 'none' } }), {});
  const refused = { ...base, responseFormat: { type: 'json_schema' as const, name: 'x', strict: true, schema: { type: 'string', pattern: '^a+$' } } };
  for (let attempt = 0; attempt < 2; attempt++) {
    assert.throws(() => cachedRequestGrammars(refused), (error: unknown) => error instanceof KilnError && error.param === 'response_format.json_schema.schema');
  }
});
