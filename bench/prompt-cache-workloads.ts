/**
 * Issue 13's prompt-cache workloads for `npm run bench`, each against llama-server in interleaved rounds:
 * - multi-turn: 16 conversations, each with a ~300-token document of its own, 3 turns issued round-robin (turn 1 of
 *   every conversation, then turn 2, ...; the answer appended to the history), 4 and 8 requests at a time. Later-turn
 *   (2–3) TTFT p50 and aggregate tokens/s (completion tokens over the workload's wall time).
 * - burst: 8 requests at once sharing a ~1,000-token system prompt, each with a short question of its own. TTFT p50.
 * - restart: the multi-turn conversations' first two turns, both servers restarted, then the third turn: its TTFT p50.
 *   Kiln runs with a disk tier (`prompt_cache.disk_dir`, written through from the RAM tier at its default size);
 *   llama-server keeps nothing across a restart by default.
 * Every round uses texts of its own (a round number at the start of every prompt), so each round starts with nothing
 * cached in either server. A round's figure is the p50 of its requests; a row is the median of the rounds, with the
 * lowest and highest round.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { interleaved, median, middle, spread, streamOnce, type Message, type Row, type Target } from './bench-client.js';
import { text } from './prompt-text.js';

const CONVERSATIONS = 16;
const TURNS = 3;
/** Words of filler per document: ~1.7 tokens a word with the Qwen2 vocabulary, so ~300 tokens. */
const DOCUMENT_WORDS = 175;
/** ~1,000 tokens. */
const SYSTEM_PROMPT_WORDS = 590;
const ANSWER_TOKENS = 32;
const BURST = 8;
const BURST_ANSWER_TOKENS = 8;
const MULTI_TURN_LEVELS = [4, 8];
const RESTART_CONCURRENCY = 8;

const SYSTEM = 'You are a helpful assistant.';
const FOLLOW_UPS = ['Which places does it name first, and why?', 'Now summarise your answer in one line.'];

export interface Outcome {
  rows: Row[];
  /** Per-round lines for the results file. */
  notes: string[];
  failures: number;
}

export interface Server {
  target: Target;
  stop(): Promise<void>;
}

/** Starts a fresh server process; Kiln's with its disk tier in `diskDir`. */
export type Launch = (name: Target['name'], diskDir: string) => Promise<Server>;

interface TurnRecord {
  turn: number;
  ttftMs: number;
  tokens: number;
  promptTokens: number;
  cachedTokens: number;
}

/**
 * The 16 conversations of one round (`set`: one per workload, level and round): a system message and the first user
 * turn with a document of its own. prompt-text's generator repeats itself for large salts (its arithmetic is in
 * doubles), so the salts stay small: 1 + 16 × set + i, distinct texts for sets below 30.
 */
function conversations(set: number): Message[][] {
  return Array.from({ length: CONVERSATIONS }, (_, i) => [
    { role: 'system', content: SYSTEM },
    { role: 'user', content: `Document ${set}.${i}:\n${text(DOCUMENT_WORDS, 1 + CONVERSATIONS * set + i)}\n\nSummarise the document.` },
  ]);
}

/**
 * Runs `turns` (1-based) of every conversation with `concurrency` requests in flight: requests are issued in
 * round-robin order (every conversation's turn t before any turn t + 1), and a turn waits for its conversation's
 * previous one. Mutates the histories.
 */
