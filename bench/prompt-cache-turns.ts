/**
 * Diagnostic for the prompt cache: later-turn latency with the cache off and on, Kiln only (`npm run bench`'s
 * multi-turn workload measures it against llama-server). The bench model (`npm run bench` generates it), 2 sequences,
 * 6 conversations of ~370 prompt tokens, 2 turns round-robin; a request is `max_tokens: 1`, so its latency is its
 * time to first token. `node --import tsx bench/prompt-cache-turns.ts`
 */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ensureBenchModel, QWEN25_05B_SHAPE } from '../src/gguf/bench-model.js';
import { startKiln, writeConfig } from '../test/helpers/kiln-process.js';
import { text } from './prompt-text.js';

const CONVERSATIONS = 6;

async function ask(url: string, messages: unknown[]): Promise<{ ms: number; cached: number }> {
  const began = performance.now();
  const response = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages, max_tokens: 1 }) });
  const body = (await response.json()) as { usage: { prompt_tokens_details?: { cached_tokens?: number } } };
  return { ms: performance.now() - began, cached: body.usage.prompt_tokens_details?.cached_tokens ?? 0 };
}

const file = await ensureBenchModel({ ...QWEN25_05B_SHAPE, neverEnd: true, asciiOutput: true, cacheDir: process.env.KILN_CACHE_DIR ?? join(homedir(), '.cache/kiln') });
for (const cache of [false, true]) {
  const model = { id: 'm', file, parallel: 2, context_size: 2048, threads: 2, preload: true, prompt_cache: { ram_mb: cache ? 2048 : 0 } };
  const kiln = await startKiln(['--config', await writeConfig({ models: [model] })]);
  const conversations = Array.from({ length: CONVERSATIONS }, (_, i) => [{ role: 'user', content: `${text(220, i + 1)}\nSummarise.` }]);
  const later: number[] = [];
  const cached: number[] = [];
  for (let turn = 0; turn < 2; turn++) {
    for (const messages of conversations) {
      const result = await ask(kiln.url, messages);
      if (turn === 1) {
        later.push(result.ms);
        cached.push(result.cached);
      }
      messages.push({ role: 'assistant', content: 'ok' }, { role: 'user', content: `Next question ${turn}.` });
    }
  }
  later.sort((a, b) => a - b);
  console.log(`cache ${cache ? 'on' : 'off'}: later-turn TTFT p50 ${later[CONVERSATIONS / 2]!.toFixed(0)} ms (${later[0]!.toFixed(0)}–${later.at(-1)!.toFixed(0)}); cached tokens ${cached.join(', ')}`);
  await kiln.stop();
}
