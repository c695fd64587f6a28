/**
 * Wire schema of `POST /v1/chat/completions`: the seed's fields, types and ranges (../shared/spec/chat-completions.md).
 * Defaults are not applied here (see core/normalize-request.ts) so that "omitted" stays distinguishable from "given".
 * Unknown fields are stripped, as OpenAI ignores them; `null` is accepted wherever a field is optional and means
 * "omitted", because SDKs serialise unset fields that way.
 */
import { z } from 'zod';

/** Default of the server's tool limit (OpenAI's). */
export const MAX_TOOLS = 128;
export const MAX_STOP_SEQUENCES = 4;
export const TOOL_NAME_PATTERN = /^[a-zA-Z0-9_-]{1,64}$/;

const optional = <T extends z.ZodType>(schema: T) => schema.nullish();

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const imagePart = z.object({
  type: z.literal('image_url'),
  image_url: z.object({ url: z.string(), detail: optional(z.string()) }),
});
const contentPart = z.discriminatedUnion('type', [textPart, imagePart], {
  error: 'each content part must be {"type":"text","text":...} or {"type":"image_url","image_url":{"url":...}}',
});
const content = z.union([z.string(), z.array(contentPart)], {
  error: 'content must be a string or an array of content parts',
});

const toolCall = z.object({
  id: z.string().min(1),
  type: z.literal('function'),
  function: z.object({ name: z.string().min(1), arguments: z.string() }),
});

const messageSchema = z.discriminatedUnion(
  'role',
  [
    z.object({ role: z.literal('system'), content, name: optional(z.string()) }),
    z.object({ role: z.literal('developer'), content, name: optional(z.string()) }),
    z.object({ role: z.literal('user'), content, name: optional(z.string()) }),
    z.object({
      role: z.literal('assistant'),
      content: optional(content),
      name: optional(z.string()),
      reasoning_content: optional(z.string()),
      tool_calls: optional(z.array(toolCall)),
      /** SiliconFlow: continue from this assistant text. */
      prefix: optional(z.boolean()),
    }),
    z.object({ role: z.literal('tool'), content, tool_call_id: z.string().min(1) }),
  ],
  { error: 'role must be one of "system", "developer", "user", "assistant", "tool"' },
);

const functionTool = z.object({
  type: z.literal('function'),
  function: z.object({
    name: z.string().regex(TOOL_NAME_PATTERN, 'must match ^[a-zA-Z0-9_-]{1,64}$'),
    description: optional(z.string()),
    parameters: optional(z.record(z.string(), z.unknown())),
    strict: optional(z.boolean()),
  }),
});

const toolChoice = z.union(
  [
    z.enum(['none', 'auto', 'required']),
    z.object({ type: z.literal('function'), function: z.object({ name: z.string().min(1) }) }),
  ],
  { error: 'tool_choice must be "none", "auto", "required" or {"type":"function","function":{"name":...}}' },
);

const responseFormat = z.discriminatedUnion(
  'type',
  [
    z.object({ type: z.literal('text') }),
    z.object({ type: z.literal('json_object') }),
    z.object({
      type: z.literal('json_schema'),
      json_schema: z.object({
        name: z.string().regex(TOOL_NAME_PATTERN, 'must match ^[a-zA-Z0-9_-]{1,64}$'),
        description: optional(z.string()),
        schema: optional(z.record(z.string(), z.unknown())),
        strict: optional(z.boolean()),
      }),
    }),
  ],
  { error: 'response_format.type must be "text", "json_object" or "json_schema"' },
);

const stop = z.union([z.string().min(1), z.array(z.string().min(1)).max(MAX_STOP_SEQUENCES)], {
  error: `stop must be a non-empty string or an array of at most ${MAX_STOP_SEQUENCES} non-empty strings`,
});

/** Range-checked fields. The bounds are the seed's; `n` is bounded again by the server's configured maximum. */
export const chatCompletionRequestSchema = z.object({
  model: z.string({ error: 'model is required and must be a string' }).min(1),
  messages: z.array(messageSchema, { error: 'messages is required and must be an array' }).min(1, 'must contain at least one message'),
  stream: optional(z.boolean()),
  max_tokens: optional(z.int().min(1).max(16384)),
  max_completion_tokens: optional(z.int().min(1).max(16384)),
  stop: optional(stop),
  temperature: optional(z.number().min(0).max(2)),
  top_p: optional(z.number().gt(0).max(1)),
  top_k: optional(z.int().min(0)),
  frequency_penalty: optional(z.number().min(-2).max(2)),
  presence_penalty: optional(z.number().min(-2).max(2)),
  min_p: optional(z.number().min(0).max(1)),
  n: optional(z.int().min(1)),
  seed: optional(z.int()),
  response_format: optional(responseFormat),
  // Counted before validation against the server's limit (core/normalize-request.ts).
  tools: optional(z.array(functionTool)),
  tool_choice: optional(toolChoice),
  parallel_tool_calls: optional(z.boolean()),
  stream_options: optional(z.object({ include_usage: optional(z.boolean()) })),
  enable_thinking: optional(z.boolean()),
  thinking_budget: optional(z.int().min(128).max(32768)),
  user: optional(z.string()),
  logprobs: optional(z.boolean()),
  top_logprobs: optional(z.int().min(0).max(20)),
  logit_bias: optional(z.record(z.string(), z.number().min(-100).max(100))),
});

export type ChatCompletionRequestWire = z.infer<typeof chatCompletionRequestSchema>;
export type ChatMessageWire = z.infer<typeof messageSchema>;
export type ContentWire = z.infer<typeof content>;
export type ToolWire = z.infer<typeof functionTool>;
export type ToolChoiceWire = z.infer<typeof toolChoice>;
export type ResponseFormatWire = z.infer<typeof responseFormat>;
