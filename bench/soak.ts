/**
 * `npm run soak` — starts the real server (bin/kiln.cjs → dist/) on tiny random-weight models and leans on it the way
 * hostile or unlucky clients do, printing figures per part, each with the server's RSS before, after and at peak and
 * the worst and p99 latency of `/health` polled every 20 ms meanwhile (the server exposes no event-loop metric; a
 * health check that waits is the event loop that waits):
 *   a  N fuzzed bodies (test/helpers/fuzz-bodies.ts, the fuzz test's generators at a larger scale): status tally,
 *      anything that is neither a 2xx nor a contract 4xx/429/503
 *   b  overload at 16× capacity (64 requests on parallel 4): status tally, time to the first refusal
 *   c  1,000 streams aborted after their first chunk, then one n = 8 request that must be answered at once
 *   d  7 streams reading normally, without and with one stream whose client stopped reading (parallel 8): their
 *      aggregate tokens/s as a ratio (median of alternated rounds), and whether the stalled request ends after the
 *      stall timeout and frees its sequence
 *   e  SIGTERM with streams running and one stalled reader: time to exit and what each client received
 *   m  (only when asked for) the biggest bodies the server accepts, 4 at a time: RSS at peak and after each kind
 * Options: --bodies N (2000), --rounds R (5), --part a,b,c,d,e, --seed S, --workers W (concurrent fuzz requests, 4),
 * --arena-max N (MALLOC_ARENA_MAX for the server, to tell fragmentation from growth), --rss-log MiB (print each body
 * after which the server's RSS moved by at least that much; use with --workers 1), --real-vocab (the fuzzed chat model
 * gets Qwen2's real 151,936-token vocabulary), --kinds i,j (part m: only these kinds of body).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureBenchModel } from '../src/gguf/bench-model.js';
import { ensureTinyModel } from '../src/gguf/tiny-model.js';
import { checkResponse, failureSignature } from '../test/helpers/contract-check.js';
import { FUZZ_MODEL, FUZZ_REASONING_MODEL, SOAK_SCALE, sampleFuzzCases, type FuzzCase } from '../test/helpers/fuzz-bodies.js';
import { REPO_ROOT, startKiln, writeConfig, type KilnProcess } from '../test/helpers/kiln-process.js';
import { HealthPoller, RssWatch, post, rssMiB, send, stream } from './soak-client.js';
import { memoryPart } from './soak-memory.js';
import { count, prompt, sigtermPart, stalledPart, tallyText } from './soak-streams.js';

const { values: flags } = parseArgs({
  options: {
    bodies: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '5' },
    part: { type: 'string', default: 'a,b,c,d,e' },
    seed: { type: 'string', default: '20261130' },
    'arena-max': { type: 'string' },
    workers: { type: 'string', default: '4' },
    'rss-log': { type: 'string' },
    'real-vocab': { type: 'boolean', default: false },
    kinds: { type: 'string' },
  },
});
const PARTS = new Set(flags.part!.split(','));
const OVERLOAD = 'soak/overload';
const STREAMS = 'soak/streams';
/** The server's default body limit (src/http/server.ts). */
const BODY_LIMIT = 4 * 1024 * 1024;
const STALL_TIMEOUT_MS = 10_000;
const DRAIN_TIMEOUT_MS = 4_000;
/**
 * A second id for the streams model, used by the stalled readers: every chunk repeats the model id, so ~3 KB per
 * token fills a client's socket buffers (megabytes) in seconds rather than the minutes 250-byte chunks would take.
 */
const STALLED_ID = `soak/streams/${'x'.repeat(3_000)}`;
/** Tiny layers, but Qwen2's real tokenizer (151,936 tokens): a ~27 MB file, where grammars and tokenizing cost what they do on real models. */
const REAL_VOCAB_SHAPE = { layers: 2, embeddingLength: 64, heads: 4, kvHeads: 2, feedForwardLength: 128, contextLength: 4096 };

interface Row {
  part: string;
  figure: string;
  value: string;
  rss: string;
  health: string;
}
const rows: Row[] = [];

async function measured(kiln: KilnProcess, poller: HealthPoller, part: string, run: () => Promise<Array<[string, string]>>): Promise<void> {
  const pid = kiln.child.pid!;
  poller.take();
  const watch = await RssWatch.start(pid);
  const started = performance.now();
  const figures = await run();
  const rss = await watch.stop();
  const health = poller.take();
  const mib = (value: number) => (Number.isNaN(value) ? 'exited' : value.toFixed(0));
  const rssText = `${mib(rss.before)} → ${mib(rss.after)} (peak ${mib(rss.peak)})`;
  const healthText = `${health.worst.toFixed(0)} / ${health.p99.toFixed(0)}`;
  console.error(`part ${part} done in ${((performance.now() - started) / 1000).toFixed(1)} s; RSS MiB ${rssText}; /health worst/p99 ms ${healthText} (${health.count} polls)`);
  figures.forEach(([figure, value], i) => rows.push({ part: i === 0 ? part : '', figure, value, rss: i === 0 ? rssText : '', health: i === 0 ? healthText : '' }));
}


