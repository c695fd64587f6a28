/**
 * One request's generation on the embedded engine: its leased sequences, each choice's prefill and token loop in
 * lockstep with the other generating sequences (step-barrier.ts), grammar steering and detokenizing.
 *
 * Each choice's loop runs on its own and pushes events into a bounded queue that the consumer (post-processing, SSE)
 * drains: generation never waits on a client. When a client stops reading, its queue fills, the choice leaves the
 * lockstep and its sequence idles until the client reads again, the request is aborted (stall or request timeout, the
 * client gone) or the consumer stops; the sequence is released as soon as the loop ends, whether or not the consumer
 * ever reads again.
 */
import { LlamaGrammarEvaluationState, type LlamaGrammar, type LlamaModel, type SequenceEvaluateOptions, type Token } from 'node-llama-cpp';
import type { ChatRequest } from '../../core/chat-request.js';
import type { EngineEvent, EngineRun, ReasoningMode } from '../../core/engine.js';
import { EventQueue } from '../../core/event-queue.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { BUDGET_CLOSE, OutputSteering, type GrammarName } from './output-steering.js';
import type { PromptCache } from './prompt-cache/prompt-cache.js';
import type { Lease, SequencePool } from './sequence-pool.js';
import type { Prefill, PrefillBoard } from './shared-prefill.js';
import type { StepBarrier, StepMember } from './step-barrier.js';

/**
 * Prompt tokens evaluated per piece of a long prompt (see produce). Pieces end at multiples of it, counted from the
 * sequence's start, so that a prefix is computed in the same batches whatever was cached before it (usable).
 */
const PREFILL_CHUNK = 256;
/** Frequency/presence penalties look back this many generated tokens. */
const PENALTY_WINDOW = 256;
/**
 * Events a choice may run ahead of its reader before it pauses. Each is about one token; the socket's own buffers
 * come on top, so a reader that is merely slow rarely pauses generation, and one that stalls costs at most this many
 * tokens of work.
 */
export const READ_AHEAD_EVENTS = 64;

export type CompiledGrammars = Partial<Record<GrammarName, LlamaGrammar>>;

