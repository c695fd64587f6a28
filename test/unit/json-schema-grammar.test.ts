/**
 * JSON Schema → GBNF against the real llama.cpp grammar engine: every grammar compiles; text is matched with
 * llama.cpp's own matcher (node-llama-cpp's internal LlamaGrammar._testText); a tiny random-weight model generating
 * under each grammar only ever completes values that parse, validate with ajv, and keep the canonical layout; and
 * every unsupported keyword is an UnsupportedSchemaError pointing at it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Ajv } from 'ajv';
import { Ajv2020 } from 'ajv/dist/2020.js';
import ajvFormats from 'ajv-formats';
import { LlamaCompletion, type Llama, type LlamaContext, type LlamaGrammar, type LlamaModel } from 'node-llama-cpp';
import { GbnfBuilder, jsonObjectGrammar, jsonSchemaGrammar, UnsupportedSchemaError } from '../../src/core/grammar/json-schema-grammar.js';
import { getRuntime } from '../../src/engines/llama/runtime.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';

let llama: Llama;
let model: LlamaModel;
let context: LlamaContext;
let completion: LlamaCompletion;

before(async () => {
  llama = await getRuntime();
  model = await llama.loadModel({ modelPath: await ensureTinyModel() });
  // One thread: the prebuilt binary spawns its workers per decode, which costs more than this model's whole step.
  context = await model.createContext({ contextSize: 2048, sequences: 1, threads: 1 });
  completion = new LlamaCompletion({ contextSequence: context.getSequence() });
});

after(async () => {
  await context?.dispose();
  await model?.dispose();
});

// Draft 2020-12 for prefixItems; draft 7 (ajv's default) for the older tuple form, items as an array.
const ajv2020 = new Ajv2020({ strict: false, allErrors: true });
const ajv7 = new Ajv({ strict: false, allErrors: true });
// ajv-formats is CommonJS: its plugin is both module.exports and .default, and only .default is typed under NodeNext.
const addFormats = ajvFormats.default;
addFormats(ajv2020);
addFormats(ajv7);
const validator = (schema: object) => (JSON.stringify(schema).includes('"additionalItems"') ? ajv7 : ajv2020).compile(schema);

async function compile(grammar: string): Promise<LlamaGrammar> {
  return llama.createGrammar({ grammar });
}

/** Whether llama.cpp's matcher accepts `text` as a whole value of the grammar (internal API, the engine's own). */
function accepts(grammar: LlamaGrammar, text: string): boolean {
  const test = (grammar as unknown as { _testText(text: string): boolean })._testText;
  assert.equal(typeof test, 'function', 'node-llama-cpp no longer exposes LlamaGrammar._testText');
  return test.call(grammar, text);
}

async function checkTexts(schema: unknown, good: readonly string[], bad: readonly string[]): Promise<void> {
  const grammar = await compile(jsonSchemaGrammar(schema));
  for (const text of good) assert.ok(accepts(grammar, text), `should accept ${text}`);
  for (const text of bad) assert.ok(!accepts(grammar, text), `should reject ${text}`);
}

/** Where `text` leaves the canonical layout outside strings (any whitespace but one space after ':' and ','). */
function layoutViolation(text: string): string | undefined {
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i]!;
    if (inString) {
      if (char === '\\') i++;
      else if (char === '"') inString = false;
      continue;
    }
    if (char === '"') inString = true;
    else if (char === ':' || char === ',') {
      if (text[i + 1] !== ' ' || /\s/.test(text[i + 2] ?? '')) return `not exactly one space after '${char}' at ${i}`;
      i++;
    } else if (/\s/.test(char)) return `whitespace at ${i}`;
  }
  return undefined;
}

const int = (minimum: number, maximum: number) => ({ type: 'integer', minimum, maximum });
const str = (maxLength: number, minLength = 0) => ({ type: 'string', minLength, maxLength });

