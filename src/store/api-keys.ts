/**
 * API keys: generated here, shown once, stored only as their SHA-256. A request's key is found by hashing it and
 * looking the hash up (one indexed read, whatever the number of keys).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Kysely, Selectable } from 'kysely';
import type { ApiKeysTable, StoreTables } from './database.js';

export const KEY_TIERS = ['free', 'pro'] as const;
export type KeyTier = (typeof KEY_TIERS)[number];
export const QUOTA_PERIODS = ['day', 'month'] as const;
export type QuotaPeriod = (typeof QUOTA_PERIODS)[number];

export interface TokenQuota {
  tokens: number;
  period: QuotaPeriod;
}

export interface ApiKeyRecord {
  id: string;
  name: string;
  /** The key's first characters (`sk-kiln-AbCd`), enough to tell keys apart, far too few to use. */
  prefix: string;
  tier: KeyTier;
  rpm?: number;
  tpm?: number;
  /** Globs of the model ids the key may use; absent: every model its tier allows. */
  models?: string[];
  quota?: TokenQuota;
  createdAt: Date;
  revokedAt?: Date;
}

export interface NewApiKey {
  name: string;
  tier?: KeyTier;
  rpm?: number;
  tpm?: number;
  models?: string[];
  quota?: TokenQuota;
}

/** What `update` changes; `null` clears a limit. */
export interface ApiKeyPatch {
  name?: string;
  tier?: KeyTier;
  rpm?: number | null;
  tpm?: number | null;
  models?: string[] | null;
  quota?: TokenQuota | null;
}

export interface ApiKeyStore {
  /** The new key is in the answer and nowhere else: only its hash is kept. */
  create(input: NewApiKey): Promise<{ key: string; record: ApiKeyRecord }>;
  list(options?: { includeRevoked?: boolean }): Promise<ApiKeyRecord[]>;
  /** Revoked keys too (with `revokedAt`), so the caller can tell "revoked" from "unknown". */
  findByHash(hash: string): Promise<ApiKeyRecord | undefined>;
  /** By id, else by name. */
  get(nameOrId: string): Promise<ApiKeyRecord | undefined>;
  /** Idempotent: a key revoked before keeps its first `revokedAt`. */
  revoke(nameOrId: string): Promise<ApiKeyRecord | undefined>;
  update(nameOrId: string, patch: ApiKeyPatch): Promise<ApiKeyRecord | undefined>;
  countActive(): Promise<number>;
  /**
   * A number that changes whenever a key is created, updated or revoked through this API (`kiln keys`): a server
   * re-reads the keys it holds only when it moved. Keys edited in the database by hand are not seen until a restart.
   */
  changes(): Promise<number>;
}

export class DuplicateKeyNameError extends Error {
  constructor(name: string) {
    super(`a key named '${name}' already exists (names stay taken after a revocation; rename the old key with \`kiln keys update <name> --name <new>\`)`);
    this.name = 'DuplicateKeyNameError';
  }
}

const KEY_PREFIX = 'sk-kiln-';
const KEY_SECRET_BYTES = 32;
const DISPLAY_PREFIX_LENGTH = KEY_PREFIX.length + 4;
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** `bytes` random bytes written in base62, zero-padded to a fixed length (no `-` or `_`: one double-click copies it). */
function randomBase62(bytes: number): string {
  const length = Math.ceil((bytes * 8) / Math.log2(62));
  let value = BigInt(`0x${randomBytes(bytes).toString('hex')}`);
  let text = '';
  for (let index = 0; index < length; index++) {
    text = BASE62[Number(value % 62n)]! + text;
    value /= 62n;
  }
  return text;
}

/** `sk-kiln-` and 256 random bits in base62 (43 characters). */
export function generateApiKey(): string {
  return KEY_PREFIX + randomBase62(KEY_SECRET_BYTES);
}

/**
 * Hex SHA-256. A slow password hash (bcrypt, argon2) protects low-entropy secrets against guessing; a 256-bit random
 * key cannot be guessed, so one fast hash is as safe and keeps the per-request lookup cheap.
 */
export function hashApiKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

/** Throws a RangeError naming the first field out of range. */
export function checkKeyFields(fields: ApiKeyPatch): void {
  if (fields.name !== undefined && !/^\S(.{0,126}\S)?$/.test(fields.name)) throw new RangeError('name must be 1 to 128 characters, without leading or trailing spaces');
  if (fields.tier !== undefined && !KEY_TIERS.includes(fields.tier)) throw new RangeError(`tier must be ${KEY_TIERS.join(' or ')}`);
  for (const field of ['rpm', 'tpm'] as const) {
    const value = fields[field];
    if (value != null && !(Number.isSafeInteger(value) && value > 0)) throw new RangeError(`${field} must be a positive integer`);
  }
  if (fields.models != null && (fields.models.length === 0 || fields.models.some((glob) => glob.trim() === ''))) throw new RangeError('models must be a non-empty list of non-empty globs');
  if (fields.quota != null) {
    if (!(Number.isSafeInteger(fields.quota.tokens) && fields.quota.tokens > 0)) throw new RangeError('quota tokens must be a positive integer');
    if (!QUOTA_PERIODS.includes(fields.quota.period)) throw new RangeError(`quota period must be ${QUOTA_PERIODS.join(' or ')}`);
  }
}

