/**
 * The embedded engine: one GGUF loaded in-process through node-llama-cpp, one context whose sequences are pooled and
 * batched together by node-llama-cpp's decode loop. Kiln drives it at sequence level — it renders the prompt with the
 * model's own chat template, evaluates only what the sequence's KV cache lacks, and samples with the request's
 * parameters passed explicitly (node-llama-cpp's own defaults differ from the seed's).
 */
import {
  LlamaGrammarEvaluationState,
  type Llama,
  type LlamaContext,
  type LlamaGrammar,
  type LlamaContextSequence,
  type LlamaModel,
  type SequenceEvaluateOptions,
  type Token,
} from 'node-llama-cpp';
import { isProModel, offeredTools, type ChatRequest } from '../../core/chat-request.js';
import type { ChatEngine, EngineDescription, EngineEvent, EngineRun, ReasoningMode } from '../../core/engine.js';
import { requestGrammars, type RequestGrammars } from '../../core/grammar/request-grammar.js';
import { KilnError } from '../../errors/catalog.js';
import { ChatTemplate, TemplateError } from './chat-template.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { OutputSteering, type GrammarName } from './output-steering.js';
import { getRuntime, usableCores } from './runtime.js';
import { SequencePool, type Lease, type QueueSettings } from './sequence-pool.js';
import { StepBarrier } from './step-barrier.js';
import { sequenceOrderedStrategy } from './batch-order.js';

export interface LlamaEngineSettings {
  file: string;
  /** Concurrent sequences (requests generating at once). */
  parallel: number;
  /** Tokens per sequence; undefined: the model's training context, capped at 4096. */
  contextSize?: number;
  /** Undefined: the cores this process may use. */
  threads?: number;
  batchSize?: number;
  /** llama.cpp flash attention; `auto` (default): llama.cpp decides for the model and hardware. */
  flashAttention?: boolean | 'auto';
  /**
   * `memory` (default): the weights are read into this process's memory; `mmap`: the file is memory-mapped, as
   * llama.cpp does by default. Decoding reads every weight for every token; on the benchmark VM one stream decoded 8%
   * faster from Kiln's own memory in llama-batched-bench, ~3% over HTTP (docs/architecture.md, "Loading the weights").
   * `mmap` starts faster from a cold disk and shares the pages with other processes mapping the same file.
   */
  load?: 'memory' | 'mmap';
  /** Whether the model reasons in <think> … </think>; `auto`: detected from its chat template. */
  reasoning?: 'auto' | 'on' | 'off';
  queue: QueueSettings;
}

const DEFAULT_CONTEXT_CAP = 4096;
/** Compiled grammars kept for requests that repeat a schema (most clients send the same tools every time). */
const GRAMMAR_CACHE_SIZE = 64;
/** Prompt tokens evaluated per piece of a long prompt (see LlamaRun.choice). */
const PREFILL_CHUNK = 256;
/** Frequency/presence penalties look back this many generated tokens. */
const PENALTY_WINDOW = 256;

export class LlamaEngine implements ChatEngine {
  private constructor(
    readonly description: EngineDescription,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly template: ChatTemplate,
    private readonly pool: SequencePool,
    private readonly barrier: StepBarrier,
    private readonly llama: Llama,
    private readonly parallel: number,
    private readonly reasons: boolean,
  ) {}

  private readonly grammarCache = new Map<string, Promise<LlamaGrammar>>();

