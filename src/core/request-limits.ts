/**
 * Bounds on one request's size, checked before the work they bound: counts on the raw body before it is validated,
 * text bytes right after. Each excess is a 400 naming the field where the limit was passed.
 */
import { KilnError } from '../errors/catalog.js';
import { MAX_TOOLS, type ChatCompletionRequestWire } from '../protocol/request.js';

export interface RequestLimits {
  maxMessages?: number;
  /** Content parts over all messages together. */
  maxContentParts?: number;
  maxTools?: number;
  /** UTF-8 bytes of all client text together: message contents, tool call arguments, tool descriptions. */
  maxTextBytes?: number;
  /** Deepest JSON nesting in a tool's parameters, a json_schema or earlier tool calls' arguments (schema-bounds.ts). */
  maxSchemaDepth?: number;
  /** Most JSON values in one tool's parameters or json_schema (schema-bounds.ts). */
  maxSchemaNodes?: number;
}

/**
 * Rendering the chat template is the costliest step before the prompt's size is known, and it grows faster than the
 * message count (@huggingface/jinja, 2-core dev VM under load, best of 3: 1,000 messages 16–35 ms, 2,000 25–50 ms,
 * 4,000 50–210 ms, 30,000 0.84 s), so messages are capped where rendering stays well under 100 ms. 128 tools is
 * OpenAI's limit. 1 MiB of text is more than a 128k-token context holds.
 */
export const REQUEST_LIMIT_DEFAULTS = {
  maxMessages: 1024,
  maxContentParts: 4096,
  maxTools: MAX_TOOLS,
  maxTextBytes: 1024 * 1024,
} as const;

export function checkCounts(body: Record<string, unknown>, options: RequestLimits): void {
  const maxMessages = options.maxMessages ?? REQUEST_LIMIT_DEFAULTS.maxMessages;
  const maxParts = options.maxContentParts ?? REQUEST_LIMIT_DEFAULTS.maxContentParts;
  const maxTools = options.maxTools ?? REQUEST_LIMIT_DEFAULTS.maxTools;
  const { messages, tools } = body;
  if (Array.isArray(messages)) {
    if (messages.length > maxMessages) {
      throw invalid('messages', `Invalid 'messages': must have at most ${maxMessages} items on this server, got ${messages.length}.`);
    }
    let parts = 0;
    messages.forEach((message: unknown, index) => {
      const content = typeof message === 'object' && message !== null ? (message as { content?: unknown }).content : undefined;
      if (!Array.isArray(content)) return;
      parts += content.length;
      if (parts > maxParts) {
        throw invalid(`messages[${index}].content`, `Invalid 'messages[${index}].content': the messages may have at most ${maxParts} content parts in all on this server.`);
      }
    });
  }
  if (Array.isArray(tools) && tools.length > maxTools) {
    throw invalid('tools', `Invalid 'tools': must have at most ${maxTools} items on this server, got ${tools.length}.`);
  }
}

/** Names the field at which the running total of client text passes the limit. */
/** Returns the request's text size in bytes (also a cheap estimate of its prompt before tokenizing). */
export function checkTextBytes(wire: ChatCompletionRequestWire, maxBytes: number): number {
  let total = 0;
  const add = (param: string, text: string | null | undefined) => {
    if (text == null) return;
    total += Buffer.byteLength(text);
    if (total > maxBytes) {
      throw invalid(param, `Invalid '${param}': the request's text may be at most ${maxBytes} bytes in all on this server.`);
    }
  };
  wire.messages.forEach((message, index) => {
    const content = message.content;
    if (typeof content === 'string') add(`messages[${index}].content`, content);
    else content?.forEach((part, partIndex) => add(`messages[${index}].content[${partIndex}].text`, part.type === 'text' ? part.text : undefined));
    if (message.role === 'assistant') {
      add(`messages[${index}].reasoning_content`, message.reasoning_content);
      message.tool_calls?.forEach((call, callIndex) => add(`messages[${index}].tool_calls[${callIndex}].function.arguments`, call.function.arguments));
    }
  });
  wire.tools?.forEach((tool, index) => add(`tools[${index}].function.description`, tool.function.description));
  return total;
}

/**
 * Earlier tool calls' `arguments` are parsed and written back into the prompt (the template's `tojson`, or Kiln's own
 * Hermes rendering), both recursive: their JSON nesting is bounded like a schema's, counted on the text without
 * parsing it.
 */
export function checkArgumentsDepth(wire: ChatCompletionRequestWire, maxDepth: number): void {
  wire.messages.forEach((message, index) => {
    if (message.role !== 'assistant') return;
    message.tool_calls?.forEach((call, callIndex) => {
      if (jsonTextDepth(call.function.arguments) <= maxDepth) return;
      const param = `messages[${index}].tool_calls[${callIndex}].function.arguments`;
      throw invalid(param, `Invalid '${param}': the arguments nest deeper than ${maxDepth} levels, the most this server accepts.`);
    });
  });
}

/** Deepest bracket nesting of JSON text, strings skipped; malformed text is measured the same way. */
export function jsonTextDepth(text: string): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const char = text.charCodeAt(i);
    if (inString) {
      if (char === 0x5c /* \ */) i++;
      else if (char === 0x22 /* " */) inString = false;
    } else if (char === 0x22) inString = true;
    else if (char === 0x5b /* [ */ || char === 0x7b /* { */) deepest = Math.max(deepest, ++depth);
    else if (char === 0x5d /* ] */ || char === 0x7d /* } */) depth--;
  }
  return deepest;
}

function invalid(param: string, message: string): KilnError {
  return new KilnError('invalidParameter', { param, message });
}
