/**
 * The prompt cache holds its budget through the real server: 150 distinct conversations overflow a 1 MiB RAM tier
 * many times over. Meanwhile `kiln:prompt_cache_bytes{tier="ram"}` never goes above the budget, the cache's directory
 * on /dev/shm keeps few files and few bytes (evicted states are deleted, not just forgotten), and a conversation's
 * second turn, a few conversations after its first, still starts from its cached state.
 * bench/prompt-cache-memory.ts runs the same at 1,000 conversations and watches the RSS as well.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

const MODEL = 'tiny-bounded';
const BUDGET = 2 ** 20;
const PARALLEL = 2;
const CONVERSATIONS = 150;
/** A conversation's second turn comes this many conversations after its first: its sequence has gone to others. */
const LAG = 3;
/** Where the cache puts its directory (prompt-cache.ts). */
const BASE = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();

let kiln: KilnProcess;

before(async () => {
  const file = await ensureTinyModel();
  const model = { id: MODEL, file, parallel: PARALLEL, context_size: 1024, threads: 1, preload: true, prompt_cache: { ram_mb: BUDGET / 2 ** 20 } };
  kiln = await startKiln(['--config', await writeConfig({ models: [model] })]);
});

after(async () => {
  await kiln?.stop();
});

async function ramMetrics(): Promise<{ bytes: number; entries: number }> {
  const text = await (await fetch(`${kiln.url}/metrics`)).text();
  const value = (name: string) => {
    const line = text.split('\n').find((each) => each.startsWith(`${name}{`) && each.includes(`model_name="${MODEL}"`) && each.includes('tier="ram"'));
    assert.ok(line !== undefined, `${name} for ${MODEL} on /metrics`);
    return Number(line.slice(line.lastIndexOf(' ') + 1));
  };
  return { bytes: value('kiln:prompt_cache_bytes'), entries: value('kiln:prompt_cache_entries') };
}

/** Files and bytes in the server's cache directories (kiln-prompt-cache-<pid>-*); files deleted meanwhile are skipped. */
async function cacheFiles(): Promise<{ files: number; bytes: number; dirs: number }> {
  const dirs = (await readdir(BASE)).filter((name) => name.startsWith(`kiln-prompt-cache-${kiln.child.pid}-`));
  let files = 0;
  let bytes = 0;
  for (const dir of dirs) {
    for (const name of await readdir(join(BASE, dir)).catch(() => [] as string[])) {
      const info = await stat(join(BASE, dir, name)).catch(() => undefined);
      if (info === undefined) continue;
      files++;
      bytes += info.size;
    }
  }
  return { files, bytes, dirs: dirs.length };
}

interface Usage {
  prompt_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number };
}

