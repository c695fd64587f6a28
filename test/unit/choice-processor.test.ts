/**
 * The post-processor: the same model output fed whole, in random pieces and per character must give the same
 * events (after merging adjacent deltas of the same kind), for stop strings, reasoning and tool calls alike.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ChoicePostProcessor, type ChoiceProcessorOptions, type ChoiceUpdate } from '../../src/core/postprocess/choice-processor.js';

type Options = Omit<ChoiceProcessorOptions, 'newCallId'>;

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

function randomPieces(text: string, random: () => number): string[] {
  const chars = [...text];
  const pieces: string[] = [];
  for (let at = 0; at < chars.length; ) {
    const size = 1 + Math.floor(random() * 7);
    pieces.push(chars.slice(at, at + size).join(''));
    at += size;
  }
  return pieces;
}

/** Adjacent deltas of the same kind merged, so that the result no longer depends on how the text was cut. */
function merged(updates: ChoiceUpdate[]): unknown[] {
  const out: Array<Record<string, unknown>> = [];
  for (const update of updates) {
    if (update.type === 'finish') {
      out.push({ finish: update.finishReason });
      continue;
    }
    const { delta } = update;
    const last = out[out.length - 1];
    if (delta.content !== undefined) {
      if (last?.kind === 'content') last.text += delta.content;
      else out.push({ kind: 'content', text: delta.content });
    } else if (delta.reasoningContent !== undefined) {
      if (last?.kind === 'reasoning') last.text += delta.reasoningContent;
      else out.push({ kind: 'reasoning', text: delta.reasoningContent });
    } else if (delta.toolCall !== undefined) {
      const call = delta.toolCall;
      if (call.id === undefined && last?.kind === 'call' && last.index === call.index) last.arguments += call.arguments;
      else out.push({ kind: 'call', index: call.index, id: call.id, name: call.name, arguments: call.arguments });
    }
  }
  return out;
}

function run(options: Options, pieces: readonly string[], end: 'eog' | 'length' = 'eog'): unknown[] {
  let ids = 0;
  const processor = new ChoicePostProcessor({ ...options, newCallId: () => `call_${ids++}` });
  const updates: ChoiceUpdate[] = [];
  for (const piece of pieces) {
    updates.push(...processor.accept({ type: 'text', text: piece, tokens: 1 }));
    if (updates.at(-1)?.type === 'finish') return merged(updates);
  }
  updates.push(...processor.accept({ type: 'end', reason: end }));
  assert.equal(updates.filter((u) => u.type === 'finish').length, 1, 'exactly one finish update');
  return merged(updates);
}

/** Runs whole, per character and in random pieces (several cuttings); all must agree. Returns the whole-text result. */
function consistent(options: Options, text: string, end: 'eog' | 'length' = 'eog'): unknown[] {
  const whole = run(options, [text], end);
  assert.deepEqual(run(options, [...text], end), whole, 'per character');
  const random = rng(text.length * 7919 + 1);
  for (let i = 0; i < 20; i++) assert.deepEqual(run(options, randomPieces(text, random), end), whole, `random pieces #${i}`);
  return whole;
}

const plain: Options = { stop: [], reasoning: 'off', tools: false };
const tools: Options = { stop: [], reasoning: 'off', tools: true };

