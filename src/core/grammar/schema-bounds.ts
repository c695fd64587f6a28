/**
 * Size and depth bounds on a client's JSON Schema, checked over the whole JSON value (annotations, `default`s,
 * enum/const values and `x-` extensions included) before anything recursive touches it: the GBNF converter, the
 * chat template's `tojson` and canonical JSON all recurse over the schema, so a schema nested thousands deep would
 * overflow the stack there. The walk itself uses an explicit stack.
 */
import { KilnError } from '../../errors/catalog.js';
import { at } from './schema-keywords.js';

/**
 * Real tool and response schemas nest a few schema levels (each is two JSON levels: `properties` → name → schema, or
 * `anyOf` → index → schema); OpenAI's strict mode allows 10. 64 JSON levels leave room for ~30 schema levels and keep
 * every recursion over the schema (converter, canonical JSON, the template's tojson) a few hundred frames deep.
 */
export const DEFAULT_MAX_SCHEMA_DEPTH = 64;
/**
 * Values in one schema, counting every object, array and scalar. OpenAI's strict mode allows 5,000 properties, i.e.
 * 10–15k values with their types and descriptions. Measured on the 2-core dev VM: 25k values (5,000 bounded integer
 * properties) take 2–3 ms to walk here and 45–55 ms to convert once warm (120–250 ms on the first, cold request);
 * the converter's grammar size budget bounds what a schema can cost beyond that.
 */
export const DEFAULT_MAX_SCHEMA_NODES = 20_000;

/**
 * What the converter is safe with whatever the configuration says: larger limits in the config are capped here, so
 * no setting can bring back a stack overflow.
 */
export const HARD_MAX_SCHEMA_DEPTH = 256;
export const HARD_MAX_SCHEMA_NODES = 200_000;

export interface SchemaLimits {
  /** Deepest JSON nesting: the schema itself is depth 0, its members depth 1, … */
  maxDepth?: number;
  /** Most JSON values (objects, arrays and scalars) in the schema. */
  maxNodes?: number;
}

/** The nesting limit in force for a configured one (unset: the default; never past the hard cap). */
export function schemaDepthLimit(configured: number | undefined): number {
  return Math.min(configured ?? DEFAULT_MAX_SCHEMA_DEPTH, HARD_MAX_SCHEMA_DEPTH);
}

interface Frame {
  value: unknown;
  depth: number;
  parent: Frame | undefined;
  key: string | number | undefined;
}

/**
 * Throws KilnError('invalidParameter') naming `param` and the JSON pointer of the first value past a limit. Only
 * plain JSON (as parsed from a request body) is expected; other objects are walked by their own enumerable keys.
 */
export function checkSchemaBounds(schema: unknown, param: string, limits: SchemaLimits = {}): void {
  const maxDepth = schemaDepthLimit(limits.maxDepth);
  const maxNodes = Math.min(limits.maxNodes ?? DEFAULT_MAX_SCHEMA_NODES, HARD_MAX_SCHEMA_NODES);
  const stack: Frame[] = [{ value: schema, depth: 0, parent: undefined, key: undefined }];
  let nodes = 0;
  while (stack.length > 0) {
    const frame = stack.pop()!;
    if (++nodes > maxNodes) {
      throw tooLarge(param, frame, `the schema has more than ${maxNodes} values (objects, arrays and scalars)`);
    }
    const { value } = frame;
    if (typeof value !== 'object' || value === null) continue;
    const keys: ReadonlyArray<string | number> = Array.isArray(value) ? value.map((_, index) => index) : Object.keys(value);
    if (keys.length === 0) continue;
    if (frame.depth >= maxDepth) throw tooLarge(param, frame, `the schema nests deeper than ${maxDepth} levels`);
    // Checked before pushing, so a container of a million members is refused without a million frames.
    if (nodes + stack.length + keys.length > maxNodes) {
      throw tooLarge(param, frame, `the schema has more than ${maxNodes} values (objects, arrays and scalars)`);
    }
    // Pushed in reverse, so values are visited (and the first one past a limit reported) in document order.
    for (let index = keys.length - 1; index >= 0; index--) {
      const key = keys[index]!;
      stack.push({ value: (value as Record<string | number, unknown>)[key], depth: frame.depth + 1, parent: frame, key });
    }
  }
}

function tooLarge(param: string, frame: Frame, reason: string): KilnError {
  const pointer = pointerOf(frame) || '/';
  return new KilnError('invalidParameter', { param, message: `Invalid schema for '${param}' at '${pointer}': ${reason}.` });
}

function pointerOf(frame: Frame): string {
  const keys: Array<string | number> = [];
  for (let current: Frame | undefined = frame; current?.key !== undefined; current = current.parent) keys.push(current.key);
  return at('', ...keys.reverse());
}
