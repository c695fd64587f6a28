/**
 * fast-check generators of JSON Schemas for the fuzzing of request bodies (fuzz-bodies.ts): schemas as clients write
 * them, random keyword soup, and the deep and wide ones where converters break. Deep values are `RawJson` text,
 * because `JSON.stringify` recurses and overflows the stack at a few thousand levels — the very depths worth sending.
 */
import fc from 'fast-check';

/** Upper bounds of the "big" values: the suite keeps them small enough to run in seconds, the soak goes further. */
export interface FuzzScale {
  depth: number;
  width: number;
  stringBytes: number;
}
export const SUITE_SCALE: FuzzScale = { depth: 3_000, width: 3_000, stringBytes: 200_000 };
export const SOAK_SCALE: FuzzScale = { depth: 6_000, width: 12_000, stringBytes: 2_000_000 };

export class RawJson {
  constructor(
    readonly text: string,
    readonly label: string,
  ) {}
}

const nest = (depth: number, open: string, leaf: string, close: string) => open.repeat(depth) + leaf + close.repeat(depth);

/** Values and schemas nested up to `scale.depth` levels, as raw JSON text. */
export function deepArbitraries(scale: FuzzScale) {
  const depth = fc.oneof(fc.integer({ min: 2, max: 64 }), fc.integer({ min: 500, max: scale.depth }));
  const value = fc.tuple(depth, fc.constantFrom('array', 'object')).map(([d, kind]) =>
    kind === 'array' ? new RawJson(nest(d, '[', '1', ']'), `[…] nested ${d} deep`) : new RawJson(nest(d, '{"a":', '1', '}'), `{"a":…} nested ${d} deep`),
  );
  const schemaShapes: Record<string, [string, string, string]> = {
    items: ['{"type":"array","items":', '{"type":"string"}', '}'],
    properties: ['{"type":"object","properties":{"p":', '{"type":"integer"}', '},"required":["p"]}'],
    anyOf: ['{"anyOf":[{"type":"null"},', '{"type":"boolean"}', ']}'],
    allOf: ['{"allOf":[', '{"type":"number"}', ']}'],
    not: ['{"not":', '{"type":"string"}', '}'],
    additionalProperties: ['{"type":"object","additionalProperties":', '{"type":"string"}', '}'],
    prefixItems: ['{"type":"array","prefixItems":[', '{"const":1}', ']}'],
  };
  const schema = fc.tuple(depth, fc.constantFrom(...Object.keys(schemaShapes))).map(([d, key]) => {
    const [open, leaf, close] = schemaShapes[key]!;
    return new RawJson(nest(d, open, leaf, close), `schema: ${key} nested ${d} deep`);
  });
  const defsChain = fc.integer({ min: 2, max: scale.depth }).map((d) => {
    const defs = Array.from({ length: d }, (_, i) => `"d${i}":${i + 1 < d ? `{"$ref":"#/$defs/d${i + 1}"}` : '{"type":"string"}'}`);
    return new RawJson(`{"$defs":{${defs.join(',')}},"$ref":"#/$defs/d0"}`, `schema: $defs $ref chain of ${d}`);
  });
  const deepAnnotation = fc.tuple(fc.constantFrom('enum', 'const', 'default', 'x-extra', 'examples'), value).map(([key, v]) => {
    const inner = key === 'enum' || key === 'examples' ? `[${v.text}]` : v.text;
    return new RawJson(`{"type":"object","${key}":${inner}}`, `schema: ${key} = ${v.label}`);
  });
  return { value, schema: fc.oneof(schema, defsChain, deepAnnotation) };
}

/** Wide schemas: many properties, tuple items, enum values, huge bounds. */
function wideSchema(scale: FuzzScale): fc.Arbitrary<unknown> {
  const count = fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1_000, max: scale.width }));
  const props = (n: number, type: string) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type }]));
  return fc.oneof(
    fc.tuple(count, fc.constantFrom('string', 'integer', 'boolean')).map(([n, type]) => ({ type: 'object', properties: props(n, type), required: Object.keys(props(n, type)) })),
    count.map((n) => ({ type: 'array', prefixItems: Array.from({ length: n }, (_, i) => ({ const: i })) })),
    count.map((n) => ({ enum: Array.from({ length: n }, (_, i) => `value-${i}`) })),
    count.map((n) => ({ anyOf: Array.from({ length: n }, (_, i) => ({ const: i })) })),
    fc.tuple(fc.constantFrom('maxItems', 'minItems', 'maxLength', 'minLength', 'maxProperties', 'minProperties'), hugeNumber).map(([key, v]) => ({
      type: key.includes('Items') ? 'array' : key.includes('Length') ? 'string' : 'object',
      [key]: v,
    })),
  );
}

const hugeNumber = fc.constantFrom(0, -1, 1, 0.5, 1000, 65_536, 1e6, 2 ** 31, 2 ** 53 + 2, 1e15, 1e21, 1e308, -1e308, 5e-324);

