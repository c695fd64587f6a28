/**
 * How many alternatives a schema opens at the position where its value starts. llama.cpp keeps one parse stack per
 * alternative reachable before the next character, and de-duplicates new stacks with a linear search
 * (llama_grammar_advance_stack), so building a grammar and every sampling step grow with the square of that count:
 * an enum of 5,000 strings took 121 ms to compile, 20,000 took 1.3 s. Unions add up (anyOf of enums, and `$ref`s can
 * repeat one large enum many times), so the count is taken over the whole union, refs followed.
 */
import { isObject, refPointer, resolvePointer } from './schema-keywords.js';

/** At 1,000 alternatives llama.cpp compiles in a few ms (enum) to ~70 ms (1,000 optional properties). */
export const MAX_ALTERNATIVES = 1000;

/** Alternatives at the start of a value of each type: typical counts (an integer range has 2–4, rarely more). */
const TYPE_WIDTH: Record<string, number> = { integer: 4, number: 3, boolean: 2, null: 1, string: 1, object: 1, array: 1 };
const ANY_WIDTH = 8;
/** A `$ref` chain longer than this is refused by the converter anyway; the estimate stops following it. */
const MAX_CHAIN = 256;

export class WidthMeter {
  private readonly memo = new Map<object, number>();
  private readonly open = new Set<object>();

  constructor(private readonly root: unknown) {}

  /** Alternatives at the start of a value of `schema`: exact for enums and unions, an estimate for typed values. */
  width(schema: unknown, chain = 0): number {
    if (schema === true) return ANY_WIDTH;
    if (!isObject(schema)) return 1;
    const known = this.memo.get(schema);
    if (known !== undefined) return known;
    // A union that reaches itself again before any character is left recursion, which the converter rejects.
    if (this.open.has(schema) || chain > MAX_CHAIN) return 1;
    this.open.add(schema);
    try {
      const width = Math.min(this.measure(schema, chain) + (schema.nullable === true ? 1 : 0), Number.MAX_SAFE_INTEGER);
      this.memo.set(schema, width);
      return width;
    } finally {
      this.open.delete(schema);
    }
  }

  private measure(schema: Record<string, unknown>, chain: number): number {
    if (Array.isArray(schema.enum)) return schema.enum.length;
    if ('const' in schema) return 1;
    if (typeof schema.$ref === 'string') {
      let target: unknown;
      try {
        target = resolvePointer(this.root, refPointer(schema.$ref, ''));
      } catch {
        return 1;
      }
      return this.width(target, chain + 1);
    }
    for (const key of ['anyOf', 'oneOf', 'allOf'] as const) {
      const branches = schema[key];
      if (Array.isArray(branches)) return branches.reduce<number>((sum, branch) => sum + this.width(branch, chain + 1), 0);
    }
    const type = schema.type;
    if (type === undefined) return ANY_WIDTH;
    const types = Array.isArray(type) ? type : [type];
    return types.reduce<number>((sum, item) => sum + (typeof item === 'string' ? (TYPE_WIDTH[item] ?? 1) : 1), 0);
  }
}
