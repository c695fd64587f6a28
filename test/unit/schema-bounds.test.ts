/**
 * Schema size and depth bounds (issue 9, point 3): checked over the whole JSON value without recursion, a 400 naming
 * the field and the JSON pointer of the first value past a limit; wired into normalizeChatRequest for tool
 * parameters and json_schema, before the chat template renders the tools (which recursed on deep `default`s).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeChatRequest } from '../../src/core/normalize-request.js';
import {
  checkSchemaBounds, DEFAULT_MAX_SCHEMA_DEPTH, DEFAULT_MAX_SCHEMA_NODES, HARD_MAX_SCHEMA_DEPTH,
} from '../../src/core/grammar/schema-bounds.js';
import { ChatTemplate } from '../../src/engines/llama/chat-template.js';
import { KilnError } from '../../src/errors/catalog.js';
import { QWEN25_TEMPLATE } from '../../src/gguf/templates.js';

const PARAM = 'tools[0].function.parameters';

/** `levels` arrays around `leaf`, built without recursion. */
function nested(levels: number, leaf: unknown = 1): unknown {
  let value = leaf;
  for (let index = 0; index < levels; index++) value = [value];
  return value;
}

/** A KilnError 400 for `param` whose message names `pointer` and matches `reason`. */
function isBoundError(param: string, pointer: string, reason: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof KilnError, `not a KilnError: ${String(error)}`);
    assert.equal(error.status, 400);
    assert.equal(error.param, param);
    assert.ok(error.message.includes(`at '${pointer}'`), error.message);
    assert.match(error.message, reason);
    return true;
  };
}

test('schemas within the bounds pass, including at exactly the depth limit', () => {
  checkSchemaBounds({ type: 'object', properties: { a: { type: 'string', default: 'x' } } }, PARAM);
  checkSchemaBounds({ const: nested(DEFAULT_MAX_SCHEMA_DEPTH - 1) }, PARAM);
  checkSchemaBounds(true, PARAM);
  checkSchemaBounds({ a: [], b: {} }, PARAM, { maxDepth: 1 });
});

test('too deep: the pointer of the first container past the limit, whatever the keyword', () => {
  const pointer = `/const${'/0'.repeat(DEFAULT_MAX_SCHEMA_DEPTH - 1)}`;
  assert.throws(() => checkSchemaBounds({ const: nested(DEFAULT_MAX_SCHEMA_DEPTH) }, PARAM), isBoundError(PARAM, pointer, /deeper than 64 levels/));
  let deepDefault: unknown = 'leaf';
  for (let index = 0; index < 5000; index++) deepDefault = { 'x-a/b': deepDefault };
  assert.throws(
    () => checkSchemaBounds({ type: 'object', default: deepDefault }, PARAM, { maxDepth: 3 }),
    isBoundError(PARAM, '/default/x-a~1b/x-a~1b', /deeper than 3 levels/),
  );
});

test('no recursion: 200,000 levels are a 400, not a stack overflow', () => {
  assert.throws(() => checkSchemaBounds(nested(200_000), PARAM, { maxDepth: 10 ** 9, maxNodes: 10 ** 9 }), (error: unknown) => {
    return error instanceof KilnError && error.status === 400 && new RegExp(`deeper than ${HARD_MAX_SCHEMA_DEPTH} levels`).test(error.message);
  });
});

test('too many values: counted over everything, the container that overflows is named', () => {
  const properties = Object.fromEntries(Array.from({ length: 25_000 }, (_, index) => [`p${index}`, { type: 'string' }]));
  assert.throws(
    () => checkSchemaBounds({ type: 'object', properties }, 'response_format.json_schema.schema'),
    isBoundError('response_format.json_schema.schema', '/properties', new RegExp(`more than ${DEFAULT_MAX_SCHEMA_NODES} values`)),
  );
  assert.throws(() => checkSchemaBounds({ enum: [1, 2, 3] }, PARAM, { maxNodes: 4 }), isBoundError(PARAM, '/enum', /more than 4 values/));
  checkSchemaBounds({ enum: [1, 2] }, PARAM, { maxNodes: 4 });
});

test('normalizeChatRequest checks tool parameters and json_schema with its options', () => {
  const base = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };
  const deep = { type: 'object', properties: { a: { type: 'string', default: nested(3000) } } };
  assert.throws(
    () => normalizeChatRequest({ ...base, tools: [{ type: 'function', function: { name: 'f', parameters: deep } }] }, { maxChoices: 1 }),
    isBoundError(PARAM, `/properties/a/default${'/0'.repeat(DEFAULT_MAX_SCHEMA_DEPTH - 3)}`, /deeper than 64 levels/),
  );
  const format = { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { a: { type: 'string' } } } } };
  assert.equal(normalizeChatRequest({ ...base, response_format: format }, { maxChoices: 1 }).responseFormat.type, 'json_schema');
  assert.throws(
    () => normalizeChatRequest({ ...base, response_format: format }, { maxChoices: 1, maxSchemaDepth: 2 }),
    isBoundError('response_format.json_schema.schema', '/properties/a', /deeper than 2 levels/),
  );
  assert.throws(
    () => normalizeChatRequest({ ...base, response_format: format }, { maxChoices: 1, maxSchemaNodes: 3 }),
    isBoundError('response_format.json_schema.schema', '/properties', /more than 3 values/),
  );
});

test('a tool at the depth limit renders through the chat template (deep annotations used to overflow there)', () => {
  let annotation: unknown = 1;
  for (let index = 0; index < DEFAULT_MAX_SCHEMA_DEPTH - 3; index++) annotation = { 'x-deep': annotation };
  const parameters = { type: 'object', properties: { a: { type: 'string', default: annotation } } };
  checkSchemaBounds(parameters, PARAM);
  const template = new ChatTemplate(QWEN25_TEMPLATE, { bos: '<|endoftext|>', eos: '<|im_end|>' });
  const { text } = template.render([{ role: 'user', content: 'hi' }], {
    tools: [{ name: 'f', parameters }],
    enableThinking: undefined,
    continueLastAssistant: false,
  });
  assert.ok(text.includes('"x-deep": {"x-deep"'));
});