/** Schemas generated under; strings and arrays are bounded so random text ends well within maxTokens. */
const GENERATED: Array<{ name: string; schema: Record<string, unknown>; minEnded?: number }> = [
  {
    name: 'object with required and optional properties',
    schema: { type: 'object', properties: { name: str(12, 1), age: int(0, 150), nickname: str(8), active: { type: 'boolean' } }, required: ['name', 'age'] },
  },
  { name: 'all-optional object', schema: { type: 'object', properties: { a: int(0, 9), b: { type: 'boolean' }, c: str(5) }, additionalProperties: false } },
  {
    name: 'nested objects',
    schema: {
      type: 'object',
      properties: {
        user: { type: 'object', properties: { id: { type: 'string', format: 'uuid' }, profile: { type: 'object', properties: { city: str(10), zip: str(5, 5) }, required: ['zip'] } }, required: ['id', 'profile'] },
        score: int(-100, 100),
      },
      required: ['user'],
    },
  },
  { name: 'array with bounds', schema: { type: 'array', items: int(-5, 5), minItems: 2, maxItems: 4 } },
  { name: 'enum of mixed types', schema: { enum: ['red', 1, 2.5, true, null, { k: [1, 'two'] }, [3, { x: null }]] } },
  { name: 'const properties', schema: { type: 'object', properties: { kind: { const: 'circle' }, radius: int(1, 100), meta: { const: { a: [1, 2], b: 'c' } } }, required: ['kind', 'radius', 'meta'] } },
  {
    name: 'anyOf of objects',
    schema: {
      anyOf: [
        { type: 'object', properties: { cat: str(6) }, required: ['cat'], additionalProperties: false },
        { type: 'object', properties: { dog: int(0, 9), good: { type: 'boolean' } }, required: ['dog'], additionalProperties: false },
      ],
    },
  },
  {
    name: '$defs refs',
    schema: {
      $defs: { point: { type: 'object', properties: { x: int(-9, 9), y: int(-9, 9) }, required: ['x', 'y'] } },
      type: 'object',
      properties: { from: { $ref: '#/$defs/point' }, to: { $ref: '#/$defs/point' } },
      required: ['from', 'to'],
    },
  },
  { name: 'definitions refs', schema: { definitions: { color: { enum: ['red', 'green', 'blue'] } }, type: 'array', items: { $ref: '#/definitions/color' }, maxItems: 5 } },
  {
    name: 'recursive tree',
    schema: {
      type: 'object',
      properties: { value: int(0, 99), children: { type: 'array', items: { $ref: '#' }, maxItems: 2 } },
      required: ['value'],
      additionalProperties: false,
    },
  },
  { name: 'string length bounds', schema: str(8, 3) },
  {
    name: 'integer ranges',
    schema: {
      type: 'object',
      properties: { small: int(0, 150), signed: int(-5, 5), positive: { type: 'integer', minimum: 1 }, open: { type: 'integer', exclusiveMinimum: -1000, exclusiveMaximum: -10 }, any: { type: 'integer' } },
      required: ['small', 'signed', 'positive', 'open', 'any'],
    },
  },
  {
    name: 'formats date/time/date-time/uuid',
    schema: {
      type: 'object',
      properties: { d: { type: 'string', format: 'date' }, t: { type: 'string', format: 'time' }, dt: { type: 'string', format: 'date-time' }, id: { type: 'string', format: 'uuid' } },
      required: ['d', 't', 'dt', 'id'],
    },
  },
  { name: 'nullable', schema: { type: 'object', properties: { note: { ...str(6), nullable: true }, count: { ...int(0, 9), nullable: true } }, required: ['note', 'count'] } },
  { name: 'type arrays', schema: { type: 'array', items: { type: ['string', 'integer', 'boolean', 'null'], maxLength: 4 }, maxItems: 4 } },
  { name: 'typeless {}', schema: {}, minEnded: 0.25 },
  { name: 'additionalProperties map', schema: { type: 'object', additionalProperties: int(0, 9) }, minEnded: 0.25 },
  { name: 'prefixItems', schema: { type: 'array', prefixItems: [str(4), { type: 'integer' }, { type: 'boolean' }], items: false, minItems: 2 } },
  { name: 'empty object schema', schema: { type: 'object' } },
  { name: 'numbers', schema: { type: 'array', items: { type: 'number' }, minItems: 1, maxItems: 3 } },
  { name: 'oneOf (disjoint) and allOf of one', schema: { oneOf: [str(5), { allOf: [{ $ref: '#/$defs/n' }] }], $defs: { n: { type: 'integer' } } } },
  { name: 'tuple items and additionalItems', schema: { type: 'array', items: [{ type: 'boolean' }], additionalItems: int(0, 9), maxItems: 3 } },
  { name: 'properties with additionalProperties true', schema: { properties: { ok: { type: 'boolean' } }, required: ['ok'], additionalProperties: true } },
  { name: 'enum filtered by type, int32', schema: { type: 'object', properties: { e: { type: 'string', enum: ['a', 'b', 1] }, n: { type: 'integer', format: 'int32' } }, required: ['e', 'n'] } },
  { name: 'long maxLength', schema: { type: 'string', maxLength: 10000 } },
];

