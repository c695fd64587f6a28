/**
 * `npm run bench` — Kiln against llama.cpp's own server on the same GGUF, threads and machine, driven by the same
 * `openai` client in interleaved rounds. Prints and writes (bench-results/) a table of Kiln/llama-server ratios.
 * Workloads (`--workloads a,b,...`, default all):
 *   fresh        aggregate tokens/s and TTFT p50/p95 at 1, 4 and 8 concurrent streams, fresh prompts
 *   second-turn  the second-turn TTFT of a ~2k-token conversation
 *   multi-turn   16 conversations × 3 turns, 4 and 8 at a time (prompt-cache-workloads.ts)
 *   burst        8 requests sharing a ~1k-token system prompt (prompt-cache-workloads.ts)
 *   restart      later turns after both servers restart; Kiln with its disk tier (prompt-cache-workloads.ts)
 * Options:
 *   --llama-server <path>   use this llama-server instead of building one
 *   --model <file.gguf>     use this model instead of the generated Qwen2.5-0.5B-shaped one
 *   --rounds <n>            rounds per workload and concurrency level (default 3; at most 10 with multi-turn, restart)
 *   --max-tokens <n>        tokens per request of the fresh workload (default 128)
 *   --aborts <n>            also send n streams that are aborted mid-way and report Kiln's RSS before/after
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureBenchModel, QWEN25_05B_SHAPE } from '../src/gguf/bench-model.js';
import { startKiln, writeConfig } from '../test/helpers/kiln-process.js';
import { client, interleaved, median, percentile, streamOnce, type Row, type Target } from './bench-client.js';
import { ensureLocalNodeLlamaCppBuild, LLAMA_CPP_CACHE, locateLlamaServer, startLlamaServer } from './llama-server.js';
import { renderChart } from './chart.js';
import { burst, multiTurn, restart, type Outcome, type Server } from './prompt-cache-workloads.js';
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
    workloads: { type: 'string', default: 'fresh,second-turn,multi-turn,burst,restart' },
    // Send an explicit seed with every request. Kiln then decodes the prompt's last token on its own so that the
    // output does not depend on the prefix cache (docs/architecture.md, determinism): one extra small decode.
    seeded: { type: 'boolean', default: false },
  },
});

const ROUNDS = Number(flags.rounds);
const MAX_TOKENS = Number(flags['max-tokens']);
const LEVELS = flags.concurrency!.split(',').map(Number);
const WORKLOADS = ['fresh', 'second-turn', 'multi-turn', 'burst', 'restart'];
const SELECTED = new Set(flags.workloads!.split(','));
for (const name of SELECTED) if (!WORKLOADS.includes(name)) throw new Error(`--workloads: unknown workload '${name}' (known: ${WORKLOADS.join(', ')})`);
// The prompt-cache workloads give each round texts of their own from a small range of salts (prompt-cache-workloads.ts).
if (ROUNDS > 10 && ['multi-turn', 'restart'].some((name) => SELECTED.has(name))) throw new Error('--rounds: at most 10 for the multi-turn and restart workloads');
/** Sequences of both servers: the fresh workload's highest level, 8 for the others. */
const PARALLEL = Math.max(...(SELECTED.has('fresh') ? LEVELS : [1]), [...SELECTED].some((name) => name !== 'fresh') ? 8 : 1);
const CONTEXT_PER_SEQUENCE = 4096;
const THREADS = availableParallelism();
/**
 * Every request carries a system message, so both servers evaluate the same prompt: without one, Kiln renders the
 * model's Jinja template, which adds the template's default system prompt, while llama-server (run with --no-jinja,
 * see llama-server.ts) renders plain ChatML without it — 10 more tokens per request for Kiln.
 */
const SYSTEM = { role: 'system' as const, content: 'You are a helpful assistant.' };
const seedOf = (seed: number) => (flags.seeded ? seed : undefined);

async function concurrentRound(target: Target, concurrency: number, round: number): Promise<{ tokensPerSecond: number; ttfts: number[]; failed: number }> {
  const started = performance.now();
  const results = await Promise.allSettled(
    Array.from({ length: concurrency }, (_, i) =>
      // Every level and round gets prompts of its own: a prompt seen before would be a prefix-cache hit for whichever
      // server still holds it (llama-server keeps up to 8 old prompts in its least recently used slots, Kiln packs
      // requests into its low slots), and TTFT here measures prefill under concurrency, not cache luck.
      streamOnce(target, [SYSTEM, { role: 'user', content: `Request ${concurrency}.${round}.${i}: ${text(48, concurrency * 10_000 + round * 100 + i)}` }], MAX_TOKENS, seedOf(round * 100 + i)),
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
  const first = await streamOnce(target, [system, user], 16, seedOf(round));
  const second = await streamOnce(target, [system, user, { role: 'assistant', content: first.content }, { role: 'user', content: 'Continue, please.' }], 16, seedOf(round + 1));
  return { first: first.ttftMs, second: second.ttftMs };
}

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
        await streamOnce(target, [SYSTEM, { role: 'user', content: text(24, done + i) }], 256, seedOf(done + i), controller.signal);
      }),
    );
  }
}

