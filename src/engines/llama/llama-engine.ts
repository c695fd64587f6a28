/**
 * The embedded engine: one GGUF loaded in-process through node-llama-cpp, one context whose sequences are pooled and
 * batched together by node-llama-cpp's decode loop. Kiln drives it at sequence level — it renders the prompt with the
 * model's own chat template, evaluates only what the sequence's KV cache lacks, and samples with the request's
 * parameters passed explicitly (node-llama-cpp's own defaults differ from the seed's).
 */
import { open } from 'node:fs/promises';
import { basename } from 'node:path';
import {
  GgufInsights,
  readGgufFileInfo,
  type Llama,
  type LlamaContext,
  type LlamaGrammar,
  type LlamaContextSequence,
  type LlamaModel,
  type LlamaModelOptions,
  type Token,
} from 'node-llama-cpp';
import { offeredTools, type ChatRequest } from '../../core/chat-request.js';
import type { ChatEngine, EngineDescription, EngineRun, EngineStatus, ReasoningMode } from '../../core/engine.js';
import { SILENT_LOG, type Log } from '../../core/log.js';
import type { RequestGrammars } from '../../core/grammar/request-grammar.js';
import { KilnError } from '../../errors/catalog.js';
import { ChatTemplate, TemplateError } from './chat-template.js';
import { GGUF_MAGIC } from '../../gguf/format.js';
import { PromptCache } from './prompt-cache/prompt-cache.js';
import { PromptTokenizer } from './prompt-tokens.js';
import { LlamaRun, type CompiledGrammars } from './llama-run.js';
import { getRuntime, usableCores } from './runtime.js';
import { SequencePool } from './sequence-pool.js';
import { PrefillBoard } from './shared-prefill.js';
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
  /**
   * Layers offloaded to the GPU when the runtime has one: a number, `max` (all, or the load fails when they do not
   * fit), or `auto` (default): as many as fit in free VRAM next to this model's contexts. 0 on the CPU whatever is set.
   */
  gpuLayers?: number | 'auto' | 'max';
  /**
   * Longest time the lockstep holds generating sequences for a request still preparing its prompt (default 100 ms).
   * Tests set it high to show that nothing else holds the lockstep: a reader that stopped reading never does.
   */
  lockstepWaitMs?: number;
  /**
   * Sequence states kept beyond the sequences (prompt-cache/): `ramMb` in a RAM-backed directory (0: no cache; unset:
   * the default size), and states evicted from it spill to `diskDir` up to `diskMb`. Absent: no cache.
   */
  promptCache?: { ramMb?: number; diskDir?: string; diskMb?: number };
  log?: Log;
}

/**
 * The prompt tokens a restore must save over what the sequence holds. Loading a state costs about 1/1000 of
 * prefilling it on the CPU (docs/prompt-cache.md), so any real prefix pays; below this the gain is under ~0.1 s.
 */
const PROMPT_CACHE_MIN_TOKENS = 32;

/** The prompt cache's disk tier when `diskMb` is unset: 10 GiB. */
const DEFAULT_PROMPT_CACHE_DISK_MB = 10_240;

const DEFAULT_CONTEXT_CAP = 4096;

/**
 * node-llama-cpp's `gpuLayers` for these settings. `auto` leaves room in VRAM for this model's contexts — all
 * `parallel` sequences of `contextSize` (the cap when unset: the training size is not known before the load) —
 * instead of node-llama-cpp's default of one context of automatic size.
 */
function gpuLayersOption(settings: LlamaEngineSettings): LlamaModelOptions['gpuLayers'] {
  const layers = settings.gpuLayers ?? 'auto';
  if (layers !== 'auto') return layers;
  return { fitContext: { contextSize: (settings.contextSize ?? DEFAULT_CONTEXT_CAP) * settings.parallel } };
}

/**
 * A cheap look at the file's first bytes before handing it to llama.cpp, whose errors for a file that is not a GGUF
 * at all say nothing useful ("Cannot read properties of undefined").
 */

async function checkGgufFile(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    const head = Buffer.alloc(8);
    const { bytesRead } = await handle.read(head, 0, 8, 0);
    if (bytesRead < 8 || head.readUInt32LE(0) !== GGUF_MAGIC) throw new Error('not a GGUF file');
    const version = head.readUInt32LE(4);
    if (version < 2 || version > 3) throw new Error(`GGUF version ${version} is not supported (2 and 3 are)`);
  } finally {
    await handle.close();
  }
}
/** Compiled grammars kept for requests that repeat a schema (most clients send the same tools every time). */
const GRAMMAR_CACHE_SIZE = 64;
/**
 * ...and at most this much grammar text among them: a compiled grammar costs a few times its text in memory, and a
 * schema at the converter's size budget makes about 1 MB of text, so 64 of those would hold hundreds of MB.
 */
