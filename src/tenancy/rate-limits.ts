/**
 * Requests and tokens per minute, per key and per key+model: counters in this process's memory, or in Redis so that
 * every Kiln instance enforces one limit. The counters are rate-limiter-flexible's (the only module that imports it).
 *
 * Windows are fixed, as the library keeps them: a key's 60 s window opens at its first counted request and its counter
 * drops to zero when the window ends. A key may therefore spend its whole limit at the end of one window and again at
 * the start of the next — up to twice the limit within a few seconds — but never more than the limit inside one
 * window. (A sliding window would cost a second store round trip on every request.)
 *
 * Tokens are reserved at admission (prompt + max_tokens) and the reservation is replaced by the real use when the
 * request ends, so a burst of long requests is held back before it runs, not after.
 */
import { RateLimiterMemory, RateLimiterRedis, type IRateLimiterOptions, type RateLimiterAbstract, type RateLimiterRes } from 'rate-limiter-flexible';
import type { Log } from '../core/log.js';
import type { GatePass } from '../service/request-gate.js';
import { KilnError } from '../errors/catalog.js';
import { formatResetDuration, rateLimitHeaders, tighter, type LimitState } from './ratelimit-headers.js';
import { RedisConnection } from './redis-connection.js';

export interface RateLimitStoreOptions {
  /** redis://… : counters shared by every Kiln instance; absent: in this process's memory. */
  redisUrl?: string;
  /**
   * When Redis cannot be reached: `open` keeps serving with this instance's own counters (each instance then allows the
   * full limit) and logs the outage once; `closed` refuses with 503 and Retry-After 1 until Redis is back.
   */
  onStoreFailure: 'open' | 'closed';
  log: Pick<Log, 'warn' | 'info'>;
  /** Prefix of every counter's key in the store (default `kiln`). */
  keyPrefix?: string;
}

/** Who is counted and the limits that apply; an absent limit is no limit. */
export interface RateSubject {
  id: string;
  /** What messages and logs show of the key. */
  name: string;
  rpm?: number;
  tpm?: number;
  /** The key's own limits on the model of this request, counted apart from its limits on every other model. */
  model?: { id: string; rpm?: number; tpm?: number };
}

/**
 * The service's gate pass: OpenAI's x-ratelimit-* headers (for each of requests and tokens that has a limit, the
 * tighter of the key's and the key+model's; empty without limits), and `settle`, which replaces the reservation with
 * the real use (the first call counts; never throws: store errors are logged).
 */
export type Reservation = GatePass;

const WINDOW_SECONDS = 60;
/**
 * The library refuses when a counter passes its limiter's `points`; Kiln compares with each key's own limit instead,
 * so that one counter per key serves whatever its limit is — and keeps counting across a change of that limit.
 */
const UNBOUNDED = Number.MAX_SAFE_INTEGER;
const STORE_RETRY_AFTER_SECONDS = 1;

type Dimension = 'requests' | 'tokens';

interface Counter {
  limiter: RateLimiterAbstract;
  dimension: Dimension;
  /** For messages: "requests per minute (RPM)". */
  label: string;
}

/** One counter a reservation touches. */
interface Check {
  counter: Counter;
  key: string;
  limit: number;
  points: number;
  model: string | undefined;
  consumed: number;
  /** When the counter's window ends (Date.now() clock). */
  windowEnd: number;
}

/** The pass of a request no limit applies to. */
export const UNLIMITED: Reservation = Object.freeze({ headers: Object.freeze({}), settle() {} });

export class RateLimits {
  private readonly pending = new Set<Promise<void>>();

  private constructor(
    private readonly counters: { rpm: Counter; tpm: Counter; modelRpm: Counter; modelTpm: Counter },
    private readonly log: Pick<Log, 'warn' | 'info'>,
    private readonly connection: RedisConnection | undefined,
  ) {}