function toRecord(row: Selectable<ApiKeysTable>): ApiKeyRecord {
  const record: ApiKeyRecord = {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    tier: row.tier as KeyTier,
    createdAt: new Date(Number(row.created_at)),
  };
  if (row.rpm !== null) record.rpm = row.rpm;
  if (row.tpm !== null) record.tpm = row.tpm;
  if (row.models !== null) record.models = JSON.parse(row.models) as string[];
  if (row.quota_tokens !== null && row.quota_period !== null) record.quota = { tokens: Number(row.quota_tokens), period: row.quota_period as QuotaPeriod };
  if (row.revoked_at !== null) record.revokedAt = new Date(Number(row.revoked_at));
  return record;
}

/** better-sqlite3 and pg each report a unique-constraint violation their own way. */
function isUniqueViolation(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return code === 'SQLITE_CONSTRAINT_UNIQUE' || code === '23505';
}

function bump(trx: Kysely<StoreTables>): Promise<unknown> {
  return trx.updateTable('key_changes').set((eb) => ({ version: eb('version', '+', 1) })).where('id', '=', 1).execute();
}

export function apiKeyStore(db: Kysely<StoreTables>): ApiKeyStore {
  /** An id wins over a name, so a key named like another key's id cannot shadow it. */
  const find = async (nameOrId: string) => {
    const rows = await db.selectFrom('api_keys').selectAll().where((eb) => eb.or([eb('id', '=', nameOrId), eb('name', '=', nameOrId)])).execute();
    return rows.find((row) => row.id === nameOrId) ?? rows[0];
  };

  return {
    async create(input) {
      checkKeyFields(input);
      const key = generateApiKey();
      const row: Selectable<ApiKeysTable> = {
        id: `key_${randomBase62(12)}`,
        name: input.name,
        hash: hashApiKey(key),
        prefix: key.slice(0, DISPLAY_PREFIX_LENGTH),
        tier: input.tier ?? 'free',
        rpm: input.rpm ?? null,
        tpm: input.tpm ?? null,
        models: input.models !== undefined ? JSON.stringify(input.models) : null,
        quota_tokens: input.quota?.tokens ?? null,
        quota_period: input.quota?.period ?? null,
        created_at: Date.now(),
        revoked_at: null,
      };
      try {
        await db.transaction().execute(async (trx) => {
          await trx.insertInto('api_keys').values(row).execute();
          await bump(trx);
        });
      } catch (error) {
        throw isUniqueViolation(error) ? new DuplicateKeyNameError(input.name) : error;
      }
      return { key, record: toRecord(row) };
    },

    async list(options = {}) {
      let query = db.selectFrom('api_keys').selectAll().orderBy('created_at').orderBy('name');
      if (!options.includeRevoked) query = query.where('revoked_at', 'is', null);
      return (await query.execute()).map(toRecord);
    },

    async findByHash(hash) {
      const row = await db.selectFrom('api_keys').selectAll().where('hash', '=', hash).executeTakeFirst();
      return row && toRecord(row);
    },

    async get(nameOrId) {
      const row = await find(nameOrId);
      return row && toRecord(row);
    },

    async revoke(nameOrId) {
      const row = await find(nameOrId);
      if (row === undefined) return undefined;
      if (row.revoked_at === null) {
        row.revoked_at = Date.now();
        const revokedAt = row.revoked_at;
        await db.transaction().execute(async (trx) => {
          await trx.updateTable('api_keys').set({ revoked_at: revokedAt }).where('id', '=', row.id).where('revoked_at', 'is', null).execute();
          await bump(trx);
        });
      }
      return toRecord(row);
    },

    async update(nameOrId, patch) {
      checkKeyFields(patch);
      const row = await find(nameOrId);
      if (row === undefined) return undefined;
      const changes: Partial<Selectable<ApiKeysTable>> = {};
      if (patch.name !== undefined) changes.name = patch.name;
      if (patch.tier !== undefined) changes.tier = patch.tier;
      if (patch.rpm !== undefined) changes.rpm = patch.rpm;
      if (patch.tpm !== undefined) changes.tpm = patch.tpm;
      if (patch.models !== undefined) changes.models = patch.models === null ? null : JSON.stringify(patch.models);
      if (patch.quota !== undefined) {
        changes.quota_tokens = patch.quota?.tokens ?? null;
        changes.quota_period = patch.quota?.period ?? null;
      }
      if (Object.keys(changes).length === 0) return toRecord(row);
      try {
        await db.transaction().execute(async (trx) => {
          await trx.updateTable('api_keys').set(changes).where('id', '=', row.id).execute();
          await bump(trx);
        });
      } catch (error) {
        throw isUniqueViolation(error) && patch.name !== undefined ? new DuplicateKeyNameError(patch.name) : error;
      }
      return toRecord({ ...row, ...changes });
    },

    async changes() {
      const row = await db.selectFrom('key_changes').select('version').where('id', '=', 1).executeTakeFirst();
      return Number(row?.version ?? 0);
    },

    async countActive() {
      const { count } = await db.selectFrom('api_keys').select((eb) => eb.fn.countAll().as('count')).where('revoked_at', 'is', null).executeTakeFirstOrThrow();
      return Number(count);
    },
  };
}
