/**
 * The stores of the end-to-end tests: PostgreSQL and Redis on this machine's loopback (DATABASE_URL / REDIS_URL, else
 * the defaults `.ci/run` checks) — a store that does not answer within about a second makes its tests skip with a
 * visible message rather than hang or fail on a machine without it — and the rows of a server's SQLite ledger.
 */
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { join } from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import pg from 'pg';

export const POSTGRES_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

const REACH_TIMEOUT_MS = 1_000;

/** The URL when PostgreSQL answers a query there within about a second, else undefined. */
export async function reachablePostgres(url: string = POSTGRES_URL): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: REACH_TIMEOUT_MS, query_timeout: REACH_TIMEOUT_MS });
  // A refused or dropped connection is an answer here, not an uncaught error.
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('select 1');
    return url;
  } catch {
    return undefined;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * The URL when Redis answers PING within about a second, else undefined. Raw RESP over a socket: the check needs no
 * client library and leaves no reconnecting client behind.
 */
export function reachableRedis(url: string = REDIS_URL): Promise<string | undefined> {
  let host: string;
  let port: number;
  try {
    const parsed = new URL(url);
    host = parsed.hostname || '127.0.0.1';
    port = Number(parsed.port || 6379);
  } catch {
    return Promise.resolve(undefined);
  }
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    let reply = '';
    const done = (answer: string | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => done(undefined), REACH_TIMEOUT_MS);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (data) => {
      reply += data;
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG') ? url : undefined);
    });
    socket.on('error', () => done(undefined));
  });
}

export interface ScratchDatabase {
  /** The URL of the new database (same server and user as the one it was made from). */
  url: string;
  name: string;
  /** Drops it, closing whatever connections are left (a server that was killed may leave some). */
  drop(): Promise<void>;
}

/**
 * A new, empty database next to `url`'s, so that a run's tables (and migrations) share nothing with other runs or
 * with the `test` database: Kiln's schema goes into its public schema, which is what a real deployment uses.
 */
export async function scratchDatabase(url: string = POSTGRES_URL): Promise<ScratchDatabase> {
  const name = `kiln_e2e_${randomBytes(6).toString('hex')}`;
  await adminQuery(url, `CREATE DATABASE ${name}`);
  const scratch = new URL(url);
  scratch.pathname = `/${name}`;
  return { url: scratch.toString(), name, drop: () => adminQuery(url, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

async function adminQuery(url: string, statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => {});
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end().catch(() => {});
  }
}

export interface UsageLedgerRow {
  request_id: string;
  key_name: string;
  prompt_tokens: number;
  completion_tokens: number;
  status: string;
  finish_reason: string | null;
}

/** The usage ledger's rows for one model, read (read-only) from the SQLite store a server writes in `dataDir`. */
export function sqliteUsageRows(dataDir: string, model: string): UsageLedgerRow[] {
  const database = new SqliteDatabase(join(dataDir, 'kiln.db'), { readonly: true, fileMustExist: true });
  try {
    return database
      .prepare('select request_id, key_name, prompt_tokens, completion_tokens, status, finish_reason from usage where model = ?')
      .all(model) as UsageLedgerRow[];
  } finally {
    database.close();
  }
}
