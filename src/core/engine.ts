/**
 * What the service needs from an inference engine (embedded llama.cpp today, upstream servers later).
 *
 * `start` does everything that can still fail with a clean HTTP status — prompt rendering, context-length checks,
 * admission to a busy model — before any byte of the response is sent. Generation then yields raw decoded text;
 * stop strings, reasoning and tool parsing are the shared post-processor's job, not the engine's.
 */
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
}

export type EngineEvent = EngineTextEvent | EngineEndEvent;

/**
 * How the model's output starts: `open` — the prompt opened `<think>`, output starts as reasoning; `optional` — the
 * model may open `<think>` itself; `off` — no reasoning to split out.
 */
export type ReasoningMode = 'open' | 'optional' | 'off';

export interface EngineRun {
  readonly promptTokens: number;
  readonly reasoning: ReasoningMode;
  /** Prompt tokens served from the KV cache instead of being evaluated. */
  readonly cachedTokens: number;
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
  /** Shown in logs and `system_fingerprint`. */
  name: string;
  contextSize: number;
  supportsImages: boolean;
}

export interface ChatEngine {
  readonly description: EngineDescription;
  start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun>;
  close(): Promise<void>;
}
