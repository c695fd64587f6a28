/** Wire shapes of chat-completion responses, chunks and the model list (OpenAI's, with SiliconFlow's extras). */

export type FinishReason = 'stop' | 'length' | 'tool_calls';

export interface ToolCallWire {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface UsageWire {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  completion_tokens_details: { reasoning_tokens: number };
}

export interface ChatCompletionWire {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: number;
    message: { role: 'assistant'; content: string | null; reasoning_content?: string; tool_calls?: ToolCallWire[] };
    finish_reason: FinishReason;
  }>;
  usage: UsageWire;
  system_fingerprint: string;
}

export interface ChunkDeltaWire {
  role?: 'assistant';
  content?: string;
  reasoning_content?: string;
  tool_calls?: Array<{ index: number; id?: string; type?: 'function'; function: { name?: string; arguments: string } }>;
}

export interface ChatCompletionChunkWire {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: Array<{ index: number; delta: ChunkDeltaWire; finish_reason: FinishReason | null }>;
  usage?: UsageWire | null;
}

export interface ModelWire {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  /** Kiln's own fields (OpenAI clients ignore what they do not know). */
  kiln?: ModelStatusWire;
}

/** Where a served model stands: `GET /v1/models` entries' `kiln` object, read by `kiln models`. */
export interface ModelStatusWire {
  state: 'unloaded' | 'loading' | 'ready' | 'draining' | 'upstream';
  /** Milliseconds since its last request ended (0 while one runs); null when not loaded. */
  idle_ms: number | null;
  /** Host memory it holds (its load's estimate), MiB; null when not loaded. */
  memory_mb: number | null;
  /** Layers offloaded to a GPU; null when not loaded or not local. */
  gpu_layers: number | null;
  /** Its GGUF's size on disk; null when it has no local file or the file is missing. */
  size_bytes: number | null;
  /** Whether its GGUF is on disk; null when it has no local file (served by upstreams only). */
  present: boolean | null;
}

export interface ModelListWire {
  object: 'list';
  data: ModelWire[];
}
