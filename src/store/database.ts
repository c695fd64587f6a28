/**
 * The connection to the store: SQLite through better-sqlite3 by default, PostgreSQL through a pg Pool when a
 * postgres:// URL is given, both behind one kysely instance. The only module that imports a database driver.
 */
import { mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, type Generated } from 'kysely';
import pg from 'pg';

export type StoreKind = 'sqlite' | 'postgres';

export interface ApiKeysTable {
  id: string;
  name: string;
  /** Hex SHA-256 of the key: the key itself is never stored. */
  hash: string;
  /** The key's first characters, for telling keys apart in listings. */
  prefix: string;
  tier: string;
  rpm: number | null;
  tpm: number | null;
  /** JSON array of model-id globs; null: every model. */
  models: string | null;
  quota_tokens: number | null;
  quota_period: string | null;
  /** Milliseconds since the epoch, as every timestamp in the store. */
  created_at: number;
  revoked_at: number | null;
}

export interface UsageTable {
  id: Generated<number>;
  ts: number;
  /** `YYYY-MM-DD` (UTC) of `ts`, so grouping by day needs no dialect-specific date functions. */
  day: string;
  request_id: string;
  key_id: string;
  key_name: string;
  model: string;
  deployment: string | null;
  prompt_tokens: number;
  cached_tokens: number;
  completion_tokens: number;
  reasoning_tokens: number;
  ttft_ms: number | null;
  duration_ms: number;
  status: string;
  finish_reason: string | null;
  /** The request's `user` field; not named `user`, which PostgreSQL reads as CURRENT_USER in hand-written SQL. */
  end_user: string | null;
}

export interface UsageTotalsTable {
  key_id: string;
  /** `day:YYYY-MM-DD` or `month:YYYY-MM` (UTC). */
  period: string;
  tokens: number;
}

/** One row: how many times api_keys has changed (create, update, revoke). */
export interface KeyChangesTable {
  id: number;
  version: number;
}

export interface StoreTables {
  api_keys: ApiKeysTable;
  key_changes: KeyChangesTable;
  usage: UsageTable;
  usage_totals: UsageTotalsTable;
}

export interface Connection {
  kind: StoreKind;
  location: string;
  db: Kysely<StoreTables>;
}

/** A CLI process and a server share the SQLite file: a writer waits this long for the other's lock. */
const SQLITE_BUSY_TIMEOUT_MS = 5_000;
const SQLITE_BUSY_RETRY_MS = 20;
const PG_CONNECT_TIMEOUT_MS = 10_000;
const PG_POOL_SIZE = 10;
const PG_INT8_OID = 20;

/** `$KILN_DATA_DIR`, else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KILN_DATA_DIR) return env.KILN_DATA_DIR;
  if (env.XDG_DATA_HOME) return join(env.XDG_DATA_HOME, 'kiln');
  return join(homedir(), '.local', 'share', 'kiln');
}

export async function openSqlite(dataDir: string): Promise<Connection> {
  await mkdir(dataDir, { recursive: true });
  const file = join(dataDir, 'kiln.db');
  const database = new SqliteDatabase(file, { timeout: SQLITE_BUSY_TIMEOUT_MS });
  // WAL lets readers and one writer work at once across processes; NORMAL sync is durable against a process crash
  // and loses at most the last transactions on a power cut, which the usage ledger's batching already accepts.
  await retryWhileBusy(() => database.pragma('journal_mode = WAL'));
  database.pragma('synchronous = NORMAL');
  return { kind: 'sqlite', location: file, db: new Kysely<StoreTables>({ dialect: new SqliteDialect({ database }) }) };
}

/**
 * Switching a new file to WAL needs it to itself for a moment, and SQLite answers SQLITE_BUSY at once, without its busy
 * timeout, when another process opening the same new file holds it: retried here for as long as that timeout.
 */
async function retryWhileBusy<T>(statement: () => T): Promise<T> {
  const deadline = Date.now() + SQLITE_BUSY_TIMEOUT_MS;
  for (;;) {
    try {
      return statement();
    } catch (error) {
      if ((error as { code?: string }).code !== 'SQLITE_BUSY' || Date.now() > deadline) throw error;
      await sleep(SQLITE_BUSY_RETRY_MS);
    }
  }
}

export function openPostgres(url: string, schema?: string): Connection {
  const pool = new pg.Pool({
    connectionString: url,
    max: PG_POOL_SIZE,
    connectionTimeoutMillis: PG_CONNECT_TIMEOUT_MS,
    types: { getTypeParser: int8AsNumber },
    ...(schema !== undefined ? { options: `-c search_path=${schema}` } : {}),
  });
  // An idle connection dropped by the server is not fatal: the pool opens a new one for the next query. Without a
  // listener, pg would throw the error out of the process.
  pool.on('error', () => {});
  return { kind: 'postgres', location: redactUrl(url), db: new Kysely<StoreTables>({ dialect: new PostgresDialect({ pool }) }) };
}

/**
 * Timestamps and token totals are int8 columns, which pg returns as strings by default. Every value the store keeps
 * (milliseconds since the epoch, token counts) is far below 2^53, so numbers are exact. Set on this pool only, not
 * on pg's global parsers, which other code in the process may rely on.
 */
const int8AsNumber = ((oid: number, format?: 'text' | 'binary') =>
  oid === PG_INT8_OID && format !== 'binary' ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser;

/** The URL without its password or query string (which may carry one): safe for logs and listings. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.password = '';
    parsed.search = '';
    return parsed.toString();
  } catch {
    return 'postgres://(unparsable URL)';
  }
}
