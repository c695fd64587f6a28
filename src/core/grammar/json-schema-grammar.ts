/**
 * JSON Schema → GBNF (llama.cpp grammar), written for Kiln rather than taken from llama.cpp or node-llama-cpp: those
 * converters drop `required`, widen unknown schemas, and allow free whitespace, which a random or weak model uses to
 * fill max_tokens. Here every value is written in one canonical layout (json.dumps's `{"a": 1, "b": [1, 2]}`), and a
 * keyword the grammar cannot enforce is an UnsupportedSchemaError, never silently dropped.
 */
import { arrayRule, objectRule } from './container-rules.js';
import { FIXED_RULES, gbnfLiteral, NUMBER_FORMATS, STRING_FORMATS } from './gbnf-text.js';
import { checkLeftRecursion, leftRecursion, type LeftEdge } from './left-recursion.js';
import { integerRule, literalRule, numberRule, schemaTypes, stringRule, type ScalarSink } from './scalar-rules.js';
import {
  at, COMBINATORS, isAnnotation, isObject, refPointer, resolvePointer, SUPPORTED, UnsupportedSchemaError, type JsonType, type Schema,
} from './schema-keywords.js';
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
 * cache). Real tool schemas need a few KB to ~100 KB. What is built counts even when an identical rule is reused, so
 * the budget also bounds the conversion's own work.
 */
export const MAX_GRAMMAR_SIZE = 1_000_000;
const EXPANDED_RULE_SIZE = 16;

interface Scope {
  root: unknown;
  /** Rule names of the `$ref` targets compiled so far, by JSON pointer. */
  refs: Map<string, string>;
  /** Target `from` may begin with target `to` (nothing written before it); a cycle here is left recursion. */
  leftEdges: LeftEdge[];
  meter: WidthMeter;
}
/** The `$ref` targets entered, in order, since the last character the grammar writes. */
type LeftRefs = readonly string[];
const NO_LEFT: LeftRefs = [];

/** Builds one GBNF grammar out of several pieces; rule names are unique and safe ([a-z0-9-]+). */
export class GbnfBuilder implements ScalarSink {
  private readonly rules = new Map<string, string | undefined>([['root', undefined]]);
  private readonly scopes = new Map<unknown, Scope>();
  /** Next free numeric suffix per base name (probing from 2 each time is quadratic over thousands of like names). */
  private readonly suffixes = new Map<string, number>();
  /**
   * Rules added by addRule, by body: an identical body reuses the rule (a subschema repeated in many properties, the
   * blocks of long strings), which keeps the grammar and llama.cpp's expansion of it small.
   */
  private readonly bodies = new Map<string, string>();
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
    checkLeftRecursion(scope.leftEdges);
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
    const known = this.bodies.get(body);
    if (known !== undefined) return known;
    const name = this.reserve(nameHint);
    this.define(name, body);
    this.bodies.set(body, name);
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
  fixed(name: string): string {
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
        const message = `the grammar for the schema grows too large here (over ${MAX_GRAMMAR_SIZE} units, about that many bytes of GBNF)`;
        throw new UnsupportedSchemaError(pointer, message);
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
      const message =
        `the schema allows more than ${MAX_ALTERNATIVES} alternatives where its value starts ` +
        "(enum values and anyOf/oneOf branches, '$ref's followed)";
      throw new UnsupportedSchemaError(pointer, message);
    }

    if ('enum' in schema || 'const' in schema) return literalRule(this, schema, pointer, hint);
    const combinator = COMBINATORS.find((key) => key in schema);
    if (combinator !== undefined) {
      const sibling = Object.keys(schema).find((key) => key !== combinator && key !== 'nullable' && !isAnnotation(key));
      if (sibling !== undefined) {
        throw new UnsupportedSchemaError(at(pointer, sibling), `'${sibling}' alongside '${combinator}' is not supported`);
      }
      const inner = this.combinator(schema, combinator, pointer, scope, left, hint);
      return nullable ? `${inner} | "null"` : inner;
    }

    const types = schemaTypes(schema, pointer);
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

  private typed(type: JsonType, schema: Schema, pointer: string, scope: Scope, hint: string): string {
    switch (type) {
      case 'null':
        return '"null"';
      case 'boolean':
        return '("true" | "false")';
      case 'string':
        return stringRule(this, schema, pointer, hint);
      case 'integer':
        return integerRule(this, schema, pointer, hint);
      case 'number':
        // ajv-formats' int32/int64 only accept integers, whatever the type.
        return schema.format === 'int32' || schema.format === 'int64' ? integerRule(this, schema, pointer, hint) : numberRule(this, schema, pointer);
      case 'object':
        return objectRule(this, schema, pointer, (sub, at, subHint) => this.value(sub, at, scope, subHint), hint);
      case 'array':
        return arrayRule(this, schema, pointer, (sub, at, subHint) => this.value(sub, at, scope, subHint), hint);
    }
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
