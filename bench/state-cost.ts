/**
 * What the pieces of a prompt cache (issue 13) cost on this machine, for docs/prompt-cache.md — a diagnostic, not a
 * benchmark against anything. For each model and prompt length N, on one context with two sequences (A, B):
 *
 *   prefill       A cleared, N-1 prompt tokens evaluated (the last one is decoded on its own, as Kiln does with a seed)
 *   save          A's state to a file on a RAM-backed directory (/dev/shm) and on disk (os.tmpdir(); + an fsync)
 *   load          the RAM file into B (cleared first), the disk file into B again (B then holds other tokens)
 *   check         B and A each decode the last prompt token and 8 greedy tokens: same tokens, same probabilities?
 *   suffix        the common case: B restores the N-1-token state and evaluates S more tokens (a new turn), against
 *                 A prefilling all N-1+S tokens from scratch; then both generate greedily again (and, in the first
 *                 repetition, against A evaluating the same two pieces without a restore: the same split)
 *   truncate      (first repetition) B restores the state, erases its second half and evaluates it again: a cached
 *                 entry longer than the shared prefix, cut back
 *   checkpoint    node-llama-cpp's in-memory checkpoint of A through its native binding (the public takeCheckpoint()
 *                 is a no-op for models without SWA/recurrent layers), restored after A is cleared
 *
 * A second process then probes what makes a state file stale or broken (another model of the same shape, another
 * shape, a flipped byte, a truncated file, another context configuration), on the tiny model: a probe that crashes
 * llama.cpp takes only that process down. The last one, a file cut short inside its data, is expected to abort it
 * (SIGABRT from a GGML_ASSERT in llama.cpp's state_seq_load_file, node-llama-cpp 3.21.1).
 *
 *   node --import tsx bench/state-cost.ts [--models bench,tiny] [--lengths 16,128,512,1024,2048] [--reps 3]
 *                                         [--tiny-reps 9] [--threads 2] [--suffix 64] [--json file] [--no-probes] [--gpu]
 *
 * The bench model (~700 MB, generated once like `npm run bench`'s) is cached in ~/.cache/kiln (--cache-dir).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { crc32 } from 'node:zlib';
import { getLlama, LlamaLogLevel, type Llama, type LlamaContext, type LlamaContextSequence, type LlamaModel, type Token } from 'node-llama-cpp';
import { ensureBenchModel, QWEN25_05B_SHAPE } from '../src/gguf/bench-model.js';
import { ensureTinyModel } from '../src/gguf/tiny-model.js';
import { text } from './prompt-text.js';

const { values: flags } = parseArgs({
  options: {
    models: { type: 'string', default: 'bench,tiny' },
    lengths: { type: 'string', default: '16,128,512,1024,2048' },
    reps: { type: 'string', default: '3' },
    // The tiny model costs next to nothing and its sub-millisecond figures are noisier: more repetitions.
    'tiny-reps': { type: 'string', default: '9' },
    threads: { type: 'string', default: '2' },
    suffix: { type: 'string', default: '64' },
    json: { type: 'string' },
    'no-probes': { type: 'boolean', default: false },
    // Offload every layer to the GPU when node-llama-cpp finds one (unmeasured so far: no GPU on the development VM).
    gpu: { type: 'boolean', default: false },
    'probes-only': { type: 'boolean', default: false },
    'cache-dir': { type: 'string', default: join(homedir(), '.cache/kiln') },
    // Internal: the probe process works in its parent's temporary directory, which the parent removes even if it crashes.
    'probe-dir': { type: 'string' },
  },
});

const LENGTHS = flags.lengths!.split(',').map(Number);
const REPS = Number(flags.reps);
const repsFor = (kind: string) => (kind === 'tiny' ? Number(flags['tiny-reps']) : REPS);
const THREADS = Number(flags.threads);
const SUFFIX = Number(flags.suffix);
const GENERATED = 8;
const CONTEXT_SIZE = 4096; // Kiln's default cap per sequence
const RAM_DIR = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
const DISK_DIR = tmpdir();

// Internals used for the checkpoint experiment only (node-llama-cpp 3.21.1 dist/evaluator/LlamaContext/LlamaContext.js).
interface NativeCheckpoint {
  init(ctx: unknown, sequenceId: number): Promise<void>;
  dispose(): void;
  readonly size: number;
  readonly minPos: number;
  readonly maxPos: number;
}
interface Internals {
  seq(sequence: LlamaContextSequence): { _sequenceId: number; _contextTokens: Token[]; _nextTokenIndex: number };
  ctx(context: LlamaContext): { restoreCheckpoint(cp: NativeCheckpoint, maxPos: number): Promise<boolean>; getSequenceKvCacheMaxPosition(id: number): number };
  newCheckpoint(model: LlamaModel): NativeCheckpoint;
}
const internals: Internals = {
  seq: (sequence) => sequence as unknown as ReturnType<Internals['seq']>,
  ctx: (context) => (context as unknown as { _ctx: ReturnType<Internals['ctx']> })._ctx,
  newCheckpoint: (model) => {
    const bindings = (model as unknown as { _llama: { _bindings: { AddonContextSequenceCheckpoint: new () => NativeCheckpoint } } })._llama._bindings;
    return new bindings.AddonContextSequenceCheckpoint();
  },
};


function tokensOf(model: LlamaModel, count: number, salt: number): Token[] {
  let words = count;
  for (;;) {
    const tokens = model.tokenize(text(words, salt));
    if (tokens.length >= count) return tokens.slice(0, count);
    words *= 2;
  }
}

const now = () => performance.now();
async function timed<T>(work: () => Promise<T>): Promise<[T, number]> {
  const started = now();
  const value = await work();
  return [value, now() - started];
}

interface Greedy {
  tokens: Token[];
  confidence: number[];
}

/** Decodes `input` then GENERATED greedy tokens. */
async function greedy(sequence: LlamaContextSequence, input: Token[]): Promise<Greedy> {
  const tokens: Token[] = [];
  const confidence: number[] = [];
  for await (const out of sequence.evaluateWithMetadata(input, { confidence: true }, { temperature: 0 })) {
    tokens.push(out.token);
    confidence.push(out.confidence);
    if (tokens.length >= GENERATED) break;
  }
  return { tokens, confidence };
}

