/**
 * JSON Schema → GBNF (llama.cpp grammar), written for Kiln rather than taken from llama.cpp or node-llama-cpp: those
 * converters drop `required`, widen unknown schemas, and allow free whitespace, which a random or weak model uses to
 * fill max_tokens. Here every value is written in one canonical layout (json.dumps's `{"a": 1, "b": [1, 2]}`), and a
 * keyword the grammar cannot enforce is an UnsupportedSchemaError, never silently dropped.
 */
import { canonicalJson, FIXED_RULES, gbnfLiteral, integerRange, MAX_INTEGER, NUMBER_FORMATS, STRING_FORMATS } from './gbnf-text.js';
import {
  at, COMBINATORS, count, isAnnotation, isNumericFormat, isObject, LITERAL_CHECKS, literalMatches, numericBounds, refPointer,
  resolvePointer, SUPPORTED, TYPES, UnsupportedSchemaError, type JsonType, type Schema,
} from './schema-keywords.js';

import { arrayItems, objectMembers, repeat, type Member, type RuleSink } from './gbnf-layout.js';
import { MAX_ALTERNATIVES, WidthMeter } from './schema-width.js';

export { UnsupportedSchemaError } from './schema-keywords.js';

/**
 * Subschemas being compiled at once (nesting plus `$ref` chains, which the JSON depth bound does not see): keeps the
 * converter's recursion a few thousand frames deep at most, far inside Node's stack.
 */
export const MAX_COMPILE_DEPTH = 200;
/**
 * Budget for one grammar: a unit per character of rule text, EXPANDED_RULE_SIZE per rule llama.cpp expands a
 * repetition into. Measured with llama.cpp's parser here: ~0.015 µs per character and ~0.25 µs per expanded rule, so
 * this budget compiles in ≤ ~25 ms and stays ≤ ~1 MB of GBNF (a few MB once compiled, kept in the engine's grammar
 * cache). Real tool schemas need a few KB to ~100 KB.
 */
export const MAX_GRAMMAR_SIZE = 1_000_000;
const EXPANDED_RULE_SIZE = 16;

interface Scope {
  root: unknown;
  /** Rule names of the `$ref` targets compiled so far, by JSON pointer. */
  refs: Map<string, string>;
  /** Target `from` may begin with target `to` (nothing written before it); a cycle here is left recursion. */
  leftEdges: Array<{ from: string; to: string; refAt: string }>;
  meter: WidthMeter;
}
/** The `$ref` targets entered, in order, since the last character the grammar writes. */
type LeftRefs = readonly string[];
const NO_LEFT: LeftRefs = [];

/** Builds one GBNF grammar out of several pieces; rule names are unique and safe ([a-z0-9-]+). */
export class GbnfBuilder implements RuleSink {
  private readonly rules = new Map<string, string | undefined>([['root', undefined]]);
  private readonly scopes = new Map<unknown, Scope>();
  /** Next free numeric suffix per base name: a linear probe was quadratic over 10,000 like-named rules. */
  private readonly suffixes = new Map<string, number>();
  /** Subschemas now being compiled (see MAX_COMPILE_DEPTH). */
  private depth = 0;
  /** Size so far, in the units of MAX_GRAMMAR_SIZE. */
  private size = 0;

  /**
   * Adds the rules for values of `schema` (a JSON Schema object or boolean); returns a rule *name* matching exactly
   * those values. Throws UnsupportedSchemaError. `$ref`s resolve against `schema` itself unless `root` is given (the
   * document the refs point into; errors then point into `schema` itself).
   */
  addSchema(schema: unknown, nameHint: string, root?: unknown): string {
    const document = root ?? schema;
    let scope = this.scopes.get(document);
    if (!scope) this.scopes.set(document, (scope = { root: document, refs: new Map(), leftEdges: [], meter: new WidthMeter(document) }));
    // The document itself goes through the `#` entry, so a `{"$ref": "#"}` inside it reuses this rule.
    const name = schema === document ? this.ref('', scope, NO_LEFT, nameHint, '') : this.value(schema, '', scope, nameHint);
    checkLeftRecursion(scope);
    return name;
  }

  /** Rule name for any JSON value / any JSON object. */
  anyValue(): string {
    return this.fixed('json-value');
  }

  anyObject(): string {
    return this.fixed('json-object');
  }

  /** A GBNF string literal for text, escaped, e.g. literal('a"b') === '"a\\"b"'. */
  literal(text: string): string {
    return gbnfLiteral(text);
  }

  /** Adds `name ::= body` (name made unique), returns the name. */
  addRule(nameHint: string, body: string): string {
    const name = this.reserve(nameHint);
    this.define(name, body);
    return name;
  }

  /** `expression` as a rule name: itself when it already is one. */
  named(nameHint: string, expression: string): string {
    return this.rules.has(expression) ? expression : this.addRule(nameHint, expression);
  }

