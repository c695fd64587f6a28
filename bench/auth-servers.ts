/**
 * The Kiln processes `npm run bench:auth` compares, and the store it fills before they start. Unlike
 * bench/gateway-servers.ts's startKilnGateway (one fixed config, the caller's environment), each of these gets its own
 * data directory and a config that says whether tenancy is on, and an environment without the caller's DATABASE_URL,
 * REDIS_URL or keys: a developer's shell must not decide what is measured.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { openStore } from '../src/store/store.js';
import { KILN_MODEL, type ServerProcess } from './gateway-servers.js';

const REPO_ROOT = resolve(import.meta.dirname, '..');

/** Limits so high that no request of the bench is refused, yet set, so every request goes through the counters. */
export const BENCH_RPM = 1_000_000;
export const BENCH_TPM = 1_000_000_000;

/** Environment variables of the caller's that would change which store, counters or keys Kiln uses. */
const CALLER_ONLY = ['DATABASE_URL', 'REDIS_URL', 'KILN_API_KEYS', 'KILN_ADMIN_KEY', 'KILN_DATA_DIR'];

export async function tempDir(label: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `kiln-auth-bench-${label}-`));
}

/**
 * `count` keys in the SQLite store under `dataDir`, made with the store's own API (what `kiln keys create` calls);
 * returns the first `keep` of them in plain text (the store keeps only their hashes) and how long it took.
 */
export async function seedKeys(dataDir: string, count: number, keep: number): Promise<{ keys: string[]; seconds: number }> {
  const started = performance.now();
  const store = await openStore({ dataDir });
  const keys: string[] = [];
  try {
    for (let index = 0; index < count; index++) {
      const { key } = await store.keys.create({ name: `bench-${index}`, rpm: BENCH_RPM, tpm: BENCH_TPM });
      if (index < keep) keys.push(key);
    }
    const active = await store.keys.countActive();
    if (active !== count) throw new Error(`the store holds ${active} active keys, not ${count}`);
  } finally {
    await store.close();
  }
  return { keys, seconds: (performance.now() - started) / 1000 };
}

/** Requests in the usage ledger under `dataDir` (read after the server stopped, which flushes it). */
export async function ledgerRequests(dataDir: string): Promise<number> {
  const store = await openStore({ dataDir });
  try {
    const rows = await store.usage.summarise({ from: new Date(0), to: new Date(Date.now() + 60_000), groupBy: 'model' });
    return rows.reduce((sum, row) => sum + row.requests, 0);
  } finally {
    await store.close();
  }
}

export interface KilnVariant {
  dataDir: string;
  /** Tenancy on: the admin key (the stored keys are in `dataDir` already). Absent: an open server. */
  adminKey?: string;
  /** Rate-limit counters in this Redis instead of the process. */
  redisUrl?: string;
  /** Node flags for the server process, e.g. --cpu-prof. */
  nodeFlags?: string[];
}

/** `kiln serve` (the built CLI, dist/) with one model served by the canned upstream at `upstreamUrl`. */
export async function startKiln(upstreamUrl: string, upstreamModel: string, variant: KilnVariant): Promise<ServerProcess> {
  if (!existsSync(join(REPO_ROOT, 'dist/cli/main.js'))) throw new Error('dist/ is missing: run `npx tsc -p tsconfig.json` first');
  const config = join(variant.dataDir, 'kiln.yaml');
  await writeFile(
    config,
    stringify({
      data_dir: variant.dataDir,
      ...(variant.redisUrl !== undefined ? { redis_url: variant.redisUrl } : {}),
      server: { ...(variant.adminKey !== undefined ? { admin_key: variant.adminKey } : {}), upstream: { first_token_timeout_ms: 60_000 } },
      models: [{ id: KILN_MODEL, upstreams: [{ url: `${upstreamUrl}/v1`, model: upstreamModel, max_concurrency: 256 }], queue_depth: 1024 }],
    }),
  );
  const env = { ...process.env };
  for (const name of CALLER_ONLY) delete env[name];
  env.KILN_DATA_DIR = variant.dataDir;
  const child = spawn(process.execPath, [...(variant.nodeFlags ?? []), join(REPO_ROOT, 'bin/kiln.cjs'), 'serve', '--config', config, '--port', '0', '--log-level', 'warn'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const url = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`kiln did not start within 60 s:\n${output}`)), 60_000);
    const onData = (data: Buffer) => {
      output = (output + data).slice(-50_000);
      const match = /Kiln listening on (http:\/\/[^\s"]+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]!.replace(/\/$/, ''));
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kiln exited with ${code} before listening:\n${output}`));
    });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolvePromise) => child.once('exit', resolvePromise));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  };
  return { url, child, output: () => output, stop };
}

/** User + system CPU time of a process so far, in ms (/proc: 10 ms ticks, fine over thousands of requests). */
export function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return Number.NaN;
  }
}