/** Same greedy tokens? Same probabilities (bit for bit)? Probabilities are compared up to the first differing token. */
function compare(reference: Greedy, other: Greedy): string {
  let same = 0;
  while (same < reference.tokens.length && reference.tokens[same] === other.tokens[same]) same++;
  const upTo = Math.min(same + 1, reference.tokens.length);
  const diff = Math.max(...reference.confidence.slice(0, upTo).map((c, i) => Math.abs(c - (other.confidence[i] ?? Number.NaN))));
  if (same < reference.tokens.length) return `DIFFERENT from token ${same} (max |Δp| before ${diff.toExponential(1)})`;
  return diff === 0 ? 'identical' : `same tokens, max |Δp| ${diff.toExponential(1)}`;
}

/** CPU time of this process (all threads) and wall time of `work`. */
async function timedCpu<T>(work: () => Promise<T>): Promise<[T, number, number]> {
  const cpu = process.cpuUsage();
  const [value, ms] = await timed(work);
  const used = process.cpuUsage(cpu);
  return [value, ms, (used.user + used.system) / 1000];
}

async function fileSync(path: string): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

type Row = Record<string, number | string>;

async function loadModel(llama: Llama, kind: string): Promise<LlamaModel> {
  const file =
    kind === 'bench'
      ? await ensureBenchModel({ ...QWEN25_05B_SHAPE, neverEnd: true, asciiOutput: true, cacheDir: flags['cache-dir'] })
      : await ensureTinyModel({ cacheDir: flags['cache-dir'] });
  return llama.loadModel({ modelPath: file, useMmap: false, gpuLayers: flags.gpu ? 'max' : 0 });
}