  /** Connects to Redis when configured; a Redis that does not answer within about a second is an outage, not an error. */
  static async create(options: RateLimitStoreOptions): Promise<RateLimits> {
    const prefix = options.keyPrefix ?? 'kiln';
    const memoryOptions = (kind: string) => ({ points: UNBOUNDED, duration: WINDOW_SECONDS, keyPrefix: `${prefix}:${kind}` });
    let connection: RedisConnection | undefined;
    let limiter = (kind: string): RateLimiterAbstract => new RateLimiterMemory(memoryOptions(kind));
    if (options.redisUrl !== undefined) {
      const open = options.onStoreFailure === 'open';
      const outage = open
        ? 'Redis is unreachable: rate limits fall back to per-instance counters until it is back'
        : 'Redis is unreachable: requests are refused (503) until it is back, as rate_limit_store_failure is closed';
      const redis = await RedisConnection.open(options.redisUrl, options.log, outage, `${prefix}:health`);
      connection = redis;
      limiter = (kind) =>
        new RateLimiterRedis({
          storeClient: redis.client,
          points: UNBOUNDED,
          duration: WINDOW_SECONDS,
          keyPrefix: `${prefix}:${kind}`,
          // Straight to the fallback (or the refusal) while disconnected, rather than a failed write per request.
          rejectIfRedisNotReady: true,
          ...(open ? { insuranceLimiter: new Insurance(memoryOptions(kind), (reason) => redis.commandFailed(reason)) } : {}),
        });
    }
    const counter = (kind: string, dimension: Dimension, label: string): Counter => ({ limiter: limiter(kind), dimension, label });
    return new RateLimits(
      {
        rpm: counter('rpm', 'requests', 'requests per minute (RPM)'),
        tpm: counter('tpm', 'tokens', 'tokens per minute (TPM)'),
        modelRpm: counter('rpm:model', 'requests', 'requests per minute (RPM)'),
        modelTpm: counter('tpm:model', 'tokens', 'tokens per minute (TPM)'),
      },
      options.log,
      connection,
    );
  }

  /**
   * Counts one request and reserves `tokens` against every limit that applies. All or nothing: when one limit refuses,
   * what was taken from the others (and from the refusing one) is given back before the 429 is thrown.
   */
  async reserve(subject: RateSubject, tokens: number): Promise<Reservation> {
    if (!Number.isSafeInteger(tokens) || tokens < 0) throw new RangeError(`tokens must be a non-negative integer, got ${tokens}`);
    const checks = this.checksFor(subject, tokens);
    if (checks.length === 0) return UNLIMITED;
    for (const check of checks) {
      if (check.counter.dimension === 'tokens' && tokens > check.limit) throw tooLarge(subject, check);
    }

    const outcomes = await Promise.allSettled(checks.map((check) => check.counter.limiter.consume(check.key, check.points)));
    const now = Date.now();
    let storeError: unknown;
    let refused: Check | undefined;
    let retryMs = 0;
    for (let i = 0; i < checks.length; i++) {
      const check = checks[i]!;
      const outcome = outcomes[i]!;
      if (outcome.status === 'rejected') {
        // Counters never pass UNBOUNDED, so a rejection is the store failing (with no fallback: fail closed).
        storeError ??= outcome.reason;
        check.points = 0;
        continue;
      }
      const result: RateLimiterRes = outcome.value;
      check.consumed = result.consumedPoints;
      check.windowEnd = now + result.msBeforeNext;
      if (check.consumed > check.limit) {
        refused ??= check;
        retryMs = Math.max(retryMs, result.msBeforeNext);
      }
    }
    if (storeError === undefined && refused === undefined) return this.reservation(subject, checks, tokens, now);

    // Counting first and giving back after keeps each check one atomic store call; the price is that two requests
    // racing for the last of a limit may both be refused for an instant, never that both pass.
    await Promise.all(checks.map((check) => (check.points > 0 ? check.counter.limiter.reward(check.key, check.points).catch(() => undefined) : undefined)));
    if (storeError !== undefined) {
      this.connection?.commandFailed(storeError instanceof Error ? storeError.message : String(storeError));
      throw new KilnError('rateLimitsUnavailable', {
        message: 'Rate limits cannot be checked right now (their store is unreachable). Please retry.',
        retryAfterSeconds: STORE_RETRY_AFTER_SECONDS,
        cause: storeError,
      });
    }
    const check = refused!;
    throw new KilnError('rateLimited', {
      message:
        `Rate limit reached for ${check.counter.label} on ${scope(subject, check)}: limit ${check.limit}, ` +
        `used ${check.consumed - check.points}, requested ${check.points}. Please retry in ${formatResetDuration(retryMs)}.`,
      retryAfterSeconds: Math.max(1, Math.ceil(retryMs / 1_000)),
      // What remains once this request's share is given back.
      headers: headersFor(checks, now, (c) => c.consumed - c.points),
    });
  }

  /** Resolves when every settle's store writes are done (for shutdown and tests). */
  async idle(): Promise<void> {
    while (this.pending.size > 0) await Promise.all(this.pending);
  }

