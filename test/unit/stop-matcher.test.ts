/**
 * StopMatcher: the output (and the stop decision) must not depend on how the text is cut into pieces, a stop string
 * never leaks even when split across pieces, and held-back text comes out on flush().
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StopMatcher } from '../../src/core/postprocess/stop-matcher.js';

interface Outcome {
  text: string;
  stopped: boolean;
  /** What each push returned, in order. */
  pieces: string[];
}

function feed(stops: readonly string[], pieces: readonly string[]): Outcome {
  const matcher = new StopMatcher(stops);
  const out: string[] = [];
  for (const piece of pieces) out.push(matcher.push(piece));
  const stoppedBeforeFlush = matcher.hasStopped;
  out.push(matcher.flush());
  assert.equal(matcher.hasStopped, stoppedBeforeFlush, 'flush must not change the stop decision');
  return { text: out.join(''), stopped: matcher.hasStopped, pieces: out };
}

/** Deterministic PRNG (mulberry32) so a failure can be reproduced from its seed. */
function rng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomPieces(text: string, random: () => number, maxSize = 5): string[] {
  const pieces: string[] = [];
  let at = 0;
  while (at < text.length) {
    const size = Math.floor(random() * (maxSize + 1)); // 0 allowed: empty pushes must be harmless
    pieces.push(text.slice(at, at + size));
    at += size;
  }
  return pieces;
}

/**
 * Reference: generation stops when the first stop string is completed, i.e. at the occurrence that ends earliest
 * (ties: the one that starts earliest); the text before that occurrence is returned.
 */
function reference(stops: readonly string[], text: string): { text: string; stopped: boolean } {
  for (let end = 1; end <= text.length; end++) {
    let at = -1;
    for (const stop of stops) {
      if (stop.length > 0 && stop.length <= end && text.startsWith(stop, end - stop.length)) {
        if (at === -1 || end - stop.length < at) at = end - stop.length;
      }
    }
    if (at !== -1) return { text: text.slice(0, at), stopped: true };
  }
  return { text, stopped: false };
}

/** Whole, per UTF-16 unit, per code point and 25 random cuttings must all agree with each other and the reference. */
function assertChunkingInvariant(stops: readonly string[], text: string, seed = 1): void {
  const expected = reference(stops, text);
  const whole = feed(stops, [text]);
  assert.deepEqual({ text: whole.text, stopped: whole.stopped }, expected, `whole: ${JSON.stringify({ stops, text })}`);
  const cuttings: Array<[string, string[]]> = [
    ['per code unit', text.split('')],
    ['per code point', Array.from(text)],
  ];
  const random = rng(seed);
  for (let round = 0; round < 25; round++) cuttings.push([`random #${round}`, randomPieces(text, random)]);
  for (const [label, pieces] of cuttings) {
    const outcome = feed(stops, pieces);
    assert.equal(outcome.text, whole.text, `${label} ${JSON.stringify({ stops, pieces })}`);
    assert.equal(outcome.stopped, whole.stopped, `${label} stop decision ${JSON.stringify({ stops, pieces })}`);
  }
}

describe('StopMatcher basics', () => {
  test('no stops: text passes straight through, nothing held', () => {
    const matcher = new StopMatcher([]);
    assert.equal(matcher.push('Hello'), 'Hello');
    assert.equal(matcher.push(', world'), ', world');
    assert.equal(matcher.flush(), '');
    assert.equal(matcher.hasStopped, false);
  });

  test('empty stop strings are ignored', () => {
    const matcher = new StopMatcher(['', '']);
    assert.equal(matcher.push('abc'), 'abc');
    assert.equal(matcher.hasStopped, false);
  });

  test('text that cannot start a stop is released immediately', () => {
    const matcher = new StopMatcher(['STOP']);
    assert.equal(matcher.push('hello '), 'hello ');
    assert.equal(matcher.push('world'), 'world');
  });

  test('a stop inside one piece: text before it is returned, the stop and everything after are dropped', () => {
    const matcher = new StopMatcher(['STOP']);
    assert.equal(matcher.push('one STOP two'), 'one ');
    assert.equal(matcher.hasStopped, true);
    assert.equal(matcher.push('more'), '');
    assert.equal(matcher.flush(), '');
  });

  test('a stop at the very start yields empty output and stops', () => {
    const outcome = feed(['<|end|>'], ['<|end|>tail']);
    assert.equal(outcome.text, '');
    assert.equal(outcome.stopped, true);
  });

  test('a stop split across pieces never leaks, even partially', () => {
    const matcher = new StopMatcher(['</answer>']);
    assert.equal(matcher.push('The answer is 42</'), 'The answer is 42');
    assert.equal(matcher.push('ans'), '');
    assert.equal(matcher.push('wer'), '');
    assert.equal(matcher.push('>ignored'), '');
    assert.equal(matcher.hasStopped, true);
    assert.equal(matcher.flush(), '');
  });

  test('held text that turns out not to be a stop is released as soon as it diverges', () => {
    const matcher = new StopMatcher(['STOP']);
    assert.equal(matcher.push('a ST'), 'a ');
    assert.equal(matcher.push('OR'), 'STOR');
    assert.equal(matcher.push('E'), 'E');
    assert.equal(matcher.hasStopped, false);
  });

  test('text that merely starts like a stop is released on flush()', () => {
    const matcher = new StopMatcher(['STOP']);
    assert.equal(matcher.push('the end ST'), 'the end ');
    assert.equal(matcher.push('O'), '');
    assert.equal(matcher.hasStopped, false);
    assert.equal(matcher.flush(), 'STO');
    assert.equal(matcher.flush(), '', 'a second flush has nothing left');
  });

  test('only the longest partial suffix is held', () => {
    const matcher = new StopMatcher(['aab']);
    assert.equal(matcher.push('xaaa'), 'xa');
    assert.equal(matcher.push('b'), '');
    assert.equal(matcher.hasStopped, true);
  });

  test('earliest of several stops wins', () => {
    assert.deepEqual(feed(['world', 'lo'], ['hello world']).text, 'hel');
    assert.deepEqual(feed(['lo', 'world'], ['hello world']).text, 'hel');
    assert.deepEqual(feed(['zzz', 'o w', 'd'], ['hello world']).text, 'hell');
  });

  test('earliest stop wins when it spans pieces and a later one is complete in the last piece', () => {
    const matcher = new StopMatcher(['END', 'x']);
    assert.equal(matcher.push('abcE'), 'abc');
    assert.equal(matcher.push('NDx'), '');
    assert.equal(matcher.hasStopped, true);
  });

  test('a stop that is a prefix of another: the shorter one ends the text at the same place', () => {
    assert.deepEqual(feed(['###', '#'], ['title # rest']), { text: 'title ', stopped: true, pieces: ['title ', ''] });
    const matcher = new StopMatcher(['ab', 'abc']);
    assert.equal(matcher.push('xa'), 'x');
    assert.equal(matcher.push('b'), '');
    assert.equal(matcher.hasStopped, true);
  });

  test('unicode stops: CJK, emoji (surrogate pairs) and combining text', () => {
    assert.deepEqual(feed(['。'], ['你好', '世界。', '再见']), { text: '你好世界', stopped: true, pieces: ['你好', '世界', '', ''] });
    const emoji = new StopMatcher(['🛑']);
    assert.equal(emoji.push('go go \uD83D'), 'go go ', 'a lone high surrogate that may start the stop is held');
    assert.equal(emoji.push('\uDED1 never'), '');
    assert.equal(emoji.hasStopped, true);
    const notEmoji = new StopMatcher(['🛑']);
    assert.equal(notEmoji.push('\uD83D'), '');
    assert.equal(notEmoji.push('\uDE00!'), '😀!', 'a different emoji with the same high surrogate is released whole');
    assert.deepEqual(feed(['é'], ['café ol', 'é']).text, 'caf');
  });
});