async function measureModel(llama: Llama, kind: string, dir: string): Promise<Row[]> {
  const model = await loadModel(llama, kind);
  const context = await model.createContext({ sequences: 2, contextSize: CONTEXT_SIZE, threads: THREADS, flashAttention: 'auto' });
  const a = context.getSequence();
  const b = context.getSequence();
  const blocks = (model.fileInfo.architectureMetadata as { block_count?: number }).block_count;
  console.log(`\n## ${kind}: ${model.fileInfo.metadata?.general?.name}, ${blocks} blocks, needsCheckpoints ${a.needsCheckpoints}, context ${context.contextSize} × 2 sequences, flash attention ${context.flashAttention}, ${THREADS} threads`);
  const rows: Row[] = [];
  // Warm-up: the first decode allocates compute buffers.
  await a.evaluateWithoutGeneratingNewTokens(tokensOf(model, 32, 99));
  await a.clearHistory();
  for (const n of LENGTHS) {
    const prompt = tokensOf(model, n, n);
    const suffix = tokensOf(model, SUFFIX, n + 1);
    const head = prompt.slice(0, -1);
    const last = prompt.at(-1)!;
    for (let rep = 0; rep < repsFor(kind); rep++) {
      const row: Row = { model: kind, n, rep };
      const ramFile = join(RAM_DIR, `kiln-state-cost-${process.pid}-${n}.bin`);
      const diskFile = join(dir, `state-${n}.bin`);

      await a.clearHistory();
      [, row.prefillMs, row.prefillCpuMs] = await timedCpu(() => a.evaluateWithoutGeneratingNewTokens(head));
      const [saved, saveRam] = await timed(() => a.saveStateToFile(ramFile));
      row.saveRamMs = saveRam;
      row.bytes = saved.fileSize;
      [, row.saveDiskMs] = await timed(() => a.saveStateToFile(diskFile));
      [, row.fsyncMs] = await timed(() => fileSync(diskFile));
      if ((await stat(ramFile)).size !== saved.fileSize) row.note = 'fileSize differs from stat';
      const [buffer, readMs] = await timed(() => readFile(ramFile));
      row.readToBufferMs = readMs;
      [, row.writeFromBufferMs] = await timed(() => writeFile(ramFile, buffer));
      // What verifying an entry before loading it costs (a truncated or corrupt file must never reach llama.cpp).
      [, row.crc32Ms] = await timed(async () => crc32(buffer));
      [, row.sha256Ms] = await timed(async () => createHash('sha256').update(buffer).digest());

      // Checkpoint through the native binding, while A holds exactly the prompt head.
      const checkpoint = internals.newCheckpoint(model);
      [, row.checkpointTakeMs] = await timed(() => checkpoint.init(internals.ctx(context), internals.seq(a)._sequenceId));
      row.checkpointBytes = checkpoint.size;

      const reference = await greedy(a, [last]);

      await b.clearHistory();
      [, row.loadRamMs] = await timed(() => b.loadStateFromFile(ramFile, { acceptRisk: true }));
      const restoredTokens = b.contextTokens.join() === head.join() && b.nextTokenIndex === head.length;
      row.loadRamCheck = (restoredTokens ? '' : 'TOKENS WRONG; ') + compare(reference, await greedy(b, [last]));
      // B now holds other tokens: loading must replace them.
      [, row.loadDiskMs] = await timed(() => b.loadStateFromFile(diskFile, { acceptRisk: true }));
      row.loadDiskCheck = compare(reference, await greedy(b, [last]));

      // Checkpoint restored into A after clearing it; node-llama-cpp's own token bookkeeping is set by hand.
      await a.clearHistory();
      let restored: boolean;
      [restored, row.checkpointRestoreMs] = await timed(() => internals.ctx(context).restoreCheckpoint(checkpoint, head.length - 1));
      const bMax = internals.ctx(context).getSequenceKvCacheMaxPosition(internals.seq(b)._sequenceId);
      Object.assign(internals.seq(a), { _contextTokens: [...head], _nextTokenIndex: head.length });
      row.checkpointCheck = restored ? compare(reference, await greedy(a, [last])) : 'restoreCheckpoint returned false';
      row.checkpointTouchedB = bMax === head.length + GENERATED - 1 ? 'no' : `B max pos ${bMax}`;
      checkpoint.dispose();

      // A new turn on top of the cached state, against prefilling the whole thing.
      const turn = [...head, ...suffix];
      await a.clearHistory();
      [, row.scratchMs, row.scratchCpuMs] = await timedCpu(() => a.evaluateWithoutGeneratingNewTokens(turn.slice(0, -1)));
      const turnReference = await greedy(a, [turn.at(-1)!]);
      await b.clearHistory();
      [, row.suffixLoadMs] = await timed(() => b.loadStateFromFile(ramFile, { acceptRisk: true }));
      [, row.suffixEvalMs] = await timed(() => b.evaluateWithoutGeneratingNewTokens(suffix.slice(0, -1)));
      const restoredTurn = await greedy(b, [turn.at(-1)!]);
      row.suffixCheck = compare(turnReference, restoredTurn);
      if (rep === 0) {
        // The same split without any restore: A evaluates the head and the suffix in two calls, as B did.
        await a.clearHistory();
        await a.evaluateWithoutGeneratingNewTokens(head);
        await a.evaluateWithoutGeneratingNewTokens(suffix.slice(0, -1));
        row.suffixVsSameSplit = compare(await greedy(a, [turn.at(-1)!]), restoredTurn);
        // A cached entry longer than the shared prefix: restore it whole, erase the tail, evaluate the rest again.
        const half = head.length >> 1;
        await a.clearHistory();
        await a.evaluateWithoutGeneratingNewTokens(head.slice(0, half));
        await a.evaluateWithoutGeneratingNewTokens(head.slice(half));
        const splitReference = await greedy(a, [last]);
        await b.loadStateFromFile(ramFile, { acceptRisk: true });
        [, row.truncateEraseMs] = await timed(() => b.eraseContextTokenRanges([{ start: half, end: b.nextTokenIndex }]));
        await b.evaluateWithoutGeneratingNewTokens(head.slice(half));
        row.truncateCheck = compare(splitReference, await greedy(b, [last]));
      }

      await rm(ramFile, { force: true });
      await rm(diskFile, { force: true });
      rows.push(row);
      console.log(JSON.stringify(row, (_, v: unknown) => (typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 100) / 100 : v)));
    }
  }
  await context.dispose();
  await model.dispose();
  return rows;
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
function fmt(values: number[], digits = 1): string {
  const m = median(values);
  return `${m.toFixed(digits)} (${Math.min(...values).toFixed(digits)}–${Math.max(...values).toFixed(digits)})`;
}

