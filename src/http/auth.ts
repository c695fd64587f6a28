/** Bearer API keys. Comparison is constant-time so keys cannot be guessed byte by byte from response timing. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Caller } from '../service/chat-service.js';
import { KilnError } from '../errors/catalog.js';

export interface ApiKey {
  key: string;
  /** `free` keys may not use `Pro/` model ids. */
  tier: 'free' | 'pro';
  /** May use the admin endpoints (POST /admin/reload). */
  admin?: boolean;
}

const digest = (value: string) => createHash('sha256').update(value).digest();

/** The caller a request's Authorization header names; with no keys configured every caller may use everything. */
export function checkApiKey(authorization: string | undefined, keys: readonly ApiKey[]): Caller {
  // No keys: an open server (loopback, or --insecure-no-auth) — every caller may do everything.
  if (keys.length === 0) return { pro: true, admin: true };
  const match = authorization === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  if (match === null) throw new KilnError('missingApiKey');
  const given = digest(match[1]!);
  // Every key is compared, so the time taken does not tell which one matched.
  let found: ApiKey | undefined;
  for (const key of keys) if (timingSafeEqual(digest(key.key), given)) found ??= key;
  if (found === undefined) throw new KilnError('invalidApiKey');
  return { pro: found.tier === 'pro', admin: found.admin === true };
}
