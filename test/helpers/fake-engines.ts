/**
 * Small ChatEngines for testing service logic in-process (routing, admission): each can fail its start, hang, hold
 * its choices open until told, or break mid-stream, and counts what was asked of it.
 */
import { DeploymentFailure, type ChatEngine, type EngineDescription, type EngineEvent, type EngineRun } from '../../src/core/engine.js';
import type { ChatRequest } from '../../src/core/chat-request.js';
import type { Log } from '../../src/core/log.js';
import { normalizeChatRequest } from '../../src/core/normalize-request.js';
import { KilnError, type ErrorKind } from '../../src/errors/catalog.js';
import { Router, type RoutingPolicy } from '../../src/service/routing/router.js';

export interface FakeBehavior {
  /** Thrown by `start` (after `startDelayMs`): a DeploymentFailure, a KilnError, anything. */
  failStart?: unknown;
  /** `start` waits this long first (aborted with the request). */
  startDelayMs?: number;
  /** `start` never resolves; it rejects with the signal's reason when the request is aborted. */
  hang?: boolean;
  /** Text events per choice before its end (default 2). */
  events?: number;
  /** A choice throws this after `events` text events instead of ending. */
  failMidStream?: unknown;
  /** Each choice waits after its first event until `release()`. */
  hold?: boolean;
  /** What `probe` does; undefined at construction: the engine has no probe. */
  probe?: 'ok' | 'fail' | 'hang';
  maxChoices?: number;
}

export class FakeEngine implements ChatEngine {
  readonly description: EngineDescription;
  starts = 0;
  probes = 0;
  disposed = 0;
  readonly requests: ChatRequest[] = [];
  private readonly gate = deferred();

  constructor(
    readonly name: string,
    public behavior: FakeBehavior = {},
    private readonly slots = 64,
  ) {
    this.description = {
      name: `fake:${name}`,
      supportsImages: false,
      ...(behavior.maxChoices !== undefined ? { maxChoices: behavior.maxChoices } : {}),
    };
    // ChatEngine.probe is optional: only engines told how to answer have one.
    if (behavior.probe === undefined) (this as { probe?: unknown }).probe = undefined;
  }

  capacity(): number {
    return this.slots;
  }

  /** Lets every held choice go on, now and from now on. */
  release(): void {
    this.gate.resolve();
  }

  async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    this.starts++;
    this.requests.push(request);
    const { behavior } = this;
    if (behavior.hang) await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
    if (behavior.startDelayMs !== undefined) await sleep(behavior.startDelayMs, signal);
    if (behavior.failStart !== undefined) throw behavior.failStart;
    const engine = this;
    return {
      promptTokens: 7,
      cachedTokens: 0,
      reasoning: 'off',
      maxTokens: request.maxTokens,
      async *choice(index: number): AsyncGenerator<EngineEvent, void, undefined> {
        const count = behavior.events ?? 2;
        for (let i = 0; i < count; i++) {
          yield { type: 'text', text: `${engine.name}:${index}:${i} `, tokens: 1 };
          if (i === 0 && behavior.hold) await Promise.race([engine.gate.promise, aborted(signal)]);
          signal.throwIfAborted();
        }
        if (behavior.failMidStream !== undefined) throw behavior.failMidStream;
        yield { type: 'end', reason: 'eog' };
      },
      dispose() {
        engine.disposed++;
      },
    };
  }

  async probe(signal: AbortSignal): Promise<void> {
    this.probes++;
    if (this.behavior.probe === 'fail') throw new Error('probe failed');
    if (this.behavior.probe === 'hang') await aborted(signal);
  }

  async close(): Promise<void> {}
}

/** A failure an upstream engine would throw before its response began. */
export function failure(kind: ErrorKind, options: { retryable?: boolean; unhealthy?: boolean; retryAfterSeconds?: number } = {}): DeploymentFailure {
  const error = new KilnError(kind, options.retryAfterSeconds !== undefined ? { retryAfterSeconds: options.retryAfterSeconds } : {});
  return new DeploymentFailure(error, options.retryable ?? true, options.unhealthy ?? true);
}

/** A normalised request with the given messages (default: one user message). */
export function chatRequest(messages: Array<{ role: string; content: string }> = [{ role: 'user', content: 'hi' }], extra: Record<string, unknown> = {}): ChatRequest {
  return normalizeChatRequest({ model: 'm', messages, ...extra }, { maxChoices: 8 });
}

/** Every choice of a run read to its end; the text of each. */
export async function drain(run: EngineRun, n = 1): Promise<string[]> {
  const texts = await Promise.all(
    Array.from({ length: n }, async (_, index) => {
      let text = '';
      for await (const event of run.choice(index)) if (event.type === 'text') text += event.text;
      return text;
    }),
  );
  run.dispose();
  return texts;
}

export interface LogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  fields: Record<string, unknown>;
  message: string;
}

export function collectingLog(): Log & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const at = (level: LogEntry['level']) => (fields: object, message: string) => entries.push({ level, fields: fields as Record<string, unknown>, message });
  return { entries, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

/** Rejects when the signal aborts; never an unhandled rejection when it lost a race. */
function aborted(signal: AbortSignal): Promise<never> {
  const promise = new Promise<never>((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
  promise.catch(() => {});
  return promise;
}

function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}

export const TEST_POLICY: RoutingPolicy = {
  prefixAffinity: false,
  maxAttempts: 3,
  retryBudgetMs: 10_000,
  failureThreshold: 3,
  ejectMs: 1_000,
  maxEjectMs: 8_000,
  healthCheckIntervalMs: 0,
};

export interface TestRouter {
  router: Router;
  log: ReturnType<typeof collectingLog>;
  /** How often the router reported that capacity may have grown. */
  capacityChanges: { count: number };
  /** The router's clock, moved by hand (unused with a real clock). */
  clock: { now: number };
}

/** A router over fake engines, with a hand-moved clock (timers still run in real time) unless `realClock`. */
export function testRouter(
  deployments: Array<{ engine: ChatEngine; weight?: number; maxConcurrency?: number }>,
  policy: Partial<RoutingPolicy> = {},
  realClock = false,
): TestRouter {
  const log = collectingLog();
  const capacityChanges = { count: 0 };
  const clock = { now: 1_000_000 };
  const router = new Router(
    'm',
    deployments.map(({ engine, weight, maxConcurrency }, index) => ({
      name: `d${index}`,
      engine,
      weight: weight ?? 1,
      maxConcurrency: maxConcurrency ?? 64,
    })),
    { ...TEST_POLICY, ...policy },
    { log, onCapacityChange: () => capacityChanges.count++, now: realClock ? Date.now : () => clock.now },
  );
  return { router, log, capacityChanges, clock };
}
