/**
 * What the service needs from an inference engine: embedded llama.cpp (engines/llama) or an OpenAI-compatible server
 * over HTTP (engines/upstream), or a router over several of them (service/routing).
 *
 * `start` does everything that can still fail with a clean HTTP status — prompt rendering, context-length checks, the
 * upstream's answer to the request — before any byte of the response is sent. Generation then yields raw decoded
 * text; stop strings, reasoning and tool parsing are the shared post-processor's job, not the engine's. Admission
 * (how many requests run, who waits) is the service's job: an engine only says how many choices it can run at once.
 */
import type { KilnError } from '../errors/catalog.js';
import type { ChatRequest } from './chat-request.js';

export interface EngineTextEvent {
  type: 'text';
  text: string;
  /** Tokens this text came from (0 when the text was held back from an earlier token). */
  tokens: number;
}

export interface EngineEndEvent {
  type: 'end';
  /** `eog`: the model ended its turn; `length`: the token budget ran out. */
  reason: 'eog' | 'length';
  /**
   * Token counts the engine knows better than the post-processor's tally of text events (an upstream's own usage).
   * Unset fields fall back to that tally.
   */
  usage?: { completionTokens?: number; reasoningTokens?: number };
}

export type EngineEvent = EngineTextEvent | EngineEndEvent;

/**
 * How the model's output starts: `open` — the prompt opened `<think>`, output starts as reasoning; `optional` — the
 * model may open `<think>` itself; `off` — no reasoning to split out.
 */
export type ReasoningMode = 'open' | 'optional' | 'off';

export interface EngineRun {
  /**
   * Prompt tokens. Read once every choice has ended: an upstream learns them only with the end of its response (an
   * engine that knows them sooner may set them at once).
   */
  readonly promptTokens: number;
  readonly reasoning: ReasoningMode;
  /** Prompt tokens served from a cache instead of being evaluated; read like promptTokens. */
  readonly cachedTokens: number;
  /** Which deployment served the run, when a router chose one (a name, never a URL). */
  readonly deployment?: string;
  /** The token budget actually granted (the request's, or what the context had left when it was defaulted). */
  readonly maxTokens: number;
  /**
   * The generation of choice `index` (0 ≤ index < request.n). Breaking out of the iteration stops generating;
   * the run's resources are released once every choice's iteration has ended.
   */
  choice(index: number): AsyncGenerator<EngineEvent, void, undefined>;
  /** Releases what choices that never started would have used. Safe to call at any time, and more than once. */
  dispose(): void;
}

export interface EngineDescription {
  /** Shown in logs; never an upstream's URL. */
  name: string;
  /** Tokens per sequence, where the engine knows it. */
  contextSize?: number;
  supportsImages: boolean;
  /** Most choices (`n`) one request may ask for; more is a 400 saying why (`maxChoicesReason`). */
  maxChoices?: number;
  maxChoicesReason?: string;
}

/**
 * Where a served model stands, for the catalog (`GET /v1/models`, `kiln models`): a local model's lifecycle state
 * (service/model-lifecycle.ts), or `upstream` for one served by other servers.
 */
export type EngineState = 'unloaded' | 'loading' | 'ready' | 'draining' | 'upstream';

export interface EngineStatus {
  state: EngineState;
  /** Milliseconds since its last request ended (0 while one runs); set while loaded. */
  idleMs?: number;
  /** Host memory it holds (what its load reserved in the memory budget), in bytes; set while loaded. */
  memoryBytes?: number;
  /** Layers offloaded to a GPU; set while loaded. */
  gpuLayers?: number;
  /** What its prompt cache holds (engines/llama/prompt-cache/), per tier; set while loaded with a cache. */
  promptCache?: PromptCacheUse;
}

export interface PromptCacheUse {
  ramBytes: number;
  ramEntries: number;
  diskBytes: number;
  diskEntries: number;
}

export interface ChatEngine {
  readonly description: EngineDescription;
  /**
   * Choices this engine can generate at once now (a request of `n` choices takes `n`). The service's admission lets
   * no more than this run and queues the rest; it may change over time (an upstream ejected as unhealthy adds none).
   */
  capacity(): number;
  /**
   * Why the engine can serve nothing at all right now (every upstream unhealthy), as the error to answer at once
   * instead of queueing; undefined when it can serve.
   */
  unavailable?(): KilnError | undefined;
  start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun>;
  /** Where the engine stands, for the catalog; an engine without it is always ready. */
  status?(): EngineStatus;
  /** A cheap check that the engine answers (an upstream's `GET /models`); rejects when it does not. */
  probe?(signal: AbortSignal): Promise<void>;
  close(): Promise<void>;
}

/**
 * A run that passes another through, for wrappers that watch it (a router's accounting, a model's hold). Getters, not
 * copies: an upstream learns its usage only with the end of its response.
 */
export abstract class RunWrapper implements EngineRun {
  constructor(protected readonly inner: EngineRun) {}

  get promptTokens(): number {
    return this.inner.promptTokens;
  }

  get cachedTokens(): number {
    return this.inner.cachedTokens;
  }

  get reasoning(): ReasoningMode {
    return this.inner.reasoning;
  }

  get maxTokens(): number {
    return this.inner.maxTokens;
  }

  get deployment(): string | undefined {
    return this.inner.deployment;
  }

  abstract choice(index: number): AsyncGenerator<EngineEvent, void, undefined>;
  abstract dispose(): void;
}

/**
 * How one deployment failed before its response began: a router may try another deployment when `retryable` (connect
 * errors, timeouts, 429 and 5xx), and answers `error` when it may not or when no attempt is left. `unhealthy` says
 * whether the failure counts against the deployment's health (a 429 is load, not sickness).
 */
export class DeploymentFailure extends Error {
  override name = 'DeploymentFailure';

  constructor(
    readonly error: KilnError,
    readonly retryable: boolean,
    readonly unhealthy: boolean,
  ) {
    super(error.message, { cause: error });
  }
}