  static async load(settings: LlamaEngineSettings): Promise<LlamaEngine> {
    const llama = await getRuntime();
    const model = await llama.loadModel({ modelPath: settings.file, useMmap: settings.load === 'mmap' });
    try {
      const contextSize = settings.contextSize ?? Math.min(model.trainContextSize, DEFAULT_CONTEXT_CAP);
      let created: LlamaContext | undefined;
      const context = await model.createContext({
        sequences: settings.parallel,
        batching: { itemPrioritizationStrategy: sequenceOrderedStrategy(() => created) },
        contextSize,
        threads: settings.threads ?? usableCores(),
        ...(settings.batchSize !== undefined ? { batchSize: settings.batchSize } : {}),
        flashAttention: settings.flashAttention ?? 'auto',
      });
      created = context;
      const sequences: LlamaContextSequence[] = [];
      for (let i = 0; i < settings.parallel; i++) sequences.push(context.getSequence());
      const template = ChatTemplate.fromModel(model);
      const description: EngineDescription = {
        name: `llama.cpp:${model.fileInfo.metadata?.general?.name ?? settings.file}`,
        contextSize: context.contextSize,
        supportsImages: false,
      };
      const pool = new SequencePool(sequences, settings.queue);
      const reasoning = settings.reasoning ?? 'auto';
      const reasons = reasoning === 'auto' ? template.features.reasoning : reasoning === 'on';
      return new LlamaEngine(description, model, context, template, pool, new StepBarrier(), llama, settings.parallel, reasons);
    } catch (error) {
      await model.dispose();
      throw error;
    }
  }

  async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    if (request.n > this.parallel) {
      throw new KilnError('invalidParameter', {
        param: 'n',
        message: `Invalid 'n': model '${request.model}' generates at most ${this.parallel} choices at once (its 'parallel' setting).`,
      });
    }
    const grammarTexts = requestGrammars(request);
    const { tokens: prompt, reasoning } = this.renderPrompt(request);
    const maxTokens = this.grantTokens(request, prompt.length);
    const grammars = await this.compileGrammars(grammarTexts);
    const leases = await this.pool.acquire(prompt, signal, isProModel(request.model) ? 1 : 0, request.n);
    return new LlamaRun(this.model, this.pool, this.barrier, leases, prompt, maxTokens, reasoning, grammars, request, signal);
  }

  async close(): Promise<void> {
    await this.context.dispose();
    await this.model.dispose();
  }

  private renderPrompt(request: ChatRequest): { tokens: Token[]; reasoning: ReasoningMode } {
    const tools = offeredTools(request);
    let rendered;
    try {
      rendered = this.template.render(request.messages, { tools, enableThinking: request.enableThinking, continueLastAssistant: request.continueLastAssistant });
    } catch (error) {
      if (!(error instanceof TemplateError)) throw error;
      throw new KilnError('invalidParameter', { param: 'messages', message: `Invalid 'messages' for this model's chat template: ${error.message}` });
    }
    const reasoning: ReasoningMode = !this.reasons
      ? 'off'
      : rendered.thinkingOpen
        ? 'open'
        : request.enableThinking === false
          ? 'off'
          : 'optional';
    // The rendered template's own special tokens (<|im_start|>, …) must become special tokens, as in llama-server.
    const tokens = this.model.tokenize(rendered.text, true);
    // Most templates write bos_token themselves; models that want one get it exactly once.
    const bos = this.model.tokens.bos;
    if (this.model.tokens.shouldPrependBosToken && bos !== null && tokens[0] !== bos) tokens.unshift(bos);
    return { tokens, reasoning };
  }

  private async compileGrammars(texts: RequestGrammars): Promise<CompiledGrammars> {
    const compiled: CompiledGrammars = {};
    if (texts.answer !== undefined) compiled.answer = await this.grammar(texts.answer);
    if (texts.toolCallBody !== undefined) compiled.toolCallBody = await this.grammar(texts.toolCallBody);
    return compiled;
  }

  private grammar(text: string): Promise<LlamaGrammar> {
    let grammar = this.grammarCache.get(text);
    if (grammar === undefined) {
      grammar = this.llama.createGrammar({ grammar: text });
      grammar.catch(() => this.grammarCache.delete(text));
      if (this.grammarCache.size >= GRAMMAR_CACHE_SIZE) this.grammarCache.delete(this.grammarCache.keys().next().value!);
    } else {
      this.grammarCache.delete(text); // re-insert: most recently used last
    }
    this.grammarCache.set(text, grammar);
    return grammar;
  }

  /** Rejects prompts the context cannot hold; a defaulted `max_tokens` shrinks to what is left, an explicit one must fit. */
  private grantTokens(request: ChatRequest, promptTokens: number): number {
    const contextSize = this.context.contextSize;
    if (promptTokens >= contextSize) {
      throw new KilnError('contextLengthExceeded', {
        param: 'messages',
        message: `This model's maximum context length is ${contextSize} tokens, but the messages use ${promptTokens} tokens. Please shorten the messages.`,
      });
    }
    const left = contextSize - promptTokens;
    if (request.maxTokens <= left) return request.maxTokens;
    if (!request.maxTokensExplicit) return left;
    throw new KilnError('contextLengthExceeded', {
      param: 'max_tokens',
      message: `This model's maximum context length is ${contextSize} tokens. However, you requested ${promptTokens + request.maxTokens} tokens (${promptTokens} in the messages, ${request.maxTokens} in the completion). Please reduce the length of the messages or max_tokens.`,
    });
  }
}

