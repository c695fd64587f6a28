/**
 * The prompt cache's prefix index: the longest whole entry that begins a prompt, least-recently-used eviction under a
 * byte budget, pinned entries kept, and a tree that shrinks back as entries go. A property test compares it with a
 * plain list scanned linearly; a micro-measure reports what a lookup costs at the size the cache is meant for.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { PrefixIndex, type CachedPrefix, type PrefixLease, type RemovalReason } from '../../src/engines/llama/prompt-cache/prefix-index.js';

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

/** An index whose evictions are logged as `value:reason`, and whose clock is a counter. */
function indexOf(budgetBytes = 1000) {
  const evicted: string[] = [];
  let clock = 0;
  const index = new PrefixIndex<string>({ budgetBytes, onEvict: (entry, reason) => evicted.push(`${entry.value}:${reason}`), now: () => ++clock });
  return { index, evicted };
}

const valuesOf = <T>(index: PrefixIndex<T>) => [...index.entries()].map((entry) => entry.value);

test('the longest of nested entries that begins the prompt is found; an entry longer than the prompt is not', () => {
  const { index } = indexOf();
  index.insert([1, 2, 3], 'system', 10);
  index.insert([1, 2, 3, 4, 5, 6], 'turn 1', 10);
  index.insert([1, 2, 3, 4, 5, 6, 7, 8, 9], 'turn 2', 10);
  index.insert([1, 2, 7], 'other', 10);
  assert.equal(index.longestPrefix([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])?.entry.value, 'turn 2');
  assert.deepEqual(index.longestPrefix([1, 2, 3, 4, 5, 6, 7, 8, 9]), { entry: [...index.entries()].at(-1), length: 9 });
  assert.equal(index.longestPrefix([1, 2, 3, 4, 5, 6, 7, 0])?.entry.value, 'turn 1');
  // Turn 2's state covers tokens this prompt does not have: it cannot serve it, even though 8 tokens agree.
  assert.equal(index.longestPrefix([1, 2, 3, 4, 5, 6, 7, 8])?.length, 6);
  assert.equal(index.longestPrefix([1, 2, 3, 4, 5])?.entry.value, 'system');
  assert.equal(index.longestPrefix([1, 2, 7, 7])?.entry.value, 'other');
  assert.equal(index.longestPrefix([1, 2]), undefined);
  assert.equal(index.longestPrefix([2, 3]), undefined);
  assert.equal(index.longestPrefix([]), undefined);
  assert.equal(index.longestPrefix(new Uint32Array([1, 2, 3, 9]))?.entry.value, 'system');
});

test('a match shorter than minLength is not returned, and then is not touched', () => {
  const { index } = indexOf(20);
  index.insert([1, 2, 3], 'short', 10);
  index.insert([5, 6, 7, 8], 'other', 10);
  assert.equal(index.longestPrefix([1, 2, 3, 4], 4), undefined);
  assert.equal(index.longestPrefix([1, 2, 3, 4], 3)?.entry.value, 'short');
  assert.equal(index.longestPrefix([1, 2, 3, 4], 0)?.entry.value, 'short');
  index.longestPrefix([5, 6, 7, 8]);
  assert.equal(index.longestPrefix([1, 2, 3, 4], 5), undefined);
  assert.deepEqual(valuesOf(index), ['short', 'other'], 'the refused lookup did not make "short" recent');
});

test('inserting the same tokens again replaces the entry and reports the old one as replaced', () => {
  const { index, evicted } = indexOf();
  const tokens = [4, 5, 6];
  const first = index.insert(tokens, 'first', 100);
  tokens[0] = 9; // the caller's array is copied
  index.insert([4, 5, 6], 'second', 30);
  assert.deepEqual(evicted, ['first:replaced']);
  assert.equal(index.size, 1);
  assert.equal(index.bytes, 30);
  assert.equal(index.longestPrefix([4, 5, 6, 7])?.entry.value, 'second');
  assert.equal(index.delete(first!), false, 'the replaced entry is no longer in the index');
  assert.deepEqual([...index.entries()][0]!.tokens, new Uint32Array([4, 5, 6]));
});

