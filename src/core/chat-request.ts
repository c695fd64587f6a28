/**
 * The engine-neutral chat request: the wire request with every default resolved and every check done.
 * Engines and the service only ever see this shape.
 */
import type { RequestGrammars } from './grammar/request-grammar.js';

export type Role = 'system' | 'user' | 'assistant' | 'tool';

export interface ToolCall {
  id: string;
  name: string;
  /** JSON text, as the client sent it. */
  arguments: string;
}

export interface ChatMessage {
  role: Role;
  content: string;
  /** Assistant only. */
  toolCalls?: ToolCall[];
  /** Tool only. */
  toolCallId?: string;
  /** True when a content part was an image: engines without vision reject it. */
  hasImage?: boolean;
}

export interface ToolDefinition {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
  strict?: boolean;
}

export type ToolChoice = { type: 'none' } | { type: 'auto' } | { type: 'required' } | { type: 'function'; name: string };

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; name: string; schema: Record<string, unknown>; strict: boolean };

export interface SamplingParams {
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  frequencyPenalty: number;
  presencePenalty: number;
  /** Always set: random per request when the client gave none. */
  seed: number;
  /** The client gave the seed, i.e. expects the same output for the same request. */
  seedExplicit: boolean;
}

export interface ChatRequest {
  /** The id the client asked for, echoed in responses (`Pro/` prefix included). */
  model: string;
  messages: ChatMessage[];
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number;
  /** False when `max_tokens` took the seed's default: then it may shrink to what the context has left. */
  maxTokensExplicit: boolean;
  /** Set when the client gave the limit as `max_completion_tokens`, so that errors name that field (else `max_tokens`). */
  maxTokensParam?: 'max_tokens' | 'max_completion_tokens';
  stop: string[];
  sampling: SamplingParams;
  n: number;
  responseFormat: ResponseFormat;
  tools: ToolDefinition[];
  toolChoice: ToolChoice;
  /**
   * The GBNF grammars that enforce `response_format` and tool calls, built while normalising: a schema Kiln cannot
   * enforce is a 400 whichever engine serves the model (an upstream never receives a request a local model refuses).
   */
  grammars: RequestGrammars;
  parallelToolCalls: boolean;
  /** Undefined: the model's default. */
  enableThinking: boolean | undefined;
  thinkingBudget: number;
  /** SiliconFlow `prefix`: the last assistant message is continued instead of answered. */
  continueLastAssistant: boolean;
  user: string | undefined;
  /** UTF-8 bytes of the client's text (contents, arguments, tool descriptions): sizes a rate-limit reservation. */
  textBytes: number;
}

/** `Pro/` ids are the same model on SiliconFlow's paid tier: served with priority, and only to keys of that tier. */
export function isProModel(modelId: string): boolean {
  return modelId.startsWith('Pro/');
}

/** The tools the model may call in this request: none when `tool_choice` is "none". */
export function offeredTools(request: Pick<ChatRequest, 'tools' | 'toolChoice'>): readonly ToolDefinition[] {
  return request.toolChoice.type === 'none' ? [] : request.tools;
}

/** The seed's defaults (../shared/spec/chat-completions.md). */
export const REQUEST_DEFAULTS = {
  maxTokens: 512,
  temperature: 0.7,
  topP: 0.7,
  topK: 50,
  frequencyPenalty: 0.5,
  presencePenalty: 0,
  minP: 0.05,
  n: 1,
  thinkingBudget: 4096,
} as const;