const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8];

/** A different printable prompt per seed: it moves the random model's preferences more than the seed alone does. */
function promptFor(seed: number): string {
  const random = mulberry32(seed * 7919);
  return Array.from({ length: 12 }, () => String.fromCharCode(32 + Math.floor(random() * 95))).join('');
}

describe('generation under the grammar: completed outputs parse, validate and keep the layout', () => {
  for (const { name, schema, minEnded = 0.5 } of GENERATED) {
    test(name, async (t) => {
      const grammar = await compile(jsonSchemaGrammar(schema));
      const validate = validator(schema);
      let ended = 0;
      for (const [index, seed] of SEEDS.entries()) {
        const { response, metadata } = await completion.generateCompletionWithMeta(promptFor(seed), {
          grammar,
          maxTokens: 300,
          temperature: 0.8 + (index % 3) * 0.1,
          seed,
        });
        if (metadata.stopReason !== 'eogToken') continue;
        ended++;
        let value: unknown;
        assert.doesNotThrow(() => (value = JSON.parse(response)), `seed ${seed}: not JSON: ${response}`);
        assert.ok(validate(value), `seed ${seed}: ${response}\n${ajv7.errorsText(validate.errors)}`);
        assert.equal(layoutViolation(response), undefined, `seed ${seed}: ${response}`);
      }
      t.diagnostic(`${ended}/${SEEDS.length} ended, all valid`);
      assert.ok(ended >= minEnded * SEEDS.length, `only ${ended}/${SEEDS.length} ended by the grammar`);
    });
  }

  test('jsonObjectGrammar: outputs are plain JSON objects', async (t) => {
    const grammar = await compile(jsonObjectGrammar());
    let ended = 0;
    for (const seed of SEEDS) {
      const { response, metadata } = await completion.generateCompletionWithMeta(promptFor(seed), { grammar, maxTokens: 300, temperature: 0.9, seed });
      assert.ok(response.startsWith('{'), response);
      if (metadata.stopReason !== 'eogToken') continue;
      ended++;
      const value: unknown = JSON.parse(response);
      assert.ok(typeof value === 'object' && value !== null && !Array.isArray(value), response);
      assert.equal(layoutViolation(response), undefined, response);
    }
    t.diagnostic(`${ended}/${SEEDS.length} ended`);
    assert.ok(ended >= 2);
  });
});