function summarize(rows: Row[]): void {
  const models = [...new Set(rows.map((r) => r.model as string))];
  for (const kind of models) {
    const of = (n: number) => rows.filter((r) => r.model === kind && r.n === n);
    const col = (n: number, key: string) => of(n).map((r) => r[key] as number);
    const med = (n: number, key: string) => median(col(n, key));
    const ns = LENGTHS.filter((n) => of(n).length > 0);
    console.log(`\n### ${kind}: median (min–max) of ${repsFor(kind)} reps; N-1 prompt tokens in the state (the last one is decoded on its own)`);
    console.log('| N | prefill ms | prefill CPU ms | ms/token | state bytes | B/token | save RAM ms | save disk ms | fsync ms | load RAM ms | load disk ms | file→Buffer ms | crc32 ms | sha256 ms | checkpoint bytes | checkpoint take ms | checkpoint restore ms |');
    console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const n of ns) {
      const bytes = med(n, 'bytes');
      console.log(
        `| ${n} | ${fmt(col(n, 'prefillMs'))} | ${fmt(col(n, 'prefillCpuMs'), 0)} | ${(med(n, 'prefillMs') / (n - 1)).toFixed(2)} | ${bytes} | ${(bytes / (n - 1)).toFixed(0)} | ${fmt(col(n, 'saveRamMs'), 2)} | ${fmt(col(n, 'saveDiskMs'), 2)} | ${fmt(col(n, 'fsyncMs'), 2)} | ${fmt(col(n, 'loadRamMs'), 2)} | ${fmt(col(n, 'loadDiskMs'), 2)} | ${fmt(col(n, 'readToBufferMs'), 2)} | ${fmt(col(n, 'crc32Ms'), 2)} | ${fmt(col(n, 'sha256Ms'), 2)} | ${med(n, 'checkpointBytes')} | ${fmt(col(n, 'checkpointTakeMs'), 2)} | ${fmt(col(n, 'checkpointRestoreMs'), 2)} |`,
      );
    }
    console.log(`\n| N | + suffix | scratch prefill of N-1+${SUFFIX} ms | restore + suffix ms (load / eval) | saved | checks |`);
    console.log('|---|---|---|---|---|---|');
    for (const n of ns) {
      const together = of(n).map((r) => (r.suffixLoadMs as number) + (r.suffixEvalMs as number));
      const checks = [
        ...new Set(
          of(n).flatMap((r) => [
            `load RAM ${r.loadRamCheck}`,
            `load disk ${r.loadDiskCheck}`,
            `checkpoint ${r.checkpointCheck}${r.checkpointTouchedB === 'no' ? '' : `, touched B: ${r.checkpointTouchedB}`}`,
            `restore+suffix vs scratch ${r.suffixCheck}`,
            ...(r.suffixVsSameSplit !== undefined ? [`restore+suffix vs same split without restore ${r.suffixVsSameSplit}`] : []),
            ...(r.truncateCheck !== undefined ? [`restore, erase back to half (${(r.truncateEraseMs as number).toFixed(2)} ms), re-evaluate ${r.truncateCheck}`] : []),
          ]),
        ),
      ].join('; ');
      console.log(
        `| ${n} | ${SUFFIX} | ${fmt(col(n, 'scratchMs'))} | ${fmt(together)} (${med(n, 'suffixLoadMs').toFixed(2)} / ${med(n, 'suffixEvalMs').toFixed(1)}) | ${((1 - median(together) / med(n, 'scratchMs')) * 100).toFixed(0)}% | ${checks} |`,
      );
    }
    if (ns.length >= 2) {
      // Least squares over the medians: state bytes and load time against tokens.
      const fit = (key: string) => {
        const xs = ns.map((n) => n - 1);
        const ys = ns.map((n) => med(n, key));
        const mx = xs.reduce((x, y) => x + y) / xs.length;
        const my = ys.reduce((x, y) => x + y) / ys.length;
        const slope = xs.reduce((acc, x, i) => acc + (x - mx) * (ys[i]! - my), 0) / xs.reduce((acc, x) => acc + (x - mx) ** 2, 0);
        return { slope, fixed: my - slope * mx };
      };
      const bytes = fit('bytes');
      const load = fit('loadRamMs');
      const save = fit('saveRamMs');
      const [lo, next] = ns;
      // Marginal prefill cost per prompt token where it is cheapest (short prompts: little attention).
      const marginal = (med(next!, 'prefillMs') - med(lo!, 'prefillMs')) / (next! - lo!);
      console.log(
        `\nfits over N: state ${bytes.slope.toFixed(1)} B/token + ${bytes.fixed.toFixed(0)} B; save (RAM) ${(save.slope * 1000).toFixed(2)} µs/token + ${save.fixed.toFixed(2)} ms; load (RAM) ${(load.slope * 1000).toFixed(2)} µs/token + ${load.fixed.toFixed(2)} ms; marginal prefill ${lo}→${next}: ${marginal.toFixed(3)} ms/token`,
      );
      const breakEven = Math.max(0, load.fixed) / (marginal - load.slope);
      console.log(`break-even prefix (load fixed cost / (marginal prefill − load per token)): ${marginal > load.slope ? breakEven.toFixed(1) : '∞'} tokens`);
    }
  }
}