const GRAMMAR_CACHE_CHARS = 4_000_000;

export class LlamaEngine implements ChatEngine {
  private constructor(
    readonly description: EngineDescription,
    private readonly model: LlamaModel,
    private readonly context: LlamaContext,
    private readonly template: ChatTemplate,
    private readonly pool: SequencePool,
    private readonly barrier: StepBarrier,
    private readonly llama: Llama,
    private readonly reasons: boolean,
    private readonly prompts: PromptTokenizer,
    private readonly promptCache: PromptCache | undefined,
  ) {
    this.prefills = promptCache === undefined ? undefined : new PrefillBoard(promptCache);
  }

  private readonly prefills: PrefillBoard | undefined;

  private readonly grammarCache = new Map<string, Promise<LlamaGrammar>>();
  private grammarCacheChars = 0;

  /**
   * The host memory a load of these settings will take — weights and contexts (KV cache and compute buffers for
   * `parallel` sequences) — from node-llama-cpp's GGUF insights, without loading anything. With a GPU, the layers
   * the load would offload (resolved as the load resolves them, against the VRAM free now) are left out: their
   * weights and KV cache sit in VRAM, not in host memory.
   */
  static async estimateMemory(settings: LlamaEngineSettings): Promise<{ ram: number; vram: number }> {
    await checkGgufFile(settings.file);
    const llama = await getRuntime();
    const insights = await GgufInsights.from(await readGgufFileInfo(settings.file, { readTensorInfo: true }), llama);
    const useMmap = settings.load === 'mmap';
    const { gpuLayers } = await insights.configurationResolver.resolveModelGpuLayersV2(gpuLayersOption(settings), {
      useMmap,
      defaultContextFlashAttention: settings.flashAttention ?? 'auto',
    });
    const weights = await insights.estimateModelResourceRequirementsV2({ gpuLayers, useMmap });
    const contexts = await insights.estimateContextResourceRequirementsV2({
      contextSize: settings.contextSize ?? Math.min(insights.trainContextSize ?? DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP),
      modelGpuLayers: gpuLayers,
      sequences: settings.parallel,
      ...(settings.batchSize !== undefined ? { batchSize: settings.batchSize } : {}),
    });
    return { ram: weights.cpuRam + contexts.cpuRam, vram: weights.gpuVram + contexts.gpuVram };
  }

  /** Free GPU memory now (0 without a GPU backend): the default VRAM budget is most of it. */
  static async freeVram(): Promise<number> {
    const llama = await getRuntime();
    if (llama.gpu === false) return 0;
    return (await llama.getVramState()).free;
  }

