/**
 * ChatRequest messages → node-llama-cpp chat history, which the model's chat wrapper renders with its template.
 * Tool results are folded into the assistant turn that called them, as node-llama-cpp models a call and its result
 * as one item.
 */
import type { ChatHistoryItem, ChatModelFunctionCall, ChatModelResponse } from 'node-llama-cpp';
import type { ChatMessage } from '../../core/chat-request.js';

export function toChatHistory(messages: readonly ChatMessage[], continueLastAssistant: boolean): ChatHistoryItem[] {
  const history: ChatHistoryItem[] = [];
  const callsById = new Map<string, ChatModelFunctionCall>();

  let previousRole: ChatMessage['role'] | undefined;
  for (const message of messages) {
    const role = previousRole;
    previousRole = message.role;
    switch (message.role) {
      case 'system':
        history.push({ type: 'system', text: message.content });
        break;
      case 'user':
        history.push({ type: 'user', text: message.content });
        break;
      case 'assistant': {
        // After tool results the model's turn goes on: node-llama-cpp keeps calls and the answer in one item.
        const last = history[history.length - 1];
        const continues = role === 'tool' && last?.type === 'model';
        const response: ChatModelResponse['response'] = continues ? last.response : [];
        if (message.content !== '') response.push(message.content);
        message.toolCalls?.forEach((call, index) => {
          const item: ChatModelFunctionCall = {
            type: 'functionCall',
            name: call.name,
            params: parseArguments(call.arguments),
            result: undefined,
            startsNewChunk: index === 0,
          };
          callsById.set(call.id, item);
          response.push(item);
        });
        if (!continues) history.push({ type: 'model', response });
        break;
      }
      case 'tool': {
        const call = callsById.get(message.toolCallId ?? '');
        // normalize-request guarantees the id answers an earlier call.
        if (call !== undefined) call.result = parseArguments(message.content);
        break;
      }
    }
  }

  const last = history[history.length - 1];
  if (!(continueLastAssistant && last?.type === 'model')) history.push({ type: 'model', response: [] });
  return history;
}

/** Arguments and results are JSON text on the wire; a template renders them best as values, else as the text. */
function parseArguments(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
