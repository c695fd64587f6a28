/**
 * Wire request → ChatRequest: validation against the seed's ranges, the seed's defaults, and the cross-field checks
 * a schema cannot express. Every rejection is a KilnError naming the field; nothing is clamped.
 */
import { randomInt } from 'node:crypto';
import type { z } from 'zod';
import { KilnError } from '../errors/catalog.js';
import {
  chatCompletionRequestSchema,
  type ChatCompletionRequestWire,
  type ChatMessageWire,
  type ContentWire,
} from '../protocol/request.js';
import { REQUEST_DEFAULTS, type ChatMessage, type ChatRequest, type ResponseFormat, type ToolChoice } from './chat-request.js';
import { cachedRequestGrammars } from './grammar/request-grammar.js';
import { checkSchemaBounds, schemaDepthLimit } from './grammar/schema-bounds.js';
import { checkArgumentsDepth, checkCounts, checkTextBytes, REQUEST_LIMIT_DEFAULTS, type RequestLimits } from './request-limits.js';

/** The size limits (request-limits.ts) bound the work a request can cause before any of it is done. */
export interface NormalizeOptions extends RequestLimits {
  /** Largest `n` this server accepts. */
  maxChoices: number;
}

export { REQUEST_LIMIT_DEFAULTS };

export function normalizeChatRequest(body: unknown, options: NormalizeOptions): ChatRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new KilnError('invalidParameter', { message: 'The request body must be a JSON object.' });
  }
  // Counted on the raw body: validating 100,000 messages would itself take a while.
  checkCounts(body as Record<string, unknown>, options);
  // reportInput: the offending value is needed to say what was wrong with it.
  const parsed = chatCompletionRequestSchema.safeParse(body, { reportInput: true });
  if (!parsed.success) throw issueToError(parsed.error.issues[0]!);
  const wire = parsed.data;

  const n = wire.n ?? REQUEST_DEFAULTS.n;
  if (n > options.maxChoices) {
    throw invalid('n', `Invalid 'n': must be ≤ ${options.maxChoices} on this server, got ${n}.`);
  }
  if (wire.max_tokens != null && wire.max_completion_tokens != null && wire.max_tokens !== wire.max_completion_tokens) {
    throw invalid('max_tokens', "Invalid 'max_tokens': conflicts with 'max_completion_tokens'; send one of them.");
  }
  if (wire.logprobs === true) {
    throw new KilnError('notSupported', { param: 'logprobs', message: "'logprobs' is not supported yet." });
  }
  if (wire.logit_bias != null && Object.keys(wire.logit_bias).length > 0) {
    throw new KilnError('notSupported', { param: 'logit_bias', message: "'logit_bias' is not supported yet." });
  }

  const textBytes = checkTextBytes(wire, options.maxTextBytes ?? REQUEST_LIMIT_DEFAULTS.maxTextBytes);
  checkArgumentsDepth(wire, schemaDepthLimit(options.maxSchemaDepth));
  const messages = wire.messages.map(normalizeMessage);
  checkConversation(wire.messages);
  const tools = normalizeTools(wire, options);
  const toolChoice = normalizeToolChoice(wire, tools.map((tool) => tool.name));
  const maxTokens = wire.max_tokens ?? wire.max_completion_tokens;
  const last = wire.messages[wire.messages.length - 1]!;
  const responseFormat = normalizeResponseFormat(wire, options);
  const parallelToolCalls = wire.parallel_tool_calls ?? true;

  return {
    model: wire.model,
    messages,
    stream: wire.stream ?? false,
    includeUsage: wire.stream_options?.include_usage ?? false,
    maxTokens: maxTokens ?? REQUEST_DEFAULTS.maxTokens,
    maxTokensExplicit: maxTokens != null,
    ...(wire.max_tokens == null && wire.max_completion_tokens != null ? { maxTokensParam: 'max_completion_tokens' as const } : {}),
    stop: wire.stop == null ? [] : typeof wire.stop === 'string' ? [wire.stop] : wire.stop,
    sampling: {
      temperature: wire.temperature ?? REQUEST_DEFAULTS.temperature,
      topP: wire.top_p ?? REQUEST_DEFAULTS.topP,
      topK: wire.top_k ?? REQUEST_DEFAULTS.topK,
      minP: wire.min_p ?? REQUEST_DEFAULTS.minP,
      frequencyPenalty: wire.frequency_penalty ?? REQUEST_DEFAULTS.frequencyPenalty,
      presencePenalty: wire.presence_penalty ?? REQUEST_DEFAULTS.presencePenalty,
      seed: wire.seed ?? randomInt(0, 2 ** 31),
      seedExplicit: wire.seed !== undefined && wire.seed !== null,
    },
    n,
    responseFormat,
    tools,
    toolChoice,
    grammars: cachedRequestGrammars({ tools, toolChoice, responseFormat, parallelToolCalls }),
    parallelToolCalls,
    enableThinking: wire.enable_thinking ?? undefined,
    thinkingBudget: wire.thinking_budget ?? REQUEST_DEFAULTS.thinkingBudget,
    continueLastAssistant: last.role === 'assistant' && last.prefix === true,
    user: wire.user ?? undefined,
    textBytes,
  };
}

function invalid(param: string, message: string): KilnError {
  return new KilnError('invalidParameter', { param, message });
}

/** `['messages', 1, 'content']` → `messages[1].content` */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? String(key) : `.${String(key)}`;
  }
  return out;
}

function issueToError(issue: z.core.$ZodIssue): KilnError {
  const param = formatPath(issue.path);
  if (param === '') return new KilnError('invalidParameter', { message: `Invalid request body: ${describeIssue(issue)}.` });
  return invalid(param, `Invalid '${param}': ${describeIssue(issue)}.`);
}