/** Schemas as clients write them: typed leaves with ordinary keywords, objects and arrays a few levels deep. */
function plausibleSchema(): fc.Arbitrary<unknown> {
  const name = fc.constantFrom('city', 'unit', 'count', 'tags', 'when', 'id', 'ok', 'items', 'a b', 'ключ', '"q"');
  const leaf = fc.oneof(
    fc.record({ type: fc.constant('string'), enum: fc.array(fc.string({ maxLength: 8 }), { minLength: 1, maxLength: 4 }) }, { requiredKeys: ['type'] }),
    fc.record({ type: fc.constant('string'), minLength: fc.integer({ min: 0, max: 4 }), maxLength: fc.integer({ min: 4, max: 12 }), format: fc.constantFrom('date-time', 'date', 'uuid', 'email') }, { requiredKeys: ['type'] }),
    fc.record({ type: fc.constantFrom('integer', 'number'), minimum: fc.integer({ min: -100, max: 0 }), maximum: fc.integer({ min: 0, max: 100 }) }, { requiredKeys: ['type'] }),
    fc.record({ type: fc.constantFrom('boolean', 'null') }),
    fc.record({ type: fc.constant(['string', 'null']) }),
    fc.record({ const: fc.oneof(fc.string({ maxLength: 6 }), fc.integer(), fc.boolean()) }),
  );
  const { node } = fc.letrec<{ node: unknown }>((tie) => ({
    node: fc.oneof(
      { depthSize: 'small' },
      leaf,
      fc.dictionary(name, tie('node'), { minKeys: 1, maxKeys: 4 }).chain((properties) =>
        fc.subarray(Object.keys(properties)).map((required) => ({ type: 'object', properties, required, additionalProperties: false })),
      ),
      fc.record({ type: fc.constant('array'), items: tie('node'), minItems: fc.integer({ min: 0, max: 2 }), maxItems: fc.integer({ min: 2, max: 5 }) }, { requiredKeys: ['type', 'items'] }),
      fc.record({ anyOf: fc.array(tie('node'), { minLength: 1, maxLength: 3 }) }),
    ),
  }));
  return fc.dictionary(name, node, { minKeys: 1, maxKeys: 5 }).map((properties) => ({ type: 'object', properties, required: Object.keys(properties).slice(0, 2) }));
}

/** Random JSON Schemas (objects at the top, as both fields require), deep and wide ones mixed in. */
export function schemaArbitrary(scale: FuzzScale): fc.Arbitrary<unknown> {
  const deep = deepArbitraries(scale);
  const anyValue = fc.jsonValue({ maxDepth: 3 });
  const { schema } = fc.letrec<{ schema: unknown }>((tie) => ({
    schema: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      fc.record(
        {
          type: fc.oneof(fc.constantFrom('string', 'number', 'integer', 'boolean', 'null', 'object', 'array'), fc.constantFrom(['string', 'null'], [], 'any', 42)),
          enum: fc.array(anyValue, { maxLength: 4 }),
          const: anyValue,
          format: fc.constantFrom('date-time', 'date', 'email', 'uuid', 'uri', 'ipv4', 'hostname', 'bogus'),
          pattern: fc.constantFrom('^[a-z]+$', '(', '\\d{3}-\\d{4}', '.*', '[^\\u0000]', 'a{1000000}'),
          minLength: hugeNumber,
          maxLength: hugeNumber,
          minimum: hugeNumber,
          maximum: hugeNumber,
          multipleOf: hugeNumber,
        },
        { requiredKeys: [] },
      ),
      fc.record(
        {
          type: fc.constant('object'),
          properties: fc.dictionary(fc.string({ maxLength: 8 }), tie('schema'), { maxKeys: 5 }),
          required: fc.array(fc.oneof(fc.string({ maxLength: 8 }), anyValue), { maxLength: 4 }),
          additionalProperties: fc.oneof(fc.boolean(), tie('schema')),
          minProperties: hugeNumber,
        },
        { requiredKeys: [] },
      ),
      fc.record(
        {
          type: fc.constant('array'),
          items: fc.oneof(tie('schema'), fc.boolean()),
          prefixItems: fc.array(tie('schema'), { maxLength: 4 }),
          minItems: hugeNumber,
          maxItems: hugeNumber,
          uniqueItems: fc.boolean(),
        },
        { requiredKeys: [] },
      ),
      fc.record({ anyOf: fc.array(tie('schema'), { maxLength: 4 }) }),
      fc.record({ oneOf: fc.array(tie('schema'), { maxLength: 4 }) }),
      fc.record({ allOf: fc.array(tie('schema'), { maxLength: 3 }) }),
      fc.record({ not: tie('schema') }),
      fc.record({ $ref: fc.constantFrom('#/$defs/a', '#/definitions/a', '#', '#/properties/x', 'http://example.com/s.json', '#/$defs/missing'), $defs: fc.dictionary(fc.constantFrom('a', 'b'), tie('schema'), { maxKeys: 2 }) }),
      fc.dictionary(fc.constantFrom('type', 'properties', 'items', 'anyOf', 'required', 'enum', '$ref', 'additionalProperties', 'prefixItems'), anyValue, { maxKeys: 3 }),
    ),
  }));
  return fc.oneof({ arbitrary: plausibleSchema(), weight: 5 }, { arbitrary: schema, weight: 4 }, { arbitrary: deep.schema, weight: 2 }, { arbitrary: wideSchema(scale), weight: 2 });
}
