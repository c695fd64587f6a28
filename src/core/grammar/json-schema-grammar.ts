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

export { UnsupportedSchemaError } from './schema-keywords.js';

/** llama.cpp turns a repetition bound above 2000 into "unbounded", and expands {0,n} into n rules: stay well below. */
const MAX_DIRECT_REPEAT = 1000;
const REPEAT_BLOCK = 100;

interface Scope {
  root: unknown;
  /** Rule names of the `$ref` targets compiled so far, by JSON pointer. */
  refs: Map<string, string>;
  /** Target `from` may begin with target `to` (nothing written before it); a cycle here is left recursion. */
  leftEdges: Array<{ from: string; to: string; refAt: string }>;
}
/** The `$ref` targets entered, in order, since the last character the grammar writes. */
type LeftRefs = readonly string[];
const NO_LEFT: LeftRefs = [];

/** Builds one GBNF grammar out of several pieces; rule names are unique and safe ([a-z0-9-]+). */
export class GbnfBuilder {
  private readonly rules = new Map<string, string | undefined>([['root', undefined]]);
  private readonly scopes = new Map<unknown, Scope>();
  private readonly blocks = new Map<string, string>();

  /**
   * Adds the rules for values of `schema` (a JSON Schema object or boolean); returns a rule *name* matching exactly
   * those values. Throws UnsupportedSchemaError. `$ref`s resolve against `schema` itself unless `root` is given (the
   * document the refs point into; errors then point into `schema` itself).
   */
  addSchema(schema: unknown, nameHint: string, root?: unknown): string {
    const document = root ?? schema;
    let scope = this.scopes.get(document);
    if (!scope) this.scopes.set(document, (scope = { root: document, refs: new Map(), leftEdges: [] }));
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
    this.rules.set(name, body);
    return name;
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
    for (let n = 2; this.rules.has(name); n++) name = `${base}-${n}`;
    this.rules.set(name, undefined);
    return name;
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

  /** `expression` as a rule name: itself when it already is one. */
  private named(nameHint: string, expression: string): string {
    return this.rules.has(expression) ? expression : this.addRule(nameHint, expression);
  }

  // ---- schemas ----

  /** A rule for values of a subschema written after something else (an object key, an array's "[" or ", "). */
  private value(schema: unknown, pointer: string, scope: Scope, hint: string): string {
    return this.named(hint, this.compile(schema, pointer, scope, NO_LEFT, hint));
  }

  private compile(schema: unknown, pointer: string, scope: Scope, left: LeftRefs, hint: string): string {
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
    this.rules.set(name, this.compile(schema, target, scope, [...left, target], name));
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
    return this.named(`${hint}-string`, `"\\"" ${this.repeat(this.fixed('json-char'), minLength, maxLength, `${hint}-chars`)} "\\""`);
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
    const members: Array<{ text: string; required: boolean }> = [];
    const member = (name: string, value: string, isRequired: boolean) =>
      members.push({ text: `${gbnfLiteral(`${JSON.stringify(name)}: `)} ${value}`, required: isRequired });
    for (const [name, propertySchema] of Object.entries(properties)) {
      const isRequired = required.includes(name);
      // A property whose schema is false may only be absent.
      if (propertySchema === false && !isRequired) continue;
      const propertyHint = `${hint}-${name}`;
      member(name, this.value(propertySchema, at(pointer, 'properties', name), scope, propertyHint), isRequired);
    }
    // Required but undeclared: the value is whatever additionalProperties allows.
    for (const name of new Set(required as string[])) {
      if (Object.hasOwn(properties, name)) continue;
      if (extra === false) {
        throw new UnsupportedSchemaError(at(pointer, 'required'), `required property ${JSON.stringify(name)} is not allowed by 'additionalProperties'`);
      }
      member(name, isObject(extra) ? this.value(extra, at(pointer, 'additionalProperties'), scope, `${hint}-${name}`) : this.anyValue(), true);
    }
    if (members.length === 0) {
      // A map of string keys only when additional properties are asked for; without it, `{}` is the one valid choice.
      if (extra === undefined || extra === false) return '"{}"';
      const value = extra === true ? this.anyValue() : this.value(extra, at(pointer, 'additionalProperties'), scope, `${hint}-value`);
      const entry = this.addRule(`${hint}-entry`, `${this.fixed('json-string')} ": " ${value}`);
      return `"{" (${entry} (", " ${entry})*)? "}"`;
    }
    return this.members(members, hint);
  }

  /**
   * `{…}` with the members in order, each optional one present or not, commas only between present ones. Built from
   * the end: tail(i) is members i.. each preceded by ", " (something came before); the object opens with any member
   * up to the first required one, followed by the tail after it.
   */
  private members(members: ReadonlyArray<{ text: string; required: boolean }>, hint: string): string {
    const tails = new Map<number, string>();
    const tail = (from: number): string => {
      const rest = members.slice(from);
      if (rest.every((item) => item.required)) return rest.map((item) => `", " ${item.text}`).join(' ');
      let name = tails.get(from);
      if (name === undefined) {
        const item = members[from]!;
        const first = item.required ? `", " ${item.text}` : `(", " ${item.text})?`;
        name = this.addRule(`${hint}-tail`, `${first} ${tail(from + 1)}`.trim());
        tails.set(from, name);
      }
      return name;
    };
    const openings: string[] = [];
    let allOptional = true;
    for (let index = 0; index < members.length; index++) {
      openings.push(`${members[index]!.text} ${tail(index + 1)}`.trim());
      if (members[index]!.required) {
        allOptional = false;
        break;
      }
    }
    const body = `(${openings.join(' | ')})`;
    return `"{" ${body}${allOptional ? '?' : ''} "}"`;
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
    const element = (index: number) => (index < items.length ? items[index]! : restRule);
    // after(i): items i.. each preceded by ", ", given i items are already written.
    const after = (index: number): string => {
      if (hi !== undefined && index >= hi) return '';
      if (index >= items.length) {
        return this.repeat(`(", " ${restRule})`, Math.max(lo - index, 0), hi === undefined ? undefined : hi - index, `${hint}-items`);
      }
      const part = `", " ${element(index)} ${after(index + 1)}`.trim();
      return index < lo ? part : `(${part})?`;
    };
    const body = `${element(0)} ${after(1)}`.trim();
    return lo > 0 ? `"[" ${body} "]"` : `"[" (${body})? "]"`;
  }

  /**
   * `item` repeated min..max times (max undefined: no limit). Large counts go through blocks of REPEAT_BLOCK items,
   * so llama.cpp never sees a bound it would widen or expand into thousands of rules.
   */
  private repeat(item: string, min: number, max: number | undefined, hint: string): string {
    const exact = (atom: string, times: number): string => {
      if (times === 0) return '';
      if (times === 1) return atom;
      if (times <= MAX_DIRECT_REPEAT) return `${atom}{${times}}`;
      const block = this.block(atom, hint);
      return `${exact(block, Math.floor(times / REPEAT_BLOCK))} ${exact(atom, times % REPEAT_BLOCK)}`.trim();
    };
    // 0..most times: fewer than q whole blocks then 0..99 more, or exactly q blocks then 0..r more.
    const upTo = (atom: string, most: number): string => {
      if (most === 0) return '';
      if (most <= MAX_DIRECT_REPEAT) return most === 1 ? `${atom}?` : `${atom}{0,${most}}`;
      const block = this.block(atom, hint);
      const [q, r] = [Math.floor(most / REPEAT_BLOCK), most % REPEAT_BLOCK];
      const fewer = `${upTo(block, q - 1)} ${atom}{0,${REPEAT_BLOCK - 1}}`.trim();
      const full = `${exact(block, q)} ${upTo(atom, r)}`.trim();
      return `(${fewer} | ${full})`;
    };
    if (max === undefined) return `${exact(item, min)} ${item}*`.trim();
    return `${exact(item, min)} ${upTo(item, max - min)}`.trim();
  }

  /** The rule for REPEAT_BLOCK of `atom`, shared by every repetition of that atom. */
  private block(atom: string, hint: string): string {
    let name = this.blocks.get(atom);
    if (name === undefined) this.blocks.set(atom, (name = this.addRule(`${hint}-block`, `${atom}{${REPEAT_BLOCK}}`)));
    return name;
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
  for (const { from, to, refAt } of scope.leftEdges) edges.set(from, [...(edges.get(from) ?? []), { to, refAt }]);
  const state = new Map<string, 'open' | 'done'>();
  const visit = (node: string): void => {
    state.set(node, 'open');
    for (const { to, refAt } of edges.get(node) ?? []) {
      if (state.get(to) === 'open') throw leftRecursion(refAt, to);
      if (!state.has(to)) visit(to);
    }
    state.set(node, 'done');
  };
  for (const node of edges.keys()) if (!state.has(node)) visit(node);
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