test('eviction takes the least recently used first, and a lookup makes an entry recent', () => {
  const { index, evicted } = indexOf(30);
  index.insert([1], 'a', 10);
  index.insert([2], 'b', 10);
  index.insert([3], 'c', 10);
  index.longestPrefix([1, 5]);
  assert.deepEqual(valuesOf(index), ['b', 'c', 'a']);
  index.insert([4], 'd', 10);
  assert.deepEqual(evicted, ['b:budget']);
  index.insert([5], 'e', 20);
  assert.deepEqual(evicted, ['b:budget', 'c:budget', 'a:budget']);
  assert.deepEqual(valuesOf(index), ['d', 'e']);
  const e = [...index.entries()][1]!;
  assert.ok(e.lastUsed > [...index.entries()][0]!.lastUsed);
});

test('the total stays within budget after every insert; an entry larger than the budget is refused and changes nothing', () => {
  const { index, evicted } = indexOf(100);
  for (let i = 0; i < 50; i++) {
    assert.ok(index.insert([i % 7, i], `v${i}`, (i * 37) % 60));
    assert.ok(index.bytes <= 100, `${index.bytes} bytes after insert ${i}`);
  }
  const before = valuesOf(index);
  const bytes = index.bytes;
  assert.equal(index.insert([1, 2], 'huge', 101), undefined);
  assert.deepEqual(valuesOf(index), before);
  assert.equal(index.bytes, bytes);
  assert.ok(!evicted.includes('huge:budget'), 'a refused value was never the index’s, so it is not reported');
  assert.ok(index.insert([1, 2], 'exactly the budget', 100));
  assert.deepEqual(valuesOf(index), ['exactly the budget']);
  assert.throws(() => index.insert([], 'empty', 1), RangeError);
  assert.throws(() => index.insert([1], 'negative', -1), RangeError);
  assert.throws(() => index.insert([-1], 'not a token', 1), RangeError);
  assert.throws(() => index.insert([1.5], 'not a token', 1), RangeError);
  assert.throws(() => new PrefixIndex({ budgetBytes: Number.NaN }), RangeError);
});

test('pinned entries are not evicted; a new entry that cannot fit beside them is refused', () => {
  const { index, evicted } = indexOf(30);
  const a = index.insert([1], 'a', 10)!;
  index.insert([2], 'b', 10);
  const lease = index.pin(a);
  index.insert([3], 'c', 10);
  index.insert([4], 'd', 10);
  assert.deepEqual(evicted, ['b:budget']);
  assert.equal(index.insert([5], 'too big beside a', 21), undefined);
  assert.ok(index.insert([5], 'fits beside a', 20));
  assert.deepEqual(valuesOf(index), ['a', 'fits beside a']);
  lease.release();
  const again = index.pin(a);
  lease.release(); // a lease ends once: releasing it twice does not end someone else's
  index.insert([6], 'f', 20);
  assert.deepEqual(valuesOf(index), ['a', 'f']);
  const other = index.pin(a);
  again.release();
  index.insert([7], 'g', 10);
  assert.deepEqual(valuesOf(index), ['a', 'g'], 'a second lease keeps "a" pinned after the first ends');
  other.release();
  index.insert([8], 'h', 20);
  assert.deepEqual(valuesOf(index), ['g', 'h'], 'once released, "a" is the least recently used and goes first');
});

test('an entry deleted or replaced while leased leaves the lookup at once, and is reported when the lease ends', () => {
  const { index, evicted } = indexOf(30);
  const a = index.insert([1, 2], 'a', 10)!;
  const lease = index.pin(a);
  assert.equal(index.delete(a), true);
  assert.equal(index.longestPrefix([1, 2, 3]), undefined);
  assert.equal(index.size, 0);
  assert.equal(index.bytes, 10, 'its state is still being read, so its bytes are still held');
  assert.deepEqual(evicted, []);
  assert.equal(index.insert([3], 'too big while a is read', 21), undefined);
  lease.release();
  assert.deepEqual(evicted, ['a:deleted']);
  assert.equal(index.bytes, 0);

  const b = index.insert([1, 2], 'b', 10)!;
  const reading = index.pin(b);
  index.insert([1, 2], 'b again', 15);
  assert.equal(index.longestPrefix([1, 2])?.entry.value, 'b again');
  assert.equal(index.bytes, 25);
  assert.throws(() => index.pin(b), /only an entry in this index/);
  reading.release();
  assert.deepEqual(evicted, ['a:deleted', 'b:replaced']);
  assert.equal(index.bytes, 15);
  assert.equal(index.delete(b), false);
});