describe('what the grammars accept (llama.cpp matcher)', () => {
  test('optional properties: every subset, in declaration order, commas only between present ones', async () => {
    const schema = { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'boolean' }, c: { type: 'null' } } };
    const members = ['"a": 1', '"b": true', '"c": null'];
    const subsets = [0, 1, 2, 3, 4, 5, 6, 7].map((mask) => `{${members.filter((_, i) => mask & (1 << i)).join(', ')}}`);
    await checkTexts(schema, subsets, ['{"b": true, "a": 1}', '{, "b": true}', '{"a": 1, }', '{"a": 1,"b": true}', '{"a":1}', '{ }', ' {}', '{}\n', '{"d": 1}']);
  });

  test('required and optional mixed: required always present', async () => {
    const schema = { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'boolean' }, c: { type: 'null' } }, required: ['b'] };
    await checkTexts(schema, ['{"b": true}', '{"a": 1, "b": false}', '{"b": true, "c": null}', '{"a": 0, "b": true, "c": null}'], ['{}', '{"a": 1}', '{"a": 1, "c": null}']);
  });

  test('integer ranges match exactly the integers in range', async () => {
    const ranges: Array<[number, number]> = [[0, 150], [-5, 5], [-1000, -11], [7, 7], [-123, 4567], [99, 1001], [10, 19], [0, 0], [-1, 0], [385, 9216]];
    const random = mulberry32(7);
    for (let i = 0; i < 20; i++) {
      const a = Math.floor(random() * 20000) - 10000;
      ranges.push([a, a + Math.floor(random() * 3000)]);
    }
    for (const [lo, hi] of ranges) {
      const grammar = await compile(jsonSchemaGrammar(int(lo, hi)));
      const candidates = new Set<number>();
      for (let v = lo - 12; v <= lo + 12; v++) candidates.add(v);
      for (let v = hi - 12; v <= hi + 12; v++) candidates.add(v);
      for (let k = 0; k < 60; k++) candidates.add(lo + Math.floor(random() * (hi - lo + 1)));
      for (const v of [0, 1, -1, 9, 10, 99, 100, -10, -100]) candidates.add(v);
      for (const v of candidates) assert.equal(accepts(grammar, String(v)), v >= lo && v <= hi, `[${lo}, ${hi}] and ${v}`);
      for (const text of ['-0', '00', '01', '+1', '1.0', '1e2', ' 1']) assert.ok(!accepts(grammar, text), `[${lo}, ${hi}] and ${text}`);
    }
  });

  test('integer bounds: one-sided, exclusive, fractional, draft-4 booleans, 16 digits at most', async () => {
    await checkTexts({ type: 'integer', minimum: 1 }, ['1', '2', '9999999999999999'], ['0', '-1', '10000000000000000']);
    await checkTexts({ type: 'integer' }, ['0', '-9999999999999999', '42'], ['-0', '10000000000000000', '1.5']);
    await checkTexts({ type: 'integer', exclusiveMinimum: 2.5, maximum: 4.9 }, ['3', '4'], ['2', '5']);
    await checkTexts({ type: 'integer', minimum: 0, exclusiveMinimum: true, maximum: 3, exclusiveMaximum: true }, ['1', '2'], ['0', '3']);
    await checkTexts({ type: 'integer', format: 'int32' }, ['2147483647', '-2147483648'], ['2147483648', '-2147483649']);
  });

  test('numbers: integer part, optional fraction, no exponent', async () => {
    await checkTexts({ type: 'number' }, ['0', '-0.5', '12', '3.25', '1234567890123456.1234567890123456'], ['1e5', '.5', '1.', '01', '+1', '1.5e-3']);
  });

  test('string lengths count chars, an escape as one; control chars, raw quotes and surrogate escapes are out', async () => {
    await checkTexts(str(3, 2), ['"ab"', '"abc"', '"a\\nc"', '"\\u00e9\\"x"', '"é🙂"', '"\\/\\\\"'], ['"a"', '"abcd"', '"a\tb"', '"a"b"', '"\\ud83d\\ude00"', '"\\x41"', "'ab'"]);
  });

  test('large maxLength/minLength stay exact and small', async () => {
    const started = performance.now();
    const grammarText = jsonSchemaGrammar({ type: 'string', minLength: 2500, maxLength: 10000 });
    const grammar = await compile(grammarText);
    assert.ok(performance.now() - started < 100, `took ${performance.now() - started} ms`);
    assert.ok(grammarText.length < 1000, grammarText);
    for (const n of [2500, 2501, 5050, 9999, 10000]) assert.ok(accepts(grammar, `"${'x'.repeat(n)}"`), String(n));
    for (const n of [0, 2499, 10001]) assert.ok(!accepts(grammar, `"${'x'.repeat(n)}"`), String(n));
  });

  test('formats: valid values only', async () => {
    const date = { type: 'string', format: 'date' };
    await checkTexts(date, ['"2024-02-29"', '"2000-02-29"', '"2023-12-31"', '"0001-01-01"', '"2023-04-30"'], ['"2023-02-29"', '"1900-02-29"', '"2023-04-31"', '"2023-13-01"', '"2023-00-10"', '"2023-01-00"', '"23-01-01"']);
    const time = { type: 'string', format: 'time' };
    await checkTexts(time, ['"23:59:59Z"', '"00:00:00.123456+05:30"', '"12:30:00-08:00"'], ['"24:00:00Z"', '"12:60:00Z"', '"12:00:00"', '"12:00Z"', '"12:00:00+24:00"']);
    await checkTexts({ type: 'string', format: 'date-time' }, ['"2024-02-29T23:59:59.5Z"'], ['"2024-02-29 23:59:59Z"', '"2024-02-29T23:59:59"']);
    await checkTexts({ type: 'string', format: 'uuid' }, ['"123e4567-e89b-12d3-a456-426614174000"'], ['"123e4567e89b12d3a456426614174000"', '"123e4567-e89b-12d3-a456-42661417400"']);
    // Length bounds every value of the format already satisfies are fine.
    await checkTexts({ type: 'string', format: 'date', minLength: 10, maxLength: 12 }, ['"2024-01-01"'], []);
  });

  test('arrays: item counts, prefix items, separators', async () => {
    await checkTexts({ type: 'array', items: { type: 'integer' }, minItems: 1, maxItems: 3 }, ['[1]', '[1, 2]', '[1, 2, 3]'], ['[]', '[1, 2, 3, 4]', '[1,2]', '[1, 2, ]', '[ 1]']);
    await checkTexts({ type: 'array', maxItems: 0 }, ['[]'], ['[1]']);
    await checkTexts({ type: 'array', prefixItems: [{ type: 'boolean' }, { type: 'null' }], items: { type: 'integer' }, maxItems: 3 }, ['[]', '[true]', '[true, null]', '[false, null, 7]'], ['[null]', '[true, 1]', '[true, null, 1, 2]']);
    await checkTexts({ type: 'array', prefixItems: [{ type: 'boolean' }], items: false, minItems: 1 }, ['[true]'], ['[]', '[true, true]']);
    await checkTexts({ type: 'array', items: { type: 'integer' }, minItems: 1500, maxItems: 2200 }, [`[${Array(1500).fill(0).join(', ')}]`, `[${Array(2200).fill(0).join(', ')}]`], [`[${Array(1499).fill(0).join(', ')}]`, `[${Array(2201).fill(0).join(', ')}]`]);
  });

  test('const and enum are written in the canonical layout', async () => {
    await checkTexts({ const: { a: [1, { b: null }], 'c"d': 'é' } }, ['{"a": [1, {"b": null}], "c\\"d": "é"}'], ['{"a":[1,{"b":null}],"c\\"d":"é"}']);
    await checkTexts({ type: ['string', 'null'], enum: ['x', 2, null] }, ['"x"', 'null'], ['2']);
  });

  test('maps, empty objects, nullable, any value', async () => {
    await checkTexts({ type: 'object', additionalProperties: { type: 'boolean' } }, ['{}', '{"k": true}', '{"a": true, "b": false}'], ['{"k": 1}', '{"k":true}']);
    await checkTexts({ type: 'object' }, ['{}'], ['{"a": 1}']);
    await checkTexts({ type: 'integer', nullable: true }, ['1', 'null'], ['"1"']);
    await checkTexts(true, ['{"a": [1, "x", null, true, {}]}', '"s"', '-1.5', '[]'], ['{"a":1}', '[1,2]', 'nul']);
  });

  test('$ref pointers: $defs, definitions, escaped and deep', async () => {
    const schema = {
      $defs: { 'a/b': { type: 'boolean' }, 'c d': { type: 'null' } },
      definitions: { e: { type: 'object', properties: { f: { type: 'integer', maximum: 3, minimum: 3 } }, required: ['f'] } },
      type: 'array',
      prefixItems: [{ $ref: '#/$defs/a~1b' }, { $ref: '#/$defs/c%20d' }, { $ref: '#/definitions/e' }, { $ref: '#/definitions/e/properties/f' }],
      items: false,
      minItems: 4,
    };
    await checkTexts(schema, ['[true, null, {"f": 3}, 3]'], ['[true, null, {"f": 3}, 4]', '[1, null, {"f": 3}, 3]']);
  });

  test('recursion through $ref, and a builder shared by several schemas', async () => {
    await checkTexts({ type: 'object', properties: { v: { type: 'integer' }, kids: { type: 'array', items: { $ref: '#' } } }, required: ['v'] }, ['{"v": 1}', '{"v": 1, "kids": [{"v": 2, "kids": []}, {"v": 3}]}'], ['{"v": 1, "kids": [{}]}']);
    const builder = new GbnfBuilder();
    const person = builder.addSchema({ type: 'object', properties: { name: str(5) }, required: ['name'] }, 'get weather!');
    const city = builder.addSchema({ $defs: { c: { enum: ['Paris'] } }, $ref: '#/$defs/c' }, 'get weather!');
    assert.match(person, /^[a-z0-9-]+$/);
    assert.notEqual(person, city);
    assert.equal(builder.literal('a"b'), '"a\\"b"');
    const head = builder.literal('<tool_call>\n{"name": "f", "arguments": ');
    const grammar = await compile(builder.build(`${head} (${person} | ${city}) "}\\n</tool_call>"`));
    assert.ok(accepts(grammar, '<tool_call>\n{"name": "f", "arguments": {"name": "Ann"}}\n</tool_call>'));
    assert.ok(accepts(grammar, '<tool_call>\n{"name": "f", "arguments": "Paris"}\n</tool_call>'));
    assert.ok(!accepts(grammar, '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'));
  });
});

