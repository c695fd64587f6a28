/**
 * Issue 9, point 3: every schema a client sends either becomes a grammar llama.cpp accepts or is a 400 naming the
 * field and the place in the schema; never a stack overflow, never "Failed to parse grammar". The reproductions from
 * the issue, each in response_format and in tool parameters, then a property test over random schema-like values.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { Llama } from 'node-llama-cpp';
import type { ChatRequest } from '../../src/core/chat-request.js';
import { requestGrammars } from '../../src/core/grammar/request-grammar.js';
import { MAX_ALTERNATIVES } from '../../src/core/grammar/schema-width.js';
import { getRuntime } from '../../src/engines/llama/runtime.js';
import { KilnError } from '../../src/errors/catalog.js';

type GrammarRequest = Pick<ChatRequest, 'tools' | 'toolChoice' | 'responseFormat' | 'parallelToolCalls'>;
const BASE: GrammarRequest = { tools: [], toolChoice: { type: 'auto' }, responseFormat: { type: 'text' }, parallelToolCalls: true };

let llama: Llama;
before(async () => {
  llama = await getRuntime();
});

/** The two places a schema comes in, with the `param` a 400 must name. */
const PLACES = [
  {
    param: 'response_format.json_schema.schema',
    request: (schema: unknown): GrammarRequest => ({
      ...BASE,
      responseFormat: { type: 'json_schema', name: 'x', strict: true, schema: schema as Record<string, unknown> },
    }),
  },
  {
    param: 'tools[1].function.parameters',
    request: (schema: unknown): GrammarRequest => ({
      ...BASE,
      tools: [{ name: 'a' }, { name: 'b', parameters: schema as Record<string, unknown> }],
      toolChoice: { type: 'required' },
    }),
  },
] as const;

type Outcome = { grammar: string } | { error: KilnError };

/** requestGrammars, then llama.cpp on each grammar; fails on anything but a 400 naming `param` or grammars llama.cpp accepts. */
async function outcome(llama: Llama, request: GrammarRequest, param: string): Promise<Outcome> {
  let grammars;
  try {
    grammars = requestGrammars(request);
  } catch (error) {
    assert.ok(error instanceof KilnError, `not a KilnError: ${error instanceof Error ? error.stack : String(error)}`);
    assert.equal(error.status, 400, error.message);
    assert.equal(error.param, param, error.message);
    assert.match(error.message, new RegExp(`^Invalid schema for '${param.replace(/[[\].]/g, '\\$&')}' at '/[^']*': `));
    return { error };
  }
  const grammar = grammars.answer ?? grammars.toolCallBody;
  assert.ok(grammar !== undefined);
  try {
    await llama.createGrammar({ grammar });
  } catch (error) {
    assert.fail(`llama.cpp rejects the grammar (${String(error)}), ${grammar.length} characters:\n${grammar.slice(0, 2000)}`);
  }
  return { grammar };
}

/** `levels` wrappings of `leaf`, built without recursion. */
function nest(levels: number, wrap: (inner: unknown) => unknown, leaf: unknown): unknown {
  let value = leaf;
  for (let index = 0; index < levels; index++) value = wrap(value);
  return value;
}

function properties(count: number, schema: unknown, required = false): Record<string, unknown> {
  const names = Array.from({ length: count }, (_, index) => `p${index}`);
  return { type: 'object', properties: Object.fromEntries(names.map((name) => [name, schema])), ...(required ? { required: names } : {}) };
}

