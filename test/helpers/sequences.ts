/** Driving a node-llama-cpp sequence directly, for tests of what lives below the engine (the prompt cache). */
import type { LlamaContextSequence, Token } from 'node-llama-cpp';

/** Empties the sequence and evaluates `tokens` into it. */
export async function prefill(sequence: LlamaContextSequence, tokens: Token[]): Promise<void> {
  await sequence.clearHistory();
  await sequence.evaluateWithoutGeneratingNewTokens(tokens);
}

/** The next `count` greedy tokens after evaluating `input` on top of what the sequence holds. */
export async function greedy(sequence: LlamaContextSequence, input: Token[], count = 4): Promise<Token[]> {
  const out: Token[] = [];
  for await (const token of sequence.evaluate(input, { temperature: 0 })) {
    out.push(token);
    if (out.length === count) break;
  }
  return out;
}
