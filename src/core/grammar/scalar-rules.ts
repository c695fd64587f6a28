/**
 * The rules for values written by one rule: enum/const literals, strings (lengths and formats) and numbers (integer
 * ranges), and the types a schema allows.
 */
import { repeat, type RuleSink } from './gbnf-layout.js';
import { canonicalJson, gbnfLiteral, integerRange, MAX_INTEGER, NUMBER_FORMATS, STRING_FORMATS } from './gbnf-text.js';
import {
  at, count, isAnnotation, isNumericFormat, LITERAL_CHECKS, literalMatches, numericBounds, TYPES, UnsupportedSchemaError,
  type JsonType, type Schema,
} from './schema-keywords.js';

export interface ScalarSink extends RuleSink {
  /** A fixed rule of FIXED_RULES by name, added once. */
  fixed(name: string): string;
}

/** enum/const: their values, checked against the sibling keywords, as canonical JSON literals. */
export function literalRule(sink: ScalarSink, schema: Schema, pointer: string, hint: string): string {
  for (const key of Object.keys(schema)) {
    if (key === 'enum' || key === 'const' || key === 'nullable' || isAnnotation(key)) continue;
    if (!LITERAL_CHECKS.has(key)) {
      const other = 'enum' in schema ? 'enum' : 'const';
      throw new UnsupportedSchemaError(at(pointer, key), `'${key}' alongside '${other}' is not supported`);
    }
  }
  let values: unknown[];
  if ('enum' in schema) {
    if (!Array.isArray(schema.enum) || schema.enum.length === 0) {
      throw new UnsupportedSchemaError(at(pointer, 'enum'), "'enum' must be a non-empty array");
    }
    values = schema.enum;
    if ('const' in schema) values = values.filter((value) => canonicalJson(value) === canonicalJson(schema.const));
  } else {
    values = [schema.const];
  }
  const types = 'type' in schema ? schemaTypes(schema, pointer) : undefined;
  const allowed = values.filter((value) => literalMatches(value, schema, types, pointer));
  if (allowed.length === 0) {
    throw new UnsupportedSchemaError(at(pointer, 'enum' in schema ? 'enum' : 'const'), 'no value satisfies the rest of the schema');
  }
  const texts = [...new Set(allowed.map((value) => gbnfLiteral(canonicalJson(value))))];
  return sink.named(hint, texts.join(' | '));
}

/** The types a schema allows: `type`, else inferred from the keywords present; undefined for "any value". */
export function schemaTypes(schema: Schema, pointer: string): JsonType[] | undefined {
  const type = schema.type;
  if (type !== undefined) {
    const list = Array.isArray(type) ? type : [type];
    if (list.length === 0 || list.some((item) => !TYPES.includes(item as JsonType))) {
      throw new UnsupportedSchemaError(at(pointer, 'type'), `'type' must be one of ${TYPES.join(', ')}, or an array of them`);
    }
    return [...new Set(list as JsonType[])];
  }
  const inferred: JsonType[] = [];
  const has = (...keys: string[]) => keys.some((key) => key in schema);
  if (has('properties', 'required', 'additionalProperties')) inferred.push('object');
  if (has('items', 'prefixItems', 'additionalItems', 'minItems', 'maxItems')) inferred.push('array');
  const numericFormat = isNumericFormat(schema.format);
  if (has('minLength', 'maxLength') || (has('format') && !numericFormat)) inferred.push('string');
  if (has('minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum') || numericFormat) inferred.push('number');
  return inferred.length > 0 ? inferred : undefined;
}

export function stringRule(sink: ScalarSink, schema: Schema, pointer: string, hint: string): string {
  const minLength = count(schema, 'minLength', pointer) ?? 0;
  const maxLength = count(schema, 'maxLength', pointer);
  if (maxLength !== undefined && minLength > maxLength) {
    throw new UnsupportedSchemaError(at(pointer, 'minLength'), "'minLength' is greater than 'maxLength'");
  }
  // Numeric formats do not apply to strings; compile has rejected unknown ones.
  const format = schema.format;
  if (typeof format === 'string' && !isNumericFormat(format)) {
    const known = STRING_FORMATS[format]!;
    // Bounds are fine when every value of the format satisfies them already.
    if (known.minLength < minLength || (maxLength !== undefined && known.maxLength > maxLength)) {
      const key = 'minLength' in schema ? 'minLength' : 'maxLength';
      throw new UnsupportedSchemaError(at(pointer, key), `length bounds on 'format' ${JSON.stringify(format)} are not supported`);
    }
    return `"\\"" ${sink.fixed(known.rule)} "\\""`;
  }
  if (minLength === 0 && maxLength === undefined) return sink.fixed('json-string');
  return sink.named(`${hint}-string`, `"\\"" ${repeat(sink, sink.fixed('json-char'), minLength, maxLength, `${hint}-chars`)} "\\""`);
}

export function integerRule(sink: ScalarSink, schema: Schema, pointer: string, hint: string): string {
  let lo = -MAX_INTEGER;
  let hi = MAX_INTEGER;
  let bounded = false;
  const format = isNumericFormat(schema.format) ? NUMBER_FORMATS[schema.format] : undefined;
  if (format) [lo, hi, bounded] = [format.lo, format.hi, true];
  for (const [key, bound] of numericBounds(schema, pointer)) {
    bounded = true;
    if (key === 'minimum') lo = max(lo, ceil(bound));
    else if (key === 'exclusiveMinimum') lo = max(lo, floor(bound) + 1n);
    else if (key === 'maximum') hi = min(hi, floor(bound));
    else hi = min(hi, ceil(bound) - 1n);
  }
  if (!bounded) return sink.fixed('json-integer');
  lo = max(lo, -MAX_INTEGER);
  hi = min(hi, MAX_INTEGER);
  if (lo > hi) throw new UnsupportedSchemaError(pointer, `no integer of at most 16 digits satisfies the bounds`);
  return sink.named(`${hint}-integer`, integerRange(lo, hi));
}

export function numberRule(sink: ScalarSink, schema: Schema, pointer: string): string {
  const [bound] = numericBounds(schema, pointer);
  if (bound) throw new UnsupportedSchemaError(at(pointer, bound[0]), `'${bound[0]}' is only supported for integers`);
  return sink.fixed('json-number');
}

function ceil(value: number): bigint {
  return BigInt(Math.ceil(clampDouble(value)));
}

function floor(value: number): bigint {
  return BigInt(Math.floor(clampDouble(value)));
}

/** Bounds far beyond ±MAX_INTEGER act like ±MAX_INTEGER; keeping them finite-sized keeps BigInt cheap. */
function clampDouble(value: number): number {
  return Math.max(-1e17, Math.min(1e17, value));
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

function min(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}
