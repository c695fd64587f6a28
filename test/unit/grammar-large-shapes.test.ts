/**
 * Large schema shapes that llama.cpp's GBNF parser used to refuse (a repetition over a group that created ≥ 2000
 * symbols) still match exactly the right texts now that they go through named rules and blocks; and the converter's
 * own limits (nesting, grammar size, alternatives) are UnsupportedSchemaErrors with a pointer.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import type { Llama, LlamaGrammar } from 'node-llama-cpp';
import { jsonSchemaGrammar, MAX_COMPILE_DEPTH, UnsupportedSchemaError } from '../../src/core/grammar/json-schema-grammar.js';
import { MAX_ALTERNATIVES } from '../../src/core/grammar/schema-width.js';
import { getRuntime } from '../../src/engines/llama/runtime.js';

let llama: Llama;
before(async () => {
  llama = await getRuntime();
});

/** Whether llama.cpp's matcher accepts `text` as a whole value (node-llama-cpp's internal LlamaGrammar._testText). */
function accepts(grammar: LlamaGrammar, text: string): boolean {
  const check = (grammar as unknown as { _testText(text: string): boolean })._testText;
  assert.equal(typeof check, 'function', 'node-llama-cpp no longer exposes LlamaGrammar._testText');
  return check.call(grammar, text);
}

async function checkTexts(schema: unknown, good: readonly string[], bad: readonly string[]): Promise<void> {
  const grammar = await llama.createGrammar({ grammar: jsonSchemaGrammar(schema) });
  for (const text of good) assert.ok(accepts(grammar, text), `should accept ${text.slice(0, 80)}…`);
  for (const text of bad) assert.ok(!accepts(grammar, text), `should reject ${text.slice(0, 80)}…`);
}

const list = (count: number, item = '0') => `[${Array<string>(count).fill(item).join(', ')}]`;

describe('large shapes match exactly', () => {
  test('600 prefix items, the first 150 required', async () => {
    const schema = { type: 'array', prefixItems: Array.from({ length: 600 }, () => ({ type: 'integer' })), items: false, minItems: 150 };
    await checkTexts(schema, [list(150), list(151), list(600)], [list(149), list(601), '[]', `${list(150).slice(0, -1)}, "x"]`]);
  });

  test('1,000 optional properties: any subset in declaration order', async () => {
    const names = Array.from({ length: MAX_ALTERNATIVES }, (_, index) => `p${index}`);
    const schema = { type: 'object', properties: Object.fromEntries(names.map((name) => [name, { type: 'boolean' }])) };
    // Not all 1,000: llama.cpp's matcher keeps a stack per optional member still possible, ~2 ms per character here.
    const first = names.slice(0, 20).map((name) => `"${name}": true`).join(', ');
    await checkTexts(schema, ['{}', '{"p0": true}', '{"p3": false, "p999": true}', `{${first}, "p999": false}`], [
      '{"p999": true, "p3": false}',
      '{"p3": false, "p3": false}',
      '{"p1000": true}',
    ]);
  });

  test('maxItems 10^15 is no limit in practice; minItems 150 with it is exact', async () => {
    await checkTexts({ type: 'array', items: { type: 'integer' }, maxItems: 1e15 }, ['[]', '[1, 2]', list(250)], ['[1,2]']);
    await checkTexts({ type: 'array', items: { type: 'integer' }, minItems: 150, maxItems: 1e15 }, [list(150), list(333)], [list(149), '[]']);
  });

  test('string lengths between 100 and 1,000 (now written with blocks of 100)', async () => {
    await checkTexts({ type: 'string', minLength: 101, maxLength: 250 }, [101, 199, 200, 250].map((n) => `"${'x'.repeat(n)}"`), [0, 100, 251].map((n) => `"${'x'.repeat(n)}"`));
  });
});

describe("the converter's own limits", () => {
  const rejects = (schema: unknown, pointer: RegExp, message: RegExp) =>
    assert.throws(
      () => jsonSchemaGrammar(schema),
      (error: unknown) => error instanceof UnsupportedSchemaError && pointer.test(error.pointer) && message.test(error.message),
    );

  test('nesting and $ref chains past MAX_COMPILE_DEPTH', () => {
    let schema: unknown = { type: 'string' };
    for (let index = 0; index < MAX_COMPILE_DEPTH + 5; index++) schema = { type: 'array', items: schema };
    rejects(schema, /^(\/items){200}$/, /nest deeper than 200 levels/);
    const defs = Object.fromEntries(Array.from({ length: 1000 }, (_, index) => [`d${index}`, { $ref: `#/$defs/d${index + 1}` }]));
    rejects({ $ref: '#/$defs/d0', $defs: { ...defs, d1000: { type: 'string' } } }, /^\/\$defs\/d\d+$/, /nest deeper/);
  });

  test('a grammar that would grow past MAX_GRAMMAR_SIZE (an in-process schema sharing one object, doubling each level)', () => {
    let schema: unknown = { type: 'string', maxLength: 999 };
    for (let index = 0; index < 40; index++) schema = { type: 'array', prefixItems: [schema, schema] };
    const started = performance.now();
    rejects(schema, /^(\/prefixItems\/[01])*$/, /grows too large/);
    assert.ok(performance.now() - started < 2000);
  });

  test('more than MAX_ALTERNATIVES alternatives at one position, refs followed', () => {
    const enumOf = (count: number) => ({ enum: Array.from({ length: count }, (_, index) => index) });
    jsonSchemaGrammar(enumOf(MAX_ALTERNATIVES));
    rejects(enumOf(MAX_ALTERNATIVES + 1), /^$/, /more than 1000 alternatives/);
    rejects({ type: 'object', properties: { a: { anyOf: [enumOf(600), { $ref: '#/$defs/e' }] } }, $defs: { e: enumOf(401) } }, /^\/properties\/a$/, /alternatives/);
  });
});