export class LlamaRun implements EngineRun {
  readonly promptTokens: number;
  /** What the first choice's sequence reused: its own KV cache, or a state restored from the prompt cache. */
  cachedTokens: number;
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
    private readonly promptCache?: PromptCache,
    private readonly prefills?: PrefillBoard,
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
    const queue = new EventQueue<EngineEvent>(READ_AHEAD_EVENTS);
    const producing = this.produce(lease, index, queue).then(
      () => queue.end(),
      (error: unknown) => queue.end(error),
    );
    try {
      yield* queue.drain();
    } finally {
      // Stopping early closed the queue; the loop notices after its current step and releases the sequence.
      await producing;
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

  /** One choice's generation into `queue`; returns when it ended, was aborted or the consumer closed the queue. */
  private async produce(lease: Lease, index: number, queue: EventQueue<EngineEvent>): Promise<void> {
    const { sequence } = lease;
    try {
      this.signal.throwIfAborted();
      // Before joining the lockstep: a follower may wait seconds for another prompt's prefill.
      await this.followSharedPrefill(lease);
    } catch (error) {
      this.pool.release(sequence);
      throw error;
    }
    // Ended at the first token (or on failure); undefined afterwards, so the token loop does not ask again.
    let prefill: Prefill | undefined = this.prefills?.begin(this.prompt, sequence);
    // Joined before the erase below, which may wait for the running decode: the others' next step waits for this
    // prompt instead of leaving without it (step-barrier.ts).
    let member: StepMember = this.barrier.join();
    // How much of the sequence's KV a cold prefill would compute bit for bit (usable); undefined while unchanged.
    let exact: number | undefined;
    try {
      const start = await this.fromCache(lease, index);
      exact = start.exact;
      const cached = start.tokens;
      // A save or restore holds the context a while: a client gone meanwhile frees its sequence here.
      this.signal.throwIfAborted();
      if (queue.closed) return;
      // The erase takes node-llama-cpp's context lock even when there is nothing to erase.
      if (cached < sequence.nextTokenIndex) await sequence.eraseContextTokenRanges([{ start: cached, end: sequence.nextTokenIndex }]);
      const detokenizer = new IncrementalDetokenizer(this.model);
      const generated: Token[] = [];
      const steering = new OutputSteering({
        reasoning: this.reasoning,
        thinkingBudget: this.request.thinkingBudget,
        budgetCloseTokens: this.model.tokenize(BUDGET_CLOSE, true).length,
        hasAnswerGrammar: this.grammars.answer !== undefined,
        hasToolCallBodyGrammar: this.grammars.toolCallBody !== undefined,
      });
      let grammarState = this.grammarState(steering.initialGrammar);
      let input = this.prompt.slice(cached);
      let position = cached;
      // llama.cpp's logits differ in the last bits between a token decoded inside a prompt batch and one decoded on
      // its own (as after a prefix-cache hit). With a seed the client expects the same output every time, so the
      // token that starts generation is then always decoded on its own.
      const last = this.request.sampling.seedExplicit ? 1 : PREFILL_CHUNK;
      // A long prompt goes in pieces, each through the barrier: between two pieces node-llama-cpp's decode loop lets go
      // of the context, so a request that arrives meanwhile can erase its sequence's stale cache and queue its prompt,
      // and a short prompt is prefilled before the rest of a long one (batch-order.ts) instead of waiting seconds.
      while (input.length > last) {
        const piece = input.slice(0, Math.min(PREFILL_CHUNK - (position % PREFILL_CHUNK), input.length - last));
        await member.beforePrefill();
        await sequence.evaluateWithoutGeneratingNewTokens(piece);
        // A whole aligned piece right after an exact prefix extends it.
        if (exact === position && piece.length === PREFILL_CHUNK) exact += PREFILL_CHUNK;
        position += piece.length;
        input = input.slice(piece.length);
        this.signal.throwIfAborted(); // a client gone during a long prefill frees its sequence after this piece
        if (queue.closed) return;
        await prefill?.advance(position, exact);
      }
      if (input.length > 1) member.expectPrompt(); // the first step still evaluates prompt tokens
      const tokens = sequence.evaluate(input, {
        ...this.samplingOptions(generated, index),
        // Read before every sampled token, so steering can switch grammars mid-generation.
        grammarEvaluationState: () => grammarState,
      });
      // One step: wait for the barrier, decode, sample. It is queued synchronously after the previous token's event is
      // pushed, before the consumer runs (post-processing, SSE), so that work overlaps the decode instead of delaying it.
      const step = (input: Token[] | undefined) => {
        const stepper = member;
        const next = stepper.beforeStep().then(async (): Promise<IteratorResult<Token, unknown>> => {
          // The consumer stopped reading while this step waited for the barrier: no decode for nobody.
          if (queue.closed || this.signal.aborted) return { done: true, value: undefined };
          const result = await tokens.next(input);
          stepper.afterStep();
          return result;
        });
        // Awaited later (its error then surfaces there); a failure meanwhile is not unhandled.
        next.catch(() => undefined);
        return next;
      };
      // A full queue: the reader is behind. Out of the lockstep until it catches up, so the others do not wait for it.
      const pause = async () => {
        member.leave();
        await queue.room(this.signal);
        member = this.barrier.join();
      };
      let pending: Promise<IteratorResult<Token, unknown>> | undefined = step(undefined);
      try {
        for (;;) {
          const result: IteratorResult<Token, unknown> = await pending!;
          pending = undefined;
          if (result.done === true) break;
          // The whole prompt is in the KV now: followers still waiting for part of it start from it.
          if (prefill !== undefined) {
            await prefill.end(this.prompt.length, exact);
            prefill = undefined;
          }
          generated.push(result.value);
          const text = detokenizer.push(result.value);
          if (generated.length >= this.maxTokens) {
            queue.push({ type: 'text', text, tokens: 1 });
            queue.push({ type: 'text', text: detokenizer.flush(), tokens: 0 });
            queue.push({ type: 'end', reason: 'length' });
            return;
          }
          if (this.signal.aborted || queue.closed) return;
          const change = steering.afterToken(text);
          if (change !== undefined) grammarState = this.grammarState(change.grammar);
          if (change?.inject === undefined) {
            queue.push({ type: 'text', text, tokens: 1 });
            if (queue.full) await pause();
            if (this.signal.aborted || queue.closed) return;
            pending = step(undefined);
            continue;
          }
          // Kiln writes these tokens itself: they are evaluated after the sampled one, and count as output.
          const injected = this.model.tokenize(change.inject, true);
          const room = Math.min(injected.length, this.maxTokens - generated.length);
          const injectedText = detokenizer.flush() + this.model.detokenize(injected.slice(0, room), true);
          generated.push(...injected.slice(0, room));
          const full = generated.length >= this.maxTokens;
          queue.push({ type: 'text', text, tokens: 1 });
          queue.push({ type: 'text', text: injectedText, tokens: room });
          if (full) {
            queue.push({ type: 'end', reason: 'length' });
            return;
          }
          if (queue.full) await pause();
          if (this.signal.aborted || queue.closed) return;
          pending = step([result.value, ...injected]);
        }
      } finally {
        member.leave(); // before the generator's cleanup, which may wait for the context
        // A step queued ahead for a consumer that stopped reading: let it settle (its error, if any, is moot).
        await pending?.catch(() => undefined);
        await tokens.return();
      }
      // A step that found the request aborted also answers `done`: that is no end of generation (no `stop` finish).
      if (this.signal.aborted || queue.closed) return;
      queue.push({ type: 'text', text: detokenizer.flush(), tokens: 0 });
      queue.push({ type: 'end', reason: 'eog' });
    } finally {
      member.leave(); // when it failed before generating (leaving twice is harmless)
      await prefill?.end();
      this.pool.release(sequence, exact);
    }
  }

  /**
   * When another prompt being prefilled shares a longer beginning with this one than the sequence or the cache holds,
   * waits for it to be computed and kept (shared-prefill.ts); fromCache then restores it.
   */
  private async followSharedPrefill(lease: Lease): Promise<void> {
    const cache = this.promptCache;
    if (cache === undefined || this.prefills === undefined) return;
    const hit = cache.lookup(this.prompt, this.reusable(lease));
    const have = hit?.tokens ?? this.reusable(lease);
    hit?.release();
    await this.prefills.follow(this.prompt, have, this.signal);
  }

  /**
   * Prompt tokens the sequence holds before its prefill, and how many of them are exact (usable): its own KV
   * cache's share of the prompt, or — when the prompt cache has a state sharing enough more — that state, restored.
   * A sequence whose tokens are about to be erased for a prompt that does not extend them is kept in the cache first
   * (another conversation's next turn may want them).
   */
  private async fromCache(lease: Lease, index: number): Promise<{ tokens: number; exact: number }> {
    const own = this.usable(this.reusable(lease), lease.exact);
    const cache = this.promptCache;
    let start = own;
    if (cache !== undefined) {
      const { sequence } = lease;
      // Looked up first: the hit is pinned, so the save below cannot evict it.
      let hit = cache.lookup(this.prompt, own.tokens);
      if (hit !== undefined && this.usable(hit.tokens, hit.exact).tokens < own.tokens + cache.minTokens) {
        hit.release();
        hit = undefined;
      }
      // Only what would be lost is worth a save: not a conversation's own answer tail cut before its next turn.
      if (sequence.nextTokenIndex - own.tokens >= cache.minTokens) await cache.keep(sequence, lease.exact);
      if (hit !== undefined) {
        const exact = hit.exact;
        const restored = await cache.restore(sequence, hit);
        start = restored === 0 ? { tokens: 0, exact: 0 } : this.usable(Math.min(restored, this.prompt.length - 1), exact);
      }
    }
    if (index === 0) this.cachedTokens = start.tokens;
    return start;
  }

  /**
   * What a sequence holding `tokens` prompt tokens, `exact` of them computed in whole aligned chunks, may reuse. With
   * an explicit seed only the exact part: a token's KV depends in its last bits on the batch it was computed in, and
   * on near-ties that flips a sampled token, so a seeded request reuses only positions that a cold prefill of its
   * prompt would compute in the same batches — whole PREFILL_CHUNK pieces from the start — and answers the same
   * whatever was cached (for requests decoded alone: continuous batching shares a decode with other sequences).
   */
  private usable(tokens: number, exact: number): { tokens: number; exact: number } {
    const aligned = Math.floor(Math.min(tokens, exact) / PREFILL_CHUNK) * PREFILL_CHUNK;
    return { tokens: this.request.sampling.seedExplicit ? aligned : tokens, exact: aligned };
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
