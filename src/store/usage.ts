/**
 * The usage ledger: one row per request that reached an engine, and running token totals per key and period (day,
 * month) kept in the same transaction, so a quota check reads one row instead of summing the ledger.
 */
import type { Insertable, Kysely } from 'kysely';
import type { QuotaPeriod } from './api-keys.js';
import type { StoreTables, UsageTable, UsageTotalsTable } from './database.js';

export type UsageStatus = 'completed' | 'cancelled' | 'failed';

export interface UsageRow {
  /** When the request's work ended (the ledger records it then), milliseconds since the epoch. */
  ts: number;
  requestId: string;
  keyId: string;
  keyName: string;
  model: string;
  deployment?: string;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  reasoningTokens: number;
  ttftMs?: number;
  durationMs: number;
  status: UsageStatus;
  /** Comma-joined, one per choice, when `n` > 1. */
  finishReason?: string;
  /** The request's `user` field. */
  user?: string;
  /** The key has a token quota: the row also adds to its day and month totals (usage_totals), which the quota reads. */
  metered?: boolean;
}

export type UsageGroupBy = 'key' | 'model' | 'day';

export interface UsageQuery {
  /** Inclusive. */
  from: Date;
  /** Exclusive. */
  to: Date;
  groupBy: UsageGroupBy;
  keyId?: string;
}

export interface UsageSummaryRow {
  /** The key's name, the model id or the day (`YYYY-MM-DD`, UTC). */
  group: string;
  /** Set when grouped by key. */
  key_id?: string;
  requests: number;
  prompt_tokens: number;
  cached_tokens: number;
  completion_tokens: number;
  reasoning_tokens: number;
  /** prompt + completion, as OpenAI counts it. */
  total_tokens: number;
}

export interface UsageStore {
  /** All rows in one transaction, with the period totals they add to. */
  insert(rows: UsageRow[]): Promise<void>;
  /** Sorted by group. */
  summarise(query: UsageQuery): Promise<UsageSummaryRow[]>;
  /** The tokens (prompt + completion) a key used in the day or month (UTC) that holds `at`. */
  periodTokens(keyId: string, period: QuotaPeriod, at: Date): Promise<number>;
}

/** Rows per INSERT: 17 parameters each keeps a statement well under SQLite's and PostgreSQL's parameter limits. */
const INSERT_CHUNK_ROWS = 500;

/** `day:YYYY-MM-DD` or `month:YYYY-MM` in UTC: the key of a usage_totals row. */
export function periodKey(period: QuotaPeriod, at: Date | number): string {
  const iso = new Date(at).toISOString();
  return period === 'day' ? `day:${iso.slice(0, 10)}` : `month:${iso.slice(0, 7)}`;
}

function toColumns(row: UsageRow): Insertable<UsageTable> {
  return {
    ts: row.ts,
    day: new Date(row.ts).toISOString().slice(0, 10),
    request_id: row.requestId,
    key_id: row.keyId,
    key_name: row.keyName,
    model: row.model,
    deployment: row.deployment ?? null,
    prompt_tokens: row.promptTokens,
    cached_tokens: row.cachedTokens,
    completion_tokens: row.completionTokens,
    reasoning_tokens: row.reasoningTokens,
    ttft_ms: row.ttftMs ?? null,
    duration_ms: row.durationMs,
    status: row.status,
    finish_reason: row.finishReason ?? null,
    end_user: row.user ?? null,
  };
}

/**
 * The batch's tokens summed per (key, period) first, so each totals row is upserted once per batch; sorted, so two
 * instances writing at once lock the rows in the same order (no deadlock on PostgreSQL).
 */
