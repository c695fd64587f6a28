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
}

export interface ModelListWire {
  object: 'list';
  data: ModelWire[];
}