async function runTurns(target: Target, histories: Message[][], turns: number[], concurrency: number): Promise<{ records: TurnRecord[]; seconds: number; failures: number }> {
  const queue = turns.flatMap((turn) => histories.map((_, conversation) => ({ conversation, turn })));
  const pending: Array<Promise<unknown>> = histories.map(() => Promise.resolve());
  const records: TurnRecord[] = [];
  let failures = 0;
  let next = 0;
  const ask = async (conversation: number, turn: number) => {
    const history = histories[conversation]!;
    if (turn > 1) history.push({ role: 'user', content: FOLLOW_UPS[(turn - 2) % FOLLOW_UPS.length]! });
    try {
      const result = await streamOnce(target, history, ANSWER_TOKENS);
      records.push({ turn, ttftMs: result.ttftMs, tokens: result.tokens, promptTokens: result.promptTokens, cachedTokens: result.cachedTokens });
      history.push({ role: 'assistant', content: result.content });
    } catch (error) {
      failures++;
      console.error(`${target.name}: turn ${turn} of conversation ${conversation} failed: ${error}`);
      history.push({ role: 'assistant', content: '(no answer)' });
    }
  };
  const worker = async () => {
    while (next < queue.length) {
      const { conversation, turn } = queue[next++]!;
      const previous = pending[conversation]!;
      const current = previous.then(() => ask(conversation, turn));
      pending[conversation] = current;
      await current;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { records, seconds: (performance.now() - started) / 1000, failures };
}

interface RoundFigures {
  ttft: number[];
  tps: number[];
}

function figures(targets: Target[]): Map<Target['name'], RoundFigures> {
  return new Map(targets.map((target) => [target.name, { ttft: [], tps: [] }]));
}

function row(metric: string, kiln: number[], peer: number[], target: string, lowerIsBetter: boolean, bound: number): Row {
  const k = middle(kiln);
  const p = middle(peer);
  const ratio = k / p;
  return { metric, kiln: k, peer: p, ratio, target, ok: lowerIsBetter ? ratio <= bound : ratio >= bound, kilnSpread: spread(kiln), peerSpread: spread(peer) };
}

/** "cached 370/402": medians over the records of a round (NaN when the server reports no cached tokens). */
function cachedNote(records: TurnRecord[]): string {
  return `cached ${median(records.map((r) => r.cachedTokens)).toFixed(0)}/${median(records.map((r) => r.promptTokens)).toFixed(0)} prompt tokens`;
}

export async function multiTurn(targets: Target[], rounds: number): Promise<Outcome> {
  const outcome: Outcome = { rows: [], notes: [], failures: 0 };
  for (const concurrency of MULTI_TURN_LEVELS) {
    const stats = figures(targets);
    for (let round = 0; round < rounds; round++) {
      for (const target of interleaved(targets, round)) {
        const result = await runTurns(target, conversations(MULTI_TURN_LEVELS.indexOf(concurrency) * 10 + round), Array.from({ length: TURNS }, (_, i) => i + 1), concurrency);
        outcome.failures += result.failures;
        const later = result.records.filter((record) => record.turn > 1);
        const ttft = median(later.map((record) => record.ttftMs));
        const tps = result.records.reduce((sum, record) => sum + record.tokens, 0) / result.seconds;
        stats.get(target.name)!.ttft.push(ttft);
        stats.get(target.name)!.tps.push(tps);
        const line = `multi-turn @${concurrency} round ${round} ${target.name}: turns 2–3 TTFT p50 ${ttft.toFixed(0)} ms (${cachedNote(later)}), turn 1 TTFT p50 ${median(result.records.filter((r) => r.turn === 1).map((r) => r.ttftMs)).toFixed(0)} ms, ${tps.toFixed(1)} tok/s over ${result.seconds.toFixed(1)} s`;
        console.error(line);
        outcome.notes.push(line);
      }
    }
    const kiln = stats.get('kiln')!;
    const peer = stats.get('llama-server')!;
    outcome.rows.push(row(`TTFT p50 ms, turns 2–3, multi-turn @${concurrency}`, kiln.ttft, peer.ttft, '≤ 0.8', true, 0.8));
    outcome.rows.push(row(`aggregate tok/s, multi-turn @${concurrency}`, kiln.tps, peer.tps, '≥ 1.0', false, 1));
  }
  return outcome;
}

export async function burst(targets: Target[], rounds: number): Promise<Outcome> {
  const outcome: Outcome = { rows: [], notes: [], failures: 0 };
  const stats = figures(targets);
  for (let round = 0; round < rounds; round++) {
    // The round number opens the system prompt: neither server has seen its prefix.
    const system: Message = { role: 'system', content: `Burst round ${round}. You answer questions about this reference text.\n${text(SYSTEM_PROMPT_WORDS, 600 + round)}` };
    for (const target of interleaved(targets, round)) {
      const results = await Promise.allSettled(
        Array.from({ length: BURST }, (_, i) => streamOnce(target, [system, { role: 'user', content: `Question ${i}: what does it say about ${text(6, 700 + round * 10 + i)}?` }], BURST_ANSWER_TOKENS)),
      );
      const ok = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
      for (const result of results) if (result.status === 'rejected') console.error(`${target.name}: burst request failed: ${result.reason}`);
      outcome.failures += results.length - ok.length;
      const ttfts = ok.map((result) => result.ttftMs);
      stats.get(target.name)!.ttft.push(median(ttfts));
      const line = `burst round ${round} ${target.name}: TTFT p50 ${median(ttfts).toFixed(0)} ms (${Math.min(...ttfts).toFixed(0)}–${Math.max(...ttfts).toFixed(0)}), ${cachedNote(ok.map((r) => ({ ...r, turn: 1 })))}`;
      console.error(line);
      outcome.notes.push(line);
    }
  }
  outcome.rows.push(row(`TTFT p50 ms, burst of ${BURST} sharing a ~1k-token system prompt`, stats.get('kiln')!.ttft, stats.get('llama-server')!.ttft, '≤ 0.5', true, 0.5));
  return outcome;
}

/** Runs on servers of its own, started (and restarted) by `launch`. */
export async function restart(rounds: number, launch: Launch): Promise<Outcome> {
  const outcome: Outcome = { rows: [], notes: [], failures: 0 };
  const names: Array<Target['name']> = ['kiln', 'llama-server'];
  const stats = new Map(names.map((name) => [name, [] as number[]]));
  for (let round = 0; round < rounds; round++) {
    for (const name of interleaved(names, round)) {
      const diskDir = await mkdtemp(join(tmpdir(), 'kiln-bench-disk-'));
      try {
        const histories = conversations(20 + round);
        let server = await launch(name, diskDir);
        try {
          const first = await runTurns(server.target, histories, [1, 2], RESTART_CONCURRENCY);
          outcome.failures += first.failures;
        } finally {
          await server.stop();
        }
        server = await launch(name, diskDir);
        try {
          const after = await runTurns(server.target, histories, [3], RESTART_CONCURRENCY);
          outcome.failures += after.failures;
          const ttft = median(after.records.map((record) => record.ttftMs));
          stats.get(name)!.push(ttft);
          const restored = after.records.filter((record) => record.cachedTokens >= record.promptTokens / 2).length;
          const line = `restart round ${round} ${name}: turn-3 TTFT p50 ${ttft.toFixed(0)} ms after the restart (${cachedNote(after.records)}; ${restored} of ${after.records.length} with at least half the prompt cached)`;
          console.error(line);
          outcome.notes.push(line);
        } finally {
          await server.stop();
        }
      } finally {
        await rm(diskDir, { recursive: true, force: true });
      }
    }
  }
  outcome.rows.push(row('TTFT p50 ms, turn 3 after a restart of both servers', stats.get('kiln')!, stats.get('llama-server')!, '≤ 0.3', true, 0.3));
  return outcome;
}
