/** Bearer API keys: the header's token, and the static key list of simple set-ups (tests, `--api-key`). */
import type { Caller, Tier } from '../service/caller.js';
import { KeyResolver, type StaticKey } from '../tenancy/key-resolver.js';

/** Resolves a request's bearer token (undefined: none sent) to its caller, or throws 401. */
export interface Authenticator {
  resolve(token: string | undefined): Promise<Caller>;
}

export interface ApiKey {
  key: string;
  /** `free` keys may not use `Pro/` model ids. */
  tier: Tier;
  /** May use the admin endpoints. */
  admin?: boolean;
  /** What logs and usage show (default key-1, key-2, … in order). */
  name?: string;
}

/** An authenticator over a fixed list of keys; no keys: an open server. */
export function staticKeys(keys: readonly ApiKey[]): Authenticator {
  return new KeyResolver({ staticKeys: keys.map((key, index): StaticKey => ({ ...key, name: key.name ?? (key.admin === true ? 'admin' : `key-${index + 1}`) })) });
}

/** The token of an `Authorization: Bearer <token>` header; undefined without one (a malformed header is none). */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined;
  return /^Bearer\s+(\S+)\s*$/i.exec(authorization)?.[1];
}
