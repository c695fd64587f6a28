/**
 * In-process, on the Qwen2.5-0.5B-shaped bench model (real Qwen vocabulary): 7 streams' tokens/s alone, and beside
 * an eighth request that could hold them back — a stream whose reader stopped reading, with the stalled sequence at
 * the edge (slot 7) or in the middle (slot 3) of the others (llama.cpp decodes a step in one forward pass only over
 * consecutive sequence ids, batch-order.ts), or a stream under a json_schema grammar (llama.cpp checks the grammar
 * against the whole 152k-token vocabulary when it samples). Rounds alternate the cases; medians and spread are printed.
 *
 *   node --import tsx bench/stalled-reader.ts [--rounds 3] [--tokens 48]
 */
import { parseArgs } from 'node:util';
import { normalizeChatRequest } from '../src/core/normalize-request.js';
import { LlamaEngine } from '../src/engines/llama/llama-engine.js';
import { ensureBenchModel, QWEN25_05B_SHAPE } from '../src/gguf/bench-model.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, tokens: { type: 'string', default: '48' } } });
const rounds = Number(values.rounds);
const tokens = Number(values.tokens);
const file = await ensureBenchModel({ ...QWEN25_05B_SHAPE, neverEnd: true });
const engine = await LlamaEngine.load({ file, parallel: 8, contextSize: 1024, queue: { depth: 16, waitMs: 600_000 } });
const request = (maxTokens: number, extra: Record<string, unknown> = {}) =>
  normalizeChatRequest({ model: 'bench', messages: [{ role: 'user', content: 'hello there' }], max_tokens: maxTokens, seed: 1, ...extra }, { maxChoices: 8 });
const schema = { type: 'object', properties: { answer: { type: 'string' }, score: { type: 'integer' } }, required: ['answer', 'score'] };
const withGrammar = { response_format: { type: 'json_schema', json_schema: { name: 'reply', schema } } };

/**
 * 7 readers' aggregate tokens/s; `stalledSlot`: a stream that reads one event and stops, started in that slot;
 * `grammar`: an eighth stream under a json_schema grammar, read like the others.
 */
async function readersTokensPerSecond(stalledSlot: number | undefined, grammar = false): Promise<number> {
  const readers = [];
  const stalled = new AbortController();
  const constrained = grammar ? await engine.start(request(tokens * 4, withGrammar), stalled.signal) : undefined;
  const draining = constrained === undefined ? undefined : (async () => {
    for await (const _ of constrained.choice(0));
  })();
  // Sequences are leased lowest slot first, so starting them in order places each one.
  for (let slot = 0; slot < 8 && readers.length < 7; slot++) {
    if (slot === stalledSlot) {
      await (await engine.start(request(900), stalled.signal)).choice(0).next();
      continue;
    }
    readers.push(await engine.start(request(tokens), new AbortController().signal));
  }
  const started = performance.now();
  const counts = await Promise.all(
    readers.map(async (run) => {
      let count = 0;
      for await (const event of run.choice(0)) if (event.type === 'text') count += event.tokens;
      return count;
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  stalled.abort(new Error('done'));
  await draining?.catch(() => undefined);
  await new Promise((resolve) => setTimeout(resolve, 200)); // its sequence comes free
  return counts.reduce((sum, count) => sum + count, 0) / seconds;
}

const cases = { alone: [undefined, false], 'stalled at slot 7': [7, false], 'stalled at slot 3': [3, false], 'json_schema stream': [undefined, true] } as const;
const results = new Map<string, number[]>(Object.keys(cases).map((name) => [name, []]));
for (let round = 0; round < rounds; round++) {
  for (const [name, [slot, grammar]] of Object.entries(cases)) results.get(name)!.push(await readersTokensPerSecond(slot, grammar));
}
await engine.close();

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const alone = median(results.get('alone')!);
for (const [name, values] of results) {
  const spread = `${Math.min(...values).toFixed(1)}–${Math.max(...values).toFixed(1)}`;
  console.log(`${name.padEnd(18)} 7 readers ${median(values).toFixed(1)} tok/s (rounds ${spread}), ratio to alone ${(median(values) / alone).toFixed(2)}`);
}