// ---------------------------------------------------------------- staleness probes (own process)

async function probes(dir: string): Promise<void> {
  const llama = await getLlama({ gpu: false, build: 'never', maxThreads: THREADS, logLevel: LlamaLogLevel.error, progressLogs: false });
  const load = async (options: Parameters<typeof ensureTinyModel>[0]) =>
    llama.loadModel({ modelPath: await ensureTinyModel({ cacheDir: flags['cache-dir'], ...options }), useMmap: false, gpuLayers: 0 });
  const base = await load({});
  const baseContext = await base.createContext({ sequences: 1, contextSize: 1024, threads: THREADS, flashAttention: false });
  const seq = baseContext.getSequence();
  const prompt = tokensOf(base, 300, 5);
  await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
  const good = join(dir, 'probe-good.bin');
  const { fileSize } = await seq.saveStateToFile(good);
  const reference = await greedy(seq, [prompt.at(-1)!]);
  const header = await readFile(good);
  console.log(`probe: file of ${fileSize} bytes for ${prompt.length - 1} tokens; first 16 bytes ${header.subarray(0, 16).toString('hex')} (magic 'ggsq' LE, version, token count)`);

  const attempt = async (name: string, model: LlamaModel, contextOptions: { contextSize: number; flashAttention: boolean }, file: string, compareTo?: Greedy) => {
    console.log(`probe ${name}: loading...`);
    const context = await model.createContext({ sequences: 1, threads: THREADS, ...contextOptions });
    const target = context.getSequence();
    try {
      await target.loadStateFromFile(file, { acceptRisk: true });
      const generated = await greedy(target, [prompt.at(-1)!]);
      console.log(`probe ${name}: LOADED (${target.nextTokenIndex} tokens); generation vs the original model's: ${compare(compareTo ?? reference, generated)}`);
    } catch (error) {
      console.log(`probe ${name}: rejected: ${error instanceof Error ? error.message : String(error)}; sequence then holds ${target.nextTokenIndex} tokens`);
    } finally {
      await context.dispose();
    }
  };

  await attempt('same model, same settings', base, { contextSize: 1024, flashAttention: false }, good);
  await attempt('same model, smaller context (512)', base, { contextSize: 512, flashAttention: false }, good);
  await attempt('same model, context too small (256)', base, { contextSize: 256, flashAttention: false }, good);
  await attempt('same model, flash attention on (saved with off)', base, { contextSize: 1024, flashAttention: true }, good);

  const flipped = join(dir, 'probe-flipped.bin');
  const bytes = Buffer.from(header);
  for (let i = bytes.length - 4096; i < bytes.length - 2048; i++) bytes[i] = bytes[i]! ^ 0xff;
  await writeFile(flipped, bytes);
  await attempt('2 KiB of KV data inverted', base, { contextSize: 1024, flashAttention: false }, flipped);

  const truncated = join(dir, 'probe-truncated.bin');
  await writeFile(truncated, header);
  await truncate(truncated, Math.floor(header.length / 2));
  await attempt('truncated to half', base, { contextSize: 1024, flashAttention: false }, truncated);

  const other = await load({ seed: 2 });
  const otherContext = await other.createContext({ sequences: 1, contextSize: 1024, threads: THREADS, flashAttention: false });
  const otherSeq = otherContext.getSequence();
  await otherSeq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
  const otherReference = await greedy(otherSeq, [prompt.at(-1)!]);
  await otherContext.dispose();
  await attempt('other weights, same shape (seed 2), compared with that model prefilling itself', other, { contextSize: 1024, flashAttention: false }, good, otherReference);

  const deeper = await load({ layers: 4 });
  await attempt('other shape (4 layers instead of 2)', deeper, { contextSize: 1024, flashAttention: false }, good);
  const wider = await load({ kvHeads: 4 });
  await attempt('other shape (4 KV heads instead of 2)', wider, { contextSize: 1024, flashAttention: false }, good);
  // Last: llama.cpp's reader does not fail at the end of the file (llama-mmap.cpp read_raw_unsafe clamps the read), and
  // state_seq_load_file then asserts that it read no more than the file holds — GGML_ASSERT aborts the process.
  const shortened = join(dir, 'probe-shortened.bin');
  await writeFile(shortened, header.subarray(0, header.length - 1024));
  await attempt('last 1 KiB cut off (inside the last layer\'s V data, after every header check)', base, { contextSize: 1024, flashAttention: false }, shortened);
  console.log('probes done');
}