  static async load(settings: LlamaEngineSettings): Promise<LlamaEngine> {
    await checkGgufFile(settings.file);
    const llama = await getRuntime();
    let model: LlamaModel;
    try {
      model = await llama.loadModel({ modelPath: settings.file, useMmap: settings.load === 'mmap', gpuLayers: gpuLayersOption(settings) });
    } catch (error) {
      // The reason reaches clients in a 503: it names the file, not where it lies.
      const reason = (error instanceof Error ? error.message : String(error)).replaceAll(settings.file, basename(settings.file));
      throw new Error(`llama.cpp could not load it (${reason})`, { cause: error });
    }
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
      const prompts = PromptTokenizer.fromModel(model, settings.file);
      const description: EngineDescription = {
        name: `llama.cpp:${model.fileInfo.metadata?.general?.name ?? settings.file}`,
        contextSize: context.contextSize,
        supportsImages: false,
        maxChoices: settings.parallel,
        maxChoicesReason: "its 'parallel' setting",
      };
      const pool = new SequencePool(sequences);
      const reasoning = settings.reasoning ?? 'auto';
      const reasons = reasoning === 'auto' ? template.features.reasoning : reasoning === 'on';
      const cache = settings.promptCache;
      const promptCache =
        cache === undefined || cache.ramMb === 0
          ? undefined
          : await PromptCache.open({
              ...(cache.ramMb !== undefined ? { budgetBytes: cache.ramMb * 2 ** 20 } : {}),
              minTokens: PROMPT_CACHE_MIN_TOKENS,
              ...(cache.diskDir !== undefined
                ? { disk: { dir: cache.diskDir, budgetBytes: (cache.diskMb ?? DEFAULT_PROMPT_CACHE_DISK_MB) * 2 ** 20, modelFile: settings.file, context } }
                : {}),
              log: settings.log ?? SILENT_LOG,
            });
      return new LlamaEngine(description, model, context, template, pool, new StepBarrier(settings.lockstepWaitMs), llama, reasons, prompts, promptCache);
    } catch (error) {
      await model.dispose();
      throw error;
    }
  }

  capacity(): number {
    return this.pool.size;
  }

  status(): EngineStatus {
    return { state: 'ready', gpuLayers: this.model.gpuLayers, ...(this.promptCache !== undefined ? { promptCache: this.promptCache.stats() } : {}) };
  }

  async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    if (request.n > this.pool.size) throw new Error(`n = ${request.n} exceeds maxChoices (${this.pool.size}): the service checks it`);
    const { tokens: prompt, reasoning } = await this.renderPrompt(request);
    const maxTokens = this.grantTokens(request, prompt.length);
    const grammars = await this.compileGrammars(request.grammars);
    const leases = await this.pool.acquire(prompt, signal, request.n);
    return new LlamaRun(this.model, this.pool, this.barrier, leases, prompt, maxTokens, reasoning, grammars, request, signal, this.promptCache, this.prefills);
  }

  async close(): Promise<void> {
    // With a disk tier, what the sequences hold (idle after the drain) is kept and written there for the next start.
    await this.promptCache?.close(this.pool.sequences());
    await this.prompts.close();
    await this.context.dispose();
    await this.model.dispose();
  }

  private async renderPrompt(request: ChatRequest): Promise<{ tokens: Token[]; reasoning: ReasoningMode }> {
    const tools = offeredTools(request);
    // Client text is shielded so that only the template's own markers become control tokens (prompt-tokens.ts).
    const shield = this.prompts.shield();
    let rendered;
    try {
      rendered = this.template.render(request.messages, {
        tools,
        enableThinking: request.enableThinking,
        continueLastAssistant: request.continueLastAssistant,
        protect: shield.protect,
      });
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
    const pieces = this.prompts.split(rendered.text, shield);
    // Bounded before tokenizing: a prompt that cannot fit in any tokenization costs no tokenizer time.
    this.checkPromptFits(this.prompts.minTokens(pieces), true);
    const tokens = await this.prompts.tokenizeAsync(pieces);
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
      grammar.catch(() => this.forgetGrammar(text));
    } else {
      this.grammarCache.delete(text); // re-insert: most recently used last
      this.grammarCacheChars -= text.length;
    }
    this.grammarCache.set(text, grammar);
    this.grammarCacheChars += text.length;
    // Least recently used first; a grammar larger than the whole budget is used by its request and not kept.
    for (const oldest of this.grammarCache.keys()) {
      if (this.grammarCache.size <= GRAMMAR_CACHE_SIZE && this.grammarCacheChars <= GRAMMAR_CACHE_CHARS) break;
      this.forgetGrammar(oldest);
    }
    return grammar;
  }

  private forgetGrammar(text: string): void {
    if (this.grammarCache.delete(text)) this.grammarCacheChars -= text.length;
  }

  private checkPromptFits(promptTokens: number, atLeast: boolean): void {
    const contextSize = this.context.contextSize;
    if (promptTokens < contextSize) return;
    throw new KilnError('contextLengthExceeded', {
      param: 'messages',
      message: `This model's maximum context length is ${contextSize} tokens, but the messages use ${atLeast ? 'at least ' : ''}${promptTokens} tokens. Please shorten the messages.`,
    });
  }

  /** Rejects prompts the context cannot hold; a defaulted `max_tokens` shrinks to what is left, an explicit one must fit. */
  private grantTokens(request: ChatRequest, promptTokens: number): number {
    const contextSize = this.context.contextSize;
    this.checkPromptFits(promptTokens, false);
    const left = contextSize - promptTokens;
    if (request.maxTokens <= left) return request.maxTokens;
    if (!request.maxTokensExplicit) return left;
    const param = request.maxTokensParam ?? 'max_tokens';
    throw new KilnError('contextLengthExceeded', {
      param,
      message: `This model's maximum context length is ${contextSize} tokens. However, you requested ${promptTokens + request.maxTokens} tokens (${promptTokens} in the messages, ${request.maxTokens} in the completion). Please reduce the length of the messages or ${param}.`,
    });
  }
}