  expand(count: number): void {
    this.size += count * EXPANDED_RULE_SIZE;
  }

  /** The whole grammar, with `root ::= <rootBody>` first. */
  build(rootBody: string): string {
    const lines = [`root ::= ${rootBody}`];
    for (const [name, body] of this.rules) {
      if (name === 'root') continue;
      if (body === undefined) throw new Error(`GBNF rule ${name} was reserved but never defined`);
      lines.push(`${name} ::= ${body}`);
    }
    return `${lines.join('\n')}\n`;
  }

  private reserve(nameHint: string): string {
    let base = nameHint.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40).replace(/-+$/, '');
    // `json-` names are the fixed rules' own; `root` is build's.
    if (base === '' || base === 'root' || base.startsWith('json-')) base = `r-${base}`.replace(/-+$/, '');
    let name = base;
    if (this.rules.has(name)) {
      let n = this.suffixes.get(base) ?? 2;
      while (this.rules.has((name = `${base}-${n}`))) n++;
      this.suffixes.set(base, n + 1);
    }
    this.rules.set(name, undefined);
    return name;
  }

  private define(name: string, body: string): void {
    this.size += name.length + body.length;
    this.rules.set(name, body);
  }

  /** A fixed rule (and those it refers to), added once under its own name. */
  private fixed(name: string): string {
    if (this.rules.has(name)) return name;
    const body = FIXED_RULES[name];
    if (body === undefined) throw new Error(`no fixed GBNF rule ${name}`);
    this.rules.set(name, body);
    for (const [used] of body.matchAll(/json-[a-z0-9-]+/g)) this.fixed(used);
    return name;
  }

  // ---- schemas ----

  /** A rule for values of a subschema written after something else (an object key, an array's "[" or ", "). */
  private value(schema: unknown, pointer: string, scope: Scope, hint: string): string {
    return this.named(hint, this.compile(schema, pointer, scope, NO_LEFT, hint));
  }

  private compile(schema: unknown, pointer: string, scope: Scope, left: LeftRefs, hint: string): string {
    if (this.depth >= MAX_COMPILE_DEPTH) {
      throw new UnsupportedSchemaError(pointer, `subschemas and '$ref's nest deeper than ${MAX_COMPILE_DEPTH} levels`);
    }
    this.depth++;
    try {
      const expression = this.compileSchema(schema, pointer, scope, left, hint);
      if (this.size > MAX_GRAMMAR_SIZE) {
        throw new UnsupportedSchemaError(pointer, `the grammar for the schema grows too large here (over ${MAX_GRAMMAR_SIZE} units, about that many bytes of GBNF)`);
      }
      return expression;
    } finally {
      this.depth--;
    }
  }

  private compileSchema(schema: unknown, pointer: string, scope: Scope, left: LeftRefs, hint: string): string {
    if (schema === true) return this.anyValue();
    if (schema === false) throw new UnsupportedSchemaError(pointer, "the schema 'false' allows no value");
    if (!isObject(schema)) throw new UnsupportedSchemaError(pointer, 'a schema must be an object or a boolean');
    for (const key of Object.keys(schema)) {
      if (!isAnnotation(key) && !SUPPORTED.has(key)) {
        throw new UnsupportedSchemaError(at(pointer, key), `'${key}' is not supported`);
      }
    }
    if (schema.uniqueItems !== undefined && schema.uniqueItems !== false) {
      throw new UnsupportedSchemaError(at(pointer, 'uniqueItems'), "'uniqueItems' is not supported");
    }
    const format = schema.format;
    const knownFormat = typeof format === 'string' && (Object.hasOwn(STRING_FORMATS, format) || Object.hasOwn(NUMBER_FORMATS, format));
    if (format !== undefined && !knownFormat) {
      throw new UnsupportedSchemaError(at(pointer, 'format'), `'format' ${JSON.stringify(format)} is not supported`);
    }
    const nullable = schema.nullable === undefined ? false : schema.nullable;
    if (typeof nullable !== 'boolean') throw new UnsupportedSchemaError(at(pointer, 'nullable'), "'nullable' must be a boolean");
    if (scope.meter.width(schema) > MAX_ALTERNATIVES) {
      const message = `the schema allows more than ${MAX_ALTERNATIVES} alternatives where its value starts (enum values and anyOf/oneOf branches, '$ref's followed)`;
      throw new UnsupportedSchemaError(pointer, message);
    }

    if ('enum' in schema || 'const' in schema) return this.literals(schema, pointer, hint);
    const combinator = COMBINATORS.find((key) => key in schema);
    if (combinator !== undefined) {
      const sibling = Object.keys(schema).find((key) => key !== combinator && key !== 'nullable' && !isAnnotation(key));
      if (sibling !== undefined) {
        throw new UnsupportedSchemaError(at(pointer, sibling), `'${sibling}' alongside '${combinator}' is not supported`);
      }
      const inner = this.combinator(schema, combinator, pointer, scope, left, hint);
      return nullable ? `${inner} | "null"` : inner;
    }

    const types = this.types(schema, pointer);
    if (types === undefined) return this.anyValue();
    if (nullable && !types.includes('null')) types.push('null');
    const alternatives = types
      .filter((type) => type !== 'integer' || !types.includes('number'))
      .map((type) => this.typed(type, schema, pointer, scope, hint));
    return alternatives.join(' | ');
  }

  private combinator(
    schema: Schema,
    key: (typeof COMBINATORS)[number],
    pointer: string,
    scope: Scope,
    left: LeftRefs,
    hint: string,
  ): string {
    const value = schema[key];
    if (key === '$ref') {
      if (typeof value !== 'string') throw new UnsupportedSchemaError(at(pointer, key), "'$ref' must be a string");
      return this.ref(refPointer(value, at(pointer, key)), scope, left, hint, at(pointer, key));
    }
    if (!Array.isArray(value) || value.length === 0) {
      throw new UnsupportedSchemaError(at(pointer, key), `'${key}' must be a non-empty array of schemas`);
    }
    if (key === 'allOf' && value.length !== 1) {
      throw new UnsupportedSchemaError(at(pointer, key), "'allOf' with more than one schema is not supported");
    }
    // oneOf is taken as anyOf: a value matching two branches is not excluded.
    return value
      .map((branch, index) => this.named(`${hint}-${index}`, this.compile(branch, at(pointer, key, index), scope, left, `${hint}-${index}`)))
      .join(' | ');
  }

  /** The rule for the `$ref` target at `target` (a pointer into the scope's root), compiled once. */
  private ref(target: string, scope: Scope, left: LeftRefs, hint: string, refAt: string): string {
    if (left.length > 0) scope.leftEdges.push({ from: left[left.length - 1]!, to: target, refAt });
    if (left.includes(target)) throw leftRecursion(refAt, target);
    const known = scope.refs.get(target);
    if (known !== undefined) return known;
    const schema = resolvePointer(scope.root, target);
    if (schema === undefined) throw new UnsupportedSchemaError(refAt, `'$ref' target "#${target}" does not exist`);
    const name = this.reserve(target === '' ? hint : target.slice(target.lastIndexOf('/') + 1));
    scope.refs.set(target, name);
    this.define(name, this.compile(schema, target, scope, [...left, target], name));
    return name;
  }

  /** enum/const: their values, checked against the sibling keywords, as canonical JSON literals. */
  private literals(schema: Schema, pointer: string, hint: string): string {
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
    const types = 'type' in schema ? this.types(schema, pointer) : undefined;
    const allowed = values.filter((value) => literalMatches(value, schema, types, pointer));
    if (allowed.length === 0) {
      throw new UnsupportedSchemaError(at(pointer, 'enum' in schema ? 'enum' : 'const'), 'no value satisfies the rest of the schema');
    }
    const texts = [...new Set(allowed.map((value) => gbnfLiteral(canonicalJson(value))))];
    return this.named(hint, texts.join(' | '));
  }

  /** The types a schema allows: `type`, else inferred from the keywords present; undefined for "any value". */
  private types(schema: Schema, pointer: string): JsonType[] | undefined {
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

  private typed(type: JsonType, schema: Schema, pointer: string, scope: Scope, hint: string): string {
    switch (type) {
      case 'null':
        return '"null"';
      case 'boolean':
        return '("true" | "false")';
      case 'string':
        return this.string(schema, pointer, hint);
      case 'integer':
        return this.integer(schema, pointer, hint);
      case 'number':
        // ajv-formats' int32/int64 only accept integers, whatever the type.
        return schema.format === 'int32' || schema.format === 'int64' ? this.integer(schema, pointer, hint) : this.number(schema, pointer);
      case 'object':
        return this.object(schema, pointer, scope, hint);
      case 'array':
        return this.array(schema, pointer, scope, hint);
    }
  }

  private string(schema: Schema, pointer: string, hint: string): string {
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
      return `"\\"" ${this.fixed(known.rule)} "\\""`;
    }
    if (minLength === 0 && maxLength === undefined) return this.fixed('json-string');
    return this.named(`${hint}-string`, `"\\"" ${repeat(this, this.fixed('json-char'), minLength, maxLength, `${hint}-chars`)} "\\""`);
  }

  private integer(schema: Schema, pointer: string, hint: string): string {
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
    if (!bounded) return this.fixed('json-integer');
    lo = max(lo, -MAX_INTEGER);
    hi = min(hi, MAX_INTEGER);
    if (lo > hi) throw new UnsupportedSchemaError(pointer, `no integer of at most 16 digits satisfies the bounds`);
    return this.named(`${hint}-integer`, integerRange(lo, hi));
  }

  private number(schema: Schema, pointer: string): string {
    const [bound] = numericBounds(schema, pointer);
    if (bound) throw new UnsupportedSchemaError(at(pointer, bound[0]), `'${bound[0]}' is only supported for integers`);
    return this.fixed('json-number');
  }

  private object(schema: Schema, pointer: string, scope: Scope, hint: string): string {
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
    const member = (name: string, value: string, isRequired: boolean) =>
      members.push({ text: `${gbnfLiteral(`${JSON.stringify(name)}: `)} ${value}`, required: isRequired });
    const requiredSet = new Set(required as string[]);
    for (const [name, propertySchema] of Object.entries(properties)) {
      const isRequired = requiredSet.has(name);
      // A property whose schema is false may only be absent.
      if (propertySchema === false && !isRequired) continue;
      const propertyHint = `${hint}-${name}`;
      member(name, this.value(propertySchema, at(pointer, 'properties', name), scope, propertyHint), isRequired);
    }
    // Required but undeclared: the value is whatever additionalProperties allows.
    for (const name of requiredSet) {
      if (Object.hasOwn(properties, name)) continue;
      if (extra === false) {
        throw new UnsupportedSchemaError(at(pointer, 'required'), `required property ${JSON.stringify(name)} is not allowed by 'additionalProperties'`);
      }
      member(name, isObject(extra) ? this.value(extra, at(pointer, 'additionalProperties'), scope, `${hint}-${name}`) : this.anyValue(), true);
    }
    const optionalCount = members.reduce((sum, item) => sum + (item.required ? 0 : 1), 0);
    if (optionalCount > MAX_ALTERNATIVES) {
      throw new UnsupportedSchemaError(at(pointer, 'properties'), `more than ${MAX_ALTERNATIVES} optional properties are not supported`);
    }
    if (members.length === 0) {
      // A map of string keys only when additional properties are asked for; without it, `{}` is the one valid choice.
      if (extra === undefined || extra === false) return '"{}"';
      const value = extra === true ? this.anyValue() : this.value(extra, at(pointer, 'additionalProperties'), scope, `${hint}-value`);
      const entry = this.addRule(`${hint}-entry`, `${this.fixed('json-string')} ": " ${value}`);
      return `"{" (${entry} (", " ${entry})*)? "}"`;
    }
    return objectMembers(this, members, hint);
  }

  private array(schema: Schema, pointer: string, scope: Scope, hint: string): string {
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
      this.value(item, at(pointer, prefixKey, index), scope, `${hint}-${index}`),
    );
    const needsRest = hi === undefined || hi > usedPrefix;
    const restRule = needsRest ? this.value(rest, at(pointer, restKey), scope, `${hint}-item`) : '';
    return arrayItems(this, items, restRule, lo, hi, hint);
  }
}

