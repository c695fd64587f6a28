/**
 * Who a request's key belongs to. Keys are looked up by their SHA-256 hash: one hash and one map lookup per request
 * however many keys exist, and neither the lookup's timing nor the store reveals a key (inverting SHA-256 of a
 * 256-bit random key is out of reach, so timing differences in a hash-table lookup tell an attacker nothing).
 *
 * Stored keys are cached; every `cacheMs` (default 5 s) at most, one query reads the store's change counter (bumped by
 * every `kiln keys create|update|revoke`), and when it moved the cache is dropped: a revoked or changed key takes
 * effect within that delay, and steady traffic costs the store one small read per interval however many keys are in
 * use. Keys from the config and the command line are held in memory. With no key anywhere — none configured, no
 * admin key, none active in the store — the server is open and every caller is anonymous; the first
 * `kiln keys create` closes it within the same delay.
 *
 * When the store cannot be read, keys already known keep working and unknown ones get 503 (never full access).
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
  /** Moves whenever a key is created, updated or revoked. */
  changes(): Promise<number>;
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


export class KeyResolver {
  private readonly staticCallers = new Map<string, Caller>();
  /** Stored keys by hash; null: no such key (or revoked). Valid until the store's change counter moves. */
  private readonly cache = new Map<string, Caller | null>();
  private readonly reading = new Map<string, Promise<Caller | null>>();
  private storeHasKeys: boolean | undefined;
  private version: number | undefined;
  private checkDueAt = 0;
  private checking: Promise<void> | undefined;
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
    await this.revalidate(store);
    this.storeHasKeys ??= (await this.fromStore(() => store.countActive())) > 0;
    return !this.storeHasKeys;
  }

  private async stored(hash: string): Promise<Caller | null> {
    const store = this.options.store;
    if (store === undefined) return null;
    await this.revalidate(store);
    const cached = this.cache.get(hash);
    if (cached !== undefined) return cached;
    // Concurrent requests with one key share one read.
    let read = this.reading.get(hash);
    if (read === undefined) {
      const version = this.version;
      read = this.fromStore(() => store.findByHash(hash))
        .then((key) => {
          const caller = key === undefined || key.revokedAt !== undefined ? null : this.callerOf(key, false);
          // A read that raced a change is not kept: the next request reads again.
          if (version === this.version) this.cache.set(hash, caller);
          if (this.cache.size > MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
          return caller;
        })
        .finally(() => this.reading.delete(hash));
      this.reading.set(hash, read);
    }
    return read;
  }

  /** Drops what was read from the store when its keys changed; asks at most every `cacheMs`, one read shared. */
  private async revalidate(store: KeyLookup): Promise<void> {
    if (this.now() < this.checkDueAt) return;
    this.checking ??= store
      .changes()
      .then(
        (version) => {
          if (version !== this.version) {
            this.cache.clear();
            this.storeHasKeys = undefined;
            this.version = version;
          }
          this.checkDueAt = this.now() + this.cacheMs;
        },
        // The store is unreachable: keys already read keep working; asked again in a second.
        () => void (this.checkDueAt = this.now() + Math.min(this.cacheMs, 1000)),
      )
      .finally(() => (this.checking = undefined));
    await this.checking;
  }

  private async fromStore<T>(read: () => Promise<T>): Promise<T> {
    try {
      return await read();
    } catch (error) {
      throw new KilnError('keysUnavailable', { retryAfterSeconds: 1, cause: error });
    }
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
