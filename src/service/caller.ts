/**
 * Who is asking and what their key allows: resolved by the HTTP layer from the Authorization header (tenancy/),
 * enforced here in the service, the same for every engine.
 */
import { isProModel } from '../core/chat-request.js';

export type Tier = 'free' | 'pro';
export type QuotaPeriod = 'day' | 'month';

export interface Caller {
  /**
   * Stable identity for counters and the usage ledger: a stored key's id, `config:<name>` for a key from the
   * config or the command line, `anonymous` on a server without keys.
   */
  id: string;
  /** What logs, usage and metrics show of the key: never the key itself. */
  name: string;
  /** May use `Pro/` model ids. */
  pro: boolean;
  /** May use the admin endpoints; to everyone else they do not exist (404). */
  admin: boolean;
  /** Globs of the model ids this key may use (`*`: any run of characters); undefined: every id. */
  models?: readonly string[];
  /** Requests per minute; undefined: unlimited. */
  rpm?: number;
  /** Tokens (prompt + completion) per minute; undefined: unlimited. */
  tpm?: number;
  /** Tokens (prompt + completion) per calendar day or month, UTC. */
  quota?: { tokens: number; period: QuotaPeriod };
}

/** The caller on a server without keys (loopback, or started with --insecure-no-auth): everything is allowed. */
export const ANONYMOUS: Caller = Object.freeze({ id: 'anonymous', name: 'anonymous', pro: true, admin: true });

/** Whether the caller's key may use `model`: its tier (`Pro/` ids) and its globs. */
export function callerMay(caller: Caller, model: string): boolean {
  return (caller.pro || !isProModel(model)) && modelAllowed(caller, model);
}

/** Whether `model` matches one of the globs (`*` matches any run of characters, including `/`). */
export function modelAllowed(caller: Caller, model: string): boolean {
  if (caller.models === undefined) return true;
  return caller.models.some((glob) => globToRegExp(glob).test(model));
}

const globs = new Map<string, RegExp>();

function globToRegExp(glob: string): RegExp {
  let pattern = globs.get(glob);
  if (pattern === undefined) {
    pattern = new RegExp(`^${glob.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
    if (globs.size > 10_000) globs.clear();
    globs.set(glob, pattern);
  }
  return pattern;
}
