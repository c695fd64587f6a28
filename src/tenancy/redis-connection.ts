/**
 * The Redis connection that holds the shared rate-limit counters: the only module that imports ioredis. It is tuned to
 * fail fast (no offline queue, short timeouts) because it sits on every request's path: a missing Redis must turn
 * into a fallback or a refusal within milliseconds, never into requests queued behind a reconnect. It logs only the
 * transitions of an outage, with the server's host:port (never the URL, which may carry a password).
 */
import { Redis } from 'ioredis';
import type { Log } from '../core/log.js';

export type TransitionLog = Pick<Log, 'warn' | 'info'>;

/** How long the first connection may take before Kiln starts without it (and keeps trying in the background). */
const CONNECT_TIMEOUT_MS = 1_000;
/** A reply slower than this counts as a failure: the request falls back (or is refused) instead of waiting. */
const COMMAND_TIMEOUT_MS = 500;
/** With commands pending and no byte back for this long, the socket is dropped: a hung server becomes an outage. */
const SOCKET_TIMEOUT_MS = 2_000;
/** Reconnect quickly at first, then every 2 s: recovery is noticed within seconds without hammering a dead host. */
const retryDelay = (attempt: number) => Math.min(attempt * 100, 2_000);
/**
 * How long disconnect() waits for the socket's close before destroying it — an option ioredis reads but does not
 * type. Its 2 s default holds the process open that long at shutdown when Redis is down (the socket never closes).
 */
const untypedOptions = { disconnectTimeout: 200 };
/** While commands fail on a connection that stays up, how often a small write checks whether they work again. */
const PROBE_INTERVAL_MS = 1_000;

export class RedisConnection {
  readonly client: Redis;
  /** host:port, what logs may show of the URL. */
  readonly address: string;
  /** Whether an outage has been logged since Redis was last up, so that each outage is logged once. */
  private outageLogged = false;
  private closing = false;
  private probe: NodeJS.Timeout | undefined;

  private constructor(
    url: string,
    private readonly log: TransitionLog,
    private readonly outageMessage: string,
    private readonly probeKey: string,
  ) {
    this.address = addressOf(url);
    this.client = new Redis(url, {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: COMMAND_TIMEOUT_MS,
      socketTimeout: SOCKET_TIMEOUT_MS,
      retryStrategy: retryDelay,
      connectionName: 'kiln-rate-limits',
      lazyConnect: true,
      ...untypedOptions,
    });
    this.client.on('ready', () => this.markUp());
    this.client.on('error', (error: Error) => this.markDown(error.message));
    this.client.on('close', () => this.markDown('connection closed'));
    this.client.on('end', () => this.markDown('connection ended'));
  }

  /**
   * Connects, waiting at most about CONNECT_TIMEOUT_MS. A server that does not answer is not fatal: it is logged as an
   * outage and ioredis keeps reconnecting in the background.
   */
  static async open(url: string, log: TransitionLog, outageMessage: string, probeKey: string): Promise<RedisConnection> {
    const connection = new RedisConnection(url, log, outageMessage, probeKey);
    await connection.client.connect().catch((error: unknown) => {
      connection.markDown(error instanceof Error ? error.message : String(error));
    });
    return connection;
  }

  /**
   * A command failed. Without a disconnect (READONLY after a failover, OOM, a timeout) no event will say when Redis
   * works again, so a small write is tried every second until one succeeds; a reconnect ('ready') also ends it.
   */
  commandFailed(reason: string): void {
    this.markDown(reason);
    if (this.probe !== undefined || this.closing) return;
    this.probe = setInterval(() => {
      if (this.client.status !== 'ready') return;
      this.client.set(this.probeKey, '1', 'PX', 10_000).then(
        () => this.markUp(),
        () => undefined,
      );
    }, PROBE_INTERVAL_MS);
    this.probe.unref();
  }

  /** Drops the connection at once: the caller has waited for its own writes, and no reply is worth waiting for. */
  close(): void {
    this.closing = true;
    clearInterval(this.probe);
    this.client.disconnect();
  }

  private markUp(): void {
    clearInterval(this.probe);
    this.probe = undefined;
    if (this.outageLogged) this.log.info({ redis: this.address }, 'Redis is reachable again: rate limits are shared across instances again');
    this.outageLogged = false;
  }

  private markDown(reason: string): void {
    if (this.closing || this.outageLogged) return;
    this.outageLogged = true;
    this.log.warn({ redis: this.address, reason }, this.outageMessage);
  }
}

function addressOf(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || '6379'}`;
  } catch {
    return 'an unparsable redis URL';
  }
}
