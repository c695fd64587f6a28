/**
 * Issue 13, point 5: memory stays bounded under 1,000 distinct conversations. Starts the real server (bin/kiln.cjs →
 * dist/: run `npx tsc -p tsconfig.json` first) on the tiny model with a small prompt cache, so that the conversations
 * overflow it many times, and drives them 4 at a time: each conversation is its own ~400-token document, asked twice;
 * its second turn comes `--lag` conversations after its first, when its sequence has long gone to others and only the
 * cache can hold its state.
 *
 * Every 50 conversations it samples the server's RSS (VmRSS: the cache's files on /dev/shm are not in it), the bytes
 * and files of the cache's own /dev/shm directory, `kiln:prompt_cache_bytes` / `_entries` from /metrics and, with a
 * disk tier, the disk directory's size; a watcher polls the same every 250 ms for the peaks in between. Verdict:
 * - the cache's bytes (its own count, and its files on /dev/shm and on disk) never above the budget, allowing on
 *   /dev/shm the states being written (one per sequence) and, with a disk tier, the spills queued (at most the RAM
 *   budget, by design: docs/prompt-cache.md, "Disk tier");
 * - RSS levels off: its growth over the second half (the sample at the end less the one at the middle) is at most a
 *   quarter of the first half's, or 4 MiB. Each sample reads RSS as it is, then right after a full garbage collection
 *   (SIGUSR2, handled by a module the server is started with), and the verdict takes the latter: V8 collects its old
 *   space lazily, so RSS as it is climbs with garbage for a thousand conversations and then drops;
 * - the cache works while it evicts: at least 90% of second turns report at least half their prompt as cached (5%
 *   in the disk phase, where every hit comes from disk, and the tier's writes, fsync-bound, fall behind this rate:
 *   the states it dropped for that are counted).
 *
 * Phases: `ram` (ram_mb 8, lag 16: second turns from RAM) and `disk` (ram_mb 8 + disk_mb 16 in a temporary
 * directory, lag 64: most second turns from disk), and `off` (the cache off: a control for the RSS). Options:
 * --phases ram,disk (or off,ram,disk) --conversations 1000 --ram-mb 8 --disk-mb 16.
 * Run: node --import tsx bench/prompt-cache-memory.ts (about 2.5 minutes for ram,disk on a 2-core VM).
 */
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureTinyModel } from '../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../test/helpers/kiln-process.js';
import { post, rssMiB } from './soak-client.js';

const { values: flags } = parseArgs({
  options: {
    phases: { type: 'string', default: 'ram,disk' },
    conversations: { type: 'string', default: '1000' },
    'ram-mb': { type: 'string', default: '8' },
    'disk-mb': { type: 'string', default: '16' },
  },
});
const MODEL = 'tiny-memory';
const CONVERSATIONS = Number(flags.conversations);
const RAM_BYTES = Number(flags['ram-mb']) * 2 ** 20;
const DISK_BYTES = Number(flags['disk-mb']) * 2 ** 20;
const PARALLEL = 4;
const CONTEXT = 2048;
const EVERY = 50;
const MiB = 2 ** 20;
/** The tiny model's vocabulary is bytes: a state costs 272 B per token (docs/prompt-cache.md). */
const STATE_BYTES_PER_TOKEN = 272;

interface Sample {
  conversations: number;
  seconds: number;
  /** VmRSS as it was, and right after a full garbage collection (what the server still holds). */
  rss: number;
  rssGc: number;
  /** After the collection: VmRSS's anonymous and file-backed parts (the model file is mapped). */
  rssAnon: number;
  rssFile: number;
  shmBytes: number;
  shmFiles: number;
  ramBytes: number;
  ramEntries: number;
  diskBytes: number;
  diskEntries: number;
  diskDirBytes: number;
  /** nodejs_heap_size_used_bytes and nodejs_external_memory_bytes from /metrics (in samples: after the collection). */
  heapUsed: number;
  external: number;
}

type Peaks = Omit<Sample, 'conversations' | 'seconds' | 'rssGc' | 'rssAnon' | 'rssFile'>;

/**
 * Loaded into the server (NODE_OPTIONS --import): SIGUSR2 runs a full garbage collection. V8 collects its old space
 * lazily (in 1,000 conversations it may not at all), so RSS as it is mixes garbage with what the server holds.
 */
