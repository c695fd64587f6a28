/**
 * Diagnostic, not a benchmark: a burst of concurrent requests through Kiln's engine in-process (no HTTP), logging
 * every llama.cpp decode — when it started, how long it took, and which sequences it carried with how many tokens
 * (`[0:1 2:84]`: sequence 0's next token and sequence 2's 84-token prompt). This is how the step barrier's split into
 * two alternating groups was found (docs/architecture.md, "Steps longer than 100 ms").
 *
 *   node --import tsx bench/trace-batches.ts <model.gguf> [streams=8] [tokens=128] [rounds=2]
 *
 * It wraps node-llama-cpp's internal addon context (`context._ctx`, pinned 3.21.1); a diagnostic may, Kiln may not.
 */
import { normalizeChatRequest } from '../src/core/normalize-request.js';
import { LlamaEngine } from '../src/engines/llama/llama-engine.js';

const [file, streamsArg, tokensArg, roundsArg] = process.argv.slice(2);
if (file === undefined) throw new Error('usage: bench/trace-batches.ts <model.gguf> [streams] [tokens] [rounds]');
const STREAMS = Number(streamsArg ?? 8);
const TOKENS = Number(tokensArg ?? 128);
const ROUNDS = Number(roundsArg ?? 2);

type Addon = Record<string, (...args: unknown[]) => unknown>;
const engine = await LlamaEngine.load({ file, parallel: STREAMS, contextSize: 4096, queue: { depth: 64, waitMs: 600_000 } });
const context = (engine as unknown as { context: { _ctx: Addon } }).context;
const addon = context._ctx;
let batch: string[] = [];
const decodes: string[] = [];
let roundStart = performance.now();
const wrapped: Addon = {
  addToBatch: (sequenceId, firstTokenIndex, tokens, logits) => {
    batch.push(`${sequenceId as number}:${(tokens as Uint32Array).length}`);
    return addon.addToBatch!(sequenceId, firstTokenIndex, tokens, logits);
  },
  decodeBatch: async () => {
    const started = performance.now();
    const items = batch;
    batch = [];
    const result = await addon.decodeBatch!();
    decodes.push(`${(started - roundStart).toFixed(0).padStart(6)} ms  +${(performance.now() - started).toFixed(0)} ms  [${items.join(' ')}]`);
    return result;
  },
};
// The addon's methods are read-only native properties: swap the whole object for a proxy.
context._ctx = new Proxy(addon, {
  get: (target, property: string) => wrapped[property] ?? (typeof target[property] === 'function' ? target[property]!.bind(target) : target[property]),
});

const WORDS = 'amber birch cedar delta ember fjord glacier harbor island juniper kestrel lantern meadow nectar orchard prairie'.split(' ');
for (let round = 0; round < ROUNDS; round++) {
  decodes.length = 0;
  roundStart = performance.now();
  const firstTokens: number[] = [];
  let tokens = 0;
  await Promise.all(
    Array.from({ length: STREAMS }, async (_, i) => {
      const content = `Request ${round}.${i}: ${Array.from({ length: 48 }, (_, j) => WORDS[(i * 7 + j * 3 + round) % WORDS.length]).join(' ')}`;
      const request = normalizeChatRequest(
        { model: 'trace', messages: [{ role: 'system', content: 'You are a helpful assistant.' }, { role: 'user', content }], max_tokens: TOKENS, temperature: 0.7, top_p: 0.7, top_k: 50, min_p: 0.05, frequency_penalty: 0.5 },
        { maxChoices: 1 },
      );
      const run = await engine.start(request, new AbortController().signal);
      for await (const event of run.choice(0)) {
        if (event.type !== 'text' || event.tokens === 0) continue;
        firstTokens[i] ??= performance.now() - roundStart;
        tokens += event.tokens;
      }
    }),
  );
  const seconds = (performance.now() - roundStart) / 1000;
  console.log(`round ${round}: ${tokens} tokens in ${seconds.toFixed(1)} s = ${(tokens / seconds).toFixed(1)} tok/s; first tokens at ${firstTokens.sort((a, b) => a - b).map((ms) => ms.toFixed(0)).join(' ')} ms; ${decodes.length} decodes`);
  console.log(decodes.join('\n'));
}
await engine.close();
