/**
 * Tenancy assembled: who is calling (keys from the config and the store), what they may use (quotas, per-minute
 * limits), and what they used (the usage ledger). `kiln serve` opens one; the HTTP layer and the service only see its
 * parts through their own interfaces (Authenticator, RequestGate, the completion hook, UsageReader).
 */
import type { RateLimitsConfig } from '../config/config.js';
import type { Log } from '../core/log.js';
import type { CompletionRecord } from '../service/completion-record.js';
import type { Tier } from '../service/caller.js';
import type { Store } from '../store/store.js';
import { KeyResolver, type StaticKey } from './key-resolver.js';
import { Quotas } from './quotas.js';
import { RateLimits } from './rate-limits.js';
import { TenancyGate } from './tenancy-gate.js';
import { UsageLedger } from './usage-ledger.js';

export interface TenancyOptions {
  store: Store;
  staticKeys: readonly StaticKey[];
  tierLimits?: Partial<Record<Tier, RateLimitsConfig>>;
  /** Per-key limits on one model id (config `models[].rate_limits`); read on every request, so a reload applies. */
  modelLimits?: (model: string) => RateLimitsConfig | undefined;
  /** Rate-limit counters shared by every instance; absent: in this process. */
  redisUrl?: string;
  onRateLimitStoreFailure?: 'open' | 'closed';
  usageFlushMs?: number;
  /** How long a stored key's lookup is trusted (default KEY_CACHE_MS): the delay before a revocation applies. */
  keyCacheMs?: number;
  log: Log;
}

export interface Tenancy {
  auth: KeyResolver;
  gate: TenancyGate;
  /** The completion hook: every request that reached an engine, however it ended. */
  record(record: CompletionRecord): void;
  /** GET /v1/usage: the ledger written first, then summarised. */
  usage: { summarise: Store['usage']['summarise']; flush(): Promise<void> };
  /** Writes what the ledger holds, then closes the counters and the store. */
  close(): Promise<void>;
}

export async function openTenancy(options: TenancyOptions): Promise<Tenancy> {
  const { store, log } = options;
  const rateLimits = await RateLimits.create({
    ...(options.redisUrl !== undefined ? { redisUrl: options.redisUrl } : {}),
    onStoreFailure: options.onRateLimitStoreFailure ?? 'open',
    log,
  });
  let quotas: Quotas | undefined;
  const ledger = new UsageLedger(store.usage, {
    ...(options.usageFlushMs !== undefined ? { flushMs: options.usageFlushMs } : {}),
    log,
    // Only rows of keys with a quota change the totals a quota reads.
    onWritten: (rows) => quotas?.invalidate(new Set(rows.filter((row) => row.metered === true).map((row) => row.keyId))),
  });
  quotas = new Quotas(store.usage, { unwritten: (keyId) => ledger.unwrittenTokens(keyId) });
  const auth = new KeyResolver({
    staticKeys: options.staticKeys,
    store: store.keys,
    ...(options.tierLimits !== undefined ? { tierLimits: options.tierLimits } : {}),
    ...(options.keyCacheMs !== undefined ? { cacheMs: options.keyCacheMs } : {}),
  });
  const gate = new TenancyGate({ rateLimits, quotas, ...(options.modelLimits !== undefined ? { modelLimits: options.modelLimits } : {}) });
  return {
    auth,
    gate,
    record: (record) => ledger.record(record),
    usage: { summarise: (query) => store.usage.summarise(query), flush: () => ledger.flush() },
    async close() {
      await ledger.close();
      await rateLimits.close();
      await store.close();
    },
  };
}