test('onEvict runs once per entry, after the index is consistent', () => {
  const seen: Array<{ value: number; size: number; bytes: number }> = [];
  const index: PrefixIndex<number> = new PrefixIndex<number>({
    budgetBytes: 50,
    onEvict: (entry) => seen.push({ value: entry.value, size: index.size, bytes: index.bytes }),
  });
  for (let i = 0; i < 20; i++) index.insert([i, i + 1], i, 10);
  assert.deepEqual(seen.map((call) => call.value), range(0, 15));
  assert.ok(seen.every((call) => call.size <= 5 && call.bytes <= 50));
});

test('the tree shrinks back: nodes split for shared prefixes are merged or dropped as entries go', () => {
  const { index } = indexOf(10_000);
  const entries = [
    index.insert([1, 2, 3, 4], 'a', 1)!,
    index.insert([1, 2, 3, 5], 'b', 1)!,
    index.insert([1, 2], 'c', 1)!,
    index.insert([1, 2, 3, 4, 6, 7], 'd', 1)!,
    index.insert([8], 'e', 1)!,
  ];
  // [1 2] (c) → [3] → [4] (a) → [6 7] (d); [3] → [5] (b); [8] (e)
  assert.equal(index.nodeCount, 6);
  index.delete(entries[2]!);
  // [1 2] has no entry but forks into nothing else than [3]: merged to [1 2 3].
  assert.equal(index.nodeCount, 5);
  index.delete(entries[1]!);
  // [1 2 3] → [4] folded into [1 2 3 4] (a).
  assert.equal(index.nodeCount, 3);
  assert.equal(index.longestPrefix([1, 2, 3, 4, 6, 7, 9])?.entry.value, 'd');
  assert.equal(index.longestPrefix([1, 2, 3, 4, 6])?.entry.value, 'a');
  index.delete(entries[0]!);
  index.delete(entries[3]!);
  index.delete(entries[4]!);
  assert.equal(index.nodeCount, 0);

  const small = indexOf(100).index;
  for (let i = 0; i < 2000; i++) small.insert([i % 3, i % 5, i % 11, i], `${i}`, 10);
  assert.ok(small.nodeCount <= 2 * small.size, `${small.nodeCount} nodes for ${small.size} entries`);
  for (const entry of [...small.entries()]) small.delete(entry);
  assert.equal(small.nodeCount, 0);
  assert.equal(small.bytes, 0);
});

/** The same contract as a plain list, least recently used first, scanned linearly. */
class ReferenceIndex {
  entries: Array<{ tokens: number[]; value: number; bytes: number; leases: number }> = [];
  held = 0;
  evicted: string[] = [];
  private leased = new Set<{ tokens: number[]; value: number; bytes: number; leases: number; removedAs?: RemovalReason }>();
  constructor(readonly budget: number) {}

  private get pinned() {
    return [...this.leased].reduce((sum, entry) => sum + entry.bytes, 0);
  }

  private drop(entry: ReferenceIndex['entries'][number], reason: RemovalReason) {
    this.entries.splice(this.entries.indexOf(entry), 1);
    if (entry.leases > 0) Object.assign(entry, { removedAs: reason });
    else {
      this.held -= entry.bytes;
      this.evicted.push(`${entry.value}:${reason}`);
    }
  }

  insert(tokens: number[], value: number, bytes: number) {
    if (bytes + this.pinned > this.budget) return false;
    const same = this.entries.find((entry) => entry.tokens.join() === tokens.join());
    if (same) this.drop(same, 'replaced');
    const entry = { tokens, value, bytes, leases: 0 };
    this.entries.push(entry);
    this.held += bytes;
    for (const old of [...this.entries]) {
      if (this.held <= this.budget) break;
      if (old !== entry && old.leases === 0) this.drop(old, 'budget');
    }
    return true;
  }

