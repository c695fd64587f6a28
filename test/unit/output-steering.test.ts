/** OutputSteering: which grammar constrains the next token, and when Kiln closes a reasoning block itself. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BUDGET_CLOSE, OutputSteering, type SteeringOptions } from '../../src/engines/llama/output-steering.js';

const base: SteeringOptions = { reasoning: 'off', thinkingBudget: 4096, budgetCloseTokens: 0, hasAnswerGrammar: false, hasToolCallBodyGrammar: false };

/** Feeds tokens; returns the index and change of every token after which something changed. */
function run(options: SteeringOptions, tokens: readonly string[]): Array<[number, unknown]> {
  const steering = new OutputSteering(options);
  const changes: Array<[number, unknown]> = [];
  tokens.forEach((token, index) => {
    const change = steering.afterToken(token);
    if (change !== undefined) changes.push([index, change]);
  });
  return changes;
}

test('an answer grammar applies from the first token unless the prompt opened reasoning', () => {
  assert.equal(new OutputSteering({ ...base, hasAnswerGrammar: true }).initialGrammar, 'answer');
  assert.equal(new OutputSteering({ ...base, hasAnswerGrammar: true, reasoning: 'open' }).initialGrammar, undefined);
  assert.equal(new OutputSteering(base).initialGrammar, undefined);
});

test('reasoning runs free until </think>, then the answer grammar', () => {
  assert.deepEqual(run({ ...base, reasoning: 'open', hasAnswerGrammar: true }, ['Let', ' me', ' think', '</', 'think>', '{']), [[4, { grammar: 'answer' }]]);
  assert.deepEqual(run({ ...base, reasoning: 'open' }, ['a', '</think>', 'b']), [[1, { grammar: undefined }]]);
});

test('thinking_budget: after that many reasoning tokens Kiln closes the block itself', () => {
  const changes = run({ ...base, reasoning: 'open', thinkingBudget: 3, hasAnswerGrammar: true }, ['a', 'b', 'c', 'd']);
  assert.deepEqual(changes, [[2, { grammar: 'answer', inject: BUDGET_CLOSE }]]);
  assert.match(BUDGET_CLOSE, /<\/think>/);
});

test('thinking_budget is a cap: the closing tokens Kiln writes fit inside it', () => {
  // 5 tokens of budget, 2 of them for the close: the block closes after the 3rd reasoning token.
  const changes = run({ ...base, reasoning: 'open', thinkingBudget: 5, budgetCloseTokens: 2 }, ['a', 'b', 'c', 'd', 'e']);
  assert.deepEqual(changes, [[2, { grammar: undefined, inject: BUDGET_CLOSE }]]);
});

test('a model that may reason opens <think> itself (only before any visible text), and gets its budget', () => {
  assert.deepEqual(run({ ...base, reasoning: 'optional', thinkingBudget: 2 }, ['\n', '<think>', 'x', 'y', 'z']), [[3, { grammar: undefined, inject: BUDGET_CLOSE }]]);
  assert.deepEqual(run({ ...base, reasoning: 'optional', thinkingBudget: 2 }, ['Hi', '<think>', 'x', 'y', 'z']), []);
});

test('tool_choice auto: free text until <tool_call>, then the call body grammar', () => {
  assert.deepEqual(run({ ...base, hasToolCallBodyGrammar: true }, ['Sure', '.', '<tool_call>', '\n']), [[2, { grammar: 'toolCallBody' }]]);
  assert.deepEqual(run({ ...base, hasToolCallBodyGrammar: true }, ['<', 'tool', '_call', '>']), [[3, { grammar: 'toolCallBody' }]]);
  assert.deepEqual(run({ ...base, reasoning: 'open', hasToolCallBodyGrammar: true }, ['<tool_call>', '</think>', '<tool_call>']), [
    [1, { grammar: undefined }],
    [2, { grammar: 'toolCallBody' }],
  ]);
});
