/**
 * The persistent store: API keys and the usage ledger, in SQLite (a file under the data directory) or, when a
 * postgres:// URL is given, PostgreSQL for several Kiln instances sharing one user base. The schema is migrated to
 * the latest version on open.
 */
import { defaultDataDir, openPostgres, openSqlite, type Connection, type StoreKind } from './database.js';
import { migrateToLatest } from './migrations.js';
import { apiKeyStore, type ApiKeyStore } from './api-keys.js';
import { usageStore, type UsageStore } from './usage.js';

export { defaultDataDir, type StoreKind } from './database.js';
export * from './api-keys.js';
export * from './usage.js';

export interface StoreOptions {
  /** postgres:// or postgresql://; absent: SQLite under `dataDir`. */
  databaseUrl?: string;
  /** Where SQLite's kiln.db lives (created if missing); default: defaultDataDir(). */
  dataDir?: string;
  /** PostgreSQL only: keep Kiln's tables in this schema (created if missing), e.g. one per test run. */
  schema?: string;
}

export interface Store {
  kind: StoreKind;
  /** The SQLite file, or the PostgreSQL URL without its password. */
  location: string;
  keys: ApiKeyStore;
  usage: UsageStore;
  close(): Promise<void>;
}

export async function openStore(options: StoreOptions = {}): Promise<Store> {
  let connection: Connection;
  if (options.databaseUrl !== undefined) {
    if (!/^postgres(ql)?:\/\//.test(options.databaseUrl)) throw new Error('the database URL must be a postgres:// URL');
    if (options.schema !== undefined && !/^[a-z_][a-z0-9_]{0,62}$/.test(options.schema)) throw new Error(`invalid schema name '${options.schema}'`);
    connection = openPostgres(options.databaseUrl, options.schema);
  } else {
    connection = await openSqlite(options.dataDir ?? defaultDataDir());
  }
  const { kind, location, db } = connection;
  try {
    await migrateToLatest(db, kind, options.schema);
  } catch (error) {
    await db.destroy();
    throw new Error(`cannot open the store at ${location}: ${(error as Error).message}`, { cause: error });
  }
  return { kind, location, keys: apiKeyStore(db), usage: usageStore(db), close: () => db.destroy() };
}

/**
 * The store a config names, the same for `kiln serve` and `kiln keys`: `database_url`, else $DATABASE_URL (an empty
 * value counts as unset), else SQLite under `data_dir`, else defaultDataDir().
 */
export function storeOptionsFrom(
  config: { data_dir?: string; database_url?: string } | undefined,
  env: NodeJS.ProcessEnv = process.env,
): { databaseUrl?: string; dataDir: string } {
  const databaseUrl = config?.database_url ?? (env.DATABASE_URL || undefined);
  const dataDir = config?.data_dir ?? defaultDataDir(env);
  return databaseUrl !== undefined ? { databaseUrl, dataDir } : { dataDir };
}