type CompiledGrammars = Partial<Record<GrammarName, LlamaGrammar>>;

class LlamaRun implements EngineRun {
  readonly promptTokens: number;
  readonly cachedTokens: number;
  private readonly started: boolean[];

  constructor(
    private readonly model: LlamaModel,
    private readonly pool: SequencePool,
    private readonly barrier: StepBarrier,
    private readonly leases: Lease[],
    private readonly prompt: Token[],
    readonly maxTokens: number,
    readonly reasoning: ReasoningMode,
    private readonly grammars: CompiledGrammars,
    private readonly request: ChatRequest,
    private readonly signal: AbortSignal,
  ) {
    this.promptTokens = prompt.length;
    // Choices share the prompt, so the cache counts once (the first choice's sequence).
    this.cachedTokens = this.reusable(leases[0]!);
    this.started = leases.map(() => false);
  }

  async *choice(index: number): AsyncGenerator<EngineEvent, void, undefined> {
    const lease = this.leases[index];
    if (lease === undefined || this.started[index]) throw new Error(`choice ${index} is not available`);
    this.started[index] = true;
    const { sequence } = lease;
    // Joined before the erase below, which may wait for the running decode: the others' next step waits for this
    // prompt instead of leaving without it (step-barrier.ts).
    const member = this.barrier.join();
    try {
      this.signal.throwIfAborted();
      const cached = this.reusable(lease);
      // The erase takes node-llama-cpp's context lock even when there is nothing to erase.
      if (cached < sequence.nextTokenIndex) await sequence.eraseContextTokenRanges([{ start: cached, end: sequence.nextTokenIndex }]);
      const detokenizer = new IncrementalDetokenizer(this.model);
      const generated: Token[] = [];
      const steering = new OutputSteering({
        reasoning: this.reasoning,
        thinkingBudget: this.request.thinkingBudget,
        hasAnswerGrammar: this.grammars.answer !== undefined,
        hasToolCallBodyGrammar: this.grammars.toolCallBody !== undefined,
      });
      let grammarState = this.grammarState(steering.initialGrammar);
      let input = this.prompt.slice(cached);
      // llama.cpp's logits differ in the last bits between a token decoded inside a prompt batch and one decoded on
      // its own (as after a prefix-cache hit). With a seed the client expects the same output every time, so the
      // token that starts generation is then always decoded on its own.
      const last = this.request.sampling.seedExplicit ? 1 : PREFILL_CHUNK;
      // A long prompt goes in pieces, each through the barrier: between two pieces node-llama-cpp's decode loop lets go
      // of the context, so a request that arrives meanwhile can erase its sequence's stale cache and queue its prompt,
      // and a short prompt is prefilled before the rest of a long one (batch-order.ts) instead of waiting seconds.
      while (input.length > last) {
        const piece = input.slice(0, Math.min(PREFILL_CHUNK, input.length - last));
        await member.beforePrefill();
        await sequence.evaluateWithoutGeneratingNewTokens(piece);
        input = input.slice(piece.length);
        this.signal.throwIfAborted(); // a client gone during a long prefill frees its sequence after this piece
      }
      if (input.length > 1) member.expectPrompt(); // the first step still evaluates prompt tokens
      const tokens = sequence.evaluate(input, {
        ...this.samplingOptions(generated, index),
        // Read before every sampled token, so steering can switch grammars mid-generation.
        grammarEvaluationState: () => grammarState,
      });
      // One step: wait for the barrier, decode, sample. The next step is queued before the current token goes to the
      // consumer (post-processing, SSE), so that work overlaps the decode instead of delaying it.
      let stopped = false;
      const step = (input: Token[] | undefined) => {
        const next = member.beforeStep().then(async (): Promise<IteratorResult<Token, unknown>> => {
          // The consumer stopped reading while this step waited for the barrier: no decode for nobody.
          if (stopped) return { done: true, value: undefined };
          const result = await tokens.next(input);
          member.afterStep();
          return result;
        });
        // Awaited later (its error then surfaces there); a failure while the consumer is busy is not unhandled.
        next.catch(() => undefined);
        return next;
      };
      let pending: Promise<IteratorResult<Token, unknown>> | undefined = step(undefined);
      try {
        for (;;) {
          const result: IteratorResult<Token, unknown> = await pending!;
          pending = undefined;
          if (result.done === true) break;
          generated.push(result.value);
          const text = detokenizer.push(result.value);
          if (generated.length >= this.maxTokens) {
            yield { type: 'text', text, tokens: 1 };
            yield { type: 'text', text: detokenizer.flush(), tokens: 0 };
            yield { type: 'end', reason: 'length' };
            return;
          }
          if (this.signal.aborted) return;
          const change = steering.afterToken(text);
          if (change !== undefined) grammarState = this.grammarState(change.grammar);
          if (change?.inject === undefined) {
            pending = step(undefined);
            yield { type: 'text', text, tokens: 1 };
            continue;
          }
          // Kiln writes these tokens itself: they are evaluated after the sampled one, and count as output.
          const injected = this.model.tokenize(change.inject, true);
          const room = Math.min(injected.length, this.maxTokens - generated.length);
          const injectedText = detokenizer.flush() + this.model.detokenize(injected.slice(0, room), true);
          generated.push(...injected.slice(0, room));
          const full = generated.length >= this.maxTokens;
          if (!full) pending = step([result.value, ...injected]);
          yield { type: 'text', text, tokens: 1 };
          yield { type: 'text', text: injectedText, tokens: room };
          if (full) {
            yield { type: 'end', reason: 'length' };
            return;
          }
        }
      } finally {
        stopped = true;
        member.leave(); // before the generator's cleanup, which may wait for the context
        // A step queued ahead for a consumer that stopped reading: let it settle (its error, if any, is moot).
        await pending?.catch(() => undefined);
        await tokens.return();
      }
      yield { type: 'text', text: detokenizer.flush(), tokens: 0 };
      yield { type: 'end', reason: 'eog' };
    } finally {
      member.leave(); // when it failed before generating (leaving twice is harmless)
      this.pool.release(sequence);
    }
  }

