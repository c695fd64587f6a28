/**
 * ChatRequest → the body one upstream request carries. Every sampling parameter is sent explicitly: servers differ in
 * their defaults (vLLM's temperature is 1.0, llama-server's top_k 40), and a model must answer the same whichever
 * deployment serves it. One choice per upstream request (no `n`: llama-server refuses n > 1), always streamed with
 * usage, so that streaming and non-streaming clients share one code path.
 */
import type { ChatMessage, ChatRequest, ResponseFormat, ToolChoice } from '../../core/chat-request.js';

export interface WireBodySettings {
  model: string;
}

type WireMessage = Record<string, unknown>;

export function wireMessages(request: Pick<ChatRequest, 'messages' | 'continueLastAssistant'>): WireMessage[] {
  const messages = request.messages.map(wireMessage);
  const last = messages[messages.length - 1];
  // SiliconFlow's and DeepSeek's `prefix` marks the message to continue (vLLM reads the request-level flags instead).
  if (request.continueLastAssistant && last !== undefined) last.prefix = true;
  return messages;
}

function wireMessage(message: ChatMessage): WireMessage {
  switch (message.role) {
    case 'assistant': {
      const calls = message.toolCalls ?? [];
      return {
        role: 'assistant',
        content: message.content,
        ...(calls.length > 0
          ? { tool_calls: calls.map((call) => ({ id: call.id, type: 'function', function: { name: call.name, arguments: call.arguments } })) }
          : {}),
      };
    }
    case 'tool':
      return { role: 'tool', content: message.content, ...(message.toolCallId !== undefined ? { tool_call_id: message.toolCallId } : {}) };
    default:
      // Images never get here: the service refuses them for engines without vision (this one).
      return { role: message.role, content: message.content };
  }
}

function wireToolChoice(choice: ToolChoice): unknown {
  return choice.type === 'function' ? { type: 'function', function: { name: choice.name } } : choice.type;
}

function wireResponseFormat(format: ResponseFormat): unknown {
  if (format.type !== 'json_schema') return { type: format.type };
  return { type: 'json_schema', json_schema: { name: format.name, schema: format.schema, strict: format.strict } };
}

/**
 * The body for choice `index` of `request`: the same request with the choice's own seed, like the local engine — when
 * the client chose one. Without, none is sent: the upstream draws its own, and a seeded request costs a Kiln or
 * llama.cpp upstream part of its prefix cache (reuse stops at a batch boundary to keep the output reproducible).
 */
export function wireBody(request: ChatRequest, settings: WireBodySettings, index: number): Record<string, unknown> {
  const { sampling } = request;
  const body: Record<string, unknown> = {
    model: settings.model,
    messages: wireMessages(request),
    max_tokens: request.maxTokens,
    temperature: sampling.temperature,
    top_p: sampling.topP,
    top_k: sampling.topK,
    min_p: sampling.minP,
    frequency_penalty: sampling.frequencyPenalty,
    presence_penalty: sampling.presencePenalty,
    ...(sampling.seedExplicit ? { seed: (sampling.seed + index) >>> 0 } : {}),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (request.stop.length > 0) body.stop = request.stop;
  if (request.tools.length > 0) {
    body.tools = request.tools.map((tool) => ({
      type: 'function',
      function: {
        name: tool.name,
        ...(tool.description !== undefined ? { description: tool.description } : {}),
        ...(tool.parameters !== undefined ? { parameters: tool.parameters } : {}),
        ...(tool.strict !== undefined ? { strict: tool.strict } : {}),
      },
    }));
    body.tool_choice = wireToolChoice(request.toolChoice);
    body.parallel_tool_calls = request.parallelToolCalls;
  }
  if (request.responseFormat.type !== 'text') body.response_format = wireResponseFormat(request.responseFormat);
  // SiliconFlow's reasoning cap; Kiln and SiliconFlow-compatible servers enforce it, others ignore an unknown field.
  body.thinking_budget = request.thinkingBudget;
  if (request.enableThinking !== undefined) {
    // vLLM/SGLang/llama-server pass chat_template_kwargs to the template; SiliconFlow and Kiln read the top-level field.
    body.chat_template_kwargs = { enable_thinking: request.enableThinking };
    body.enable_thinking = request.enableThinking;
  }
  if (request.continueLastAssistant) {
    body.continue_final_message = true;
    body.add_generation_prompt = false;
  }
  if (request.user !== undefined) body.user = request.user;
  return body;
}

/**
 * Prompt tokens when the upstream does not say: about 4 UTF-8 bytes per token for the text the prompt is made of. The
 * template's own tokens are not counted; it is an estimate, logged as such.
 */
export function estimatePromptTokens(request: Pick<ChatRequest, 'messages'>): number {
  let bytes = 0;
  for (const message of request.messages) {
    bytes += Buffer.byteLength(message.content, 'utf8');
    for (const call of message.toolCalls ?? []) bytes += Buffer.byteLength(call.name, 'utf8') + Buffer.byteLength(call.arguments, 'utf8');
  }
  return Math.ceil(bytes / 4);
}
