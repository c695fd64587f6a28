/**
 * The store's schema as versioned migrations, applied when a store opens. One definition serves both databases;
 * timestamps are integer milliseconds (bigint in PostgreSQL), token totals bigint.
 */
import { sql, type Kysely } from 'kysely';
import { Migrator, type Migration, type MigrationProvider } from 'kysely/migration';
import type { StoreKind } from './database.js';

/** Kiln's own names, so another kysely application sharing the database keeps its migrations apart. */
const MIGRATION_TABLE = 'kiln_migration';
const MIGRATION_LOCK_TABLE = 'kiln_migration_lock';

function migrations(kind: StoreKind): Record<string, Migration> {
  return {
    '0001_api_keys': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('api_keys')
          .addColumn('id', 'text', (column) => column.primaryKey())
          .addColumn('name', 'text', (column) => column.notNull().unique())
          .addColumn('hash', 'text', (column) => column.notNull().unique())
          .addColumn('prefix', 'text', (column) => column.notNull())
          .addColumn('tier', 'text', (column) => column.notNull())
          .addColumn('rpm', 'integer')
          .addColumn('tpm', 'integer')
          .addColumn('models', 'text')
          .addColumn('quota_tokens', 'bigint')
          .addColumn('quota_period', 'text')
          .addColumn('created_at', 'bigint', (column) => column.notNull())
          .addColumn('revoked_at', 'bigint')
          .execute();
      },
    },
    '0002_usage': {
      async up(db: Kysely<unknown>) {
        // The one type that differs: an auto-numbered key is `bigserial` in PostgreSQL and a rowid alias in SQLite.
        const usage =
          kind === 'postgres'
            ? db.schema.createTable('usage').addColumn('id', 'bigserial', (column) => column.primaryKey())
            : db.schema.createTable('usage').addColumn('id', 'integer', (column) => column.primaryKey());
        await usage
          .addColumn('ts', 'bigint', (column) => column.notNull())
          .addColumn('day', 'text', (column) => column.notNull())
          .addColumn('request_id', 'text', (column) => column.notNull())
          .addColumn('key_id', 'text', (column) => column.notNull())
          .addColumn('key_name', 'text', (column) => column.notNull())
          .addColumn('model', 'text', (column) => column.notNull())
          .addColumn('deployment', 'text')
          .addColumn('prompt_tokens', 'integer', (column) => column.notNull())
          .addColumn('cached_tokens', 'integer', (column) => column.notNull())
          .addColumn('completion_tokens', 'integer', (column) => column.notNull())
          .addColumn('reasoning_tokens', 'integer', (column) => column.notNull())
          .addColumn('ttft_ms', 'integer')
          .addColumn('duration_ms', 'integer', (column) => column.notNull())
          .addColumn('status', 'text', (column) => column.notNull())
          .addColumn('finish_reason', 'text')
          .addColumn('end_user', 'text')
          .execute();
        await db.schema.createIndex('usage_ts').on('usage').column('ts').execute();
        // Only the time index: every summary is a time window. An index led by the key would put each write at a
        // random place in a b-tree (one per key in use), which costs every request; a key's quota reads
        // usage_totals instead.
        await db.schema
          .createTable('usage_totals')
          .addColumn('key_id', 'text', (column) => column.notNull())
          .addColumn('period', 'text', (column) => column.notNull())
          .addColumn('tokens', 'bigint', (column) => column.notNull())
          .addPrimaryKeyConstraint('usage_totals_pk', ['key_id', 'period'])
          .execute();
      },
    },
    // One counter bumped with every change to api_keys: servers poll it instead of re-reading each cached key.
    '0003_key_changes': {
      async up(db: Kysely<any>) {
        await db.schema
          .createTable('key_changes')
          .addColumn('id', 'integer', (column) => column.primaryKey())
          .addColumn('version', 'bigint', (column) => column.notNull())
          .execute();
        await db.insertInto('key_changes').values({ id: 1, version: 0 }).execute();
      },
    },
  };
}

/**
 * Brings the schema to the latest version. Two processes opening the store at once are safe: on PostgreSQL kysely
 * holds an advisory lock and runs each migration in a transaction; on SQLite (where kysely takes no lock) the whole
 * run is one BEGIN IMMEDIATE transaction, so the second process waits for the first and then finds nothing to do.
 * Untyped (`Kysely<any>`), as kysely's Migrator is: the tables it creates are not there yet.
 */
export async function migrateToLatest(db: Kysely<any>, kind: StoreKind, schema?: string): Promise<void> {
  const provider: MigrationProvider = { getMigrations: async () => migrations(kind) };
  const migrate = async (on: Kysely<any>) => {
    const migrator = new Migrator({
      db: on,
      provider,
      migrationTableName: MIGRATION_TABLE,
      migrationLockTableName: MIGRATION_LOCK_TABLE,
      ...(schema !== undefined ? { migrationTableSchema: schema } : {}),
    });
    const { error } = await migrator.migrateToLatest();
    if (error !== undefined) throw new Error(`store migration failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  };
  if (kind === 'postgres') {
    await migrate(db);
    return;
  }
  await db.connection().execute(async (connection) => {
    await sql`begin immediate`.execute(connection);
    try {
      await migrate(connection);
    } catch (error) {
      await sql`rollback`.execute(connection);
      throw error;
    }
    await sql`commit`.execute(connection);
  });
}
