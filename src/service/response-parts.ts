/**
 * The wire pieces of a chat completion built from post-processed deltas: a chunk's delta, a whole message, the usage.
 * Streams and whole responses use the same deltas, so they say the same thing.
 */
import type { EngineRun } from '../core/engine.js';
import type { ChoiceDelta } from '../core/postprocess/choice-processor.js';
import type { ChatCompletionWire, ChunkDeltaWire, ToolCallWire, UsageWire } from '../protocol/response.js';

export function deltaWire(delta: ChoiceDelta): ChunkDeltaWire {
  if (delta.reasoningContent !== undefined) return { reasoning_content: delta.reasoningContent };
  if (delta.toolCall !== undefined) {
    const { index, id, name, arguments: args } = delta.toolCall;
    const call = id === undefined ? { index, function: { arguments: args } } : { index, id, type: 'function' as const, function: { name: name!, arguments: args } };
    return { tool_calls: [call] };
  }
  return { content: delta.content ?? '' };
}

/** A whole message from the same deltas a stream would carry. */
export class MessageBuilder {
  private content = '';
  private reasoning = '';
  private readonly toolCalls: ToolCallWire[] = [];

  add(delta: ChoiceDelta): void {
    if (delta.content !== undefined) this.content += delta.content;
    if (delta.reasoningContent !== undefined) this.reasoning += delta.reasoningContent;
    const call = delta.toolCall;
    if (call === undefined) return;
    if (call.id !== undefined) this.toolCalls[call.index] = { id: call.id, type: 'function', function: { name: call.name!, arguments: '' } };
    this.toolCalls[call.index]!.function.arguments += call.arguments;
  }

  build(): ChatCompletionWire['choices'][number]['message'] {
    const calls = this.toolCalls.length > 0;
    return {
      role: 'assistant',
      // OpenAI: content is null when the message is only tool calls.
      content: calls && this.content === '' ? null : this.content,
      ...(this.reasoning !== '' ? { reasoning_content: this.reasoning } : {}),
      ...(calls ? { tool_calls: this.toolCalls } : {}),
    };
  }
}

export function usage(run: EngineRun, finishes: ReadonlyArray<{ completionTokens: number; reasoningTokens: number }>): UsageWire {
  const completionTokens = finishes.reduce((sum, finish) => sum + finish.completionTokens, 0);
  const reasoningTokens = finishes.reduce((sum, finish) => sum + finish.reasoningTokens, 0);
  return {
    prompt_tokens: run.promptTokens,
    completion_tokens: completionTokens,
    total_tokens: run.promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: run.cachedTokens },
    completion_tokens_details: { reasoning_tokens: reasoningTokens },
  };
}
