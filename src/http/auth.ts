/** Bearer API keys. Comparison is constant-time so keys cannot be guessed byte by byte from response timing. */
import { createHash, timingSafeEqual } from 'node:crypto';
import { KilnError } from '../errors/catalog.js';

const digest = (value: string) => createHash('sha256').update(value).digest();

export function checkApiKey(authorization: string | undefined, keys: readonly string[]): void {
  if (keys.length === 0) return;
  const match = authorization === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  if (match === null) throw new KilnError('missingApiKey');
  const given = digest(match[1]!);
  if (!keys.some((key) => timingSafeEqual(digest(key), given))) throw new KilnError('invalidApiKey');
}
