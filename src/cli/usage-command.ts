/** `kiln usage`: the usage ledger summed by key, model or day over a time window, with totals. */
import { parseArgs } from 'node:util';
import { parseUsageTime, type UsageGroupBy, type UsageSummaryRow } from '../store/store.js';
import { formatTable, UsageError, type CliContext } from './keys-command.js';

export const USAGE_USAGE = `Usage:
  kiln usage [--from <time>] [--to <time>] [--group-by key|model|day] [--json] [--config kiln.yaml]
  Tokens and requests from the usage ledger, from --from (inclusive; default 30 days ago) to --to (exclusive;
  default now). A time is a date (2026-11-01, midnight UTC), an ISO 8601 time (2026-11-01T12:00:00Z) or Unix
  seconds. Default grouping: by key.
`;

const DEFAULT_WINDOW_MS = 30 * 24 * 60 * 60 * 1000;
const GROUPINGS: readonly UsageGroupBy[] = ['key', 'model', 'day'];
const COUNT_COLUMNS = ['requests', 'prompt_tokens', 'cached_tokens', 'completion_tokens', 'reasoning_tokens', 'total_tokens'] as const;

const options = {
  from: { type: 'string' },
  to: { type: 'string' },
  'group-by': { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** Prints the summary; answers the exit code (0, or 2 for bad input). */
export async function usageCommand(args: string[], context: CliContext, now: Date = new Date()): Promise<number> {
  const err = context.err ?? process.stderr;
  let query;
  let json;
  try {
    const { values: flags, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true });
    if (flags.help) {
      context.out.write(USAGE_USAGE);
      return 0;
    }
    if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`);
    const to = flags.to !== undefined ? parseTime('to', flags.to) : now;
    const from = flags.from !== undefined ? parseTime('from', flags.from) : new Date(to.getTime() - DEFAULT_WINDOW_MS);
    if (from >= to) throw new UsageError(`--from (${from.toISOString()}) must be before --to (${to.toISOString()})`);
    const groupBy = GROUPINGS.find((grouping) => grouping === (flags['group-by'] ?? 'key'));
    if (groupBy === undefined) throw new UsageError(`--group-by must be ${GROUPINGS.join(', ')}, got '${flags['group-by']}'`);
    query = { from, to, groupBy };
    json = flags.json === true;
  } catch (error) {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      err.write(`kiln usage: ${(error as Error).message}\n\n${USAGE_USAGE}`);
      return 2;
    }
    throw error;
  }

  const rows = await context.store.usage.summarise(query);
  const totals = sumRows(rows);
  if (json) {
    const window = { from: query.from.toISOString(), to: query.to.toISOString(), group_by: query.groupBy };
    context.out.write(`${JSON.stringify({ ...window, data: rows, totals }, null, 2)}\n`);
    return 0;
  }
  context.out.write(`Usage from ${query.from.toISOString()} to ${query.to.toISOString()} (exclusive), by ${query.groupBy}:\n`);
  if (rows.length === 0) {
    context.out.write('No requests recorded in this window.\n');
    return 0;
  }
  const header = [query.groupBy.toUpperCase(), 'REQUESTS', 'PROMPT', 'CACHED', 'COMPLETION', 'REASONING', 'TOTAL TOKENS'];
  const cells = (group: string, counts: Omit<UsageSummaryRow, 'group'>) => [group, ...COUNT_COLUMNS.map((column) => counts[column].toString())];
  const table = [...rows.map((row) => cells(row.group, row)), cells('TOTAL', totals)];
  context.out.write(formatTable(header, table, new Set([1, 2, 3, 4, 5, 6])));
  return 0;
}

function sumRows(rows: UsageSummaryRow[]): Omit<UsageSummaryRow, 'group' | 'key_id'> {
  const totals = { requests: 0, prompt_tokens: 0, cached_tokens: 0, completion_tokens: 0, reasoning_tokens: 0, total_tokens: 0 };
  for (const row of rows) for (const column of COUNT_COLUMNS) totals[column] += row[column];
  return totals;
}

/** A date (midnight UTC), an ISO 8601 time, or Unix seconds. */
export function parseTime(flag: string, raw: string): Date {
  const time = parseUsageTime(raw);
  if (time === undefined) throw new UsageError(`--${flag} must be a date (2026-11-01), an ISO 8601 time or Unix seconds, got '${raw}'`);
  return time;
}
