/**
 * Pure GBNF text helpers for the JSON-Schema converter: literal escaping, the one canonical JSON layout, digit-range
 * expressions for bounded integers, and the fixed rules of the JSON lexicon and string formats.
 */

/** A GBNF string literal. Non-ASCII is written as \u/\U escapes so the grammar text stays ASCII end to end. */
export function gbnfLiteral(text: string): string {
  let out = '"';
  for (const char of text) {
    const code = char.codePointAt(0)!;
    if (char === '"' || char === '\\') out += `\\${char}`;
    else if (char === '\n') out += '\\n';
    else if (char === '\r') out += '\\r';
    else if (char === '\t') out += '\\t';
    else if (code < 0x20 || code === 0x7f) out += `\\x${hex(code, 2)}`;
    else if (code > 0xffff) out += `\\U${hex(code, 8)}`;
    else if (code > 0x7e) out += `\\u${hex(code, 4)}`;
    else out += char;
  }
  return `${out}"`;
}

function hex(code: number, width: number): string {
  return code.toString(16).toUpperCase().padStart(width, '0');
}

/**
 * `value` in the layout Python's json.dumps and Jinja's tojson produce: one space after ':' and ',', nothing else.
 * Generated text is held to exactly this layout, so a literal (const/enum) must be written in it too.
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    const members = Object.entries(value).map(([key, member]) => `${JSON.stringify(key)}: ${canonicalJson(member)}`);
    return `{${members.join(', ')}}`;
  }
  const text = JSON.stringify(value);
  if (text === undefined || (typeof value === 'number' && !Number.isFinite(value))) {
    throw new TypeError(`not a JSON value: ${String(value)}`);
  }
  return text;
}

/** Integers are held to 16 digits: beyond that a JSON number no longer round-trips through a double anyway. */
export const MAX_INTEGER = 10n ** 16n - 1n;

/** An expression for exactly the decimal integers in [lo, hi] (within ±MAX_INTEGER), no leading zeros, no "-0". */
export function integerRange(lo: bigint, hi: bigint): string {
  const alternatives: string[] = [];
  if (lo < 0n) {
    const negative = nonNegativeRange(hi < 0n ? -hi : 1n, -lo);
    alternatives.push(`"-" ${group(negative)}`);
  }
  if (hi >= 0n) alternatives.push(...nonNegativeRange(lo > 0n ? lo : 0n, hi));
  return group(alternatives);
}

/** Alternatives for [lo, hi], 0 ≤ lo ≤ hi: one per digit count, runs of complete digit counts merged. */
function nonNegativeRange(lo: bigint, hi: bigint): string[] {
  const alternatives: string[] = [];
  if (lo === 0n) {
    alternatives.push('"0"');
    lo = 1n;
  }
  if (lo > hi) return alternatives;
  let fullFrom = 0; // first digit count of the current run of complete counts (0: none open)
  const flush = (to: number) => {
    if (fullFrom > 0) alternatives.push(`[1-9]${digits(fullFrom - 1, to - 1)}`);
    fullFrom = 0;
  };
  const last = hi.toString().length;
  for (let count = lo.toString().length; count <= last; count++) {
    const floor = 10n ** BigInt(count - 1);
    const ceiling = 10n ** BigInt(count) - 1n;
    const from = lo > floor ? lo : floor;
    const to = hi < ceiling ? hi : ceiling;
    if (from === floor && to === ceiling) {
      if (fullFrom === 0) fullFrom = count;
      continue;
    }
    flush(count - 1);
    alternatives.push(sameLength(from.toString(), to.toString()));
  }
  flush(last);
  return alternatives;
}

