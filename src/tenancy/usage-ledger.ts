/**
 * The usage ledger's writer: completion records are queued in memory and written in batches off the request path,
 * every `flushMs` (default 1 s) or sooner when many are waiting; shutdown writes what is left. A crash loses at most
 * the records of the last interval. When the store fails, the rows are kept (up to a bound) and written with the next
 * batch.
 */
import type { Log } from '../core/log.js';
import type { CompletionRecord } from '../service/completion-record.js';
import type { UsageRow } from '../store/usage.js';

export interface UsageSink {
  insert(rows: UsageRow[]): Promise<void>;
}

export interface UsageLedgerOptions {
  flushMs?: number;
  /** Queued rows that trigger a write before the interval. */
  batchRows?: number;
  /** Rows kept while the store fails; past it the oldest are dropped (and logged). */
  maxPendingRows?: number;
  log: Log;
  /** Called after rows were written (quotas re-read the totals they changed). */
  onWritten?: (rows: readonly UsageRow[]) => void;
}

export const USAGE_FLUSH_MS = 1000;

export class UsageLedger {
  private pending: UsageRow[] = [];
  /** Tokens (prompt + completion) per key id, queued but not yet written: quotas add them to the stored totals. */
  private readonly pendingTokens = new Map<string, number>();
  private writing: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly sink: UsageSink,
    private readonly options: UsageLedgerOptions,
  ) {
    this.timer = setInterval(() => void this.flush(), options.flushMs ?? USAGE_FLUSH_MS);
    this.timer.unref();
  }

  record(record: CompletionRecord): void {
    // Field by field rather than spreads of optional parts: this runs once per request.
    const row: UsageRow = {
      ts: Date.now(),
      requestId: record.requestId ?? '',
      keyId: record.keyId,
      keyName: record.keyName,
      model: record.model,
      promptTokens: record.promptTokens,
      cachedTokens: record.cachedTokens,
      completionTokens: record.completionTokens,
      reasoningTokens: record.reasoningTokens,
      durationMs: record.durationMs,
      status: record.status,
    };
    if (record.deployment !== undefined) row.deployment = record.deployment;
    if (record.firstTokenMs !== undefined) row.ttftMs = record.firstTokenMs;
    if (record.finishReasons.some((reason) => reason !== null)) row.finishReason = record.finishReasons.map((reason) => reason ?? '').join(',');
    if (record.user !== undefined) row.user = record.user;
    if (record.metered === true) row.metered = true;
    this.pending.push(row);
    this.pendingTokens.set(row.keyId, (this.pendingTokens.get(row.keyId) ?? 0) + row.promptTokens + row.completionTokens);
    if (this.pending.length >= (this.options.batchRows ?? 1000)) void this.flush();
  }

  /** Tokens of `keyId` queued but not yet in the store. */
  unwrittenTokens(keyId: string): number {
    return this.pendingTokens.get(keyId) ?? 0;
  }

  /** Writes what is queued; one write at a time (a flush during a write waits for it, then writes the rest). */
  async flush(): Promise<void> {
    while (this.writing !== undefined) await this.writing;
    if (this.pending.length === 0) return;
    const rows = this.pending;
    this.pending = [];
    this.writing = this.write(rows).finally(() => (this.writing = undefined));
    await this.writing;
  }

  private async write(rows: UsageRow[]): Promise<void> {
    try {
      await this.sink.insert(rows);
    } catch (error) {
      // Kept for the next batch, oldest dropped past the bound, so a store that is down does not grow memory forever.
      this.pending = rows.concat(this.pending);
      const excess = this.pending.length - (this.options.maxPendingRows ?? 100_000);
      if (excess > 0) this.forget(this.pending.splice(0, excess));
      this.options.log.error({ err: error, rows: rows.length, dropped: Math.max(0, excess) }, 'usage ledger: write failed; rows kept for the next batch');
      return;
    }
    this.forget(rows);
    this.options.onWritten?.(rows);
  }

  private forget(rows: readonly UsageRow[]): void {
    for (const row of rows) {
      const left = (this.pendingTokens.get(row.keyId) ?? 0) - row.promptTokens - row.completionTokens;
      if (left > 0) this.pendingTokens.set(row.keyId, left);
      else this.pendingTokens.delete(row.keyId);
    }
  }

  /** Stops the timer and writes what is left (shutdown). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await this.flush();
  }
}