const STRING = { type: 'string' };
/** The reproductions; `pointer`: the place a 400 must name (a prefix of it), absent when a grammar is expected. */
const REPRODUCTIONS: Array<{ name: string; schema: () => unknown; pointer?: string }> = [
  { name: 'items nested 1,000 deep', schema: () => nest(1000, (items) => ({ type: 'array', items }), STRING), pointer: '/items/items' },
  { name: 'items nested 5,000 deep', schema: () => nest(5000, (items) => ({ type: 'array', items }), STRING), pointer: '/items/items' },
  {
    name: 'properties nested 5,000 deep',
    schema: () => nest(5000, (a) => ({ type: 'object', properties: { a } }), STRING),
    pointer: '/properties/a/properties/a',
  },
  { name: '10,000 properties', schema: () => properties(10_000, { type: 'integer' }), pointer: '/properties' },
  {
    name: 'a $defs chain of 5,000',
    schema: () => ({
      $ref: '#/$defs/d0',
      $defs: Object.fromEntries(Array.from({ length: 5000 }, (_, index) => [`d${index}`, index === 4999 ? STRING : { $ref: `#/$defs/d${index + 1}` }])),
    }),
    pointer: '/$defs/d',
  },
  { name: 'a const nested 5,000 deep', schema: () => ({ const: nest(5000, (inner) => [inner], 1) }), pointer: '/const/0/0' },
  { name: 'an enum value nested 5,000 deep', schema: () => ({ enum: [1, nest(5000, (inner) => ({ a: inner }), 1)] }), pointer: '/enum/1/a' },
  { name: 'maxItems 10^15', schema: () => ({ type: 'array', maxItems: 1_000_000_000_000_000 }) },
  { name: 'maxLength 10^15 and minItems 10^6', schema: () => ({ type: 'array', minItems: 1_000_000, items: { type: 'string', maxLength: 1e15 } }) },
  { name: 'prefixItems with 5,000 entries', schema: () => ({ type: 'array', prefixItems: Array.from({ length: 5000 }, () => ({ type: 'integer' })) }) },
  { name: '3,000 required string properties', schema: () => properties(3000, STRING, true) },
  { name: '3,000 optional string properties', schema: () => properties(3000, STRING), pointer: '/properties' },
  { name: `${MAX_ALTERNATIVES} optional string properties`, schema: () => properties(MAX_ALTERNATIVES, STRING) },
  {
    name: 'one enum repeated through 2,000 $refs',
    schema: () => ({
      anyOf: Array.from({ length: 2000 }, () => ({ $ref: '#/$defs/e' })),
      $defs: { e: { enum: Array.from({ length: 100 }, (_, index) => `v${index}`) } },
    }),
    pointer: '/',
  },
  {
    name: 'a string of maxLength 999 in 2,000 distinct properties',
    schema: () => ({ type: 'object', properties: Object.fromEntries(Array.from({ length: 2000 }, (_, index) => [`p${index}`, { type: 'string', maxLength: 900 + (index % 99) }])), required: ['p0'] }),
    pointer: '/properties/p',
  },
];

describe('the reproductions from the issue', () => {
  for (const { name, schema, pointer } of REPRODUCTIONS) {
    for (const place of PLACES) {
      test(`${name}, in ${place.param}`, async () => {
        const result = await outcome(llama, place.request(schema()), place.param);
        if (pointer === undefined) assert.ok('grammar' in result, 'error' in result ? result.error.message : '');
        else assert.ok('error' in result && result.error.message.includes(`at '${pointer}`), 'error' in result ? result.error.message : 'a grammar');
      });
    }
  }
});

// ---- property test ----

const KEYWORD_NAMES = ['a', 'b', 'c', 'x y', 'é', '"q"', 'p/1', '~0'];
/** Counts as JSON Schema writes them, from tiny to absurd (1e15, 2^53 - 1) and invalid (negative, fractional). */
const counts = fc.oneof(
  { weight: 6, arbitrary: fc.nat(12) },
  { weight: 2, arbitrary: fc.integer({ min: 90, max: 2500 }) },
  { weight: 1, arbitrary: fc.constantFrom(1e6, 1e15, Number.MAX_SAFE_INTEGER, -1, 2.5) },
);
const bounds = fc.oneof(fc.integer({ min: -1000, max: 1000 }), fc.constantFrom(1e15, -1e300, 1e300, 0.5, -2.5, 2 ** 31, 1e16 + 1));
const jsonValues = fc.jsonValue({ maxDepth: 3 });

