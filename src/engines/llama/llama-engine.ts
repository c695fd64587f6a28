/**
 * The embedded engine: one GGUF loaded in-process through node-llama-cpp, one context whose sequences are pooled and
 * batched together by node-llama-cpp's decode loop. Kiln drives it at sequence level — it renders the prompt with the
 * model's own chat template, evaluates only what the sequence's KV cache lacks, and samples with the request's
 * parameters passed explicitly (node-llama-cpp's own defaults differ from the seed's).
 */
import {
  resolveChatWrapper,
  GeneralChatWrapper,
  type ChatWrapper,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaModel,
  type SequenceEvaluateOptions,
  type Token,
} from 'node-llama-cpp';
import type { ChatRequest } from '../../core/chat-request.js';
import type { ChatEngine, EngineDescription, EngineEvent, EngineRun } from '../../core/engine.js';
import { KilnError } from '../../errors/catalog.js';
import { toChatHistory } from './chat-history.js';
import { IncrementalDetokenizer } from './detokenizer.js';
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
  queue: QueueSettings;
}

const DEFAULT_CONTEXT_CAP = 4096;
/** Frequency/presence penalties look back this many generated tokens. */
const PENALTY_WINDOW = 256;

export class LlamaEngine implements ChatEngine {
  private constructor(
    readonly description: EngineDescription,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly chatWrapper: ChatWrapper,
    private readonly pool: SequencePool,
    private readonly barrier: StepBarrier,
  ) {}

  static async load(settings: LlamaEngineSettings): Promise<LlamaEngine> {
    const llama = await getRuntime();
    const model = await llama.loadModel({ modelPath: settings.file });
    try {
      const contextSize = settings.contextSize ?? Math.min(model.trainContextSize, DEFAULT_CONTEXT_CAP);
      let created: LlamaContext | undefined;
      const context = await model.createContext({
        sequences: settings.parallel,
        batching: { itemPrioritizationStrategy: sequenceOrderedStrategy(() => created) },
        contextSize,
        threads: settings.threads ?? usableCores(),
        ...(settings.batchSize !== undefined ? { batchSize: settings.batchSize } : {}),
      });
      created = context;
      const sequences: LlamaContextSequence[] = [];
      for (let i = 0; i < settings.parallel; i++) sequences.push(context.getSequence());
      const chatWrapper = resolveChatWrapper(model) ?? new GeneralChatWrapper();
      const description: EngineDescription = {
        name: `llama.cpp:${model.fileInfo.metadata?.general?.name ?? settings.file}`,
        contextSize: context.contextSize,
        supportsImages: false,
      };
      return new LlamaEngine(description, model, context, chatWrapper, new SequencePool(sequences, settings.queue), new StepBarrier());
    } catch (error) {
      await model.dispose();
      throw error;
    }
  }

  async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    if (request.n !== 1) throw new KilnError('notSupported', { param: 'n', message: "'n' > 1 is not supported yet." });
    const prompt = this.renderPrompt(request);
    const maxTokens = this.grantTokens(request, prompt.length);
    const lease = await this.pool.acquire(prompt, signal, request.model.startsWith('Pro/') ? 1 : 0);
    return new LlamaRun(this.model, this.pool, this.barrier, lease, prompt, maxTokens, request, signal);
  }

  async close(): Promise<void> {
    await this.context.dispose();
    await this.model.dispose();
  }

  private renderPrompt(request: ChatRequest): Token[] {
    const chatHistory = toChatHistory(request.messages, request.continueLastAssistant);
    const { contextText } = this.chatWrapper.generateContextState({ chatHistory });
    return contextText.tokenize(this.model.tokenizer);
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

class LlamaRun implements EngineRun {
  readonly promptTokens: number;
  readonly cachedTokens: number;
  private started = false;

  constructor(
    private readonly model: LlamaModel,
    private readonly pool: SequencePool,
    private readonly barrier: StepBarrier,
    private readonly lease: Lease,
    private readonly prompt: Token[],
    readonly maxTokens: number,
    private readonly request: ChatRequest,
    private readonly signal: AbortSignal,
  ) {
    this.promptTokens = prompt.length;
    // At least the last prompt token is evaluated again: its logits start the generation.
    this.cachedTokens = Math.min(lease.sharedPrefix, prompt.length - 1);
  }

  async *choice(index: number): AsyncGenerator<EngineEvent, void, undefined> {
    if (index !== 0 || this.started) throw new Error(`choice ${index} is not available`);
    this.started = true;
    const { sequence } = this.lease;
    try {
      this.signal.throwIfAborted();
      await sequence.eraseContextTokenRanges([{ start: this.cachedTokens, end: sequence.nextTokenIndex }]);
      const detokenizer = new IncrementalDetokenizer(this.model);
      const generated: Token[] = [];
      const tokens = sequence.evaluate(this.prompt.slice(this.cachedTokens), this.evaluateOptions(generated));
      const member = this.barrier.join();
      try {
        for (;;) {
          await member.beforeStep();
          const step = await tokens.next();
          member.afterStep();
          if (step.done === true) break;
          generated.push(step.value);
          yield { type: 'text', text: detokenizer.push(step.value), tokens: 1 };
          if (generated.length >= this.maxTokens) {
            yield { type: 'text', text: detokenizer.flush(), tokens: 0 };
            yield { type: 'end', reason: 'length' };
            return;
          }
          if (this.signal.aborted) return;
        }
      } finally {
        member.leave();
        await tokens.return();
      }
      yield { type: 'text', text: detokenizer.flush(), tokens: 0 };
      yield { type: 'end', reason: 'eog' };
    } finally {
      this.pool.release(sequence);
    }
  }

  dispose(): void {
    // A run whose generation never started still holds its sequence.
    if (!this.started) {
      this.started = true;
      this.pool.release(this.lease.sequence);
    }
  }

  private evaluateOptions(generated: Token[]): SequenceEvaluateOptions {
    const { sampling } = this.request;
    const penalize = sampling.frequencyPenalty !== 0 || sampling.presencePenalty !== 0;
    return {
      temperature: sampling.temperature,
      topK: sampling.topK,
      topP: sampling.topP,
      minP: sampling.minP,
      seed: sampling.seed >>> 0,
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