  async close(): Promise<void> {
    await this.idle();
    this.connection?.close();
  }

  private checksFor(subject: RateSubject, tokens: number): Check[] {
    const checks: Check[] = [];
    const add = (counter: Counter, key: string, limit: number | undefined, points: number, model?: string) => {
      if (limit !== undefined) checks.push({ counter, key, limit, points, model, consumed: 0, windowEnd: 0 });
    };
    add(this.counters.rpm, subject.id, subject.rpm, 1);
    add(this.counters.tpm, subject.id, subject.tpm, tokens);
    const model = subject.model;
    if (model !== undefined && (model.rpm !== undefined || model.tpm !== undefined)) {
      // Length-prefixed so that no key id and model id pair can collide with another (both may contain ':').
      const key = `${subject.id.length}:${subject.id}:${model.id}`;
      add(this.counters.modelRpm, key, model.rpm, 1, model.id);
      add(this.counters.modelTpm, key, model.tpm, tokens, model.id);
    }
    return checks;
  }

  private reservation(subject: RateSubject, checks: Check[], tokens: number, now: number): Reservation {
    const headers = headersFor(checks, now, (check) => check.consumed);
    const tokenChecks = checks.filter((check) => check.counter.dimension === 'tokens');
    if (tokenChecks.length === 0) return { headers, settle() {} };
    let settled = false;
    return {
      headers,
      settle: (usedTokens: number) => {
        if (settled) return;
        settled = true;
        this.settle(subject, tokenChecks, tokens, usedTokens);
      },
    };
  }

  private settle(subject: RateSubject, checks: Check[], reserved: number, usedTokens: number): void {
    const used = Math.ceil(usedTokens);
    if (!Number.isSafeInteger(used) || used < 0) {
      this.log.warn({ key: subject.name, usedTokens }, 'Rate limits: a settle without a token count; the reservation stands');
      return;
    }
    const excess = used - reserved;
    if (excess === 0) return;
    const now = Date.now();
    for (const check of checks) {
      // A reservation whose window has ended no longer counts: giving it back would credit the next window.
      if (excess < 0 && now >= check.windowEnd) continue;
      const { limiter } = check.counter;
      const write = excess > 0 ? limiter.penalty(check.key, excess) : limiter.reward(check.key, -excess);
      const tracked: Promise<void> = write.then(
        () => undefined,
        (error: unknown) => {
          this.log.warn({ key: subject.name, err: error instanceof Error ? error.message : String(error) }, 'Rate limits: could not settle a reservation');
        },
      );
      this.pending.add(tracked);
      void tracked.finally(() => this.pending.delete(tracked));
    }
  }
}

/**
 * The library's fallback while Redis fails (fail open), which also tells the connection each time it stands in: that
 * is how a failure without a disconnect (READONLY after a failover, OOM, a timeout) is noticed and logged.
 */
class Insurance extends RateLimiterMemory {
  constructor(
    options: IRateLimiterOptions,
    private readonly standingIn: (reason: string) => void,
  ) {
    super(options);
  }

  override consume(key: string | number, points?: number, options?: Record<string, unknown>): Promise<RateLimiterRes> {
    this.standingIn('a rate-limit command failed');
    return super.consume(key, points, options);
  }
}

function headersFor(checks: Check[], now: number, consumedOf: (check: Check) => number): Record<string, string> {
  let requests: LimitState | undefined;
  let tokens: LimitState | undefined;
  for (const check of checks) {
    const state: LimitState = { limit: check.limit, remaining: Math.max(0, check.limit - consumedOf(check)), resetMs: check.windowEnd - now };
    if (check.counter.dimension === 'requests') requests = tighter(requests, state);
    else tokens = tighter(tokens, state);
  }
  return rateLimitHeaders(requests, tokens);
}

function scope(subject: RateSubject, check: Check): string {
  return check.model === undefined ? `key "${subject.name}"` : `key "${subject.name}" for model "${check.model}"`;
}

/** OpenAI's "Request too large": no wait makes it pass, so no Retry-After (a client would retry in vain). */
function tooLarge(subject: RateSubject, check: Check): KilnError {
  return new KilnError('rateLimited', {
    message:
      `Request too large for ${check.counter.label} on ${scope(subject, check)}: limit ${check.limit}, ` +
      `requested ${check.points} (prompt tokens + max_tokens). Lower max_tokens or shorten the prompt.`,
  });
}