/**
 * Starts one server on the model: Kiln (prompt cache at its default, plus a disk tier in `diskDir` when given; then
 * its prompt-cache log lines are printed when it stops) or llama-server.
 */
async function launch(name: Target['name'], model: string, binary: string, diskDir?: string): Promise<Server> {
  if (name === 'kiln') {
    const config = {
      models: [{ id: 'bench', file: model, preload: true, keep_alive: -1, parallel: PARALLEL, context_size: CONTEXT_PER_SEQUENCE, threads: THREADS, ...(diskDir !== undefined ? { prompt_cache: { disk_dir: diskDir } } : {}) }],
    };
    const kiln = await startKiln(['--config', await writeConfig(config), '--log-level', diskDir !== undefined ? 'info' : 'warn']);
    const stop = async () => {
      await kiln.stop();
      if (diskDir !== undefined) for (const line of kiln.output().split('\n')) if (line.includes('prompt cache')) console.error(`kiln: ${line}`);
    };
    return { target: { name, client: client(kiln.url), model: 'bench', pid: kiln.child.pid! }, stop };
  }
  const peer = await startLlamaServer(binary, { model, port: 18000 + Math.floor(Math.random() * 1000), parallel: PARALLEL, contextPerSequence: CONTEXT_PER_SEQUENCE, threads: THREADS });
  return { target: { name, client: client(peer.url), model: 'bench', pid: peer.pid }, stop: () => peer.stop() };
}

async function fresh(targets: Target[]): Promise<Outcome> {
  const outcome: Outcome = { rows: [], notes: [], failures: 0 };
  for (const concurrency of LEVELS) {
    const stats = new Map<string, { tps: number[]; ttfts: number[] }>(targets.map((target) => [target.name, { tps: [], ttfts: [] }]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const target of interleaved(targets, round)) {
        const result = await concurrentRound(target, concurrency, round);
        outcome.failures += result.failed;
        stats.get(target.name)!.tps.push(result.tokensPerSecond);
        stats.get(target.name)!.ttfts.push(...result.ttfts);
        console.error(`c=${concurrency} round ${round} ${target.name}: ${result.tokensPerSecond.toFixed(1)} tok/s, TTFT p50 ${median(result.ttfts).toFixed(0)} ms`);
      }
    }
    const kiln = stats.get('kiln')!;
    const other = stats.get('llama-server')!;
    const tps = { kiln: median(kiln.tps), peer: median(other.tps) };
    outcome.rows.push({ metric: `aggregate tok/s @${concurrency}`, ...tps, ratio: tps.kiln / tps.peer, target: '≥ 1.0', ok: tps.kiln / tps.peer >= 1 });
    for (const p of [50, 95]) {
      const ttft = { kiln: percentile(kiln.ttfts, p), peer: percentile(other.ttfts, p) };
      outcome.rows.push({ metric: `TTFT p${p} ms @${concurrency}`, ...ttft, ratio: ttft.kiln / ttft.peer, target: p === 50 ? '≤ 1.0' : '—', ok: p !== 50 || ttft.kiln / ttft.peer <= 1 });
    }
  }
  return outcome;
}