  dispose(): void {
    // Choices whose generation never started still hold their sequences.
    this.leases.forEach((lease, index) => {
      if (this.started[index]) return;
      this.started[index] = true;
      this.pool.release(lease.sequence);
    });
  }

  /** Prompt tokens a lease's KV cache already holds; at least the last one is evaluated again, as its logits start the generation. */
  private reusable(lease: Lease): number {
    return Math.min(lease.sharedPrefix, this.prompt.length - 1);
  }

  private grammarState(name: GrammarName | undefined): LlamaGrammarEvaluationState | undefined {
    const grammar = name === undefined ? undefined : this.grammars[name];
    return grammar === undefined ? undefined : new LlamaGrammarEvaluationState({ model: this.model, grammar });
  }

  /** Choice i samples with seed + i: the choices differ, and the same seed reproduces all of them. */
  private samplingOptions(generated: Token[], index: number): SequenceEvaluateOptions {
    const { sampling } = this.request;
    const penalize = sampling.frequencyPenalty !== 0 || sampling.presencePenalty !== 0;
    return {
      temperature: sampling.temperature,
      topK: sampling.topK,
      topP: sampling.topP,
      minP: sampling.minP,
      seed: (sampling.seed + index) >>> 0,
      ...(penalize
        ? {
            repeatPenalty: {
              punishTokens: () => generated.slice(-PENALTY_WINDOW),
              maxPunishTokens: PENALTY_WINDOW,
              penalty: 1,
              frequencyPenalty: sampling.frequencyPenalty,
              presencePenalty: sampling.presencePenalty,
            },
          }
        : {}),
    };
  }
}
