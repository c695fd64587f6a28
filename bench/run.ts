/**
 * `npm run bench` — Kiln against llama.cpp's own server on the same GGUF, threads and machine, driven by the same
 * `openai` client in interleaved rounds. Prints and writes (bench-results/) a table of Kiln/llama-server ratios:
 * aggregate tokens/s and TTFT p50/p95 at 1, 4 and 8 concurrent streams, and the second-turn TTFT of a ~2k-token
 * conversation. Options:
 *   --llama-server <path>   use this llama-server instead of building one
 *   --model <file.gguf>     use this model instead of the generated Qwen2.5-0.5B-shaped one
 *   --rounds <n>            rounds per concurrency level (default 3)
 *   --max-tokens <n>        tokens per request (default 128)
 *   --aborts <n>            also send n streams that are aborted mid-way and report Kiln's RSS before/after
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import OpenAI from 'openai';
import { ensureBenchModel, QWEN25_05B_SHAPE } from '../src/gguf/bench-model.js';
import { startKiln } from '../test/helpers/kiln-process.js';
import { ensureLocalNodeLlamaCppBuild, locateLlamaServer, startLlamaServer } from './llama-server.js';
import { renderChart } from './chart.js';
import { text } from './prompt-text.js';

const REPO_ROOT = resolve(import.meta.dirname, '..');
const { values: flags } = parseArgs({
  options: {
    'llama-server': { type: 'string' },
    model: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    'max-tokens': { type: 'string', default: '128' },
    aborts: { type: 'string', default: '0' },
    concurrency: { type: 'string', default: '1,4,8' },
    // Send an explicit seed with every request. Kiln then decodes the prompt's last token on its own so that the
    // output does not depend on the prefix cache (docs/architecture.md, determinism): one extra small decode.
    seeded: { type: 'boolean', default: false },
  },
});

const ROUNDS = Number(flags.rounds);
const MAX_TOKENS = Number(flags['max-tokens']);
const LEVELS = flags.concurrency!.split(',').map(Number);
const PARALLEL = Math.max(...LEVELS);
const CONTEXT_PER_SEQUENCE = 4096;
const THREADS = availableParallelism();
const SAMPLING = { temperature: 0.7, top_p: 0.7, frequency_penalty: 0.5 } as const;
const EXTRA = { top_k: 50, min_p: 0.05 };
/**
 * Every request carries a system message, so both servers evaluate the same prompt: without one, Kiln renders the
 * model's Jinja template, which adds the template's default system prompt, while llama-server (run with --no-jinja,
 * see llama-server.ts) renders plain ChatML without it — 10 more tokens per request for Kiln.
 */
const SYSTEM = { role: 'system' as const, content: 'You are a helpful assistant.' };

interface Target {
  name: 'kiln' | 'llama-server';
  client: OpenAI;
  model: string;
  pid: number;
}

interface RequestResult {
  ttftMs: number;
  tokens: number;
}


async function streamOnce(target: Target, messages: OpenAI.ChatCompletionMessageParam[], maxTokens: number, seed: number, signal?: AbortSignal): Promise<RequestResult & { content: string }> {
  const started = performance.now();
  const stream = await target.client.chat.completions.create(
    { model: target.model, messages, max_tokens: maxTokens, ...(flags.seeded ? { seed } : {}), stream: true, stream_options: { include_usage: true }, ...SAMPLING, ...EXTRA } as OpenAI.ChatCompletionCreateParamsStreaming,
    signal !== undefined ? { signal } : {},
  );
  let ttftMs = Number.NaN;
  let chunks = 0;
  let usageTokens: number | undefined;
  let content = '';
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta.content;
    if (delta) {
      if (Number.isNaN(ttftMs)) ttftMs = performance.now() - started;
      chunks++;
      content += delta;
    }
    if (chunk.usage) usageTokens = chunk.usage.completion_tokens;
  }
  return { ttftMs, tokens: usageTokens ?? chunks, content };
}