async function secondTurn(targets: Target[]): Promise<Row[]> {
  const rows: Row[] = [];
  const turns = new Map<string, { first: number[]; second: number[] }>(targets.map((target) => [target.name, { first: [], second: [] }]));
  for (let round = 0; round < Math.max(1, Math.min(ROUNDS, 2)); round++) {
    for (const target of interleaved(targets, round)) {
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
  const second = { kiln: median(turns.get('kiln')!.second), peer: median(turns.get('llama-server')!.second) };
  rows.push({ metric: '2nd-turn TTFT ms (2k conv)', ...second, ratio: second.kiln / second.peer, target: '—', ok: true });
  return rows;
}

async function main(): Promise<void> {
  const model = flags.model ?? (await ensureBenchModel({ ...QWEN25_05B_SHAPE, neverEnd: true, asciiOutput: true, cacheDir: dirname(LLAMA_CPP_CACHE) }));
  const binary = locateLlamaServer(flags['llama-server']);
  const kilnBinary = ensureLocalNodeLlamaCppBuild();
  const load = loadavg()[0]!.toFixed(2);
  console.error(`model ${model}\nllama-server ${binary}\nkiln's llama.cpp: ${kilnBinary}\nthreads ${THREADS}, ${PARALLEL} sequences × ${CONTEXT_PER_SEQUENCE} tokens, ${ROUNDS} rounds, ${MAX_TOKENS} tokens per request, workloads ${[...SELECTED].join(',')}, load ${load}`);

  const all: Outcome = { rows: [], notes: [], failures: 0 };
  const add = (outcome: Outcome) => {
    all.rows.push(...outcome.rows);
    all.notes.push(...outcome.notes);
    all.failures += outcome.failures;
  };
  if (['fresh', 'second-turn', 'multi-turn', 'burst'].some((name) => SELECTED.has(name)) || Number(flags.aborts) > 0) {
    const servers = [await launch('kiln', model, binary), await launch('llama-server', model, binary)];
    const targets = servers.map((server) => server.target);
    try {
      // Warm-up: page the weights in for both.
      for (const target of targets) await concurrentRound(target, 1, 999);
      if (SELECTED.has('fresh')) add(await fresh(targets));
      if (SELECTED.has('second-turn')) add({ rows: await secondTurn(targets), notes: [], failures: 0 });
      if (SELECTED.has('multi-turn')) add(await multiTurn(targets, ROUNDS));
      if (SELECTED.has('burst')) add(await burst(targets, ROUNDS));
      const aborts = Number(flags.aborts);
      if (aborts > 0) {
        const before = await rssKb(targets[0]!.pid);
        await abortStorm(targets[0]!, aborts);
        await concurrentRound(targets[0]!, PARALLEL, 1000);
        const after = await rssKb(targets[0]!.pid);
        all.rows.push({ metric: `kiln RSS after/before ${aborts} aborted streams (${(before / 1024).toFixed(0)} → ${(after / 1024).toFixed(0)} MiB)`, kiln: Number.NaN, peer: Number.NaN, ratio: after / before, target: '≈ 1.0', ok: after / before < 1.1 });
      }
    } finally {
      for (const server of servers) await server.stop();
    }
  }
  if (SELECTED.has('restart')) add(await restart(ROUNDS, (name, diskDir) => launch(name, model, binary, name === 'kiln' ? diskDir : undefined)));

  const fmt = (value: number) => (Number.isNaN(value) ? '' : value >= 100 ? value.toFixed(0) : value.toFixed(2));
  const cell = (value: number, range?: [number, number]) => (range === undefined ? fmt(value) : `${fmt(value)} (${fmt(range[0])}–${fmt(range[1])})`);
  const table = [
    `Kiln vs llama-server — ${new Date().toISOString()} — load ${load} — kiln's llama.cpp: ${kilnBinary} — ${THREADS} threads, ${PARALLEL} sequences, ${MAX_TOKENS} tokens/request (fresh), ${ROUNDS} interleaved rounds, failed requests: ${all.failures}`,
    `Prompt caches: Kiln's on at its default size (no prompt_cache setting; the restart workload adds a disk_dir), llama-server's at its defaults (--cache-ram 8192 MiB, idle slots saved to it)`,
    '',
    '| metric | kiln | llama-server | kiln/llama-server | target | met |',
    '| --- | ---: | ---: | ---: | --- | --- |',
    ...all.rows.map((row) => `| ${row.metric} | ${cell(row.kiln, row.kilnSpread)} | ${cell(row.peer, row.peerSpread)} | ${fmt(row.ratio)} | ${row.target} | ${row.ok ? 'yes' : 'NO'} |`),
    ...(all.notes.length > 0 ? ['', 'Rounds:', '', ...all.notes.map((note) => `- ${note}`)] : []),
  ].join('\n');
  console.log(table);
  const dir = join(REPO_ROOT, 'bench-results');
  await mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replaceAll(':', '-').slice(0, 19);
  await writeFile(join(dir, `bench-${stamp}.md`), `${table}\n`);
  await writeFile(join(dir, `bench-${stamp}.json`), JSON.stringify({ rows: all.rows, notes: all.notes, failures: all.failures, threads: THREADS, model, load }, null, 2));
  await writeFile(join(dir, `bench-${stamp}.svg`), renderChart(all.rows.filter((row) => !row.metric.includes(':') && !row.metric.includes('RSS'))));
  console.error(`written to bench-results/bench-${stamp}.{md,json,svg}`);
  if (all.failures > 0) process.exitCode = 1;
}

await main();
