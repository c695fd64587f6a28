/**
 * Chat completions, independent of HTTP: validates the request, picks the engine, and turns the post-processed
 * engine output into a whole response or a stream of chunks. Everything that can fail with a status code fails
 * before `create` returns; a stream can then only fail mid-way (the transport reports that in-band).
 */
import { randomUUID } from 'node:crypto';
import { isProModel, offeredTools, type ChatRequest } from '../core/chat-request.js';
import type { EngineDescription, EngineRun } from '../core/engine.js';
import { mergeIterators } from '../core/merge-iterators.js';
import { normalizeChatRequest } from '../core/normalize-request.js';
import type { RequestLimits } from '../core/request-limits.js';
import { ChoicePostProcessor, type ChoiceUpdate } from '../core/postprocess/choice-processor.js';
import { KilnError } from '../errors/catalog.js';
import type { ChatCompletionChunkWire, ChatCompletionWire, ModelListWire } from '../protocol/response.js';
import { SILENT_LOG, type Log } from '../core/log.js';
import { callerMay, modelAllowed, type Caller } from './caller.js';
import type { Permit } from './admission.js';
import { CompletionTally, type CompletionRecord } from './completion-record.js';
import { deltaWire, MessageBuilder, usage } from './response-parts.js';
import { estimatePromptTokens, type RequestGate } from './request-gate.js';
import type { ModelRegistry } from './model-registry.js';

export interface ChatServiceOptions {
  maxChoices: number;
  /** The configurable bounds on one request (unset: the defaults of request-limits.ts and schema-bounds.ts). */
  limits?: RequestLimits;
  systemFingerprint: string;
  /** Called once per request that reached an engine, when its work has ended (usage ledger, metrics). */
  onCompletion?: (record: CompletionRecord) => void;
  /** The caller's quota and rate limits; absent: none. */
  gate?: RequestGate;
}

/** What the transport knows of a request. */
export interface RequestContext {
  /** Aborts the work: client gone, timed out, shutdown. */
  signal: AbortSignal;
  caller: Caller;
  /** The request's logger: the completion record is logged there when the request's work has ended. */
  log?: Log;
  requestId?: string;
  /** Told when an engine took the request: from then on its end is a completion record, not a refusal. */
  onEngineRun?: () => void;
}

export type ChatResult = (
  | { kind: 'json'; body: ChatCompletionWire }
  | { kind: 'stream'; chunks: AsyncGenerator<ChatCompletionChunkWire, void, undefined> }
) & {
  /** Response headers the service sets (x-ratelimit-*). */
  headers: Readonly<Record<string, string>>;
};

const NO_HEADERS: Readonly<Record<string, string>> = Object.freeze({});

export class ChatService {
  constructor(
    private readonly registry: ModelRegistry,
    private readonly options: ChatServiceOptions,
  ) {}

  /** With a caller: only the ids its key may use (as OpenAI lists the models a key can access). */
  async listModels(caller?: Caller): Promise<ModelListWire> {
    const list = await this.registry.list();
    if (caller === undefined) return list;
    return { ...list, data: list.data.filter((model) => callerMay(caller, model.id)) };
  }

  async create(body: unknown, context: RequestContext): Promise<ChatResult> {
    const { signal, caller } = context;
    const log = context.log ?? SILENT_LOG;
    const arrivedAt = performance.now();
    const request = normalizeChatRequest(body, { ...this.options.limits, maxChoices: this.options.maxChoices });
    const { served } = this.registry.resolve(request.model);
    this.checkCaller(request.model, caller);
    this.checkCapabilities(request, served.engine.description);
    const unavailable = served.engine.unavailable?.();
    if (unavailable !== undefined) throw unavailable;
    const pass = await this.options.gate?.admit({
      caller,
      model: request.model,
      reserveTokens: estimatePromptTokens(request.textBytes, request.messages.length) + request.maxTokens * request.n,
    });
    const tally = new CompletionTally(
      { requestId: context.requestId, keyId: caller.id, keyName: caller.name, user: request.user, metered: caller.quota !== undefined },
      request.model,
      arrivedAt,
    );
    let permit: Permit | undefined;
    let run: EngineRun;
    try {
      permit = await served.admission.acquire(request.n, signal, isProModel(request.model) ? 1 : 0);
      tally.queueMs = performance.now() - arrivedAt;
      run = await served.engine.start(request, signal);
    } catch (error) {
      permit?.release();
      pass?.settle(0);
      throw error;
    }
    const held = permit;
    context.onEngineRun?.();
    // The permit is held until the run's resources are released: every choice ended and the run disposed. Then the
    // request's usage is final, whatever cut it short.
    const ended = (error?: unknown): void => {
      run.dispose();
      held.release();
      if (error !== undefined) tally.status = signal.aborted && !(signal.reason instanceof KilnError) ? 'cancelled' : 'failed';
      const record = tally.record(run, request.n);
      pass?.settle(record.promptTokens + record.completionTokens);
      log.info({ completion: record }, 'completion');
      this.options.onCompletion?.(record);
    };
    const headers = pass?.headers ?? NO_HEADERS;
    // randomUUID draws from a cached entropy pool; randomBytes costs a call into the system's RNG per request.
    const meta = { id: randomUUID().replaceAll('-', ''), created: Math.floor(Date.now() / 1000), model: request.model };
    if (request.stream) return { kind: 'stream', chunks: this.streamChunks(request, run, meta, signal, tally, ended), headers };
    let failure: unknown;
    try {
      return { kind: 'json', body: await this.complete(request, run, meta, signal, tally), headers };
    } catch (error) {
      failure = error;
      throw error;
    } finally {
      ended(failure);
    }
  }

