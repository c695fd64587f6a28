/**
 * One loadable model's state machine — unloaded → loading → ready → draining → unloaded — owned here and nowhere else.
 * A model loads on its first request (concurrent first requests share the one load and wait for it within the
 * queue's deadline, which counts in their time to first token), and unloads after `keep_alive` of idleness. Every
 * request holds the model from its start until its run is disposed, so an unload never cuts one short: a model is
 * only unloaded with no holder, and a request that arrives while it drains waits and loads it again.
 *
 * A model that fails to load (a corrupt file, an unsupported architecture) answers 503 with the reason and is tried
 * again after a pause, not on every request.
 */
import type { ChatRequest } from '../core/chat-request.js';
import { RunWrapper, type ChatEngine, type EngineDescription, type EngineEvent, type EngineRun, type EngineStatus } from '../core/engine.js';
import type { Log } from '../core/log.js';
import { KilnError } from '../errors/catalog.js';
import type { BudgetMember, MemoryBudget, MemoryNeed } from './memory-budget.js';

export type ModelState = 'unloaded' | 'loading' | 'ready' | 'draining';

export interface LifecycleSettings {
  /** Idle time before unloading: -1 never, 0 right after the last request ends. */
  keepAliveMs: number;
  /** Longest wait for a load before 503 (the admission queue's deadline). */
  loadWaitMs: number;
  /** After a failed load, requests are answered 503 for this long before the next try. */
  retryFailedAfterMs: number;
}

/** What is known of the engine before it is loaded: enough for admission and request checks. */
export interface ExpectedEngine {
  description: EngineDescription;
  capacity: number;
}

/** The memory budget a model loads under, and how to estimate what its load takes. */
export interface BudgetedLoad {
  budget: MemoryBudget;
  estimate(): Promise<MemoryNeed>;
}

export class ManagedEngine implements ChatEngine, BudgetMember {
  private engine: ChatEngine | undefined;
  private loading: Promise<ChatEngine> | undefined;
  private draining: Promise<void> | undefined;
  private holders = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private failure: { error: unknown; until: number } | undefined;
  lastUsed = Date.now();
  private closed = false;
  /** What the last load reserved in the memory budget (reported while loaded). */
  private estimatedBytes: number | undefined;

  constructor(
    /** How logs name it (the model's file name or id). */
    readonly name: string,
    private readonly load: () => Promise<ChatEngine>,
    private readonly expected: ExpectedEngine,
    private readonly settings: LifecycleSettings,
    private readonly log: Log,
    private readonly memory?: BudgetedLoad,
  ) {}

  /** Loaded and unused: the memory budget may unload it to make room for another model. */
  get evictable(): boolean {
    return this.engine !== undefined && this.holders === 0 && this.draining === undefined && this.loading === undefined && !this.closed;
  }

  async unloadNow(reason: string): Promise<void> {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    await this.unload(reason);
  }

  get state(): ModelState {
    if (this.draining !== undefined) return 'draining';
    if (this.engine !== undefined) return 'ready';
    return this.loading !== undefined ? 'loading' : 'unloaded';
  }

  /** Requests holding the model now. */
  get holding(): number {
    return this.holders;
  }

  /** Milliseconds since the model last finished a request (0 while one runs). */
  get idleMs(): number {
    return this.holders > 0 ? 0 : Date.now() - this.lastUsed;
  }

  get description(): EngineDescription {
    return this.engine?.description ?? this.expected.description;
  }

  status(): EngineStatus {
    const state = this.state;
    if (state !== 'ready' && state !== 'draining') return { state };
    const inner = this.engine?.status?.();
    return {
      ...(inner?.gpuLayers !== undefined ? { gpuLayers: inner.gpuLayers } : {}),
      ...(inner?.promptCache !== undefined ? { promptCache: inner.promptCache } : {}),
      state,
      idleMs: this.idleMs,
      ...(this.estimatedBytes !== undefined ? { memoryBytes: this.estimatedBytes } : {}),
    };
  }

  capacity(): number {
    return this.engine?.capacity() ?? this.expected.capacity;
  }

  unavailable(): KilnError | undefined {
    if (this.failure === undefined) return undefined;
    const left = this.failure.until - Date.now();
    if (left <= 0) return undefined;
    return this.failedError(Math.ceil(left / 1000));
  }

  /** Loads the model now (`preload`); a failure is logged and answered to requests as usual. */
  preload(): Promise<void> {
    return this.ready(new AbortController().signal).then(
      () => undefined,
      () => undefined,
    );
  }