describe('unsupported schemas are rejected with a pointer', () => {
  const cases: Array<[string, unknown, string, RegExp]> = [
    ['pattern', { type: 'object', properties: { age: { type: 'string', pattern: '^a' } } }, '/properties/age/pattern', /'pattern' is not supported/],
    ['patternProperties', { type: 'object', patternProperties: { '^x': {} } }, '/patternProperties', /not supported/],
    ['not', { not: { type: 'string' } }, '/not', /not supported/],
    ['if/then/else', { if: { type: 'string' }, then: {}, else: {} }, '/if', /not supported/],
    ['multipleOf', { type: 'integer', multipleOf: 2 }, '/multipleOf', /not supported/],
    ['uniqueItems', { type: 'array', uniqueItems: true }, '/uniqueItems', /not supported/],
    ['contains', { type: 'array', contains: { type: 'integer' } }, '/contains', /not supported/],
    ['minProperties', { type: 'object', minProperties: 1 }, '/minProperties', /not supported/],
    ['maxProperties', { type: 'object', maxProperties: 1 }, '/maxProperties', /not supported/],
    ['dependentRequired', { type: 'object', dependentRequired: { a: ['b'] } }, '/dependentRequired', /not supported/],
    ['dependentSchemas', { type: 'object', dependentSchemas: { a: {} } }, '/dependentSchemas', /not supported/],
    ['propertyNames', { type: 'object', propertyNames: { maxLength: 3 } }, '/propertyNames', /not supported/],
    ['unevaluatedProperties', { type: 'object', unevaluatedProperties: false }, '/unevaluatedProperties', /not supported/],
    ['unevaluatedItems', { type: 'array', unevaluatedItems: false }, '/unevaluatedItems', /not supported/],
    ['other format', { type: 'object', properties: { e: { type: 'string', format: 'email' } } }, '/properties/e/format', /'format' "email" is not supported/],
    ['external $ref', { $ref: 'https://example.com/s.json' }, '/$ref', /not supported/],
    ['anchor $ref', { $defs: { a: { $anchor: 'x' } }, $ref: '#x' }, '/$ref', /not supported/],
    ['malformed $ref', { $ref: '#/%E0%A4%A' }, '/$ref', /malformed/],
    ['missing $ref target', { type: 'array', items: { $ref: '#/$defs/nope' } }, '/items/$ref', /does not exist/],
    ['schema false', false, '', /allows no value/],
    ['required property false', { type: 'object', properties: { a: false }, required: ['a'] }, '/properties/a', /allows no value/],
    ['number minimum', { type: 'object', properties: { t: { type: 'number', minimum: 0 } } }, '/properties/t/minimum', /only supported for integers/],
    ['number exclusiveMaximum', { type: 'number', exclusiveMaximum: 1 }, '/exclusiveMaximum', /only supported for integers/],
    ['allOf of two', { allOf: [{ type: 'string' }, { maxLength: 3 }] }, '/allOf', /more than one/],
    ['left recursion', { $defs: { a: { anyOf: [{ $ref: '#/$defs/a' }, { type: 'null' }] } }, $ref: '#/$defs/a' }, '/$defs/a/anyOf/0/$ref', /refers back to itself/],
    [
      'left recursion entered from inside an object',
      { $defs: { x: { anyOf: [{ type: 'object', properties: { y: { $ref: '#/$defs/y' } } }, { $ref: '#/$defs/y' }] }, y: { anyOf: [{ $ref: '#/$defs/x' }, { type: 'null' }] } }, $ref: '#/$defs/x' },
      '/$defs/y/anyOf/0/$ref',
      /refers back to itself/,
    ],
    ['format on a type it does not apply to', { type: 'boolean', format: 'email' }, '/format', /not supported/],
    ['sibling of $ref', { $ref: '#/$defs/a', type: 'object', $defs: { a: {} } }, '/type', /alongside '\$ref'/],
    ['enum with properties', { enum: [{}], properties: {} }, '/properties', /alongside 'enum'/],
    ['no enum value fits', { type: 'string', enum: [1, 2] }, '/enum', /no value/],
    ['bad type', { type: 'date' }, '/type', /'type' must be/],
    ['minLength over maxLength', { type: 'string', minLength: 5, maxLength: 2 }, '/minLength', /greater/],
    ['length on a format', { type: 'string', format: 'date-time', maxLength: 20 }, '/maxLength', /length bounds/],
    ['required but additionalProperties false', { type: 'object', required: ['x'], additionalProperties: false }, '/required', /not allowed/],
    ['minItems beyond the items allowed', { type: 'array', prefixItems: [{}], items: false, minItems: 2 }, '/minItems', /exceeds/],
    ['integer bounds beyond 16 digits', { type: 'integer', minimum: 1e17 }, '', /16 digits/],
    ['unknown keyword', { type: 'string', $anchor: 'x' }, '/$anchor', /not supported/],
    ['pointer escaping', { type: 'object', properties: { 'a/b~c': { not: {} } } }, '/properties/a~1b~0c/not', /not supported/],
  ];
  for (const [name, schema, pointer, message] of cases) {
    test(name, () => {
      assert.throws(
        () => jsonSchemaGrammar(schema),
        (error: unknown) => {
          assert.ok(error instanceof UnsupportedSchemaError, String(error));
          assert.equal(error.pointer, pointer);
          assert.match(error.message, message);
          return true;
        },
      );
    });
  }
});

function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
