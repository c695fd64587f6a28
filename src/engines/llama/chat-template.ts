/**
 * Renders a model's own Jinja chat template (`tokenizer.chat_template`) from OpenAI-style messages, as llama-server
 * --jinja and vLLM do, so tools, tool calls, tool results and thinking flags read exactly as the model was trained.
 * Templates without a tool syntax get Hermes-style tool instructions, calls and results written in by Kiln.
 */
import { Template } from '@huggingface/jinja';
import type { LlamaModel, Token } from 'node-llama-cpp';
import type { ChatMessage, ToolCall, ToolDefinition } from '../../core/chat-request.js';

export interface TemplateFeatures {
  /** 'hermes': the template renders `tools` and calls as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call> (Qwen2.5, QwQ, Hermes). 'none': it has no (usable) tool syntax; Kiln then injects tool instructions itself. */
  toolSyntax: 'hermes' | 'none';
  /** The template knows <think> reasoning (R1 distills, QwQ, Qwen3). */
  reasoning: boolean;
  /** The template reads `enable_thinking`. */
  thinkingToggle: boolean;
}

export interface RenderOptions {
  tools: readonly ToolDefinition[];
  enableThinking: boolean | undefined;
  continueLastAssistant: boolean;
  /**
   * Applied to every client-supplied string (message text, tool calls and their arguments, tool definitions) before
   * rendering, so that text the template did not write can be told apart afterwards (see prompt-tokens.ts).
   */
  protect?: (text: string) => string;
}

export interface RenderedPrompt {
  text: string;
  /** The prompt ends inside an opened <think> (the model's output starts in its reasoning). */
  thinkingOpen: boolean;
}

/** The template raised or failed on these messages. */
export class TemplateError extends Error {
  override name = 'TemplateError';
}

/** For models that carry no template: ChatML, which most small open models understand. */
export const CHATML_FALLBACK = `{%- for message in messages -%}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}`;

/** The message shape chat templates are written for (OpenAI's, as Hugging Face's apply_chat_template passes it). */
interface TemplateMessage {
  role: string;
  content: string;
  tool_calls?: Array<{ id: string; type: 'function'; function: { name: string; arguments: unknown } }>;
  tool_call_id?: string;
}

export class ChatTemplate {
  readonly features: TemplateFeatures;
  private readonly template: Template;

  constructor(
    readonly source: string,
    private readonly specials: { bos: string; eos: string },
  ) {
    try {
      this.template = new Template(source);
    } catch (error) {
      throw new TemplateError(`The chat template does not parse: ${messageOf(error)}`);
    }
    this.features = detectFeatures(source);
  }

  static fromModel(model: LlamaModel): ChatTemplate {
    const source = model.fileInfo.metadata.tokenizer?.chat_template;
    const text = (token: Token | null): string => (token === null ? '' : model.detokenize([token], true));
    const specials = { bos: text(model.tokens.bos), eos: text(model.tokens.eos) };
    return new ChatTemplate(source != null && source.trim() !== '' ? source : CHATML_FALLBACK, specials);
  }

  render(clientMessages: readonly ChatMessage[], options: RenderOptions): RenderedPrompt {
    const { messages, tools } = options.protect === undefined ? { messages: clientMessages, tools: options.tools } : shield(clientMessages, options.tools, options.protect);
    const last = messages[messages.length - 1];
    const prefix = options.continueLastAssistant && last?.role === 'assistant' ? last.content : undefined;
    const history = prefix === undefined ? messages : messages.slice(0, -1);
    const hermes = this.features.toolSyntax === 'hermes';
    const enableThinking = options.enableThinking ?? true;

    let text = this.apply({
      messages: hermes ? history.map(toTemplateMessage) : withInjectedTools(history, tools),
      tools: hermes && tools.length > 0 ? tools.map(toTemplateTool) : undefined,
      add_generation_prompt: true,
      bos_token: this.specials.bos,
      eos_token: this.specials.eos,
      // Explicit: the R1/QwQ templates close the think block when the flag is merely undefined.
      enable_thinking: enableThinking,
    });
    if (this.features.reasoning && !this.features.thinkingToggle && !enableThinking) {
      // No toggle in the template: an empty think block is how these models are told to answer directly.
      text = endsInsideThink(text) ? `${text.trimEnd()}\n\n</think>\n\n` : `${text}<think>\n\n</think>\n\n`;
    }
    if (prefix !== undefined) text += prefix;
    return { text, thinkingOpen: this.features.reasoning && endsInsideThink(text) };
  }

  /** `raise_exception` and `strftime_now` are @huggingface/jinja built-ins; whatever a render throws becomes a TemplateError. */
  private apply(variables: Record<string, unknown>): string {
    try {
      return this.template.render(variables);
    } catch (error) {
      throw new TemplateError(`The chat template failed on these messages: ${messageOf(error)}`);
    }
  }
}

export function detectFeatures(source: string): TemplateFeatures {
  return {
    toolSyntax: source.includes('<tool_call>') && /\btools\b/.test(source) ? 'hermes' : 'none',
    reasoning: source.includes('<think>'),
    thinkingToggle: source.includes('enable_thinking'),
  };
}

/**
 * Copies of the messages and tools with `protect` applied to every string in them. Arguments are shielded after
 * JSON parsing, since templates print them with `tojson`, which would turn an escaped `\u003c` back into `<`.
 */
