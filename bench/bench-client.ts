/**
 * What `npm run bench`'s workloads share: the servers as targets of one `openai` client, one streamed request timed
 * to its first token, percentiles, and the rows of the results table.
 */
import OpenAI from 'openai';

export interface Target {
  name: 'kiln' | 'llama-server';
  client: OpenAI;
  model: string;
  pid: number;
}

export type Message = OpenAI.ChatCompletionMessageParam;

export interface StreamResult {
  ttftMs: number;
  /** Completion tokens (from the usage chunk; the content chunks counted when a server sends none). */
  tokens: number;
  promptTokens: number;
  /** Prompt tokens the server reports as served from its caches (`prompt_tokens_details.cached_tokens`); NaN if absent. */
  cachedTokens: number;
  content: string;
}

/** One row of the results table; the spreads are the lowest and highest round. */
export interface Row {
  metric: string;
  kiln: number;
  peer: number;
  ratio: number;
  target: string;
  ok: boolean;
  kilnSpread?: [number, number];
  peerSpread?: [number, number];
}

const SAMPLING = { temperature: 0.7, top_p: 0.7, frequency_penalty: 0.5 } as const;
const EXTRA = { top_k: 50, min_p: 0.05 };

export function client(baseUrl: string): OpenAI {
  return new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: 'none', maxRetries: 0, timeout: 600_000 });
}

/** A streamed completion with usage; `seed` is sent only when given. */
export async function streamOnce(target: Target, messages: Message[], maxTokens: number, seed?: number, signal?: AbortSignal): Promise<StreamResult> {
  const started = performance.now();
  const stream = await target.client.chat.completions.create(
    { model: target.model, messages, max_tokens: maxTokens, ...(seed !== undefined ? { seed } : {}), stream: true, stream_options: { include_usage: true }, ...SAMPLING, ...EXTRA } as OpenAI.ChatCompletionCreateParamsStreaming,
    signal !== undefined ? { signal } : {},
  );
  let ttftMs = Number.NaN;
  let chunks = 0;
  let usage: OpenAI.CompletionUsage | undefined;
  let content = '';
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta.content;
    if (delta) {
      if (Number.isNaN(ttftMs)) ttftMs = performance.now() - started;
      chunks++;
      content += delta;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  return {
    ttftMs,
    tokens: usage?.completion_tokens ?? chunks,
    promptTokens: usage?.prompt_tokens ?? Number.NaN,
    cachedTokens: usage?.prompt_tokens_details?.cached_tokens ?? Number.NaN,
    content,
  };
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

export const median = (values: number[]) => percentile(values, 50);

/** The median of a few rounds: the mean of the middle two when their number is even. */
export function middle(values: number[]): number {
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const half = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[half]! : (sorted[half - 1]! + sorted[half]!) / 2;
}

export function spread(values: number[]): [number, number] {
  const finite = values.filter((value) => !Number.isNaN(value));
  return [Math.min(...finite), Math.max(...finite)];
}

/** Kiln first on even rounds, llama-server first on odd ones. */
export function interleaved<T>(targets: T[], round: number): T[] {
  return round % 2 === 0 ? targets : [...targets].reverse();
}
