/**
 * Reading an upstream's streamed completion: SSE framing (eventsource-parser, fed incrementally as body chunks are
 * pulled) and the translation of OpenAI chat-completion chunks into the raw text the shared post-processor reads —
 * the form a local model writes: reasoning inside `<think>` … `</think>`, tool calls as Hermes `<tool_call>` blocks.
 * Servers that already split reasoning out (`reasoning_content`, `reasoning`, `thinking`) or parse tool calls
 * (`tool_calls`) are folded back into that form, so stop strings, reasoning and tool-call handling are one code path
 * whatever served the model.
 */
import { createParser, type EventSourceParser } from 'eventsource-parser';

/** Longest SSE event accepted (one chunk is normally well under a kilobyte): a stream without line breaks is not SSE. */
const MAX_EVENT_CHARS = 4 * 1024 * 1024;

export class MalformedStreamError extends Error {
  override name = 'MalformedStreamError';
}

/** An upstream reported an error in the stream (`{"error": …}`). */
export class UpstreamReportedError extends Error {
  override name = 'UpstreamReportedError';
}

export type SseItem = { type: 'data'; data: string; event: string | undefined } | { type: 'end' };

/**
 * SSE events from a body read on demand: a chunk is read only when the events already parsed are used up, so a
 * consumer that stops pulling stops the reading (and, through the socket, the upstream).
 */
export class SseReader {
  private readonly decoder = new TextDecoder();
  private readonly parsed: Array<{ data: string; event: string | undefined }> = [];
  private readonly parser: EventSourceParser;
  private overflowed = false;
  private ended = false;

  constructor(private readonly read: () => Promise<IteratorResult<Uint8Array>>) {
    this.parser = createParser({
      maxBufferSize: MAX_EVENT_CHARS,
      onEvent: (message) => this.parsed.push({ data: message.data, event: message.event }),
      // Unknown fields and bad `retry` values are harmless; only an event that never ends is fatal.
      onError: (error) => {
        if (error.type === 'max-buffer-size-exceeded') this.overflowed = true;
      },
    });
  }

  async next(): Promise<SseItem> {
    for (;;) {
      const item = this.parsed.shift();
      if (item !== undefined) return { type: 'data', ...item };
      if (this.overflowed) throw new MalformedStreamError('an SSE event exceeded the size limit');
      if (this.ended) return { type: 'end' };
      const chunk = await this.read();
      if (chunk.done === true) {
        this.ended = true;
        // A last event without its blank line still counts.
        this.parser.feed(`${this.decoder.decode()}\n\n`);
      } else {
        this.parser.feed(this.decoder.decode(chunk.value, { stream: true }));
      }
    }
  }
}

export interface UpstreamUsage {
  promptTokens?: number;
  cachedTokens?: number;
  completionTokens?: number;
  reasoningTokens?: number;
}

function count(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? Math.floor(value) : undefined;
}

