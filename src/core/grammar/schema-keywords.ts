/**
 * The JSON-Schema keywords as the GBNF converter reads them: which it enforces, ignores or rejects, and small readers
 * for their values. Malformed or unsupported ones are an UnsupportedSchemaError pointing at them.
 */
import { NUMBER_FORMATS } from './gbnf-text.js';

/** Thrown for a schema Kiln cannot honour. `pointer` is a JSON pointer into the schema, e.g. "/properties/age/pattern". */
export class UnsupportedSchemaError extends Error {
  constructor(
    readonly pointer: string,
    message: string,
  ) {
    super(message);
    this.name = 'UnsupportedSchemaError';
  }
}

/** Keywords that annotate and constrain nothing (and `x-` extensions, see isAnnotation). */
const ANNOTATIONS = new Set([
  'title', 'description', 'default', 'examples', 'example', '$schema', '$id', '$comment', 'deprecated', 'readOnly',
  'writeOnly', 'strict', '$defs', 'definitions',
]);
/** Keywords this converter enforces (or, like `nullable`, widens with). Any other keyword is rejected. */
export const SUPPORTED = new Set([
  'type', 'enum', 'const', 'anyOf', 'oneOf', 'allOf', '$ref', 'nullable', 'properties', 'required',
  'additionalProperties', 'items', 'prefixItems', 'additionalItems', 'minItems', 'maxItems', 'uniqueItems',
  'minLength', 'maxLength', 'format', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum',
]);
export const COMBINATORS = ['$ref', 'anyOf', 'oneOf', 'allOf'] as const;
/** What may stand beside enum/const: the literals are checked against these before they become alternatives. */
export const LITERAL_CHECKS = new Set([
  'type', 'minLength', 'maxLength', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'minItems', 'maxItems',
]);
export const TYPES = ['string', 'number', 'integer', 'boolean', 'null', 'object', 'array'] as const;
export type JsonType = (typeof TYPES)[number];

export type Schema = Record<string, unknown>;

/** OpenAPI-style `x-` extensions are vendor annotations too. */
export function isAnnotation(key: string): boolean {
  return ANNOTATIONS.has(key) || key.startsWith('x-');
}

export function isNumericFormat(format: unknown): format is string {
  return typeof format === 'string' && Object.hasOwn(NUMBER_FORMATS, format);
}

export function isObject(value: unknown): value is Schema {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `pointer` extended by keys, escaped as JSON pointer tokens. */
export function at(pointer: string, ...keys: Array<string | number>): string {
  return pointer + keys.map((key) => `/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`).join('');
}

/**
 * A local `$ref` ("#", "#/$defs/X", "#/definitions/X", or any other JSON pointer into the document) → the pointer.
 * Other documents and `#anchor`s are unsupported.
 */
export function refPointer(ref: string, refAt: string): string {
  if (!ref.startsWith('#') || (ref !== '#' && !ref.startsWith('#/'))) {
    const message = `'$ref' ${JSON.stringify(ref)} is not supported (only "#" and "#/…" pointers into the same schema)`;
    throw new UnsupportedSchemaError(refAt, message);
  }
  try {
    return decodeURIComponent(ref.slice(1));
  } catch {
    throw new UnsupportedSchemaError(refAt, `'$ref' ${JSON.stringify(ref)} is malformed`);
  }
}

export function resolvePointer(root: unknown, pointer: string): unknown {
  let node = root;
  for (const token of pointer.split('/').slice(1)) {
    const key = token.replaceAll('~1', '/').replaceAll('~0', '~');
    if (!isObject(node) || !Object.hasOwn(node, key)) return undefined;
    node = node[key];
  }
  return node;
}

/** A non-negative integer keyword (minLength, maxItems, …), or undefined when absent. */
export function count(schema: Schema, key: string, pointer: string): number | undefined {
  const value = schema[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new UnsupportedSchemaError(at(pointer, key), `'${key}' must be a non-negative integer`);
  }
  return value;
}

export type BoundKey = 'minimum' | 'maximum' | 'exclusiveMinimum' | 'exclusiveMaximum';

/** The numeric bounds present, draft-4 boolean exclusiveMinimum/Maximum folded into their minimum/maximum. */
export function numericBounds(schema: Schema, pointer: string): Array<[BoundKey, number]> {
  const bounds: Array<[BoundKey, number]> = [];
  for (const key of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'] as const) {
    const value = schema[key];
    if (value === undefined || typeof value === 'boolean') continue;
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      throw new UnsupportedSchemaError(at(pointer, key), `'${key}' must be a number`);
    }
    const draft4 = key === 'minimum' ? schema.exclusiveMinimum === true : key === 'maximum' ? schema.exclusiveMaximum === true : false;
    bounds.push([draft4 ? (key === 'minimum' ? 'exclusiveMinimum' : 'exclusiveMaximum') : key, value]);
  }
  for (const key of ['exclusiveMinimum', 'exclusiveMaximum'] as const) {
    const bound = key === 'exclusiveMinimum' ? 'minimum' : 'maximum';
    if (typeof schema[key] === 'boolean' && schema[bound] === undefined) {
      throw new UnsupportedSchemaError(at(pointer, key), `a boolean '${key}' needs '${bound}'`);
    }
  }
  return bounds;
}

/** Whether an enum/const value satisfies the sibling keywords (those in LITERAL_CHECKS). */
export function literalMatches(value: unknown, schema: Schema, types: readonly JsonType[] | undefined, pointer: string): boolean {
  if (types !== undefined && !types.some((type) => hasType(value, type))) return false;
  if (typeof value === 'string') {
    const length = [...value].length;
    if (typeof schema.minLength === 'number' && length < schema.minLength) return false;
    if (typeof schema.maxLength === 'number' && length > schema.maxLength) return false;
  }
  if (typeof value === 'number') {
    for (const [key, bound] of numericBounds(schema, pointer)) {
      const outside = { minimum: value < bound, maximum: value > bound, exclusiveMinimum: value <= bound, exclusiveMaximum: value >= bound };
      if (outside[key]) return false;
    }
  }
  if (Array.isArray(value)) {
    if (typeof schema.minItems === 'number' && value.length < schema.minItems) return false;
    if (typeof schema.maxItems === 'number' && value.length > schema.maxItems) return false;
  }
  return true;
}

function hasType(value: unknown, type: JsonType): boolean {
  switch (type) {
    case 'null':
      return value === null;
    case 'array':
      return Array.isArray(value);
    case 'object':
      return isObject(value);
    case 'integer':
      return Number.isInteger(value);
    default:
      return typeof value === type;
  }
}