  longestPrefix(prompt: number[], minLength: number) {
    const matches = this.entries.filter((entry) => entry.tokens.length <= prompt.length && entry.tokens.every((token, i) => token === prompt[i]));
    const best = matches.sort((x, y) => y.tokens.length - x.tokens.length)[0];
    if (!best || best.tokens.length < minLength) return undefined;
    this.entries.splice(this.entries.indexOf(best), 1);
    this.entries.push(best);
    return best;
  }

  delete(entry: ReferenceIndex['entries'][number]) {
    this.drop(entry, 'deleted');
  }

  pin(entry: ReferenceIndex['entries'][number]) {
    entry.leases++;
    this.leased.add(entry);
    return () => {
      if (--entry.leases > 0) return;
      this.leased.delete(entry);
      const removedAs = (entry as { removedAs?: RemovalReason }).removedAs;
      if (removedAs) {
        this.held -= entry.bytes;
        this.evicted.push(`${entry.value}:${removedAs}`);
      }
    };
  }
}

const tokenLists = (maxLength: number) => fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 1, maxLength });
const operation = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('insert' as const), tokens: tokenLists(7), bytes: fc.integer({ min: 0, max: 60 }) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('lookup' as const), tokens: fc.array(fc.integer({ min: 0, max: 2 }), { maxLength: 9 }), minLength: fc.nat(4) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('delete' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('pin' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }) },
);

test('property: random inserts, lookups, deletes and leases agree with a linear scan over a list', () => {
  fc.assert(
    fc.property(fc.integer({ min: 40, max: 200 }), fc.array(operation, { maxLength: 80 }), (budget, operations) => {
      const evicted: string[] = [];
      const index = new PrefixIndex<number>({ budgetBytes: budget, onEvict: (entry, reason) => evicted.push(`${entry.value}:${reason}`) });
      const reference = new ReferenceIndex(budget);
      const leases: Array<[PrefixLease, () => void]> = [];
      let nextValue = 0;
      for (const step of operations) {
        const listed = [...index.entries()];
        switch (step.kind) {
          case 'insert': {
            const value = nextValue++;
            assert.equal(index.insert(step.tokens, value, step.bytes) !== undefined, reference.insert(step.tokens, value, step.bytes));
            break;
          }
          case 'lookup': {
            const found = index.longestPrefix(step.tokens, step.minLength);
            const expected = reference.longestPrefix(step.tokens, step.minLength);
            assert.equal(found?.entry.value, expected?.value);
            assert.equal(found?.length, expected?.tokens.length);
            break;
          }
          case 'delete':
          case 'pin': {
            if (listed.length === 0) break;
            const entry = listed[step.pick % listed.length]!;
            const twin = reference.entries[step.pick % listed.length]!;
            if (step.kind === 'delete') {
              index.delete(entry);
              reference.delete(twin);
            } else leases.push([index.pin(entry), reference.pin(twin)]);
            break;
          }
          case 'release': {
            if (leases.length === 0) break;
            const [lease, twin] = leases.splice(step.pick % leases.length, 1)[0]!;
            lease.release();
            twin();
            break;
          }
        }
        assert.deepEqual(valuesOf(index), reference.entries.map((entry) => entry.value));
        assert.deepEqual(evicted, reference.evicted);
        assert.equal(index.bytes, reference.held);
        assert.ok(index.bytes <= budget);
        // Every node holds an entry or forks: a tree of n entries has at most 2n − 1 nodes besides the root.
        assert.ok(index.nodeCount <= Math.max(0, 2 * index.size - 1), `${index.nodeCount} nodes for ${index.size} entries`);
        for (const entry of index.entries()) assert.deepEqual([...entry.tokens], reference.entries.find((twin) => twin.value === entry.value)!.tokens);
      }
    }),
    { numRuns: 500 },
  );
});