function record(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

export function parseUsage(value: unknown): UpstreamUsage | undefined {
  const usage = record(value);
  if (usage === undefined) return undefined;
  const result: UpstreamUsage = {};
  const prompt = count(usage.prompt_tokens);
  const cached = count(record(usage.prompt_tokens_details)?.cached_tokens);
  const completion = count(usage.completion_tokens);
  const reasoning = count(record(usage.completion_tokens_details)?.reasoning_tokens);
  if (prompt !== undefined) result.promptTokens = prompt;
  if (cached !== undefined) result.cachedTokens = cached;
  if (completion !== undefined) result.completionTokens = completion;
  if (reasoning !== undefined) result.reasoningTokens = reasoning;
  return Object.keys(result).length > 0 ? result : undefined;
}

/** The message of an in-stream `{"error": …}`, or undefined when the chunk is no error. */
export function chunkError(chunk: Record<string, unknown>): string | undefined {
  const error = chunk.error;
  if (error === undefined || error === null) return undefined;
  if (typeof error === 'string') return error;
  const message = record(error)?.message;
  return typeof message === 'string' ? message : 'unknown error';
}

/**
 * A chunk says generation has begun: it carries text (content, reasoning, a tool call), a finish reason or the usage.
 * A role-only first delta does not count: servers send it before their prefill, and an upstream that dies during the
 * prefill can still be failed over — its first token is what start waits for (and what first_token_timeout bounds).
 */
export function isProgress(chunk: Record<string, unknown>): boolean {
  if (record(chunk.usage) !== undefined) return true;
  if (!Array.isArray(chunk.choices) || chunk.choices.length === 0) return false;
  const choice = record(chunk.choices[0]);
  if (choice === undefined) return false;
  if (typeof choice.finish_reason === 'string') return true;
  const delta = record(choice.delta) ?? record(choice.message);
  if (delta === undefined) return false;
  const text = (value: unknown) => typeof value === 'string' && value !== '';
  return text(delta.content) || text(delta.reasoning_content) || text(delta.reasoning) || text(delta.thinking) || (Array.isArray(delta.tool_calls) && delta.tool_calls.length > 0);
}

/**
 * Chat-completion chunks → raw model text, one chunk at a time. Also used for a whole (non-streamed) completion, whose
 * `message` reads like one big delta.
 */
export class DeltaNormaliser {
  finishReason: string | undefined;
  usage: UpstreamUsage | undefined;
  private thinkOpen = false;
  private calls = 0;
  private callOpen = false;
  private callIndex: number | undefined;
  private callId: string | undefined;
  private callHasArguments = false;

  /** @param keepReasoning false when the model is configured as not reasoning: reasoning text is then dropped. */
  constructor(private readonly keepReasoning: boolean) {}

  /** The text one chunk adds ('' when none). Throws UpstreamReportedError for an error chunk. */
  chunk(chunk: Record<string, unknown>): string {
    const error = chunkError(chunk);
    if (error !== undefined) throw new UpstreamReportedError(error);
    // Some servers repeat (cumulative) usage on every chunk: the last one counts.
    const usage = parseUsage(chunk.usage);
    if (usage !== undefined) this.usage = usage;
    const choice = Array.isArray(chunk.choices) ? record(chunk.choices[0]) : undefined;
    if (choice === undefined) return '';
    if (typeof choice.finish_reason === 'string') this.finishReason = choice.finish_reason;
    const delta = record(choice.delta) ?? record(choice.message);
    if (delta === undefined) return '';
    let text = '';
    const reasoning = firstString(delta.reasoning_content, delta.reasoning, delta.thinking);
    if (reasoning !== undefined && reasoning !== '' && this.keepReasoning) {
      text += this.closeCall();
      if (!this.thinkOpen) text += '<think>';
      this.thinkOpen = true;
      text += reasoning;
    }
    if (typeof delta.content === 'string' && delta.content !== '') {
      text += this.closeThink() + this.closeCall() + delta.content;
    }
    if (Array.isArray(delta.tool_calls)) {
      for (const call of delta.tool_calls) text += this.toolCall(record(call));
    }
    return text;
  }

  /** What closes the sections still open when the stream ends. */
  finish(): string {
    return this.closeThink() + this.closeCall();
  }

  private toolCall(call: Record<string, unknown> | undefined): string {
    if (call === undefined) return '';
    const fn = record(call.function);
    const index = count(call.index);
    const id = typeof call.id === 'string' && call.id !== '' ? call.id : undefined;
    // A call's first fragment carries its index (and usually its id and name); later ones repeat the index only.
    const starts = !this.callOpen || (index !== undefined && index !== this.callIndex) || (id !== undefined && this.callId !== undefined && id !== this.callId);
    let text = '';
    if (starts) {
      text += this.closeThink() + this.closeCall();
      if (this.calls > 0) text += '\n';
      const name = typeof fn?.name === 'string' ? fn.name : '';
      text += `<tool_call>\n{"name": ${JSON.stringify(name)}, "arguments": `;
      this.calls++;
      this.callOpen = true;
      this.callIndex = index;
      this.callId = id;
      this.callHasArguments = false;
    }
    const args = fn?.arguments;
    // Most servers stream the arguments as JSON text; some (Ollama, whole completions) give the object itself.
    const piece = typeof args === 'string' ? args : args !== undefined && args !== null ? JSON.stringify(args) : '';
    if (piece !== '') {
      this.callHasArguments = true;
      text += piece;
    }
    return text;
  }

  private closeThink(): string {
    if (!this.thinkOpen) return '';
    this.thinkOpen = false;
    return '</think>';
  }

  private closeCall(): string {
    if (!this.callOpen) return '';
    this.callOpen = false;
    return `${this.callHasArguments ? '' : '{}'}}\n</tool_call>`;
  }
}

function firstString(...values: unknown[]): string | undefined {
  for (const value of values) if (typeof value === 'string') return value;
  return undefined;
}

export type Chunk = Record<string, unknown>;

/** One event's data as a chunk object; anything else means the stream is not what it claims to be. */
export function parseChunk(data: string): Chunk {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    throw new MalformedStreamError('an event was not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new MalformedStreamError('an event was not a JSON object');
  return parsed as Chunk;
}