describe('ChoicePostProcessor', () => {
  test('plain text passes through; end of generation is "stop", max_tokens "length"', () => {
    assert.deepEqual(consistent(plain, '  Hello, wörld 🌍! '), [{ kind: 'content', text: '  Hello, wörld 🌍! ' }, { finish: 'stop' }]);
    assert.deepEqual(consistent(plain, 'cut', 'length').at(-1), { finish: 'length' });
  });

  test('a stop string ends the choice with the text before it', () => {
    const out = consistent({ ...plain, stop: ['END', 'xyz'] }, 'abc EN ENDdef');
    assert.deepEqual(out, [{ kind: 'content', text: 'abc EN ' }, { finish: 'stop' }]);
  });

  test('reasoning opened by the prompt goes to reasoning_content, trimmed, and never leaks its tags', () => {
    const out = consistent({ ...plain, reasoning: 'open' }, '\nLet me think.\n\nStill thinking.\n</think>\n\nThe answer is 4.');
    assert.deepEqual(out, [
      { kind: 'reasoning', text: 'Let me think.\n\nStill thinking.' },
      { kind: 'content', text: 'The answer is 4.' },
      { finish: 'stop' },
    ]);
  });

  test('a model that opens <think> itself; and one that answers without thinking', () => {
    assert.deepEqual(consistent({ ...plain, reasoning: 'optional' }, '\n<think>\nhmm\n</think>\nok'), [
      { kind: 'reasoning', text: 'hmm' },
      { kind: 'content', text: 'ok' },
      { finish: 'stop' },
    ]);
    assert.deepEqual(consistent({ ...plain, reasoning: 'optional' }, '\n Direct <think> answer'), [
      { kind: 'content', text: 'Direct <think> answer' },
      { finish: 'stop' },
    ]);
  });

  test('reasoning cut off by max_tokens has no content', () => {
    assert.deepEqual(consistent({ ...plain, reasoning: 'open' }, 'thinking and thinking ', 'length'), [
      { kind: 'reasoning', text: 'thinking and thinking' },
      { finish: 'length' },
    ]);
  });

  test('a stop string inside reasoning ends the choice there', () => {
    assert.deepEqual(consistent({ ...plain, reasoning: 'open', stop: ['STOP'] }, 'abc STOP def</think>x'), [
      { kind: 'reasoning', text: 'abc' },
      { finish: 'stop' },
    ]);
  });

  test('tool calls: text before, two calls streamed as name then arguments, finish_reason tool_calls', () => {
    const text =
      'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}ris\\"", "days": [1, {"a": 2}]}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>';
    assert.deepEqual(consistent(tools, text), [
      { kind: 'content', text: 'Let me check.' },
      { kind: 'call', index: 0, id: 'call_0', name: 'get_weather', arguments: '{"city": "Pa}ris\\"", "days": [1, {"a": 2}]}' },
      { kind: 'call', index: 1, id: 'call_1', name: 'get_time', arguments: '{}' },
      { finish: 'tool_calls' },
    ]);
  });

  test('a call with arguments before its name is parsed whole; a body that is no call is text', () => {
    assert.deepEqual(consistent(tools, '<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>'), [
      { kind: 'call', index: 0, id: 'call_0', name: 'f', arguments: '{"x":1}' },
      { finish: 'tool_calls' },
    ]);
    assert.deepEqual(consistent(tools, 'a<tool_call>not json</tool_call>b'), [
      { kind: 'content', text: 'a<tool_call>not json</tool_call>b' },
      { finish: 'stop' },
    ]);
  });

  test('parallel_tool_calls false reports only the first call', () => {
    const text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>';
    const out = consistent({ ...tools, maxToolCalls: 1 }, text);
    assert.deepEqual(
      out.filter((e) => (e as { id?: string }).id !== undefined).map((e) => (e as { name: string }).name),
      ['a'],
    );
    assert.deepEqual(out.at(-1), { finish: 'tool_calls' });
  });

  test('a call cut off by max_tokens keeps what was streamed and finishes with "length"', () => {
    assert.deepEqual(consistent(tools, '<tool_call>\n{"name": "f", "arguments": {"q": "abc', 'length'), [
      { kind: 'call', index: 0, id: 'call_0', name: 'f', arguments: '{"q": "abc' },
      { finish: 'length' },
    ]);
  });

  test('reasoning then a tool call', () => {
    assert.deepEqual(consistent({ ...tools, reasoning: 'open' }, 'plan</think>\n\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'), [
      { kind: 'reasoning', text: 'plan' },
      { kind: 'call', index: 0, id: 'call_0', name: 'f', arguments: '{"a": 1}' },
      { finish: 'tool_calls' },
    ]);
  });

  test('without tools offered, <tool_call> is plain text', () => {
    assert.deepEqual(consistent(plain, '<tool_call>{"name": "f", "arguments": {}}</tool_call>'), [
      { kind: 'content', text: '<tool_call>{"name": "f", "arguments": {}}</tool_call>' },
      { finish: 'stop' },
    ]);
  });

  test('token counts: every token is a completion token; those inside <think> … </think> are reasoning tokens', () => {
    const tokens = ['Let', ' me', ' think', '</think>', '\n\n', 'Four', '.'];
    const processor = new ChoicePostProcessor({ stop: [], reasoning: 'open', tools: false });
    const updates = tokens.flatMap((text) => processor.accept({ type: 'text', text, tokens: 1 }));
    updates.push(...processor.accept({ type: 'end', reason: 'eog' }));
    const finish = updates.at(-1);
    assert.ok(finish?.type === 'finish');
    assert.equal(finish.completionTokens, 7);
    assert.equal(finish.reasoningTokens, 4);
  });

  test('randomised: outputs built from reasoning, text, calls and stops agree however they are cut', () => {
    const random = rng(42);
    const parts = ['hello ', ' ', '\n', '<think>', '</think>', '<tool_call>', '</tool_call>', '{"name": "f", "arguments": {"a": "}"}}', 'ab', 'c', 'é', '🌍'];
    for (let i = 0; i < 200; i++) {
      const text = Array.from({ length: 1 + Math.floor(random() * 12) }, () => parts[Math.floor(random() * parts.length)]).join('');
      const options: Options = {
        stop: random() < 0.5 ? ['bc', '</tool'] : [],
        reasoning: (['open', 'optional', 'off'] as const)[Math.floor(random() * 3)]!,
        tools: random() < 0.7,
      };
      consistent(options, text, random() < 0.5 ? 'eog' : 'length');
    }
  });
});