async function fuzzPart(url: string, pid: number, cases: FuzzCase[]): Promise<Array<[string, string]>> {
  const rssStep = flags['rss-log'] === undefined ? undefined : Number(flags['rss-log']);
  let rss = await rssMiB(pid);
  const tally = new Map<string | number, number>();
  const failures = new Map<string, { count: number; example: string }>();
  let slowest = { ms: 0, label: '' };
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const fuzzCase = cases[next++]!;
      const headers: Record<string, string> = fuzzCase.contentType === undefined ? {} : { 'content-type': fuzzCase.contentType };
      let failure: string | undefined;
      try {
        const result = await send(url, '/v1/chat/completions', fuzzCase.payload, headers, 120_000);
        count(tally, result.status);
        failure = checkResponse(result.status, result.contentType, result.body, { allowOverload: true });
        if (result.ms > slowest.ms) slowest = { ms: result.ms, label: fuzzCase.label };
        if (rssStep !== undefined) {
          // Which bodies move the server's RSS (meaningful with --workers 1).
          const now = await rssMiB(pid);
          if (Math.abs(now - rss) >= rssStep) console.error(`  rss ${rss.toFixed(0)} → ${now.toFixed(0)} MiB after #${cases.indexOf(fuzzCase)} (${result.status}, ${result.ms.toFixed(0)} ms): ${fuzzCase.label.slice(0, 200)}`);
          rss = now;
        }
      } catch (error) {
        const message = (error as Error).message;
        // Over the body limit the server answers 413 and closes without reading the rest; a client still sending
        // sees its write fail instead of the answer.
        if (Buffer.byteLength(fuzzCase.payload) > BODY_LIMIT && /EPIPE|ECONNRESET/.test(message)) {
          count(tally, '413 unread (closed mid-upload)');
          continue;
        }
        count(tally, 'no answer');
        failure = `no answer: ${message}`;
      }
      if (failure === undefined) continue;
      const group = failures.get(failureSignature(failure)) ?? { count: 0, example: `${fuzzCase.label.slice(0, 200)} → ${failure.slice(0, 200)}` };
      group.count++;
      failures.set(failureSignature(failure), group);
    }
  };
  await Promise.all(Array.from({ length: Number(flags.workers) }, worker));
  for (const { count: n, example } of failures.values()) console.error(`  FAIL ${n}×: ${example}`);
  const bad = [...failures.values()].reduce((sum, g) => sum + g.count, 0);
  return [
    [`${cases.length} fuzzed bodies (seed ${flags.seed}), statuses`, tallyText(tally)],
    ['not a 2xx / contract 4xx / 429 / 503', `${bad} (${failures.size} kinds)`],
    ['slowest request', `${slowest.ms.toFixed(0)} ms: ${slowest.label.slice(0, 90)}`],
  ];
}

async function overloadPart(url: string): Promise<Array<[string, string]>> {
  const started = performance.now();
  let firstRefusal = Number.NaN;
  const tally = new Map<number | string, number>();
  await Promise.all(
    Array.from({ length: 64 }, async (_, i) => {
      try {
        const result = await post(url, { model: OVERLOAD, max_tokens: 256, messages: prompt(`Overload ${i}`) });
        count(tally, result.status);
        if (result.status !== 200 && Number.isNaN(firstRefusal)) firstRefusal = performance.now() - started;
        if (result.status !== 200 && result.retryAfter === undefined) count(tally, `${result.status} without Retry-After`);
        if (![200, 429, 503].includes(result.status)) console.error(`  overload: ${result.status} ${result.body.slice(0, 200)}`);
      } catch (error) {
        count(tally, 'no answer');
        console.error(`  overload: ${(error as Error).message}`);
      }
    }),
  );
  return [
    ['64 requests on parallel 4 + queue 8, statuses', tallyText(tally)],
    ['time to first refusal', `${firstRefusal.toFixed(0)} ms`],
  ];
}

