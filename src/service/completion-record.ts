/**
 * What one request used, however it ended — finished, cut by max_tokens, cancelled by the client, timed out or failed
 * mid-stream: the one record that logs (and later the usage ledger and metrics) are fed from, built when the run's
 * resources are released.
 */
import type { EngineRun } from '../core/engine.js';
import type { ChoicePostProcessor } from '../core/postprocess/choice-processor.js';
import type { FinishReason } from '../protocol/response.js';

export type CompletionStatus = 'completed' | 'cancelled' | 'failed';

export interface CompletionRecord {
  /** The request id (x-request-id) when the transport gave one. */
  requestId?: string;
  /** The caller's stable id and name (never the key). */
  keyId: string;
  keyName: string;
  /** The request's `user` field, as the client sent it. */
  user?: string;
  /** The key has a token quota, which this request's tokens count against. */
  metered?: boolean;
  model: string;
  /** The deployment that served it, when a router chose one. */
  deployment?: string;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  reasoningTokens: number;
  status: CompletionStatus;
  /** Per choice; null for a choice that did not finish. */
  finishReasons: Array<FinishReason | null>;
  /** From the request's arrival in the service to its end (queueing included). */
  durationMs: number;
  /** Until the first delta of any choice; undefined when none came. */
  firstTokenMs?: number;
  /** Waiting in the model's admission queue. */
  queueMs: number;
}

/** Who asked, as the record carries it. */
export type RecordContext = Pick<CompletionRecord, 'requestId' | 'keyId' | 'keyName' | 'user' | 'metered'>;

/** Counts one request's choices as they are post-processed. */
export class CompletionTally {
  private readonly processors: Array<ChoicePostProcessor | undefined> = [];
  private readonly finishes: Array<{ finishReason: FinishReason; completionTokens: number; reasoningTokens: number } | undefined> = [];
  private firstTokenAt: number | undefined;
  status: CompletionStatus = 'completed';
  queueMs = 0;

  constructor(
    private readonly context: RecordContext,
    private readonly model: string,
    private readonly startedAt: number,
  ) {}

  track(index: number, processor: ChoicePostProcessor): void {
    this.processors[index] = processor;
  }

  delta(): void {
    this.firstTokenAt ??= performance.now();
  }

  finished(index: number, finish: { finishReason: FinishReason; completionTokens: number; reasoningTokens: number }): void {
    this.finishes[index] = finish;
  }

  record(run: EngineRun | undefined, n: number): CompletionRecord {
    let completionTokens = 0;
    let reasoningTokens = 0;
    const finishReasons: Array<FinishReason | null> = [];
    for (let index = 0; index < n; index++) {
      const counts = this.finishes[index] ?? this.processors[index]?.tokensSoFar;
      completionTokens += counts?.completionTokens ?? 0;
      reasoningTokens += counts?.reasoningTokens ?? 0;
      finishReasons.push(this.finishes[index]?.finishReason ?? null);
    }
    if (this.status === 'completed' && finishReasons.includes(null)) this.status = 'cancelled';
    // Built field by field: once per request, and spreads of optional parts cost more than the rest of this.
    const { requestId, keyId, keyName, user, metered } = this.context;
    const record: CompletionRecord = {
      keyId,
      keyName,
      model: this.model,
      promptTokens: run?.promptTokens ?? 0,
      cachedTokens: run?.cachedTokens ?? 0,
      completionTokens,
      reasoningTokens,
      status: this.status,
      finishReasons,
      durationMs: Math.round(performance.now() - this.startedAt),
      queueMs: Math.round(this.queueMs),
    };
    if (requestId !== undefined) record.requestId = requestId;
    if (user !== undefined) record.user = user;
    if (metered === true) record.metered = true;
    if (run?.deployment !== undefined) record.deployment = run.deployment;
    if (this.firstTokenAt !== undefined) record.firstTokenMs = Math.round(this.firstTokenAt - this.startedAt);
    return record;
  }
}
