/**
 * Soak parts d and e (see soak.ts): readers with and without a client that stopped reading, and SIGTERM under load.
 */
import type { KilnProcess } from '../test/helpers/kiln-process.js';
import { StalledReader, post, stream, type StreamResult } from './soak-client.js';

export interface StreamsOptions {
  /** Model id on a never-ending tiny model with parallel 8. */
  streams: string;
  /** A second id for the same file, long enough that each chunk is ~3 KB (see soak.ts). */
  stalled: string;
  rounds: number;
  stallTimeoutMs: number;
  drainTimeoutMs: number;
}

const READERS = 7;
const READER_TOKENS = 1_000;
const STALLED_TOKENS = 16_000;

export const prompt = (text: string) => [{ role: 'system', content: 'You are a helpful assistant.' }, { role: 'user', content: text }];
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
export const tallyText = (tally: Map<string | number, number>) => [...tally].sort((a, b) => String(a[0]).localeCompare(String(b[0]))).map(([k, v]) => `${k}: ${v}`).join(', ');
export function count<K>(tally: Map<K, number>, key: K): void {
  tally.set(key, (tally.get(key) ?? 0) + 1);
}

async function readersRound(url: string, model: string, round: number): Promise<number> {
  const started = performance.now();
  const results = await Promise.all(Array.from({ length: READERS }, (_, i) => stream(url, { model, max_tokens: READER_TOKENS, messages: prompt(`Reader ${round}.${i}`) })));
  const seconds = (performance.now() - started) / 1000;
  for (const result of results) if (result.end !== 'complete') console.error(`  reader: ${result.end} ${result.detail}`);
  return results.reduce((sum, result) => sum + result.tokens, 0) / seconds;
}

export async function stalledPart(url: string, o: StreamsOptions): Promise<Array<[string, string]>> {
  const rounds = o.rounds;
  const without: number[] = [];
  const withStalled: number[] = [];
  const verdicts: string[] = [];
  let freed = '';
  await readersRound(url, o.streams, -1); // warm-up, not counted
  for (let round = 0; round < rounds; round++) {
    for (const stalled of round % 2 === 0 ? [false, true] : [true, false]) {
      if (!stalled) {
        without.push(await readersRound(url, o.streams, round * 2));
        console.error(`  round ${round} without: ${without.at(-1)!.toFixed(0)} tok/s`);
        continue;
      }
      const reader = new StalledReader(url, { model: o.stalled, max_tokens: STALLED_TOKENS, messages: prompt(`Stalled ${round}`) });
      const status = await reader.headers;
      const full = await reader.backedUp(60_000);
      withStalled.push(await readersRound(url, o.streams, round * 2 + 1));
      const closed = full === undefined ? undefined : await reader.serverClosed(full + o.stallTimeoutMs + 3_000);
      const got = await reader.drain(1_000);
      const verdict =
        status !== 200 ? `refused ${status}` : full === undefined ? 'never backed up' : closed === undefined ? `open > ${((o.stallTimeoutMs + 3_000) / 1000).toFixed(0)} s` : `${((closed - full) / 1000).toFixed(1)} s`;
      verdicts.push(verdict);
      console.error(`  round ${round} with a stalled reader: ${withStalled.at(-1)!.toFixed(0)} tok/s; stalled request: ${verdict}; client got ${(got.bytes / 1e6).toFixed(1)} MB, ${got.end}`);
      if (round === rounds - 1) {
        const probe = await post(url, { model: o.streams, n: 8, max_tokens: 4, messages: prompt('All sequences free?') }, 30_000);
        freed = `${probe.status} in ${probe.ms.toFixed(0)} ms`;
      }
    }
  }
  const ratios = withStalled.map((value, i) => value / without[i]!);
  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
  const fmt = (values: number[]) => values.map((value) => value.toFixed(0)).join(' / ');
  return [
    [`${READERS} readers × ${READER_TOKENS} tokens, tok/s without a stalled reader (rounds)`, fmt(without)],
    ['… with one stalled reader (n = 1, its socket buffers full)', fmt(withStalled)],
    ['ratio with/without: median of paired rounds (spread); ratio of the medians', `${median(ratios).toFixed(2)} (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}); ${(median(withStalled) / median(without)).toFixed(2)}`],
    [`stalled request ended, after its socket buffers filled (stall timeout ${o.stallTimeoutMs} ms)`, verdicts.join(' / ')],
    ['then one n = 8 request (all 8 sequences)', freed],
  ];
}

export async function sigtermPart(kiln: KilnProcess, o: StreamsOptions): Promise<Array<[string, string]>> {
  const url = kiln.url;
  const giveUp = new AbortController();
  const clients: Array<[string, Promise<StreamResult>]> = [
    ['reader, 300 tokens', stream(url, { model: o.streams, max_tokens: 300, messages: prompt('Term A') }, { signal: giveUp.signal })],
    ['reader, 300 tokens', stream(url, { model: o.streams, max_tokens: 300, messages: prompt('Term B') }, { signal: giveUp.signal })],
    ['reader, 16000 tokens', stream(url, { model: o.streams, max_tokens: STALLED_TOKENS, messages: prompt('Term C') }, { signal: giveUp.signal })],
  ];
  const stalled = new StalledReader(url, { model: o.stalled, max_tokens: STALLED_TOKENS, messages: prompt('Term stalled') });
  await stalled.headers;
  const full = await stalled.backedUp(60_000);
  const exited = new Promise<number | null>((resolve) => kiln.child.once('exit', (code) => resolve(code)));
  const signalled = performance.now();
  kiln.child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const code = await Promise.race([exited, new Promise<string>((resolve) => (timer = setTimeout(() => resolve('still running after 60 s'), 60_000)))]);
  clearTimeout(timer);
  const exitMs = performance.now() - signalled;
  // A server that does not exit may keep streaming: what a client has by then is what it got.
  const stop = setTimeout(() => giveUp.abort(), 2_000);
  const outcomes = await Promise.all(clients.map(async ([name, result]) => `${name}: ${describeEnd(await result)}`));
  clearTimeout(stop);
  const got = await stalled.drain(1_000);
  outcomes.push(`stalled reader${full === undefined ? ' (never backed up)' : ''}: ${got.end}${got.detail ? ` (${got.detail.slice(0, 60)})` : ''}`);
  return [
    [`SIGTERM with 3 streams and a stalled reader (drain ${o.drainTimeoutMs} ms): exit`, typeof code === 'string' ? code : `code ${code} after ${exitMs.toFixed(0)} ms`],
    ...outcomes.map((outcome): [string, string] => ['client', outcome]),
  ];
}

function describeEnd(result: StreamResult): string {
  return `${result.end}${result.detail ? ` (${result.detail.slice(0, 60)})` : ''}, ${result.tokens} tokens`;
}