function periodTotals(rows: UsageRow[]): UsageTotalsTable[] {
  const totals = new Map<string, UsageTotalsTable>();
  for (const row of rows) {
    if (row.metered !== true) continue;
    const tokens = row.promptTokens + row.completionTokens;
    for (const period of ['day', 'month'] as const) {
      const key = periodKey(period, row.ts);
      const id = `${row.keyId}\u0000${key}`;
      const total = totals.get(id);
      if (total !== undefined) total.tokens += tokens;
      else totals.set(id, { key_id: row.keyId, period: key, tokens });
    }
  }
  return [...totals.entries()].sort(([a], [b]) => compareText(a, b)).map(([, total]) => total);
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function usageStore(db: Kysely<StoreTables>): UsageStore {
  return {
    async insert(rows) {
      if (rows.length === 0) return;
      const totals = periodTotals(rows);
      await db.transaction().execute(async (trx) => {
        for (let start = 0; start < rows.length; start += INSERT_CHUNK_ROWS) {
          await trx.insertInto('usage').values(rows.slice(start, start + INSERT_CHUNK_ROWS).map(toColumns)).execute();
        }
        for (let start = 0; start < totals.length; start += INSERT_CHUNK_ROWS) {
          await trx
            .insertInto('usage_totals')
            .values(totals.slice(start, start + INSERT_CHUNK_ROWS))
            .onConflict((conflict) => conflict.columns(['key_id', 'period']).doUpdateSet((eb) => ({ tokens: eb('usage_totals.tokens', '+', eb.ref('excluded.tokens')) })))
            .execute();
        }
      });
    },

    async summarise(query) {
      const groupColumn = query.groupBy === 'key' ? 'key_name' : query.groupBy === 'model' ? 'model' : 'day';
      let select = db
        .selectFrom('usage')
        .select((eb) => [
          eb.ref(groupColumn).as('group'),
          eb.fn.countAll().as('requests'),
          eb.fn.sum('prompt_tokens').as('prompt_tokens'),
          eb.fn.sum('cached_tokens').as('cached_tokens'),
          eb.fn.sum('completion_tokens').as('completion_tokens'),
          eb.fn.sum('reasoning_tokens').as('reasoning_tokens'),
        ])
        .where('ts', '>=', query.from.getTime())
        .where('ts', '<', query.to.getTime())
        .groupBy(groupColumn);
      if (query.groupBy === 'key') select = select.select('key_id').groupBy('key_id');
      if (query.keyId !== undefined) select = select.where('key_id', '=', query.keyId);
      const rows = await select.execute();
      // PostgreSQL returns sums as numeric strings; the order is made here so both databases sort alike (byte order,
      // not PostgreSQL's locale collation).
      return rows
        .map((row): UsageSummaryRow => {
          const summary: UsageSummaryRow = {
            group: String(row.group),
            requests: Number(row.requests),
            prompt_tokens: Number(row.prompt_tokens),
            cached_tokens: Number(row.cached_tokens),
            completion_tokens: Number(row.completion_tokens),
            reasoning_tokens: Number(row.reasoning_tokens),
            total_tokens: Number(row.prompt_tokens) + Number(row.completion_tokens),
          };
          if ('key_id' in row) summary.key_id = String(row.key_id);
          return summary;
        })
        .sort((a, b) => compareText(a.group, b.group) || compareText(a.key_id ?? '', b.key_id ?? ''));
    },

    async periodTokens(keyId, period, at) {
      const row = await db.selectFrom('usage_totals').select('tokens').where('key_id', '=', keyId).where('period', '=', periodKey(period, at)).executeTakeFirst();
      return row === undefined ? 0 : Number(row.tokens);
    },
  };
}

/**
 * A bound of a usage window as people write it: a date (midnight UTC), an ISO 8601 time, or Unix seconds; undefined
 * when it is none of these.
 */
export function parseUsageTime(raw: string): Date | undefined {
  let time: number;
  if (/^\d+$/.test(raw)) time = Number(raw) * 1000;
  else if (/^\d{4}-\d{2}-\d{2}$/.test(raw)) time = Date.parse(`${raw}T00:00:00Z`);
  else if (/^\d{4}-\d{2}-\d{2}T/.test(raw)) time = Date.parse(raw);
  else return undefined;
  return Number.isFinite(time) ? new Date(time) : undefined;
}
