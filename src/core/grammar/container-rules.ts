/**
 * The rules for objects (declared, required and additional properties) and arrays (prefix items, rest, counts).
 */
import { arrayItems, objectMembers, type Member } from './gbnf-layout.js';
import { gbnfLiteral } from './gbnf-text.js';
import type { ScalarSink } from './scalar-rules.js';
import { at, count, isObject, UnsupportedSchemaError, type Schema } from './schema-keywords.js';
import { MAX_ALTERNATIVES } from './schema-width.js';

/** The rule name for values of a subschema at `pointer`, written after something else (a key, "[" or ", "). */
export type SubschemaRule = (schema: unknown, pointer: string, hint: string) => string;

export function objectRule(sink: ScalarSink, schema: Schema, pointer: string, value: SubschemaRule, hint: string): string {
  const properties = schema.properties ?? {};
  if (!isObject(properties)) throw new UnsupportedSchemaError(at(pointer, 'properties'), "'properties' must be an object");
  const required = schema.required ?? [];
  if (!Array.isArray(required) || required.some((name) => typeof name !== 'string')) {
    throw new UnsupportedSchemaError(at(pointer, 'required'), "'required' must be an array of strings");
  }
  const extra = schema.additionalProperties;
  if (extra !== undefined && typeof extra !== 'boolean' && !isObject(extra)) {
    throw new UnsupportedSchemaError(at(pointer, 'additionalProperties'), "'additionalProperties' must be a schema");
  }
  const members: Member[] = [];
  const member = (name: string, rule: string, isRequired: boolean) =>
    members.push({ text: `${gbnfLiteral(`${JSON.stringify(name)}: `)} ${rule}`, required: isRequired });
  const requiredSet = new Set(required as string[]);
  for (const [name, propertySchema] of Object.entries(properties)) {
    const isRequired = requiredSet.has(name);
    // A property whose schema is false may only be absent.
    if (propertySchema === false && !isRequired) continue;
    const propertyHint = `${hint}-${name}`;
    member(name, value(propertySchema, at(pointer, 'properties', name), propertyHint), isRequired);
  }
  // Required but undeclared: the value is whatever additionalProperties allows.
  for (const name of requiredSet) {
    if (Object.hasOwn(properties, name)) continue;
    if (extra === false) {
      throw new UnsupportedSchemaError(at(pointer, 'required'), `required property ${JSON.stringify(name)} is not allowed by 'additionalProperties'`);
    }
    member(name, isObject(extra) ? value(extra, at(pointer, 'additionalProperties'), `${hint}-${name}`) : sink.fixed('json-value'), true);
  }
  const optionalCount = members.reduce((sum, item) => sum + (item.required ? 0 : 1), 0);
  if (optionalCount > MAX_ALTERNATIVES) {
    throw new UnsupportedSchemaError(at(pointer, 'properties'), `more than ${MAX_ALTERNATIVES} optional properties are not supported`);
  }
  if (members.length === 0) {
    // A map of string keys only when additional properties are asked for; without it, `{}` is the one valid choice.
    if (extra === undefined || extra === false) return '"{}"';
    const valueRule = extra === true ? sink.fixed('json-value') : value(extra, at(pointer, 'additionalProperties'), `${hint}-value`);
    const entry = sink.addRule(`${hint}-entry`, `${sink.fixed('json-string')} ": " ${valueRule}`);
    return `"{" (${entry} (", " ${entry})*)? "}"`;
  }
  return objectMembers(sink, members, hint);
}

export function arrayRule(sink: ScalarSink, schema: Schema, pointer: string, value: SubschemaRule, hint: string): string {
  const tuple = Array.isArray(schema.items);
  const prefix = schema.prefixItems ?? (tuple ? schema.items : []);
  if (!Array.isArray(prefix)) throw new UnsupportedSchemaError(at(pointer, 'prefixItems'), "'prefixItems' must be an array of schemas");
  const prefixKey = 'prefixItems' in schema ? 'prefixItems' : 'items';
  const restKey = tuple ? 'additionalItems' : 'items';
  if (tuple && 'prefixItems' in schema) {
    throw new UnsupportedSchemaError(at(pointer, 'items'), "an array 'items' alongside 'prefixItems' is not supported");
  }
  if (!tuple && 'additionalItems' in schema) {
    throw new UnsupportedSchemaError(at(pointer, 'additionalItems'), "'additionalItems' needs an array 'items'");
  }
  const rest = schema[restKey] ?? true;
  const lo = count(schema, 'minItems', pointer) ?? 0;
  let hi = count(schema, 'maxItems', pointer);
  // A false schema at position i, or no more items after the prefix, caps the length.
  let fixedCount = prefix.findIndex((item) => item === false);
  if (fixedCount === -1) fixedCount = prefix.length;
  if (fixedCount < prefix.length || rest === false) hi = Math.min(hi ?? fixedCount, fixedCount);
  if (hi !== undefined && lo > hi) {
    throw new UnsupportedSchemaError(at(pointer, 'minItems'), "'minItems' exceeds the number of items the schema allows");
  }
  if (hi === 0) return '"[]"';

  const usedPrefix = Math.min(fixedCount, hi ?? fixedCount);
  const items = prefix.slice(0, usedPrefix).map((item, index) =>
    value(item, at(pointer, prefixKey, index), `${hint}-${index}`),
  );
  const needsRest = hi === undefined || hi > usedPrefix;
  const restRule = needsRest ? value(rest, at(pointer, restKey), `${hint}-item`) : '';
  return arrayItems(sink, items, restRule, lo, hi, hint);
}