function shield(
  messages: readonly ChatMessage[],
  tools: readonly ToolDefinition[],
  protect: (text: string) => string,
): { messages: ChatMessage[]; tools: ToolDefinition[] } {
  const deep = (value: unknown): unknown => {
    if (typeof value === 'string') return protect(value);
    if (Array.isArray(value)) return value.map(deep);
    if (typeof value === 'object' && value !== null) {
      return Object.fromEntries(Object.entries(value).map(([key, item]) => [protect(key), deep(item)]));
    }
    return value;
  };
  const shieldArguments = (text: string): string => {
    const value = parseArguments(text);
    return typeof value === 'string' ? protect(text) : JSON.stringify(deep(value));
  };
  try {
    return {
      messages: messages.map((message) => {
        const out: ChatMessage = { ...message, content: protect(message.content) };
        if (message.toolCalls !== undefined) {
          out.toolCalls = message.toolCalls.map((call) => ({ id: protect(call.id), name: protect(call.name), arguments: shieldArguments(call.arguments) }));
        }
        if (message.toolCallId !== undefined) out.toolCallId = protect(message.toolCallId);
        return out;
      }),
      tools: tools.map((tool) => deep(tool) as ToolDefinition),
    };
  } catch (error) {
    throw new TemplateError(`These messages cannot be rendered: ${messageOf(error)}`);
  }
}

function endsInsideThink(text: string): boolean {
  const trimmed = text.trimEnd();
  const open = trimmed.lastIndexOf('<think>');
  return open >= 0 && open > trimmed.lastIndexOf('</think>');
}

function toTemplateMessage(message: ChatMessage): TemplateMessage {
  // Content stays a string even beside tool calls: templates test it for truth, and QwQ's calls .split on it.
  const out: TemplateMessage = { role: message.role, content: message.content };
  if (message.role === 'assistant' && message.toolCalls !== undefined && message.toolCalls.length > 0) {
    out.tool_calls = message.toolCalls.map((call) => ({
      id: call.id,
      type: 'function',
      function: { name: call.name, arguments: parseArguments(call.arguments) },
    }));
  }
  if (message.role === 'tool' && message.toolCallId !== undefined) out.tool_call_id = message.toolCallId;
  return out;
}

function toTemplateTool(tool: ToolDefinition): { type: 'function'; function: Record<string, unknown> } {
  // Absent fields stay absent: `tool | tojson` would print them as null.
  const fn: Record<string, unknown> = { name: tool.name };
  if (tool.description !== undefined) fn.description = tool.description;
  if (tool.parameters !== undefined) fn.parameters = tool.parameters;
  return { type: 'function', function: fn };
}

/** Templates print arguments with `| tojson`: an object prints as JSON, a string would print quoted. */
function parseArguments(text: string): unknown {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value : text;
  } catch {
    return text;
  }
}

/**
 * For templates without a tool syntax: the tool list goes into the system message, earlier calls into their
 * assistant message's text and results into user messages, all in the Hermes format Kiln parses, so tool use works
 * whatever the template.
 */
function withInjectedTools(messages: readonly ChatMessage[], tools: readonly ToolDefinition[]): TemplateMessage[] {
  const out: TemplateMessage[] = [];
  // One user turn for a run of results, as Hermes templates render them.
  let results: TemplateMessage | undefined;
  for (const message of messages) {
    if (message.role === 'tool') {
      const response = `<tool_response>\n${message.content}\n</tool_response>`;
      if (results !== undefined) results.content += `\n${response}`;
      else out.push((results = { role: 'user', content: response }));
      continue;
    }
    results = undefined;
    if (message.role === 'assistant' && message.toolCalls !== undefined && message.toolCalls.length > 0) {
      const parts = message.content === '' ? [] : [message.content];
      out.push({ role: 'assistant', content: [...parts, ...message.toolCalls.map(hermesCall)].join('\n') });
    } else {
      out.push({ role: message.role, content: message.content });
    }
  }
  if (tools.length === 0) return out;
  const instructions = toolInstructions(tools);
  const first = out[0];
  if (first?.role === 'system') first.content = first.content === '' ? instructions : `${instructions}\n\n${first.content}`;
  else out.unshift({ role: 'system', content: instructions });
  return out;
}

function hermesCall(call: ToolCall): string {
  const args = parseArguments(call.arguments);
  const json = typeof args === 'string' ? JSON.stringify(args) : pyJson(args);
  return `<tool_call>\n{"name": ${JSON.stringify(call.name)}, "arguments": ${json}}\n</tool_call>`;
}

/** The tool prompt Qwen2.5 and Hermes models are trained on. */
function toolInstructions(tools: readonly ToolDefinition[]): string {
  return [
    '# Tools',
    '',
    'You may call one or more functions to assist with the user query.',
    '',
    'You are provided with function signatures within <tools></tools> XML tags:',
    '<tools>',
    ...tools.map((tool) => pyJson(toTemplateTool(tool))),
    '</tools>',
    '',
    'For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:',
    '<tool_call>',
    '{"name": <function-name>, "arguments": <args-json-object>}',
    '</tool_call>',
  ].join('\n');
}

/** JSON with Python's json.dumps separators (", " and ": "), as `tojson` writes it in the templates. */
function pyJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(pyJson).join(', ')}]`;
  if (typeof value === 'object' && value !== null) {
    return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${pyJson(item)}`).join(', ')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