async function ask(messages: Array<{ role: string; content: string }>): Promise<{ content: string; usage: Usage }> {
  const response = await fetch(`${kiln.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages, max_tokens: 4 }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  const body = (await response.json()) as { choices: Array<{ message: { content: string } }>; usage: Usage };
  return { content: body.choices[0]!.message.content, usage: body.usage };
}

/** Conversation i's own document (~200 tokens of the tiny model's byte vocabulary: a state of ~60 KB). */
function firstTurn(i: number): string {
  const lines = Array.from({ length: 4 }, (_, line) => `Line ${line} of record ${i}: value ${(i * 37 + line * 11) % 1009}, checked.`);
  return `Record ${i}.\n${lines.join('\n')}\nSummarise record ${i}.`;
}

test('150 conversations through a 1 MiB cache: its bytes and files stay bounded, and recent conversations still hit', async () => {
  const peaks = { bytes: 0, entries: 0, files: 0, fileBytes: 0, dirs: 0 };
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      const [metrics, files] = await Promise.all([ramMetrics(), cacheFiles()]);
      peaks.bytes = Math.max(peaks.bytes, metrics.bytes);
      peaks.entries = Math.max(peaks.entries, metrics.entries);
      peaks.files = Math.max(peaks.files, files.files);
      peaks.fileBytes = Math.max(peaks.fileBytes, files.bytes);
      peaks.dirs = Math.max(peaks.dirs, files.dirs);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();

  // Tasks in order: conversation s's first turn, then the second turn of conversation s − LAG; PARALLEL at a time.
  const answers = new Map<number, Promise<string>>();
  const tasks: Array<() => Promise<void>> = [];
  const secondTurns: Usage[] = [];
  for (let s = 0; s < CONVERSATIONS + LAG; s++) {
    if (s < CONVERSATIONS) {
      const i = s;
      let settle!: (answer: Promise<string>) => void;
      answers.set(i, new Promise<string>((resolve) => (settle = resolve)));
      tasks.push(async () => {
        const answer = ask([{ role: 'user', content: firstTurn(i) }]).then((turn) => turn.content);
        settle(answer);
        await answer;
      });
    }
    if (s >= LAG) {
      const i = s - LAG;
      tasks.push(async () => {
        const answer = await answers.get(i)!;
        const turn = await ask([
          { role: 'user', content: firstTurn(i) },
          { role: 'assistant', content: answer },
          { role: 'user', content: 'Go on.' },
        ]);
        secondTurns.push(turn.usage);
      });
    }
  }
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (next < tasks.length) await tasks[next++]!();
      }),
    );
  } finally {
    watching = false;
    await watcher;
  }
  const end = { metrics: await ramMetrics(), files: await cacheFiles() };
  const cached = secondTurns.map((usage) => usage.prompt_tokens_details?.cached_tokens ?? 0);
  const hits = secondTurns.filter((usage, k) => cached[k]! >= usage.prompt_tokens / 2).length;
  console.log(
    `peaks: ${peaks.bytes} B in ${peaks.entries} entries (budget ${BUDGET}); ${peaks.files} files, ${peaks.fileBytes} B in ${peaks.dirs} directory; ` +
      `end: ${end.metrics.bytes} B in ${end.metrics.entries} entries, ${end.files.files} files; second turns with half their prompt cached: ${hits} of ${secondTurns.length}`,
  );

  // The cache filled and overflowed: it holds far fewer states than the conversations it saw.
  assert.ok(peaks.bytes > BUDGET / 2, `the cache filled: peak ${peaks.bytes} B`);
  assert.ok(peaks.entries < CONVERSATIONS / 4, `it evicted: at most ${peaks.entries} entries`);
  // Its own count never goes above the budget.
  assert.ok(peaks.bytes <= BUDGET, `kiln:prompt_cache_bytes peaked at ${peaks.bytes} B, over the ${BUDGET} B budget`);
  // Its files are deleted with the entries: beside the entries, only the states being written (one per sequence).
  const largestState = 1024 * 272;
  assert.equal(peaks.dirs, 1, 'one cache directory for the one model');
  assert.ok(peaks.fileBytes <= BUDGET + PARALLEL * largestState, `the cache's files peaked at ${peaks.fileBytes} B`);
  assert.ok(peaks.files <= peaks.entries + 2 * PARALLEL + 2, `${peaks.files} files for at most ${peaks.entries} entries`);
  assert.ok(end.metrics.bytes <= BUDGET && end.files.bytes <= BUDGET + PARALLEL * largestState, `at the end: ${end.files.bytes} B in files`);
  assert.ok(end.files.files <= end.metrics.entries + PARALLEL, `at the end: ${end.files.files} files for ${end.metrics.entries} entries`);
  // Evicting all along, it still serves the recent conversations: their second turns start from their first's state.
  assert.equal(secondTurns.length, CONVERSATIONS);
  assert.ok(hits >= 0.9 * CONVERSATIONS, `${hits} of ${CONVERSATIONS} second turns had half their prompt cached: ${cached.join(',')}`);
});
