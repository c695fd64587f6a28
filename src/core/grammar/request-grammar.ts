/**
 * The grammars a request needs, as GBNF text, built (and so validated) before any generation starts:
 * - `answer`: the whole answer is constrained — `response_format` json_object/json_schema, or a forced tool call
 *   (`tool_choice` "required" or a named function);
 * - `toolCallBody`: with `tool_choice` "auto" the model writes freely, and once it opens `<tool_call>` the rest of
 *   the call (name and arguments) is constrained.
 * Tool calls use the Hermes layout that Qwen2.5/QwQ templates render and Kiln's post-processor parses:
 * `<tool_call>\n{"name": "…", "arguments": {…}}\n</tool_call>`, several calls separated by a newline.
 */
import { KilnError } from '../../errors/catalog.js';
import { offeredTools, type ChatRequest, type ToolDefinition } from '../chat-request.js';
import { GbnfBuilder, UnsupportedSchemaError } from './json-schema-grammar.js';
import { checkSchemaBounds, HARD_MAX_SCHEMA_DEPTH, HARD_MAX_SCHEMA_NODES } from './schema-bounds.js';

export interface RequestGrammars {
  answer?: string;
  toolCallBody?: string;
}

/** A runaway model could otherwise chain calls until max_tokens. */
export const MAX_PARALLEL_TOOL_CALLS = 8;

const NO_PARAMETERS = { type: 'object', properties: {} };

/** Grammars kept for requests that repeat their tools and format (most clients send the same ones every time). */
const CACHE_ENTRIES = 64;
/** ...and at most this much key and grammar text among them. */
const CACHE_CHARS = 4_000_000;
const cache = new Map<string, { grammars: RequestGrammars; chars: number }>();
let cacheChars = 0;

/**
 * requestGrammars, remembered by the request's tools, tool choice and format: building them walks every schema, a
 * real share of a request's CPU when Kiln only forwards it upstream. Only successes are kept; a refusal is rebuilt
 * (and so reported) each time.
 */
export function cachedRequestGrammars(request: GrammarInputs): RequestGrammars {
  if (request.tools.length === 0 && request.responseFormat.type === 'text') return {};
  const key = JSON.stringify([request.tools, request.toolChoice, request.responseFormat, request.parallelToolCalls]);
  const hit = cache.get(key);
  if (hit !== undefined) {
    cache.delete(key); // re-inserted: most recently used last
    cache.set(key, hit);
    return hit.grammars;
  }
  // Frozen: one object is handed to every request with these tools.
  const grammars = Object.freeze(requestGrammars(request));
  const chars = key.length + (grammars.answer?.length ?? 0) + (grammars.toolCallBody?.length ?? 0);
  if (chars > CACHE_CHARS) return grammars;
  cache.set(key, { grammars, chars });
  cacheChars += chars;
  for (const [oldest, entry] of cache) {
    if (cache.size <= CACHE_ENTRIES && cacheChars <= CACHE_CHARS) break;
    cache.delete(oldest);
    cacheChars -= entry.chars;
  }
  return grammars;
}

type GrammarInputs = Pick<ChatRequest, 'tools' | 'toolChoice' | 'responseFormat' | 'parallelToolCalls'>;

export function requestGrammars(request: GrammarInputs): RequestGrammars {
  const tools = offeredTools(request);
  const offered = request.toolChoice.type === 'function' ? tools.filter((tool) => tool.name === (request.toolChoice as { name: string }).name) : tools;
  // Every tool's parameters must be usable, even when this request does not let the model call it; the offered ones
  // are checked by compiling their call grammar below.
  validateTools(request.tools, offered);
  const grammars: RequestGrammars = {};
  if (offered.length > 0) {
    const forced = request.toolChoice.type === 'required' || request.toolChoice.type === 'function';
    const builder = new GbnfBuilder();
    const call = callRule(builder, offered, request.tools);
    const more = request.parallelToolCalls ? ` ("\\n<tool_call>\\n" ${call} "\\n</tool_call>"){0,${MAX_PARALLEL_TOOL_CALLS - 1}}` : '';
    if (forced) grammars.answer = builder.build(`"<tool_call>\\n" ${call} "\\n</tool_call>"${more}`);
    else grammars.toolCallBody = builder.build(`"\\n" ${call} "\\n</tool_call>"${more}`);
  }
  if (request.responseFormat.type === 'json_object') {
    const builder = new GbnfBuilder();
    grammars.answer ??= builder.build(builder.anyObject());
  } else if (request.responseFormat.type === 'json_schema') {
    const builder = new GbnfBuilder();
    const rule = schemaRule(builder, request.responseFormat.schema, 'response_format.json_schema.schema');
    grammars.answer ??= builder.build(rule);
  }
  return grammars;
}

/** One call: one alternative per tool, its name and then arguments matching its parameters. */
function callRule(builder: GbnfBuilder, offered: readonly ToolDefinition[], all: readonly ToolDefinition[]): string {
  const alternatives = offered.map((tool) => {
    const index = all.indexOf(tool);
    const parameters = schemaRule(builder, tool.parameters ?? NO_PARAMETERS, `tools[${index}].function.parameters`);
    const head = builder.literal(`{"name": ${JSON.stringify(tool.name)}, "arguments": `);
    return builder.addRule(`call-${tool.name}`, `${head} ${parameters} "}"`);
  });
  return builder.addRule('call', alternatives.join(' | '));
}

function validateTools(tools: readonly ToolDefinition[], compiledElsewhere: readonly ToolDefinition[]): void {
  // One builder for all of them, so its size budget bounds the work for the whole request, as it does for the
  // offered tools, which share the call grammar's builder.
  const builder = new GbnfBuilder();
  tools.forEach((tool, index) => {
    if (!compiledElsewhere.includes(tool)) schemaRule(builder, tool.parameters ?? NO_PARAMETERS, `tools[${index}].function.parameters`);
  });
}

function schemaRule(builder: GbnfBuilder, schema: unknown, param: string): string {
  // normalizeChatRequest checked the configured (smaller) bounds already; these keep the converter safe whoever calls.
  checkSchemaBounds(schema, param, { maxDepth: HARD_MAX_SCHEMA_DEPTH, maxNodes: HARD_MAX_SCHEMA_NODES });
  try {
    return builder.addSchema(schema, 'value');
  } catch (error) {
    if (!(error instanceof UnsupportedSchemaError)) throw error;
    throw new KilnError('invalidParameter', {
      param,
      message: `Invalid schema for '${param}' at '${error.pointer || '/'}': ${error.message}`,
    });
  }
}
