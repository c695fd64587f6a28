/**
 * One request on an upstream: one HTTP exchange per choice (`n` fans out to n requests of one choice each), opened
 * together by the engine's start and read by the service choice by choice.
 */
import type { ChatRequest } from '../../core/chat-request.js';
import type { EngineEvent, EngineRun, ReasoningMode } from '../../core/engine.js';
import type { ChoiceExchange } from './upstream-exchange.js';
import { estimatePromptTokens } from './upstream-request.js';
import type { UpstreamUsage } from './upstream-stream.js';

export class UpstreamRun implements EngineRun {
  readonly maxTokens: number;
  private readonly started: boolean[];
  private estimate: number | undefined;

  constructor(
    private readonly request: ChatRequest,
    private readonly exchanges: readonly ChoiceExchange[],
    readonly reasoning: ReasoningMode,
    private readonly onEnded: (exchange: ChoiceExchange) => void,
  ) {
    this.maxTokens = request.maxTokens;
    this.started = exchanges.map(() => false);
  }

  /** The first choice's usage that names the prompt (choices share the prompt); an estimate when none does. */
  get promptTokens(): number {
    return this.promptUsage()?.promptTokens ?? (this.estimate ??= estimatePromptTokens(this.request));
  }

  get cachedTokens(): number {
    return this.promptUsage()?.cachedTokens ?? 0;
  }

  async *choice(index: number): AsyncGenerator<EngineEvent, void, undefined> {
    const exchange = this.exchanges[index];
    if (exchange === undefined || this.started[index]) throw new Error(`choice ${index} is not available`);
    this.started[index] = true;
    try {
      yield* exchange.events();
    } finally {
      this.onEnded(exchange);
    }
  }

  dispose(): void {
    this.exchanges.forEach((exchange, index) => {
      if (this.started[index]) return;
      this.started[index] = true;
      exchange.abort();
      this.onEnded(exchange);
    });
  }

  private promptUsage(): UpstreamUsage | undefined {
    for (const exchange of this.exchanges) {
      if (exchange.usage?.promptTokens !== undefined) return exchange.usage;
    }
    return undefined;
  }
}