async function concurrentRound(target: Target, concurrency: number, round: number): Promise<{ tokensPerSecond: number; ttfts: number[]; failed: number }> {
  const started = performance.now();
  const results = await Promise.allSettled(
    Array.from({ length: concurrency }, (_, i) =>
      // Every level and round gets prompts of its own: a prompt seen before would be a prefix-cache hit for whichever
      // server still holds it (llama-server keeps up to 8 old prompts in its least recently used slots, Kiln packs
      // requests into its low slots), and TTFT here measures prefill under concurrency, not cache luck.
      streamOnce(target, [SYSTEM, { role: 'user', content: `Request ${concurrency}.${round}.${i}: ${text(48, concurrency * 10_000 + round * 100 + i)}` }], MAX_TOKENS, round * 100 + i),
    ),
  );
  const seconds = (performance.now() - started) / 1000;
  const ok = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  for (const result of results) if (result.status === 'rejected') console.error(`${target.name}: request failed: ${result.reason}`);
  const tokens = ok.reduce((sum, result) => sum + result.tokens, 0);
  return { tokensPerSecond: tokens / seconds, ttfts: ok.map((result) => result.ttftMs), failed: results.length - ok.length };
}

/** First and second turn of a ~2k-token conversation; the second should reuse the first's KV cache. */
async function conversation(target: Target, round: number): Promise<{ first: number; second: number }> {
  const system = { role: 'system' as const, content: `You are assistant ${round}. ${text(300, 7 + round)}` };
  const user = { role: 'user' as const, content: text(1500, 11 + round) };
  const first = await streamOnce(target, [system, user], 16, round);
  const second = await streamOnce(target, [system, user, { role: 'assistant', content: first.content }, { role: 'user', content: 'Continue, please.' }], 16, round + 1);
  return { first: first.ttftMs, second: second.ttftMs };
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const median = (values: number[]) => percentile(values, 50);

async function rssKb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN);
}

async function abortStorm(target: Target, count: number): Promise<void> {
  const batch = PARALLEL * 2;
  for (let done = 0; done < count; done += batch) {
    await Promise.allSettled(
      Array.from({ length: Math.min(batch, count - done) }, async (_, i) => {
        const controller = new AbortController();
        setTimeout(() => controller.abort(), 5 + ((done + i) % 7) * 40);
        await streamOnce(target, [SYSTEM, { role: 'user', content: text(24, done + i) }], 256, done + i, controller.signal);
      }),
    );
  }
}