function describeIssue(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'too_big': {
      const bound = Number(issue.maximum);
      if (issue.origin === 'array') return `must have at most ${bound} items`;
      if (issue.origin === 'string') return `must be at most ${bound} characters`;
      return `must be ${issue.inclusive ? '≤' : '<'} ${bound}`;
    }
    case 'too_small': {
      const bound = Number(issue.minimum);
      if (issue.origin === 'array') return bound === 1 ? 'must not be empty' : `must have at least ${bound} items`;
      if (issue.origin === 'string') return bound === 1 ? 'must not be empty' : `must be at least ${bound} characters`;
      return `must be ${issue.inclusive ? '≥' : '>'} ${bound}`;
    }
    case 'invalid_type':
      if (issue.input === undefined) return 'is required';
      return `expected ${issue.expected === 'int' ? 'an integer' : issue.expected}, got ${describeValue(issue.input)}`;
    case 'invalid_value':
      return `must be ${issue.values.map((value) => JSON.stringify(value)).join(' or ')}`;
    default:
      return issue.message;
  }
}

function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : `number ${value}`;
  return typeof value;
}

function contentText(content: ContentWire | null | undefined): { text: string; hasImage: boolean } {
  if (content == null) return { text: '', hasImage: false };
  if (typeof content === 'string') return { text: content, hasImage: false };
  const texts: string[] = [];
  let hasImage = false;
  for (const part of content) {
    if (part.type === 'text') texts.push(part.text);
    else hasImage = true;
  }
  return { text: texts.join('\n'), hasImage };
}

function normalizeMessage(message: ChatMessageWire): ChatMessage {
  const { text, hasImage } = contentText(message.content);
  const role = message.role === 'developer' ? 'system' : message.role;
  const normalized: ChatMessage = { role, content: text };
  if (hasImage) normalized.hasImage = true;
  if (message.role === 'assistant' && message.tool_calls != null && message.tool_calls.length > 0) {
    normalized.toolCalls = message.tool_calls.map((call) => ({
      id: call.id,
      name: call.function.name,
      arguments: call.function.arguments,
    }));
  }
  if (message.role === 'tool') normalized.toolCallId = message.tool_call_id;
  return normalized;
}

/** Checks that span messages: assistant turns say something, tool results answer an earlier call. */
function checkConversation(messages: ChatMessageWire[]): void {
  const openCalls = new Set<string>();
  messages.forEach((message, index) => {
    if (message.role === 'assistant') {
      const calls = message.tool_calls ?? [];
      if (message.content == null && calls.length === 0) {
        throw invalid(`messages[${index}].content`, `Invalid 'messages[${index}]': an assistant message needs 'content' or 'tool_calls'.`);
      }
      if (message.prefix === true && index !== messages.length - 1) {
        throw invalid(`messages[${index}].prefix`, `Invalid 'messages[${index}].prefix': only the last message may be a prefix.`);
      }
      for (const call of calls) openCalls.add(call.id);
    } else if (message.role === 'tool' && !openCalls.has(message.tool_call_id)) {
      throw invalid(
        `messages[${index}].tool_call_id`,
        `Invalid 'messages[${index}].tool_call_id': '${message.tool_call_id}' does not answer a tool call of an earlier assistant message.`,
      );
    }
  });
}

function normalizeTools(wire: ChatCompletionRequestWire, options: NormalizeOptions): ChatRequest['tools'] {
  const seen = new Set<string>();
  return (wire.tools ?? []).map((tool, index) => {
    const { name, description, parameters, strict } = tool.function;
    if (seen.has(name)) throw invalid(`tools[${index}].function.name`, `Invalid 'tools[${index}].function.name': duplicate tool name '${name}'.`);
    seen.add(name);
    // Before anything recursive (the grammar converter, the chat template's tojson) walks the schema.
    if (parameters != null) checkSchemaBounds(parameters, `tools[${index}].function.parameters`, schemaLimits(options));
    return {
      name,
      ...(description != null ? { description } : {}),
      ...(parameters != null ? { parameters } : {}),
      ...(strict != null ? { strict } : {}),
    };
  });
}

function normalizeToolChoice(wire: ChatCompletionRequestWire, toolNames: string[]): ToolChoice {
  const choice = wire.tool_choice;
  if (choice == null) return { type: toolNames.length > 0 ? 'auto' : 'none' };
  if (toolNames.length === 0 && choice !== 'none') {
    throw invalid('tool_choice', "Invalid 'tool_choice': only allowed when 'tools' are given.");
  }
  if (typeof choice === 'string') return { type: choice };
  if (!toolNames.includes(choice.function.name)) {
    throw invalid('tool_choice.function.name', `Invalid 'tool_choice.function.name': no tool named '${choice.function.name}' in 'tools'.`);
  }
  return { type: 'function', name: choice.function.name };
}

function schemaLimits(options: NormalizeOptions) {
  return { maxDepth: options.maxSchemaDepth, maxNodes: options.maxSchemaNodes };
}

function normalizeResponseFormat(wire: ChatCompletionRequestWire, options: NormalizeOptions): ResponseFormat {
  const format = wire.response_format;
  if (format == null || format.type === 'text') return { type: 'text' };
  if (format.type === 'json_object') return { type: 'json_object' };
  if (format.json_schema.schema == null) {
    throw invalid('response_format.json_schema.schema', "Invalid 'response_format.json_schema.schema': is required.");
  }
  checkSchemaBounds(format.json_schema.schema, 'response_format.json_schema.schema', schemaLimits(options));
  return {
    type: 'json_schema',
    name: format.json_schema.name,
    schema: format.json_schema.schema,
    strict: format.json_schema.strict ?? false,
  };
}