  /** What the caller's key allows: `Pro/` ids need a pro key, and a key may be limited to some ids. */
  private checkCaller(model: string, caller: Caller): void {
    if (isProModel(model) && !caller.pro) {
      throw new KilnError('modelNotAllowed', { param: 'model', message: `This API key may not use '${model}' (a Pro tier model).` });
    }
    if (!modelAllowed(caller, model)) {
      throw new KilnError('modelNotAllowed', { param: 'model', message: `This API key may not use '${model}': it is limited to ${caller.models!.join(', ')}.` });
    }
  }

  private checkCapabilities(request: ChatRequest, engine: EngineDescription): void {
    if (engine.maxChoices !== undefined && request.n > engine.maxChoices) {
      throw new KilnError('invalidParameter', {
        param: 'n',
        message: `Invalid 'n': model '${request.model}' generates at most ${engine.maxChoices} choices at once${engine.maxChoicesReason !== undefined ? ` (${engine.maxChoicesReason})` : ''}.`,
      });
    }
    const supportsImages = engine.supportsImages;
    request.messages.forEach((message, index) => {
      if (message.hasImage && !supportsImages) {
        throw new KilnError('invalidParameter', {
          param: `messages[${index}].content`,
          message: `Invalid 'messages[${index}].content': model '${request.model}' does not accept images.`,
        });
      }
    });
  }

  private async complete(request: ChatRequest, run: EngineRun, meta: ChunkMeta, signal: AbortSignal, tally: CompletionTally): Promise<ChatCompletionWire> {
    const choices = await Promise.all(
      Array.from({ length: request.n }, async (_, index) => {
        const message = new MessageBuilder();
        let finish: Extract<ChoiceUpdate, { type: 'finish' }> | undefined;
        for await (const update of choiceUpdates(request, run, index, tally)) {
          if (update.type === 'delta') message.add(update.delta);
          else finish = update;
        }
        signal.throwIfAborted();
        if (finish === undefined) throw new KilnError('internal', { message: 'Generation ended unexpectedly.' });
        return { index, message: message.build(), finish };
      }),
    );
    return {
      id: meta.id,
      object: 'chat.completion',
      created: meta.created,
      model: meta.model,
      choices: choices.map(({ index, message, finish }) => ({ index, message, finish_reason: finish.finishReason })),
      usage: usage(run, choices.map((choice) => choice.finish)),
      system_fingerprint: this.options.systemFingerprint,
    };
  }

  private async *streamChunks(
    request: ChatRequest,
    run: EngineRun,
    meta: ChunkMeta,
    signal: AbortSignal,
    tally: CompletionTally,
    ended: (error?: unknown) => void,
  ): AsyncGenerator<ChatCompletionChunkWire, void, undefined> {
    let failure: unknown;
    const base = { id: meta.id, object: 'chat.completion.chunk' as const, created: meta.created, model: meta.model, system_fingerprint: this.options.systemFingerprint };
    try {
      for (let index = 0; index < request.n; index++) {
        yield { ...base, choices: [{ index, delta: { role: 'assistant', content: '' }, finish_reason: null }] };
      }
      const finishes: Array<Extract<ChoiceUpdate, { type: 'finish' }>> = [];
      let unfinished = request.n;
      const sources = Array.from({ length: request.n }, (_, index) => choiceUpdates(request, run, index, tally));
      for await (const { index, value: update } of mergeIterators(sources)) {
        if (update.type === 'delta') {
          yield { ...base, choices: [{ index, delta: deltaWire(update.delta), finish_reason: null }] };
          continue;
        }
        finishes.push(update);
        unfinished--;
        // Usage is sent once per stream: SiliconFlow's way on the final chunk, or, when the client asks for it
        // (`stream_options.include_usage`), OpenAI's way in a chunk of its own after it. Sending both double-counts in
        // clients that add up the usage of every chunk (LangChain's streamed messages do).
        const finalUsage = unfinished === 0 && !request.includeUsage ? { usage: usage(run, finishes) } : {};
        yield { ...base, choices: [{ index, delta: {}, finish_reason: update.finishReason }], ...finalUsage };
      }
      if (unfinished > 0) {
        // Aborted: a timeout is reported in-band; a client that went away is not listening.
        if (signal.reason instanceof KilnError) throw signal.reason;
        return;
      }
      if (request.includeUsage) yield { ...base, choices: [], usage: usage(run, finishes) };
    } catch (error) {
      failure = error;
      throw error;
    } finally {
      ended(failure);
    }
  }
}

interface ChunkMeta {
  id: string;
  created: number;
  model: string;
}

/** One choice's engine output through the post-processor, ending at its finish update. */
async function* choiceUpdates(request: ChatRequest, run: EngineRun, index: number, tally: CompletionTally): AsyncGenerator<ChoiceUpdate, void, undefined> {
  const processor = new ChoicePostProcessor({
    stop: request.stop,
    reasoning: run.reasoning,
    tools: offeredTools(request).length > 0,
    ...(request.parallelToolCalls ? {} : { maxToolCalls: 1 }),
  });
  tally.track(index, processor);
  for await (const event of run.choice(index)) {
    for (const update of processor.accept(event)) {
      if (update.type === 'finish') {
        tally.finished(index, update);
        yield update;
        return;
      }
      tally.delta();
      yield update;
    }
  }
}
