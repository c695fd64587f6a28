/**
 * The Kiln processes `npm run bench:auth` compares, and the store it fills before they start: each gets its own data
 * directory and a config that says whether tenancy is on.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore } from '../src/store/store.js';
import { startKilnGateway, type ServerProcess } from './gateway-servers.js';

/** Limits so high that no request of the bench is refused, yet set, so every request goes through the counters. */
export const BENCH_RPM = 1_000_000;
export const BENCH_TPM = 1_000_000_000;

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
export function startKiln(upstreamUrl: string, upstreamModel: string, variant: KilnVariant): Promise<ServerProcess> {
  return startKilnGateway(upstreamUrl, upstreamModel, {
    dataDir: variant.dataDir,
    ...(variant.nodeFlags !== undefined ? { nodeFlags: variant.nodeFlags } : {}),
    ...(variant.redisUrl !== undefined ? { config: { redis_url: variant.redisUrl } } : {}),
    ...(variant.adminKey !== undefined ? { server: { admin_key: variant.adminKey } } : {}),
  });
}