const { schema: schemas } = fc.letrec((tie) => ({
  schema: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.boolean(),
    tie('typed'),
    tie('typed'),
    fc.record({ enum: fc.array(jsonValues, { minLength: 0, maxLength: 5 }) }, { requiredKeys: [] }),
    fc.record({ const: jsonValues, type: fc.constantFrom('string', 'integer', 'array', 'object') }, { requiredKeys: ['const'] }),
    fc.record({ anyOf: fc.array(tie('schema'), { minLength: 1, maxLength: 3 }), nullable: fc.boolean() }, { requiredKeys: ['anyOf'] }),
    fc.record({ oneOf: fc.array(tie('schema'), { maxLength: 3 }) }),
    fc.record({ anyOf: fc.array(tie('schema'), { minLength: 1, maxLength: 2 }), $defs: fc.constant({ x: {} }) }),
    fc.record({ allOf: fc.array(tie('schema'), { minLength: 1, maxLength: 1 }) }),
    fc.record({ $ref: fc.constantFrom('#', '#/$defs/a', '#/$defs/b', '#/definitions/c', '#/$defs/missing', 'other.json', '#/properties/a') }),
  ),
  typed: fc.record(
    {
      type: fc.oneof(
        fc.constantFrom('string', 'number', 'integer', 'boolean', 'null', 'object', 'array', 'date'),
        fc.uniqueArray(fc.constantFrom('string', 'integer', 'null', 'object'), { maxLength: 3 }),
      ),
      properties: fc.dictionary(fc.constantFrom(...KEYWORD_NAMES), tie('schema'), { maxKeys: 4 }),
      required: fc.uniqueArray(fc.constantFrom(...KEYWORD_NAMES), { maxLength: 3 }),
      additionalProperties: fc.oneof(fc.boolean(), tie('schema')),
      items: fc.oneof(tie('schema'), fc.array(tie('schema'), { maxLength: 3 })),
      prefixItems: fc.array(tie('schema'), { maxLength: 4 }),
      additionalItems: tie('schema'),
      minItems: counts,
      maxItems: counts,
      minLength: counts,
      maxLength: counts,
      format: fc.constantFrom('date', 'time', 'date-time', 'uuid', 'int32', 'int64', 'float', 'email'),
      minimum: bounds,
      maximum: bounds,
      exclusiveMinimum: fc.oneof(bounds, fc.boolean()),
      exclusiveMaximum: fc.oneof(bounds, fc.boolean()),
      nullable: fc.boolean(),
      uniqueItems: fc.constantFrom(false, false, false, true),
      description: fc.string({ maxLength: 8 }),
      default: jsonValues,
      'x-extra': jsonValues,
    },
    { requiredKeys: [] },
  ),
}));

/** A root schema: sometimes with $defs (the refs above point there), sometimes wrapped in something huge or deep. */
const rootSchemas = fc.oneof(
  { weight: 8, arbitrary: fc.record({ root: schemas, a: schemas, b: schemas, c: schemas }).map(({ root, a, b, c }) =>
    typeof root === 'object' ? { ...root, $defs: { a, b }, definitions: { c } } : root) },
  {
    weight: 1,
    arbitrary: fc.record({ levels: fc.integer({ min: 1, max: 400 }), kind: fc.constantFrom('items', 'properties', 'anyOf', 'const', 'default', 'ref') })
      .map(({ levels, kind }) => deepSchema(kind, levels)),
  },
  {
    weight: 1,
    arbitrary: fc.record({ width: fc.integer({ min: 1, max: 3000 }), member: schemas, required: fc.boolean() }).map(({ width, member, required }) =>
      properties(width, member, required)),
  },
);

function deepSchema(kind: string, levels: number): unknown {
  switch (kind) {
    case 'items':
      return nest(levels, (items) => ({ type: 'array', items }), STRING);
    case 'properties':
      return nest(levels, (a) => ({ type: 'object', properties: { a }, required: ['a'] }), STRING);
    case 'anyOf':
      return nest(levels, (inner) => ({ anyOf: [inner, { type: 'null' }] }), STRING);
    case 'const':
      return { const: nest(levels, (inner) => [inner], 1) };
    case 'default':
      return { type: 'string', default: nest(levels, (inner) => ({ 'x-a': inner }), 1) };
    default:
      return {
        $ref: '#/$defs/d0',
        $defs: Object.fromEntries(Array.from({ length: levels }, (_, index) => [`d${index}`, index === levels - 1 ? STRING : { type: 'array', items: { $ref: `#/$defs/d${index + 1}` } }])),
      };
  }
}

test('property: any schema-like value is a grammar llama.cpp accepts or a 400 naming the field and a pointer', async () => {
  let grammars = 0;
  let errors = 0;
  const seen = new Map<string, number>();
  await fc.assert(
    fc.asyncProperty(rootSchemas, fc.constantFrom(0, 1), async (schema, place) => {
      const { param, request } = PLACES[place]!;
      const result = await outcome(llama, request(schema), param);
      if ('grammar' in result) grammars++;
      else errors++;
      // FC_VERBOSE=1 prints what the runs ended in, to check the generator still reaches both outcomes broadly.
      if (process.env.FC_VERBOSE) {
        const key = 'grammar' in result ? `grammar ${Math.round(Math.log10(result.grammar.length))}` : result.error.message.replace(/^.*?': /, '').replace(/[0-9"#].*/, '');
        seen.set(key, (seen.get(key) ?? 0) + 1);
      }
    }),
    { numRuns: Number(process.env.FC_RUNS ?? 400), seed: Number(process.env.FC_SEED ?? 9), endOnFailure: true },
  );
  // Both outcomes must actually be exercised, or the property says little.
  assert.ok(grammars > 40 && errors > 40, `${grammars} grammars, ${errors} errors`);
  if (process.env.FC_VERBOSE) console.log([...seen].sort((a, b) => b[1] - a[1]));
});
