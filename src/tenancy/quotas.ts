/**
 * Token quotas per calendar day or month (UTC): a key's use in the period is the store's running total (written with
 * the usage ledger) plus what this instance has queued but not yet written. The total is re-read at most every
 * `refreshMs` and after each ledger write, so another instance's use shows within that plus its flush interval; a
 * key can overshoot its quota by what it uses in that window and by the requests it has in flight. Only keys with a
 * quota keep period totals, so a quota counts the tokens used from the moment it was set.
 */
import { KilnError } from '../errors/catalog.js';
import type { Caller, QuotaPeriod } from '../service/caller.js';
import { periodKey } from '../store/usage.js';

export interface QuotaTotals {
  periodTokens(keyId: string, period: QuotaPeriod, at: Date): Promise<number>;
}

export interface QuotaOptions {
  /** Tokens queued for the store but not yet written, per key id. */
  unwritten(keyId: string): number;
  refreshMs?: number;
  now?: () => number;
}

export const QUOTA_REFRESH_MS = 2000;

interface Cached {
  period: string;
  tokens: number;
  readAt: number;
}

export class Quotas {
  private readonly cache = new Map<string, Cached>();
  private readonly reading = new Map<string, Promise<number>>();
  /** Ledger writes per key: a read that started before one would cache a total without that write's tokens. */
  private readonly writes = new Map<string, number>();

  constructor(
    private readonly totals: QuotaTotals,
    private readonly options: QuotaOptions,
  ) {}

  /** Refuses a caller whose quota is used up (403, SiliconFlow's balance code 30001). */
  async check(caller: Caller): Promise<void> {
    const quota = caller.quota;
    if (quota === undefined) return;
    const used = (await this.stored(caller.id, quota.period)) + this.options.unwritten(caller.id);
    if (used < quota.tokens) return;
    throw new KilnError('quotaExceeded', {
      message: `API key '${caller.name}' has used its quota of ${quota.tokens} tokens this ${quota.period} (UTC): ${used} used. It resets at the start of the next ${quota.period}.`,
    });
  }

  /** The store changed these keys' totals: read them again on their next request. */
  invalidate(keyIds: Iterable<string>): void {
    for (const id of keyIds) {
      this.cache.delete(id);
      this.writes.set(id, (this.writes.get(id) ?? 0) + 1);
    }
  }

  private async stored(keyId: string, period: QuotaPeriod): Promise<number> {
    const now = this.options.now?.() ?? Date.now();
    const label = periodKey(period, now);
    const cached = this.cache.get(keyId);
    if (cached !== undefined && cached.period === label && now - cached.readAt < (this.options.refreshMs ?? QUOTA_REFRESH_MS)) return cached.tokens;
    // Concurrent requests of one key share one read.
    const writes = this.writes.get(keyId);
    let read = this.reading.get(keyId);
    if (read === undefined) {
      read = this.totals.periodTokens(keyId, period, new Date(now)).finally(() => this.reading.delete(keyId));
      this.reading.set(keyId, read);
    }
    const tokens = await read;
    if (this.writes.get(keyId) === writes) this.cache.set(keyId, { period: label, tokens, readAt: now });
    return tokens;
  }
}