const GC_ON_SIGNAL =
  'data:text/javascript,' +
  encodeURIComponent(
    "import v8 from 'node:v8'; import vm from 'node:vm'; v8.setFlagsFromString('--expose-gc'); const gc = vm.runInNewContext('gc'); process.on('SIGUSR2', () => gc());",
  );

/** Bytes and files under a directory (recursively); missing entries (deleted meanwhile) are skipped. */
async function du(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 0;
  const names = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const entry of names) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      const inner = await du(path);
      bytes += inner.bytes;
      files += inner.files;
      continue;
    }
    const info = await stat(path).catch(() => undefined);
    if (info === undefined) continue;
    bytes += info.size;
    files++;
  }
  return { bytes, files };
}

/** The server's cache directories on /dev/shm (one per loaded model): kiln-prompt-cache-<pid>-<8 hex>. */
async function shmUsage(pid: number): Promise<{ bytes: number; files: number }> {
  const names = (await readdir('/dev/shm').catch(() => [] as string[])).filter((name) => name.startsWith(`kiln-prompt-cache-${pid}-`));
  const each = await Promise.all(names.map((name) => du(join('/dev/shm', name))));
  return each.reduce((sum, one) => ({ bytes: sum.bytes + one.bytes, files: sum.files + one.files }), { bytes: 0, files: 0 });
}

/** kiln:prompt_cache_bytes / _entries for the model by tier (0 with the cache off), and the JS heap, from /metrics. */
async function serverMetrics(url: string, model: string): Promise<Pick<Sample, 'ramBytes' | 'ramEntries' | 'diskBytes' | 'diskEntries' | 'heapUsed' | 'external'>> {
  const lines = (await (await fetch(`${url}/metrics`)).text()).split('\n');
  const value = (name: string, tier?: string) => {
    const line = lines.find((each) =>
      tier === undefined ? each.startsWith(`${name} `) : each.startsWith(`${name}{`) && each.includes(`model_name="${model}"`) && each.includes(`tier="${tier}"`),
    );
    return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
  };
  return {
    ramBytes: value('kiln:prompt_cache_bytes', 'ram'),
    ramEntries: value('kiln:prompt_cache_entries', 'ram'),
    diskBytes: value('kiln:prompt_cache_bytes', 'disk'),
    diskEntries: value('kiln:prompt_cache_entries', 'disk'),
    heapUsed: value('nodejs_heap_size_used_bytes'),
    external: value('nodejs_external_memory_bytes'),
  };
}

async function measure(kiln: KilnProcess, diskDir: string | undefined): Promise<Peaks> {
  const pid = kiln.child.pid!;
  const [rss, shm, metrics, disk] = await Promise.all([rssMiB(pid), shmUsage(pid), serverMetrics(kiln.url, MODEL), diskDir === undefined ? undefined : du(diskDir)]);
  return { rss, shmBytes: shm.bytes, shmFiles: shm.files, ...metrics, diskDirBytes: disk?.bytes ?? 0 };
}

/** A sample: RSS as it is, then a full collection, then everything else. */
async function sample(kiln: KilnProcess, diskDir: string | undefined): Promise<Omit<Sample, 'conversations' | 'seconds'>> {
  const rss = await rssMiB(kiln.child.pid!);
  kiln.child.kill('SIGUSR2');
  await new Promise((resolve) => setTimeout(resolve, 300));
  const after = await measure(kiln, diskDir);
  const status = await readFile(`/proc/${kiln.child.pid}/status`, 'utf8').catch(() => '');
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? Number.NaN) / 1024;
  return { ...after, rss, rssGc: after.rss, rssAnon: kib('RssAnon'), rssFile: kib('RssFile') };
}

/** Polls `measure` every 250 ms and keeps the largest value of each figure since the last `take`. */
class PeakWatch {
  private peaks: Peaks | undefined;
  private running = true;
  private readonly loop: Promise<void>;