/** Grammar whose root is a value of `schema`. */
export function jsonSchemaGrammar(schema: unknown): string {
  const builder = new GbnfBuilder();
  return builder.build(builder.addSchema(schema, 'value'));
}

/** Grammar whose root is any JSON object. */
export function jsonObjectGrammar(): string {
  const builder = new GbnfBuilder();
  return builder.build(builder.anyObject());
}

// ---- schema helpers ----

/**
 * A `$ref` cycle with nothing written in between would be left recursion, which llama.cpp rejects. Most are caught
 * as they are entered; one first entered from inside an object or array only shows in the graph of left edges.
 */
function checkLeftRecursion(scope: Scope): void {
  const edges = new Map<string, Array<{ to: string; refAt: string }>>();
  for (const { from, to, refAt } of scope.leftEdges) {
    const list = edges.get(from);
    if (list) list.push({ to, refAt });
    else edges.set(from, [{ to, refAt }]);
  }
  // Depth-first search with an explicit stack (a chain of refs can be thousands long): an edge to a node still open
  // closes a cycle.
  const state = new Map<string, 'open' | 'done'>();
  for (const start of edges.keys()) {
    if (state.has(start)) continue;
    state.set(start, 'open');
    const stack: Array<{ node: string; next: number }> = [{ node: start, next: 0 }];
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const edge = edges.get(top.node)?.[top.next++];
      if (edge === undefined) {
        state.set(top.node, 'done');
        stack.pop();
      } else if (state.get(edge.to) === 'open') {
        throw leftRecursion(edge.refAt, edge.to);
      } else if (!state.has(edge.to)) {
        state.set(edge.to, 'open');
        stack.push({ node: edge.to, next: 0 });
      }
    }
  }
}

function leftRecursion(refAt: string, target: string): UnsupportedSchemaError {
  return new UnsupportedSchemaError(refAt, `'$ref' "#${target}" refers back to itself before any value is written`);
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