  async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    this.hold();
    let run: EngineRun;
    try {
      const engine = await this.ready(signal);
      run = await engine.start(request, signal);
    } catch (error) {
      this.release();
      throw error;
    }
    return new HeldRun(run, () => this.release());
  }

  /** Unloads whatever holds it: shutdown, after the HTTP layer ended every request. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.idleTimer);
    const engine = this.engine ?? (await this.loading?.catch(() => undefined));
    this.engine = undefined;
    await this.draining;
    await engine?.close();
    this.memory?.budget.release(this);
  }

  private hold(): void {
    this.holders++;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private release(): void {
    this.holders--;
    this.lastUsed = Date.now();
    if (this.holders > 0 || this.closed || this.settings.keepAliveMs < 0) return;
    this.idleTimer = setTimeout(() => void this.unload(), this.settings.keepAliveMs);
    this.idleTimer.unref();
  }

  /** The loaded engine: the one in memory, the load under way, or a new load (after any unload finished). */
  private async ready(signal: AbortSignal): Promise<ChatEngine> {
    if (this.closed) throw new KilnError('shuttingDown');
    if (this.engine !== undefined && this.draining === undefined) return this.engine;
    const failed = this.unavailable();
    if (failed !== undefined) throw failed;
    if (this.loading === undefined) this.loading = this.startLoad();
    return this.waitFor(this.loading, signal);
  }

  private async startLoad(): Promise<ChatEngine> {
    await this.draining;
    const began = performance.now();
    try {
      const need = await this.memory?.estimate();
      this.estimatedBytes = need?.ram;
      const estimate = need === undefined ? {} : { estimateMiB: Math.ceil(need.ram / 2 ** 20), ...(need.vram > 0 ? { estimateVramMiB: Math.ceil(need.vram / 2 ** 20) } : {}) };
      this.log.info({ model: this.name, ...estimate }, 'model loading');
      if (need !== undefined) {
        try {
          await this.memory!.budget.reserve(this, need);
        } catch (error) {
          this.log.warn({ model: this.name, reason: reasonOf(error) }, 'model does not fit the memory budget');
          throw error;
        }
      }
      const engine = await this.load();
      this.engine = engine;
      this.failure = undefined;
      this.log.info({ model: this.name, loadMs: Math.round(performance.now() - began) }, 'model loaded');
      return engine;
    } catch (error) {
      this.memory?.budget.release(this);
      // An answer rather than a broken model (no room in the budget, the file still downloading): the next request
      // tries again.
      if (error instanceof KilnError) throw error;
      this.failure = { error, until: Date.now() + this.settings.retryFailedAfterMs };
      this.log.error({ model: this.name, reason: reasonOf(error) }, 'model failed to load');
      throw this.failedError(Math.ceil(this.settings.retryFailedAfterMs / 1000));
    } finally {
      this.loading = undefined;
    }
  }

  /** Waits for the load within the queue's deadline; the load itself goes on for the requests that come later. */
  private waitFor(load: Promise<ChatEngine>, signal: AbortSignal): Promise<ChatEngine> {
    signal.throwIfAborted();
    return new Promise<ChatEngine>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new KilnError('modelOverloaded', {
          message: `Model '${this.name}' is still loading. Please retry shortly.`,
          retryAfterSeconds: Math.max(1, Math.ceil(this.settings.loadWaitMs / 1000)),
        }));
      }, this.settings.loadWaitMs);
      const onAbort = () => {
        cleanup();
        reject(signal.reason);
      };
      const cleanup = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      load.then(
        (engine) => (cleanup(), resolve(engine)),
        (error: unknown) => (cleanup(), reject(error)),
      );
    });
  }

  private async unload(reason = 'idle'): Promise<void> {
    this.idleTimer = undefined;
    const engine = this.engine;
    if (engine === undefined || this.holders > 0 || this.draining !== undefined) return;
    const idleMs = Date.now() - this.lastUsed;
    this.draining = (async () => {
      this.engine = undefined;
      const began = performance.now();
      try {
        await engine.close();
        this.memory?.budget.release(this);
        this.log.info({ model: this.name, reason, idleMs, unloadMs: Math.round(performance.now() - began) }, 'model unloaded');
      } catch (error) {
        this.log.error({ model: this.name, reason: reasonOf(error) }, 'model failed to unload');
      }
    })();
    await this.draining;
    this.draining = undefined;
  }

  private failedError(retryAfterSeconds: number): KilnError {
    return new KilnError('modelUnavailable', {
      message: `Model '${this.name}' could not be loaded: ${reasonOf(this.failure?.error)}. It will be tried again in ${retryAfterSeconds} s.`,
      retryAfterSeconds,
    });
  }
}

function reasonOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * A run that releases its hold on the model once it is disposed and every choice it started has ended (a request that
 * failed early is disposed while its other choices may still be finishing: the model must not unload under them).
 */
class HeldRun extends RunWrapper {
  private disposed = false;
  private running = 0;
  private released = false;

  constructor(
    inner: EngineRun,
    private readonly onRelease: () => void,
  ) {
    super(inner);
  }

  async *choice(index: number): AsyncGenerator<EngineEvent, void, undefined> {
    this.running++;
    try {
      yield* this.inner.choice(index);
    } finally {
      this.running--;
      this.releaseWhenDone();
    }
  }

  dispose(): void {
    this.inner.dispose();
    this.disposed = true;
    this.releaseWhenDone();
  }

  private releaseWhenDone(): void {
    if (!this.disposed || this.running > 0 || this.released) return;
    this.released = true;
    this.onRelease();
  }
}
