/**
 * Who a request's key belongs to. Keys are looked up by their SHA-256 hash: one hash and one map lookup per request
 * however many keys exist, and neither the lookup's timing nor the store reveals a key (inverting SHA-256 of a
 * 256-bit random key is out of reach, so timing differences in a hash-table lookup tell an attacker nothing).
 *
 * Stored keys are cached for `cacheMs` (default 5 s): a revoked or changed key takes effect within that. Keys from
 * the config and the command line are held in memory. With no key anywhere — none configured, no admin key, none
 * active in the store — the server is open and every caller is anonymous; the store is asked again at most every
 * `cacheMs`, so the first `kiln keys create` closes an open server within that delay.
 */
import type { RateLimitsConfig } from '../config/config.js';
import { KilnError } from '../errors/catalog.js';
import { ANONYMOUS, type Caller, type QuotaPeriod, type Tier } from '../service/caller.js';
import { hashApiKey } from '../store/api-keys.js';

/** A key kept in the store (`kiln keys`), as the resolver needs it. */
export interface StoredKey {
  id: string;
  name: string;
  tier: Tier;
  rpm?: number;
  tpm?: number;
  models?: string[];
  quota?: { tokens: number; period: QuotaPeriod };
  revokedAt?: Date;
}

export interface KeyLookup {
  findByHash(hash: string): Promise<StoredKey | undefined>;
  countActive(): Promise<number>;
}

/** A key from the config, KILN_API_KEYS, --api-key or the admin key. */
export interface StaticKey {
  key: string;
  name: string;
  tier: Tier;
  admin?: boolean;
  rpm?: number;
  tpm?: number;
  models?: string[];
}

export interface KeyResolverOptions {
  staticKeys: readonly StaticKey[];
  store?: KeyLookup;
  /** Limits for keys that set none (admin keys have none). */
  tierLimits?: Partial<Record<Tier, RateLimitsConfig>>;
  cacheMs?: number;
  now?: () => number;
}

export const KEY_CACHE_MS = 5000;
/** Hashes remembered; past it the oldest go (a client spraying random keys cannot grow memory without bound). */
const MAX_CACHED = 100_000;

interface CacheEntry {
  caller: Caller | null;
  until: number;
}

export class KeyResolver {
  private readonly staticCallers = new Map<string, Caller>();
  private readonly cache = new Map<string, CacheEntry>();
  private readonly reading = new Map<string, Promise<Caller | null>>();
  private storeHasKeys: { value: boolean; until: number } | undefined;
  private readonly cacheMs: number;

  constructor(private readonly options: KeyResolverOptions) {
    this.cacheMs = options.cacheMs ?? KEY_CACHE_MS;
    for (const key of options.staticKeys) {
      const caller = this.callerOf({ id: `config:${key.name}`, ...key }, key.admin === true);
      this.staticCallers.set(hashApiKey(key.key), caller);
    }
  }

  /** The caller a bearer token names; throws 401 when it names nobody (and the server is not open). */
  async resolve(token: string | undefined): Promise<Caller> {
    if (token === undefined) {
      if (await this.isOpen()) return ANONYMOUS;
      throw new KilnError('missingApiKey');
    }
    const hash = hashApiKey(token);
    const caller = this.staticCallers.get(hash) ?? (await this.stored(hash));
    if (caller !== null) return caller;
    // On an open server a client may still send some key (SDKs insist on one).
    if (await this.isOpen()) return ANONYMOUS;
    throw new KilnError('invalidApiKey');
  }

  /** Whether a server with no keys at all is running (for the start-up refusal to listen openly off loopback). */
  async isOpen(): Promise<boolean> {
    if (this.staticCallers.size > 0) return false;
    const store = this.options.store;
    if (store === undefined) return true;
    const now = this.now();
    if (this.storeHasKeys === undefined || now >= this.storeHasKeys.until) {
      this.storeHasKeys = { value: (await store.countActive()) > 0, until: now + this.cacheMs };
    }
    return !this.storeHasKeys.value;
  }

  private async stored(hash: string): Promise<Caller | null> {
    const store = this.options.store;
    if (store === undefined) return null;
    const now = this.now();
    const cached = this.cache.get(hash);
    if (cached !== undefined && now < cached.until) return cached.caller;
    // Concurrent requests with one key share one read.
    let read = this.reading.get(hash);
    if (read === undefined) {
      read = store
        .findByHash(hash)
        .then((key) => (key === undefined || key.revokedAt !== undefined ? null : this.callerOf(key, false)))
        .finally(() => this.reading.delete(hash));
      this.reading.set(hash, read);
    }
    const caller = await read;
    this.cache.delete(hash);
    this.cache.set(hash, { caller, until: now + this.cacheMs });
    if (this.cache.size > MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    return caller;
  }

  private callerOf(key: StoredKey | (StaticKey & { id: string }), admin: boolean): Caller {
    const defaults = admin ? undefined : this.options.tierLimits?.[key.tier];
    const rpm = key.rpm ?? defaults?.rpm;
    const tpm = key.tpm ?? defaults?.tpm;
    const quota = 'quota' in key ? key.quota : undefined;
    return Object.freeze({
      id: key.id,
      name: key.name,
      pro: admin || key.tier === 'pro',
      admin,
      ...(key.models !== undefined ? { models: Object.freeze([...key.models]) } : {}),
      ...(rpm !== undefined ? { rpm } : {}),
      ...(tpm !== undefined ? { tpm } : {}),
      ...(quota !== undefined ? { quota } : {}),
    });
  }

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }
}