  constructor(private readonly read: () => Promise<Peaks>) {
    this.loop = (async () => {
      while (this.running) {
        this.add(await read());
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    })();
  }

  add(figures: Peaks): void {
    if (this.peaks === undefined) this.peaks = { ...figures };
    else for (const key of Object.keys(figures) as Array<keyof Peaks>) this.peaks[key] = Math.max(this.peaks[key], figures[key]);
  }

  take(): Peaks | undefined {
    const peaks = this.peaks;
    this.peaks = undefined;
    return peaks;
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}

/** Conversation i's first question: a document of its own (~400 tokens of the tiny model's byte vocabulary). */
function firstTurn(i: number): string {
  const words = ['amber', 'basalt', 'cedar', 'delta', 'ember', 'fjord', 'garnet', 'harbor', 'indigo', 'juniper', 'kelp', 'lichen'];
  const lines = Array.from({ length: 7 }, (_, line) => {
    const pick = (k: number) => words[(i * 7 + line * 3 + k * 5) % words.length];
    return `Entry ${line} of file ${i}: ${pick(0)} ${pick(1)} ${pick(2)}, logged as item ${(i * 31 + line) % 997}.`;
  });
  return `Conversation ${i}.\n${lines.join('\n')}\nSummarise file ${i} in one line.`;
}

interface Usage {
  prompt_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number };
}

async function ask(url: string, messages: Array<{ role: string; content: string }>): Promise<{ content: string; usage: Usage }> {
  const result = await post(url, { model: MODEL, messages, max_tokens: 8, temperature: 0.7 }, 60_000);
  if (result.status !== 200) throw new Error(`status ${result.status}: ${result.body.slice(0, 300)}`);
  const body = JSON.parse(result.body) as { choices: Array<{ message: { content: string } }>; usage: Usage };
  return { content: body.choices[0]!.message.content, usage: body.usage };
}

interface PhaseResult {
  name: string;
  lines: string[];
  pass: boolean;
}

/** `off`: the same conversations with no cache, to tell the cache's share of the RSS from the rest of the server's. */
async function phase(name: 'ram' | 'disk' | 'off', model: string, lag: number): Promise<PhaseResult> {
  const disk = name === 'disk';
  const off = name === 'off';
  const diskDir = disk ? await mkdtemp(join(tmpdir(), 'kiln-cache-memory-')) : undefined;
  const promptCache = { ram_mb: off ? 0 : RAM_BYTES / MiB, ...(diskDir === undefined ? {} : { disk_dir: diskDir, disk_mb: DISK_BYTES / MiB }) };
  const config = { models: [{ id: MODEL, file: model, parallel: PARALLEL, context_size: CONTEXT, threads: 1, preload: true, prompt_cache: promptCache }] };
  // Debug with a disk tier: it logs each state it could not write because it was behind (the only record of those).
  const env = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import ${GC_ON_SIGNAL}`.trim() };
  const kiln = await startKiln(['--config', await writeConfig(config), '--log-level', disk ? 'debug' : 'warn'], env);
  const load = loadavg()[0]!;
  const started = performance.now();
  const samples: Sample[] = [];
  const watch = new PeakWatch(() => measure(kiln, diskDir));
  const intervalPeaks: Array<Peaks | undefined> = [];
  const secondTurns: Array<{ prompt: number; cached: number }> = [];
  let sampling = Promise.resolve();
  try {
    // Steady state before the first request: the model loaded (preload), the cache empty.
    samples.push({ conversations: 0, seconds: 0, ...(await sample(kiln, diskDir)) });
    watch.take();
    // Tasks in order: conversation s's first turn, and the second turn of conversation s − lag.
    const firstAnswers = new Map<number, Promise<string>>();
    const tasks: Array<() => Promise<void>> = [];
    let done = 0;
    const finished = () => {
      if (++done % EVERY !== 0) return;
      const at = done;
      sampling = sampling.then(async () => {
        intervalPeaks.push(watch.take());
        samples.push({ conversations: at, seconds: (performance.now() - started) / 1000, ...(await sample(kiln, diskDir)) });
        const last = samples.at(-1)!;
        console.error(`  ${name}: ${at} conversations, ${last.seconds.toFixed(0)} s, RSS ${last.rss.toFixed(1)} MiB (${last.rssGc.toFixed(1)} after GC), cache ${(last.ramBytes / MiB).toFixed(2)} MiB in ${last.ramEntries}`);
      });
    };
    for (let s = 0; s < CONVERSATIONS + lag; s++) {
      if (s < CONVERSATIONS) {
        const i = s;
        let resolveAnswer!: (content: string) => void;
        let rejectAnswer!: (error: Error) => void;
        firstAnswers.set(i, new Promise<string>((resolve, reject) => ((resolveAnswer = resolve), (rejectAnswer = reject))));
        tasks.push(async () => {
          try {
            resolveAnswer((await ask(kiln.url, [{ role: 'user', content: firstTurn(i) }])).content);
          } catch (error) {
            rejectAnswer(error as Error);
            throw error;
          }
        });
      }
      if (s >= lag) {
        const i = s - lag;
        tasks.push(async () => {
          const answer = await firstAnswers.get(i)!;
          firstAnswers.delete(i);
          const messages = [
            { role: 'user', content: firstTurn(i) },
            { role: 'assistant', content: answer },
            { role: 'user', content: 'And what comes next?' },
          ];
          const { usage } = await ask(kiln.url, messages);
          secondTurns.push({ prompt: usage.prompt_tokens, cached: usage.prompt_tokens_details?.cached_tokens ?? 0 });
          finished();
        });
      }
    }
    let next = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (next < tasks.length) await tasks[next++]!();
      }),
    );
    await sampling;
  } finally {
    await watch.stop();
    await kiln.stop();
    if (diskDir !== undefined) await rm(diskDir, { recursive: true, force: true });
  }
  const seconds = (performance.now() - started) / 1000;
  const loadEnd = loadavg()[0]!;

  // The table: each sample, with the peaks seen by the watcher since the previous one.
  const mib = (bytes: number) => (bytes / MiB).toFixed(2);
  const header = disk
    ? '| conversations | s | RSS MiB → after GC (anon + file) | JS heap used, external MiB | /dev/shm MiB (files) | ram MiB (entries) | disk MiB (entries) | disk dir MiB | peak before it: /dev/shm, ram, disk dir MiB |'
    : '| conversations | s | RSS MiB → after GC (anon + file) | JS heap used, external MiB | /dev/shm MiB (files) | ram MiB (entries) | peak before it: /dev/shm, ram MiB |';
  const columns = header.split('|').length - 2;
  const lines = [header, `|${Array.from({ length: columns }, (_, k) => (k < 3 ? ' ---: ' : ' --- ')).join('|')}|`];
  samples.forEach((sample, k) => {
    const peak = k === 0 ? undefined : intervalPeaks[k - 1];
    const peakText = peak === undefined ? '' : disk ? `${mib(peak.shmBytes)}, ${mib(peak.ramBytes)}, ${mib(peak.diskDirBytes)}` : `${mib(peak.shmBytes)}, ${mib(peak.ramBytes)}`;
    const cells = [String(sample.conversations), sample.seconds.toFixed(0), `${sample.rss.toFixed(1)} → ${sample.rssGc.toFixed(1)} (${sample.rssAnon.toFixed(1)} + ${sample.rssFile.toFixed(1)})`, `${mib(sample.heapUsed)}, ${mib(sample.external)}`, `${mib(sample.shmBytes)} (${sample.shmFiles})`, `${mib(sample.ramBytes)} (${sample.ramEntries})`];
    if (disk) cells.push(`${mib(sample.diskBytes)} (${sample.diskEntries})`, mib(sample.diskDirBytes));
    lines.push(`| ${[...cells, peakText].join(' | ')} |`);
  });

  // The verdict.
  const all = [...samples, ...intervalPeaks.filter((peak): peak is Peaks => peak !== undefined)];
  const max = (key: keyof Peaks) => Math.max(...all.map((each) => each[key]));
  const longestState = CONTEXT * STATE_BYTES_PER_TOKEN;
  // Files being written (one save per sequence at a time) are on /dev/shm before the index counts them; with a disk
  // tier, evicted states wait there for their write, at most the RAM budget of them.
  const shmAllowed = RAM_BYTES + PARALLEL * longestState + (disk ? RAM_BYTES : 0);
  const half = samples.find((each) => each.conversations >= CONVERSATIONS / 2)!;
  const first = samples[0]!;
  const last = samples.at(-1)!;
  const firstHalf = half.rssGc - first.rssGc;
  const secondHalf = last.rssGc - half.rssGc;
  const rssAllowed = Math.max(firstHalf / 4, 4);
  // With lag 64 a conversation's first state has left RAM (2 states a conversation, 58 fit) before its second turn:
  // every hit is from disk. The tier writes one state at a time with fsyncs (about 13 a second on the development
  // VM, against 20 or more kept a second here), drops what it is too far behind to write rather than let /dev/shm
  // grow past twice the RAM budget (counted in the notes), and writes the rest in order, seconds late: many second
  // turns come before their state is on disk. So this phase only checks that the disk tier serves some of them (the
  // share depends on the disk: 12–62% in runs on the VM).
  const hitShare = disk ? 0.05 : 0.9;
  const hits = secondTurns.filter((turn) => turn.cached >= turn.prompt / 2).length;
  const cachedShare = secondTurns.reduce((sum, turn) => sum + turn.cached, 0) / secondTurns.reduce((sum, turn) => sum + turn.prompt, 0);
  const rssCheck: [string, boolean] = [
    `RSS after a full GC ${first.rssGc.toFixed(1)} → ${half.rssGc.toFixed(1)} (conversation ${half.conversations}) → ${last.rssGc.toFixed(1)} MiB (peak without forcing GC ${max('rss').toFixed(1)}): second half +${secondHalf.toFixed(1)} MiB ≤ ${rssAllowed.toFixed(1)} (¼ of the first half's +${firstHalf.toFixed(1)}, or 4)`,
    secondHalf <= rssAllowed,
  ];
  const output = kiln.output().split('\n');
  const warnings = output.filter((line) => /"level":(40|50|60)/.test(line));
  const behind = output.filter((line) => line.includes('the disk tier is behind')).length;
  const notes = [
    `server warnings and errors: ${warnings.length}${warnings.length > 0 ? `, e.g. ${warnings[0]!.slice(0, 300)}` : ''}`,
    ...(disk ? [`states evicted from RAM and not written to disk because the disk tier was behind: ${behind}`] : []),
  ];
  const checks: Array<[string, boolean]> = off ? [] : [
    [`kiln:prompt_cache_bytes{tier="ram"} at most ${mib(max('ramBytes'))} MiB ≤ budget ${mib(RAM_BYTES)} MiB`, max('ramBytes') <= RAM_BYTES],
    [`/dev/shm directory at most ${mib(max('shmBytes'))} MiB, ${max('shmFiles')} files ≤ ${mib(shmAllowed)} MiB (budget + ${PARALLEL} states being written${disk ? ' + spills queued' : ''})`, max('shmBytes') <= shmAllowed],
    ...(disk
      ? ([
          [`kiln:prompt_cache_bytes{tier="disk"} at most ${mib(max('diskBytes'))} MiB ≤ budget ${mib(DISK_BYTES)} MiB`, max('diskBytes') <= DISK_BYTES],
          // A spill being written is a temporary directory next to the entries.
          [`disk directory at most ${mib(max('diskDirBytes'))} MiB ≤ budget + one state being written (${mib(DISK_BYTES + longestState)} MiB)`, max('diskDirBytes') <= DISK_BYTES + longestState],
        ] as Array<[string, boolean]>)
      : []),
    rssCheck,
    [`second turns with ≥ half the prompt cached: ${hits} of ${secondTurns.length} (≥ ${hitShare * 100}%); cached ${(cachedShare * 100).toFixed(0)}% of their prompt tokens`, hits >= hitShare * secondTurns.length],
  ];
  lines.push('');
  for (const [text, ok] of checks) lines.push(`- ${ok ? 'PASS' : 'FAIL'}: ${text}`);
  // Without the cache, the same figures are a control, not a check.
  if (off) lines.push(`- (control) ${rssCheck[0]}`, `- (control) second turns with ≥ half the prompt cached: ${hits} of ${secondTurns.length}`);
  for (const note of notes) lines.push(`- ${note}`);
  const pass = checks.every(([, ok]) => ok);
  const title = `${name}: ${CONVERSATIONS} conversations × 2 turns, ${PARALLEL} concurrent, lag ${lag}, ram_mb ${off ? 0 : RAM_BYTES / MiB}${disk ? `, disk_mb ${DISK_BYTES / MiB}` : ''}; ${seconds.toFixed(0)} s, load ${load.toFixed(1)} → ${loadEnd.toFixed(1)}`;
  return { name, lines: [title, '', ...lines], pass };
}

async function main(): Promise<void> {
  const model = await ensureTinyModel();
  const began = new Date().toISOString();
  const results: PhaseResult[] = [];
  for (const name of flags.phases!.split(',')) {
    if (name === 'ram' || name === 'off') results.push(await phase(name, model, 16));
    else if (name === 'disk') results.push(await phase('disk', model, 64));
    else throw new Error(`unknown phase ${name}: ram, disk or off`);
  }
  console.log(`Kiln prompt cache memory — ${began} — tiny model, parallel ${PARALLEL}, context ${CONTEXT}, threads 1\n`);
  for (const result of results) console.log(`${result.lines.join('\n')}\n`);
  const pass = results.every((result) => result.pass);
  console.log(pass ? 'VERDICT: PASS — memory stays bounded' : 'VERDICT: FAIL');
  process.exitCode = pass ? 0 : 1;
}

await main();