describe('StopMatcher chunking invariance', () => {
  const cases: Array<{ name: string; stops: string[]; text: string }> = [
    { name: 'single stop in the middle', stops: ['STOP'], text: 'alpha beta STOP gamma' },
    { name: 'no stop at all, partial matches everywhere', stops: ['STOP'], text: 'S ST STO STOR STOx SSTO' },
    { name: 'text ends with a partial stop', stops: ['</s>'], text: 'the end </' },
    { name: 'repeated prefix characters', stops: ['aab'], text: 'aaaaaaaab tail' },
    { name: 'self-overlapping stop', stops: ['abab'], text: 'abaabababab' },
    { name: 'several stops, later one listed first', stops: ['gamma', 'beta', 'delta'], text: 'alpha beta gamma' },
    { name: 'stop that is a prefix of another', stops: ['<|im_end|>', '<|im'], text: 'hi <|i there <|im_end|> x' },
    { name: 'longer stop listed first, its prefix later', stops: ['abc', 'ab'], text: 'xxabcxx' },
    { name: 'newline stops', stops: ['\n\n', '\nUser:'], text: 'line one\nline two\n\nUser: hi' },
    { name: 'stop at the very start', stops: ['<eos>'], text: '<eos>after' },
    { name: 'stop at the very end', stops: ['<eos>'], text: 'before<eos>' },
    { name: 'four stops, none present', stops: ['w', 'x', 'yy', 'zzz'], text: 'abc yz zz y ab' },
    { name: 'CJK', stops: ['。', '！'], text: '你好，世界！再见。' },
    { name: 'emoji stop among emoji', stops: ['🛑🛑'], text: '😀🛑😀🛑🛑 tail' },
    { name: 'emoji text without its stop', stops: ['🛑🛑'], text: '😀🛑😀🛑😀' },
    { name: 'accented and combining characters', stops: ['e\u0301!'], text: 'cafe\u0301 ok e\u0301! gone' },
  ];

  for (const { name, stops, text } of cases) {
    test(`${name}: whole, per character and random pieces agree`, () => {
      assertChunkingInvariant(stops, text);
    });
  }

  test('a stop occurring inside a longer stop: per-character streaming and whole text agree', () => {
    const whole = feed(['abcd', 'bc'], ['xabcdy']);
    const perChar = feed(['abcd', 'bc'], 'xabcdy'.split(''));
    assert.equal(whole.stopped, true);
    assert.equal(perChar.stopped, true);
    assert.equal(whole.text, perChar.text);
  });

  test('randomised: random stops over a small alphabet, random texts, random cuttings', () => {
    const random = rng(20240601);
    const alphabet = ['a', 'b', 'c', 'é', '🙂'];
    const word = (min: number, max: number) => {
      const length = min + Math.floor(random() * (max - min + 1));
      return Array.from({ length }, () => alphabet[Math.floor(random() * alphabet.length)]!).join('');
    };
    let checked = 0;
    for (let round = 0; round < 400; round++) {
      const stops = Array.from({ length: 1 + Math.floor(random() * 4) }, () => word(1, 4));
      const text = word(0, 24);
      assertChunkingInvariant(stops, text, round);
      checked++;
    }
    assert.ok(checked > 200, `only ${checked} random cases were checked`);
  });
});
