/**
 * The GBNF shapes of JSON containers: object members in order with optional ones left out, arrays with a prefix of
 * positional items, and bounded repetition. Built without recursion over members or items, and written for two
 * limits of llama.cpp's GBNF parser (llama-grammar.cpp, parse_sequence):
 * - a repetition (`?`, `*`, `{m,n}`) of a parenthesized group fails with "number of rules that are going to be
 *   repeated … exceeds sane defaults" once (symbols created while parsing the group) × (repetition count) ≥ 2000.
 *   Symbols created include nested groups, the rules each nested repetition expands into, and every rule name
 *   mentioned there for the first time in the text. So a repetition is only ever applied to a rule name (counting 1),
 *   never to a group of unbounded size (3,000 optional properties or 5,000 prefix items in one optional group fail).
 * - `{m}` and `{m,n}` with m or n above 2000 are rejected or widened to "unbounded"; larger counts go through
 *   blocks (a rule of REPEAT_BLOCK items), which keeps every count at most MAX_DIRECT_REPEAT.
 */

/** Where the layout adds its rules (the GbnfBuilder). */
export interface RuleSink {
  /** Adds `hint… ::= body` under a fresh name and returns that name. */
  addRule(hint: string, body: string): string;
  /** `expression` itself when it already is a rule name, else a new rule for it. */
  named(hint: string, expression: string): string;
  /** Records the rules llama.cpp expands a repetition into, for the grammar's size budget. */
  expand(count: number): void;
}

/** Counts above this go through blocks: llama.cpp expands a `{0,n}` into n rules, so a small n keeps grammars cheap. */
const MAX_DIRECT_REPEAT = 100;
const REPEAT_BLOCK = 100;

export interface Member {
  text: string;
  required: boolean;
}

/** `expression` made optional, through a rule name (see the file comment). */
export function optional(sink: RuleSink, hint: string, expression: string): string {
  return `${sink.named(hint, expression)}?`;
}

/**
 * `{…}` with the members in order, each optional one present or not, commas only between present ones. Built from
 * the end: tail(i) is members i.. each preceded by ", " (something came before); the object opens with any member
 * up to the first required one, followed by the tail after it.
 */
export function objectMembers(sink: RuleSink, members: readonly Member[], hint: string): string {
  const tails: string[] = new Array<string>(members.length + 1);
  tails[members.length] = '';
  let allRequired = true;
  for (let index = members.length - 1; index >= 0; index--) {
    const item = members[index]!;
    const next = tails[index + 1]!;
    if (allRequired && item.required) {
      tails[index] = spaced(`", " ${item.text}`, next);
    } else {
      allRequired = false;
      const first = item.required ? `", " ${item.text}` : optional(sink, `${hint}-member`, `", " ${item.text}`);
      tails[index] = sink.addRule(`${hint}-tail`, spaced(first, next));
    }
  }
  const openings: string[] = [];
  let allOptional = true;
  for (let index = 0; index < members.length; index++) {
    openings.push(spaced(members[index]!.text, tails[index + 1]!));
    if (members[index]!.required) {
      allOptional = false;
      break;
    }
  }
  const body = openings.join(' | ');
  if (allOptional) return `"{" ${optional(sink, `${hint}-members`, body)} "}"`;
  return `"{" ${openings.length === 1 ? body : `(${body})`} "}"`;
}

/**
 * `[…]` with `items` (rule names) at the first positions, then `rest` (a rule name; '' when there is none), between
 * `lo` and `hi` (undefined: no limit) items in all. `hi` does not exceed items.length when `rest` is ''.
 */
export function arrayItems(
  sink: RuleSink,
  items: readonly string[],
  rest: string,
  lo: number,
  hi: number | undefined,
  hint: string,
): string {
  const element = (index: number) => (index < items.length ? items[index]! : rest);
  // after(i): items i.. each preceded by ", ", given i items are already written; built from the last position.
  const start = Math.max(items.length, 1);
  let after = '';
  if (hi === undefined || hi > start) {
    const more = sink.named(`${hint}-more`, `", " ${rest}`);
    after = repeat(sink, more, Math.max(lo - start, 0), hi === undefined ? undefined : hi - start, `${hint}-items`);
  }
  const last = hi === undefined ? items.length : Math.min(hi, items.length);
  for (let index = last - 1; index >= 1; index--) {
    const part = spaced(`", " ${element(index)}`, after);
    after = index < lo ? part : optional(sink, `${hint}-after`, part);
  }
  const body = spaced(element(0), after);
  return lo > 0 ? `"[" ${body} "]"` : `"[" ${optional(sink, `${hint}-body`, body)} "]"`;
}

/**
 * `item` (a rule name) repeated min..max times (max undefined: no limit). Large counts go through blocks of
 * REPEAT_BLOCK items, so llama.cpp never sees a bound it would widen or expand into thousands of rules.
 */
export function repeat(sink: RuleSink, item: string, min: number, max: number | undefined, hint: string): string {
  const blocks = new Map<string, string>();
  const block = (atom: string): string => {
    let name = blocks.get(atom);
    if (name === undefined) {
      sink.expand(REPEAT_BLOCK);
      blocks.set(atom, (name = sink.addRule(`${hint}-block`, `${atom}{${REPEAT_BLOCK}}`)));
    }
    return name;
  };
  // Recursion here is over the digits of the count in base REPEAT_BLOCK: at most 8 levels for 2^53.
  const exact = (atom: string, times: number): string => {
    if (times === 0) return '';
    if (times === 1) return atom;
    if (times <= MAX_DIRECT_REPEAT) {
      sink.expand(times);
      return `${atom}{${times}}`;
    }
    return `${exact(block(atom), Math.floor(times / REPEAT_BLOCK))} ${exact(atom, times % REPEAT_BLOCK)}`.trim();
  };
  // 0..most times: fewer than q whole blocks then 0..99 more, or exactly q blocks then 0..r more.
  const upTo = (atom: string, most: number): string => {
    if (most === 0) return '';
    if (most === 1) return `${atom}?`;
    if (most <= MAX_DIRECT_REPEAT) {
      sink.expand(most);
      return `${atom}{0,${most}}`;
    }
    const [q, r] = [Math.floor(most / REPEAT_BLOCK), most % REPEAT_BLOCK];
    sink.expand(REPEAT_BLOCK);
    const fewer = `${upTo(block(atom), q - 1)} ${atom}{0,${REPEAT_BLOCK - 1}}`.trim();
    const full = `${exact(block(atom), q)} ${upTo(atom, r)}`.trim();
    return `(${fewer} | ${full})`;
  };
  if (max === undefined) return `${exact(item, min)} ${item}*`.trim();
  return `${exact(item, min)} ${upTo(item, max - min)}`.trim();
}

/** `a b`, or `a` when b is empty. (Not trim(): that copies the whole text, quadratic over thousands of members.) */
function spaced(a: string, b: string): string {
  return b === '' ? a : `${a} ${b}`;
}
