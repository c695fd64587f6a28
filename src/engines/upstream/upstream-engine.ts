/**
 * CONTRACT STUB — to be implemented. One OpenAI-compatible server (one deployment) as a ChatEngine.
 */
import type { ChatRequest } from '../../core/chat-request.js';
import type { ChatEngine, EngineDescription, EngineRun } from '../../core/engine.js';
import type { Log } from '../../core/log.js';

export interface UpstreamTimeouts {
  connectMs: number;
  firstTokenMs: number;
  idleMs: number;
  totalMs: number;
}

export interface UpstreamEngineSettings {
  /** Safe to log (never the URL). */
  name: string;
  /** The server's OpenAI base URL, e.g. http://gpu-node:8000/v1. Secret: never logged or returned. */
  baseUrl: string;
  /** The model name the server serves. */
  model: string;
  /** Secret: never logged or returned. */
  apiKey?: string;
  /** Whether the model reasons (`auto`: it may; reasoning is split out when the server sends it or inlines <think>). */
  reasoning: 'auto' | 'on' | 'off';
  /** Requests (choices) in flight to it at most; sizes the connection pool. */
  maxConcurrency: number;
  timeouts: UpstreamTimeouts;
  log: Log;
}

export class UpstreamEngine implements ChatEngine {
  readonly description: EngineDescription;

  constructor(private readonly settings: UpstreamEngineSettings) {
    this.description = { name: `upstream:${settings.name}`, supportsImages: false };
  }

  capacity(): number {
    return this.settings.maxConcurrency;
  }

  start(_request: ChatRequest, _signal: AbortSignal): Promise<EngineRun> {
    throw new Error('not implemented');
  }

  async probe(_signal: AbortSignal): Promise<void> {}

  async close(): Promise<void> {}
}