async function main(): Promise<void> {
  const model = flags.model ?? (await ensureBenchModel({ ...QWEN25_05B_SHAPE, neverEnd: true, asciiOutput: true }));
  const binary = locateLlamaServer(flags['llama-server']);
  const kilnBinary = ensureLocalNodeLlamaCppBuild();
  console.error(`model ${model}\nllama-server ${binary}\nkiln's llama.cpp: ${kilnBinary}\nthreads ${THREADS}, ${PARALLEL} sequences × ${CONTEXT_PER_SEQUENCE} tokens, ${ROUNDS} rounds, ${MAX_TOKENS} tokens per request`);

  const kilnProcess = await startKiln(['--model', model, '--model-id', 'bench', '--parallel', String(PARALLEL), '--context-size', String(CONTEXT_PER_SEQUENCE), '--threads', String(THREADS), '--log-level', 'warn']);
  const peer = await startLlamaServer(binary, { model, port: 18000 + Math.floor(Math.random() * 1000), parallel: PARALLEL, contextPerSequence: CONTEXT_PER_SEQUENCE, threads: THREADS });
  const targets: Target[] = [
    { name: 'kiln', client: new OpenAI({ baseURL: `${kilnProcess.url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 600_000 }), model: 'bench', pid: kilnProcess.child.pid! },
    { name: 'llama-server', client: new OpenAI({ baseURL: `${peer.url}/v1`, apiKey: 'none', maxRetries: 0, timeout: 600_000 }), model: 'bench', pid: peer.pid },
  ];

  const rows: Array<{ metric: string; kiln: number; peer: number; ratio: number; target: string; ok: boolean }> = [];
  let failures = 0;
  try {
    // Warm-up: page the weights in for both.
    for (const target of targets) await concurrentRound(target, 1, 999);

    for (const concurrency of LEVELS) {
      const stats = new Map<string, { tps: number[]; ttfts: number[] }>(targets.map((target) => [target.name, { tps: [], ttfts: [] }]));
      for (let round = 0; round < ROUNDS; round++) {
        const order = round % 2 === 0 ? targets : [...targets].reverse();
        for (const target of order) {
          const result = await concurrentRound(target, concurrency, round);
          failures += result.failed;
          stats.get(target.name)!.tps.push(result.tokensPerSecond);
          stats.get(target.name)!.ttfts.push(...result.ttfts);
          console.error(`c=${concurrency} round ${round} ${target.name}: ${result.tokensPerSecond.toFixed(1)} tok/s, TTFT p50 ${median(result.ttfts).toFixed(0)} ms`);
        }
      }
      const kiln = stats.get('kiln')!;
      const other = stats.get('llama-server')!;
      const tps = { kiln: median(kiln.tps), peer: median(other.tps) };
      rows.push({ metric: `aggregate tok/s @${concurrency}`, ...tps, ratio: tps.kiln / tps.peer, target: '≥ 1.0', ok: tps.kiln / tps.peer >= 1 });
      for (const p of [50, 95]) {
        const ttft = { kiln: percentile(kiln.ttfts, p), peer: percentile(other.ttfts, p) };
        rows.push({ metric: `TTFT p${p} ms @${concurrency}`, ...ttft, ratio: ttft.kiln / ttft.peer, target: p === 50 ? '≤ 1.0' : '—', ok: p !== 50 || ttft.kiln / ttft.peer <= 1 });
      }
    }

    const turns = new Map<string, { first: number[]; second: number[] }>(targets.map((target) => [target.name, { first: [], second: [] }]));
    for (let round = 0; round < Math.max(1, Math.min(ROUNDS, 2)); round++) {
      for (const target of round % 2 === 0 ? targets : [...targets].reverse()) {
        const result = await conversation(target, round);
        turns.get(target.name)!.first.push(result.first);
        turns.get(target.name)!.second.push(result.second);
        console.error(`2k conversation round ${round} ${target.name}: first-turn TTFT ${result.first.toFixed(0)} ms, second-turn ${result.second.toFixed(0)} ms`);
      }
    }
    for (const target of targets) {
      const t = turns.get(target.name)!;
      const ratio = median(t.second) / median(t.first);
      rows.push({ metric: `${target.name}: 2nd/1st turn TTFT (2k conv)`, kiln: target.name === 'kiln' ? ratio : Number.NaN, peer: target.name === 'kiln' ? Number.NaN : ratio, ratio, target: target.name === 'kiln' ? '≤ 0.2' : '—', ok: target.name !== 'kiln' || ratio <= 0.2 });
    }
    const secondTurn = { kiln: median(turns.get('kiln')!.second), peer: median(turns.get('llama-server')!.second) };
    rows.push({ metric: '2nd-turn TTFT ms (2k conv)', ...secondTurn, ratio: secondTurn.kiln / secondTurn.peer, target: '—', ok: true });

    const aborts = Number(flags.aborts);
    if (aborts > 0) {
      const before = await rssKb(targets[0]!.pid);
      await abortStorm(targets[0]!, aborts);
      await concurrentRound(targets[0]!, PARALLEL, 1000);
      const after = await rssKb(targets[0]!.pid);
      rows.push({ metric: `kiln RSS after/before ${aborts} aborted streams (${(before / 1024).toFixed(0)} → ${(after / 1024).toFixed(0)} MiB)`, kiln: Number.NaN, peer: Number.NaN, ratio: after / before, target: '≈ 1.0', ok: after / before < 1.1 });
    }
  } finally {
    await kilnProcess.stop();
    await peer.stop();
  }

  const fmt = (value: number) => (Number.isNaN(value) ? '' : value >= 100 ? value.toFixed(0) : value.toFixed(2));
  const table = [
    `Kiln vs llama-server — ${new Date().toISOString()} — kiln's llama.cpp: ${kilnBinary} — ${THREADS} threads, ${PARALLEL} sequences, ${MAX_TOKENS} tokens/request, ${ROUNDS} interleaved rounds, failed requests: ${failures}`,
    '',
    '| metric | kiln | llama-server | kiln/llama-server | target | met |',
    '| --- | ---: | ---: | ---: | --- | --- |',
    ...rows.map((row) => `| ${row.metric} | ${fmt(row.kiln)} | ${fmt(row.peer)} | ${fmt(row.ratio)} | ${row.target} | ${row.ok ? 'yes' : 'NO'} |`),
  ].join('\n');
  console.log(table);
  const dir = join(REPO_ROOT, 'bench-results');
  await mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replaceAll(':', '-').slice(0, 19);
  await writeFile(join(dir, `bench-${stamp}.md`), `${table}\n`);
  await writeFile(join(dir, `bench-${stamp}.json`), JSON.stringify({ rows, failures, threads: THREADS, model }, null, 2));
  await writeFile(join(dir, `bench-${stamp}.svg`), renderChart(rows.filter((row) => !row.metric.includes(':') && !row.metric.includes('RSS'))));
  console.error(`written to bench-results/bench-${stamp}.{md,json,svg}`);
  if (failures > 0) process.exitCode = 1;
}

await main();