async function abortPart(url: string): Promise<Array<[string, string]>> {
  const total = 1000;
  const ends = new Map<string, number>();
  let next = 0;
  const worker = async () => {
    while (next < total) {
      const i = next++;
      const result = await stream(url, { model: STREAMS, max_tokens: 256, messages: prompt(`Abort ${i}`) }, { abortAfterFirstChunk: true });
      count(ends, result.status === 200 ? 'aborted' : `status ${result.status}`);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  const probe = await post(url, { model: STREAMS, n: 8, max_tokens: 8, messages: prompt('After the aborts') }, 30_000);
  return [
    [`${total} streams aborted after the first chunk`, tallyText(ends)],
    ['then one n = 8 request (all 8 sequences)', `${probe.status} in ${probe.ms.toFixed(0)} ms`],
  ];
}

async function main(): Promise<void> {
  const [chat, reasoning, overload, streams] = await Promise.all([
    flags['real-vocab'] ? ensureBenchModel(REAL_VOCAB_SHAPE) : ensureTinyModel({ flavor: 'qwen2.5' }),
    ensureTinyModel({ flavor: 'r1-distill' }),
    ensureTinyModel({ neverEnd: true, seed: 2 }),
    ensureTinyModel({ neverEnd: true, seed: 3 }),
  ]);
  // One thread: the prebuilt llama.cpp spawns its threads per decode, which costs more than a tiny model's decode.
  const small = { parallel: 4, context_size: 512, threads: 1, queue_depth: 16, queue_wait_ms: 30_000 };
  const models = [
    { id: FUZZ_MODEL, file: chat, ...small },
    { id: FUZZ_REASONING_MODEL, file: reasoning, ...small },
    { id: OVERLOAD, file: overload, parallel: 4, context_size: 1024, threads: 1, queue_depth: 8, queue_wait_ms: 2_000 },
    { id: STREAMS, file: streams, parallel: 8, context_size: 16_500, threads: 1, queue_depth: 8, queue_wait_ms: 3_000 },
    { id: STALLED_ID, file: streams },
  ];
  const env = flags['arena-max'] === undefined ? {} : { MALLOC_ARENA_MAX: flags['arena-max'] };
  const args = ['--log-level', 'warn'];
  let kiln: KilnProcess;
  try {
    kiln = await startKiln(['--config', await writeConfig({ server: { stall_timeout_ms: STALL_TIMEOUT_MS, drain_timeout_ms: DRAIN_TIMEOUT_MS }, models }), ...args], env);
  } catch (error) {
    // A server from before these settings existed (to compare with an older commit): run with its defaults.
    if (!/(stall|drain)_timeout_ms/.test((error as Error).message)) throw error;
    console.error('this server has no stall_timeout_ms / drain_timeout_ms: running without them');
    kiln = await startKiln(['--config', await writeConfig({ models }), ...args], env);
  }
  const poller = new HealthPoller(kiln.url);
  const began = new Date().toISOString();
  try {
    if (PARTS.has('a')) {
      const cases = sampleFuzzCases(Number(flags.bodies), Number(flags.seed), SOAK_SCALE);
      await measured(kiln, poller, 'a fuzz', () => fuzzPart(kiln.url, kiln.child.pid!, cases));
    }
    if (PARTS.has('b')) await measured(kiln, poller, 'b overload', () => overloadPart(kiln.url));
    if (PARTS.has('c')) await measured(kiln, poller, 'c aborts', () => abortPart(kiln.url));
    const streams = { streams: STREAMS, stalled: STALLED_ID, rounds: Number(flags.rounds), stallTimeoutMs: STALL_TIMEOUT_MS, drainTimeoutMs: DRAIN_TIMEOUT_MS };
    if (PARTS.has('m')) await measured(kiln, poller, 'm big bodies', () => memoryPart(kiln.url, kiln.child.pid!, FUZZ_MODEL, Number(flags.rounds), flags.kinds?.split(',').map(Number)));
    if (PARTS.has('d')) await measured(kiln, poller, 'd stalled reader', () => stalledPart(kiln.url, streams));
    if (PARTS.has('e')) await measured(kiln, poller, 'e SIGTERM', () => sigtermPart(kiln, streams));
  } finally {
    await poller.stop();
    await kiln.stop();
    // A 500 is logged with its stack at error level: show where it came from.
    const errors = kiln.output().split('\n').filter((line) => line.includes('"level":50'));
    for (const line of errors.slice(0, 5)) console.error(`  server error log: ${line.slice(0, 1500)}`);
  }
  const escape = (text: string) => text.replaceAll('|', '\\|');
  const table = [
    `Kiln soak — ${began} — tiny models, threads 1, stall timeout ${STALL_TIMEOUT_MS} ms, drain ${DRAIN_TIMEOUT_MS} ms${flags['arena-max'] ? `, MALLOC_ARENA_MAX=${flags['arena-max']}` : ''}`,
    '',
    '| part | figure | value | RSS MiB before → after (peak) | /health worst / p99 ms |',
    '| --- | --- | --- | --- | --- |',
    ...rows.map((row) => `| ${row.part} | ${escape(row.figure)} | ${escape(row.value)} | ${row.rss} | ${row.health} |`),
  ].join('\n');
  console.log(table);
  const dir = join(REPO_ROOT, 'bench-results');
  await mkdir(dir, { recursive: true });
  const stamp = began.replaceAll(':', '-').slice(0, 19);
  await writeFile(join(dir, `soak-${stamp}.md`), `${table}\n`);
  console.error(`written to bench-results/soak-${stamp}.md`);
}

await main();
