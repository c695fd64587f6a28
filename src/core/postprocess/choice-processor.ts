/**
 * The one post-processor every engine's output goes through, per choice: stop strings, finish reason and token
 * counting. Engines feed it raw decoded text in whatever pieces they have; what comes out does not depend on how the
 * text was split.
 */
import type { FinishReason } from '../../protocol/response.js';
import type { ChatRequest } from '../chat-request.js';
import type { EngineEvent } from '../engine.js';
import { StopMatcher } from './stop-matcher.js';

export interface ChoiceDelta {
  content?: string;
}

export type ChoiceUpdate =
  | { type: 'delta'; delta: ChoiceDelta }
  | { type: 'finish'; finishReason: FinishReason; completionTokens: number };

export class ChoicePostProcessor {
  private readonly stopMatcher: StopMatcher;
  private completionTokens = 0;

  constructor(request: Pick<ChatRequest, 'stop'>) {
    this.stopMatcher = new StopMatcher(request.stop);
  }

  /**
   * Turns one engine event into what the client should see. After a `finish` update the caller stops pulling from
   * the engine (which stops generating).
   */
  accept(event: EngineEvent): ChoiceUpdate[] {
    if (event.type === 'end') return this.finish(event.reason === 'length' ? 'length' : 'stop', this.stopMatcher.flush());
    this.completionTokens += event.tokens;
    const text = this.stopMatcher.push(event.text);
    if (this.stopMatcher.hasStopped) return this.finish('stop', text);
    return text === '' ? [] : [{ type: 'delta', delta: { content: text } }];
  }

  private finish(finishReason: FinishReason, lastText: string): ChoiceUpdate[] {
    const updates: ChoiceUpdate[] = [];
    if (lastText !== '') updates.push({ type: 'delta', delta: { content: lastText } });
    updates.push({ type: 'finish', finishReason, completionTokens: this.completionTokens });
    return updates;
  }
}