/** Numbers from `lo` to `hi`, both written with the same number of digits (leading zeros kept). */
function sameLength(lo: string, hi: string): string {
  if (lo.length === 0) return '';
  if (lo === hi) return `"${lo}"`;
  const [a, b] = [Number(lo[0]), Number(hi[0])];
  const [loRest, hiRest] = [lo.slice(1), hi.slice(1)];
  if (a === b) return `"${a}" ${sameLength(loRest, hiRest)}`;
  const alternatives: string[] = [];
  const loIsFloor = /^0*$/.test(loRest);
  const hiIsCeiling = /^9*$/.test(hiRest);
  if (!loIsFloor) alternatives.push(`"${a}" ${sameLength(loRest, '9'.repeat(loRest.length))}`);
  const [midLo, midHi] = [loIsFloor ? a : a + 1, hiIsCeiling ? b : b - 1];
  if (midLo <= midHi) alternatives.push(`${digitClass(midLo, midHi)}${digits(loRest.length, loRest.length)}`);
  if (!hiIsCeiling) alternatives.push(`"${b}" ${sameLength('0'.repeat(hiRest.length), hiRest)}`);
  return group(alternatives);
}

function digitClass(lo: number, hi: number): string {
  return lo === hi ? `"${lo}"` : `[${lo}-${hi}]`;
}

/** " [0-9]{min,max}", or "" for none. */
function digits(min: number, max: number): string {
  if (max === 0) return '';
  if (min === max) return min === 1 ? ' [0-9]' : ` [0-9]{${min}}`;
  return ` [0-9]{${min},${max}}`;
}

function group(alternatives: readonly string[]): string {
  return alternatives.length === 1 ? alternatives[0]! : `(${alternatives.join(' | ')})`;
}

/**
 * Fixed rules, by name; a body refers to other fixed rules by their `json-` names. A string char is any Unicode
 * scalar value but '"', '\' and controls, or an escape. Surrogates are out, raw (llama.cpp decodes some malformed
 * UTF-8 to them, or beyond U+10FFFF) and as \u escapes, so each char counted is one code point, as maxLength counts.
 */
export const FIXED_RULES: Record<string, string> = {
  'json-char': '[^"\\\\\\x00-\\x1F\\uD800-\\uDFFF\\U00110000-\\U001FFFFF] | "\\\\" (["\\\\/bfnrt] | "u" ([0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}))',
  'json-string': '"\\"" json-char* "\\""',
  'json-integer': integerRange(-MAX_INTEGER, MAX_INTEGER),
  // No exponent: 1e999 would parse as Infinity.
  'json-number': '"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})?',
  'json-value': 'json-object | json-array | json-string | json-number | "true" | "false" | "null"',
  'json-member': 'json-string ": " json-value',
  'json-object': '"{" (json-member (", " json-member)*)? "}"',
  'json-array': '"[" (json-value (", " json-value)*)? "]"',
  // Day counts per month, and 29 February only in leap years (the check JSON-Schema validators make).
  'json-date': 'json-year "-" json-month-day | json-leap-year "-02-29"',
  'json-year': '[0-9]{4}',
  'json-leap-year': '[0-9]{2} ("0" [48] | [2468] [048] | [13579] [26]) | ("0" [048] | [2468] [048] | [13579] [26]) "00"',
  'json-month-day':
    '("0" [13578] | "1" [02]) "-" (json-day28 | "29" | "3" [01]) | ("0" [469] | "11") "-" (json-day28 | "29" | "30") | "02-" json-day28',
  'json-day28': '"0" [1-9] | "1" [0-9] | "2" [0-8]',
  // RFC 3339 full-time: the offset is required; fractions up to microseconds.
  'json-time': 'json-hour ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ("Z" | [+-] json-hour ":" [0-5] [0-9])',
  'json-hour': '[01] [0-9] | "2" [0-3]',
  'json-date-time': 'json-date "T" json-time',
  'json-uuid': '[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}',
};

/** String formats: the fixed rule for the valid values (without quotes) and the length range of those values. */
export const STRING_FORMATS: Record<string, { rule: string; minLength: number; maxLength: number }> = {
  date: { rule: 'json-date', minLength: 10, maxLength: 10 },
  time: { rule: 'json-time', minLength: 9, maxLength: 21 },
  'date-time': { rule: 'json-date-time', minLength: 20, maxLength: 32 },
  uuid: { rule: 'json-uuid', minLength: 36, maxLength: 36 },
};

/** Numeric formats as integer bounds (float/double constrain nothing JSON numbers do not already). */
export const NUMBER_FORMATS: Record<string, { lo: bigint; hi: bigint } | null> = {
  int32: { lo: -(2n ** 31n), hi: 2n ** 31n - 1n },
  int64: null,
  float: null,
  double: null,
};