// ---------------------------------------------------------------- main

const dir = flags['probe-dir'] ?? (await mkdtemp(join(tmpdir(), 'kiln-state-cost-')));
try {
  if (flags['probes-only']) {
    await probes(dir);
  } else {
    console.log(`state-cost: ${new Date().toISOString()}, RAM dir ${RAM_DIR}, disk dir ${DISK_DIR}, load average at start ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    const llama = await getLlama({ gpu: flags.gpu ? 'auto' : false, build: 'never', maxThreads: THREADS, logLevel: LlamaLogLevel.error, progressLogs: false });
    console.log(`llama.cpp: ${llama.buildType} build, release ${llama.llamaCppRelease.release}, backend ${llama.gpu === false ? 'cpu' : llama.gpu}`);
    const rows: Row[] = [];
    for (const kind of flags.models!.split(',')) rows.push(...(await measureModel(llama, kind, dir)));
    summarize(rows);
    console.log(`\nload average at end ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    if (flags.json !== undefined) {
      await mkdir(join(flags.json, '..'), { recursive: true });
      await writeFile(flags.json, JSON.stringify(rows, null, 2));
    }
    if (!flags['no-probes']) {
      console.log('\n## staleness probes (tiny model, own process)');
      const child = spawnSync(process.execPath, [...process.execArgv, import.meta.filename, '--probes-only', '--probe-dir', dir, '--threads', String(THREADS), '--cache-dir', flags['cache-dir']!], {
        stdio: 'inherit',
      });
      if (child.status !== 0) console.log(`probe process ended with status ${child.status} signal ${child.signal}: the last probe that started crashed it`);
    }
  }
} finally {
  if (flags['probe-dir'] === undefined) await rm(dir, { recursive: true, force: true });
}