test('micro-measure: a 4,000-token prompt looked up among 1,000 entries', (t) => {
  // 10 system prompts of 1,000 tokens; 100 conversations each, 1,000–3,000 tokens of their own beyond it.
  let seed = 1;
  const random = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let mixed = Math.imul(seed ^ (seed >>> 15), seed | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 2 ** 32;
  };
  const systems = range(0, 10).map(() => range(0, 1000).map(() => Math.floor(random() * 150_000)));
  const conversations = range(0, 1000).map((i) => [...systems[i % 10]!, ...range(0, 1000 + Math.floor(random() * 2000)).map(() => Math.floor(random() * 150_000))]);
  const index = new PrefixIndex<number>({ budgetBytes: Infinity });
  conversations.forEach((tokens, i) => index.insert(tokens, i, tokens.length * 12_288));
  const prompts = conversations.slice(0, 100).map((tokens) => [...tokens, ...range(0, 4000 - tokens.length)]);

  const rounds = 20;
  let started = process.hrtime.bigint();
  for (let round = 0; round < rounds; round++) for (const [i, prompt] of prompts.entries()) assert.equal(index.longestPrefix(prompt)?.entry.value, i);
  const treeMicros = Number(process.hrtime.bigint() - started) / 1000 / (rounds * prompts.length);

  started = process.hrtime.bigint();
  for (const prompt of prompts.slice(0, 10)) {
    let best = -1;
    for (const tokens of conversations) if (tokens.length > best && tokens.every((token, i) => token === prompt[i])) best = tokens.length;
  }
  const scanMicros = Number(process.hrtime.bigint() - started) / 1000 / 10;
  t.diagnostic(`lookup of a 4,000-token prompt among ${index.size} entries (${index.nodeCount} nodes): ${treeMicros.toFixed(1)} µs; a linear scan: ${scanMicros.toFixed(0)} µs`);
});

describe('longestShared: the entry sharing the most leading tokens, even past where the prompt parts from it', () => {
  test('a cached turn whose tail differs from the next prompt still serves its shared part', () => {
    const index = new PrefixIndex<string>({ budgetBytes: 1_000 });
    index.insert([1, 2, 3, 4, 5, 6], 'turn-1 with its answer', 10);
    index.insert([1, 2, 9], 'other', 10);
    const match = index.longestShared([1, 2, 3, 4, 7, 7, 7]);
    assert.equal(match?.entry.value, 'turn-1 with its answer');
    assert.equal(match?.length, 4);
    assert.equal(index.longestShared([1, 2, 3, 4, 7], 5), undefined, 'minLength counts shared tokens');
    assert.equal(index.longestShared([8, 1, 2]), undefined);
    // A whole entry inside the prompt is a full match, as longestPrefix finds it.
    assert.deepEqual(index.longestShared([1, 2, 9, 9]), { entry: index.longestPrefix([1, 2, 9])!.entry, length: 3 });
  });

  test('among entries sharing as much, the shortest (the least to load)', () => {
    const index = new PrefixIndex<string>({ budgetBytes: 1_000 });
    index.insert([1, 2, 3, 4, 5, 6, 7, 8], 'long', 10);
    index.insert([1, 2, 3, 4, 5, 9], 'short', 10);
    index.insert([1, 2, 3, 4, 5, 9, 9, 9, 9], 'longer', 10);
    assert.equal(index.longestShared([1, 2, 3, 4, 0])?.entry.value, 'short');
  });

  test('agrees with a linear scan on random entries and prompts', () => {
    const tokens = fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 12 });
    fc.assert(
      fc.property(fc.array(tokens, { minLength: 1, maxLength: 20 }), tokens, (entries, prompt) => {
        const index = new PrefixIndex<number>({ budgetBytes: 1e9 });
        entries.forEach((entry, at) => index.insert(entry, at, 1));
        const kept = new Map(index.entries().map((entry) => [entry.value, [...entry.tokens]]));
        const lcp = (a: number[]) => {
          let n = 0;
          while (n < a.length && n < prompt.length && a[n] === prompt[n]) n++;
          return n;
        };
        const best = Math.max(...[...kept.values()].map(lcp));
        const match = index.longestShared(prompt);
        if (best === 0) return match === undefined;
        const shortest = Math.min(...[...kept.values()].filter((entry) => lcp(entry) === best).map((entry) => entry.length));
        return match !== undefined && match.length === best && lcp([...match.entry.tokens]) === best && match.entry.tokens.length === shortest;
      }),
      { numRuns: 500 },
    );
  });
});
