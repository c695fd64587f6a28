/**
 * One choice's HTTP exchange with the upstream: the request, its answer up to the first event (what the router may
 * still retry elsewhere), then the rest of the stream as engine events, read only as fast as the consumer pulls.
 *
 * Timeouts: the first event within firstTokenMs of sending (connecting included; undici bounds the connect itself by
 * connectMs), the whole exchange within totalMs, and each later event within idleMs of the consumer asking for it —
 * time a slow client spends not asking is not the upstream's idleness (the total timeout still bounds it).
 *
 * Every way it can stop — the client gone, a timeout, the consumer done, the run disposed — aborts the request, which
 * destroys the socket (a half-read response cannot go back to the pool). Only a response read to its end keeps its
 * connection for the next request.
 */
import type { Pool } from 'undici';
import type { EngineEndEvent, EngineEvent } from '../../core/engine.js';
import type { Log } from '../../core/log.js';
import { midStreamFailure, openFailure, statusFailure, streamFailure, type StopReason, type UpstreamIdentity } from './upstream-errors.js';
import type { UpstreamTimeouts } from './upstream-engine.js';
import { chunkError, DeltaNormaliser, isProgress, MalformedStreamError, parseChunk, SseReader, UpstreamReportedError, type Chunk, type UpstreamUsage } from './upstream-stream.js';

export interface ExchangeContext {
  pool: Pool;
  path: string;
  headers: Record<string, string>;
  identity: UpstreamIdentity;
  timeouts: UpstreamTimeouts;
  /** False when the model is configured not to reason: reasoning text the server sends is dropped. */
  keepReasoning: boolean;
  log: Log;
  /** Called when a stream ended without usage (the engine warns once). */
  onNoUsage: () => void;
}

/** The most of an error body read for its message. */
const ERROR_BODY_BYTES = 64 * 1024;
/** The most of a whole (non-streamed) completion read. */
const JSON_BODY_BYTES = 16 * 1024 * 1024;
/** After `[DONE]`, how long the end of the body may take before the connection is given up instead of reused. */
const DRAIN_MS = 1_000;

type StreamItem = Chunk | 'done' | 'end';

export class ChoiceExchange {
  private readonly controller = new AbortController();
  private stopReason: StopReason | undefined;
  private readonly timers = new Map<StopReason, NodeJS.Timeout>();
  private idleTimer: NodeJS.Timeout | undefined;
  /** When the consumer began waiting for the next event; undefined while it is not waiting. */
  private idleWaitSince: number | undefined;
  private iterator: AsyncIterator<Uint8Array> | undefined;
  private reader: SseReader | undefined;
  /** A whole completion, when the server answered JSON instead of streaming. */
  private whole: Chunk | undefined;
  /** What was read while opening, replayed first. */
  private readonly early: StreamItem[] = [];
  private readonly normaliser: DeltaNormaliser;
  private bodyEnded = false;
  private sawDone = false;
  private settled = false;

  constructor(
    private readonly context: ExchangeContext,
    private readonly requestBody: string,
    private readonly signal: AbortSignal,
  ) {
    this.normaliser = new DeltaNormaliser(context.keepReasoning);
    this.signal.addEventListener('abort', this.onClientAbort, { once: true });
    this.arm('total', context.timeouts.totalMs);
  }

  get usage(): UpstreamUsage | undefined {
    return this.normaliser.usage;
  }

  /**
   * Sends the request and waits for its status and first event. Rejects with a DeploymentFailure, or with the
   * client's abort reason; the request is then already aborted.
   */
  async open(): Promise<void> {
    try {
      this.signal.throwIfAborted();
      this.arm('firstToken', this.context.timeouts.firstTokenMs);
      const response = await this.context.pool.request({
        path: this.context.path,
        method: 'POST',
        headers: this.context.headers,
        body: this.requestBody,
        signal: this.controller.signal,
      });
      // A destroyed body also emits 'error'; reads report it, so it needs no listener of its own.
      response.body.on('error', () => undefined);
      this.iterator = response.body[Symbol.asyncIterator]();
      if (response.statusCode < 200 || response.statusCode >= 300) {
        const { text } = await this.readText(ERROR_BODY_BYTES);
        throw statusFailure(response.statusCode, response.headers['retry-after'], text, this.context.identity);
      }
      const type = String(response.headers['content-type'] ?? '');
      if (type.includes('application/json')) await this.openWhole();
      else await this.openStream();
    } catch (error) {
      const failure = this.signal.aborted ? this.signal.reason : openFailure(error, this.stopReason, this.context);
      this.release();
      throw failure;
    } finally {
      this.disarm('firstToken');
    }
  }

  /** The choice's events; ending the iteration early aborts the request. */
  async *events(): AsyncGenerator<EngineEvent, void, undefined> {
    try {
      if (this.whole !== undefined) {
        const text = this.normaliser.chunk(this.whole);
        if (text !== '') yield { type: 'text', text, tokens: 1 };
      } else {
        for (;;) {
          const item = this.early.shift() ?? (await this.next(true));
          if (item === 'done') break;
          if (item === 'end') {
            // A body that ends without a finish reason or `[DONE]` was cut off.
            if (this.normaliser.finishReason === undefined) throw midStreamFailure();
            break;
          }
          const text = this.normaliser.chunk(item);
          if (text === '') continue;
          yield { type: 'text', text, tokens: 1 };
        }
      }
      const closing = this.normaliser.finish();
      if (closing !== '') yield { type: 'text', text: closing, tokens: 0 };
      const usage = this.normaliser.usage;
      if (usage === undefined) this.context.onNoUsage();
      yield { type: 'end', reason: this.normaliser.finishReason === 'length' ? 'length' : 'eog', ...endUsage(usage) };
    } catch (error) {
      throw this.signal.aborted ? this.signal.reason : streamFailure(error, this.stopReason, this.context);
    } finally {
      this.release();
    }
  }

  /** Aborts the request at once (a sibling choice failed, the run was disposed, the engine closes). */
  abort(): void {
    this.release();
  }

  private async openWhole(): Promise<void> {
    const { text, complete } = await this.readText(JSON_BODY_BYTES);
    if (!complete) throw new MalformedStreamError('the completion exceeded the size limit');
    const chunk = parseChunk(text);
    const error = chunkError(chunk);
    if (error !== undefined) throw new UpstreamReportedError(error);
    // A whole message's tool calls carry no index (streamed ones do): number them so that each is a call of its own.
    const message = (chunk.choices as Array<{ message?: { tool_calls?: unknown } }> | undefined)?.[0]?.message;
    if (Array.isArray(message?.tool_calls)) {
      message.tool_calls = message.tool_calls.map((call: unknown, index) => (typeof call === 'object' && call !== null ? { index, ...call } : call));
    }
    this.whole = chunk;
  }

  private async openStream(): Promise<void> {
    this.reader = new SseReader(() => this.read());
    for (;;) {
      const item = await this.next(false);
      if (item === 'end') throw new MalformedStreamError('the stream ended before its first event');
      if (item !== 'done') {
        const error = chunkError(item);
        if (error !== undefined) throw new UpstreamReportedError(error);
      }
      this.early.push(item);
      if (item === 'done' || isProgress(item)) return;
    }
  }

  /** The next chunk of the stream; `idle` bounds the wait by the idle timeout (after the first event). */
  private async next(idle: boolean): Promise<StreamItem> {
    if (idle) this.startIdleWait();
    try {
      for (;;) {
        const item = await this.reader!.next();
        if (item.type === 'end') return 'end';
        const data = item.data.trim();
        if (data === '') continue; // keep-alive
        if (data === '[DONE]') {
          this.sawDone = true;
          return 'done';
        }
        return parseChunk(data);
      }
    } finally {
      if (idle) this.idleWaitSince = undefined;
    }
  }

  /**
   * The idle timeout without a timer per event (setting and clearing one for every chunk was a visible share of a
   * gateway request's CPU): one timer, re-armed for what is left of the wait when it fires early.
   */
  private startIdleWait(): void {
    this.idleWaitSince = performance.now();
    if (this.idleTimer === undefined) this.armIdle(this.context.timeouts.idleMs);
  }

  private armIdle(ms: number): void {
    this.idleTimer = setTimeout(this.onIdleTimer, ms);
    this.idleTimer.unref();
  }

  private readonly onIdleTimer = (): void => {
    this.idleTimer = undefined;
    // Not waiting now: the next wait arms it again.
    if (this.idleWaitSince === undefined || this.settled) return;
    const waited = performance.now() - this.idleWaitSince;
    if (waited >= this.context.timeouts.idleMs) this.stop('idle');
    else this.armIdle(this.context.timeouts.idleMs - waited);
  };

  private async read(): Promise<IteratorResult<Uint8Array>> {
    const result = await this.iterator!.next();
    if (result.done === true) this.bodyEnded = true;
    return result;
  }

  private async readText(limit: number): Promise<{ text: string; complete: boolean }> {
    const chunks: Buffer[] = [];
    let bytes = 0;
    for (;;) {
      const result = await this.read();
      if (result.done === true) return { text: Buffer.concat(chunks).toString('utf8'), complete: true };
      chunks.push(Buffer.from(result.value));
      bytes += result.value.byteLength;
      if (bytes >= limit) return { text: Buffer.concat(chunks).toString('utf8').slice(0, limit), complete: false };
    }
  }

  private arm(reason: StopReason, ms: number): void {
    this.disarm(reason);
    const timer = setTimeout(() => this.stop(reason), ms);
    timer.unref();
    this.timers.set(reason, timer);
  }

  private disarm(reason: StopReason): void {
    const timer = this.timers.get(reason);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.timers.delete(reason);
  }

  private readonly onClientAbort = (): void => this.stop('client');

  private stop(reason: StopReason): void {
    this.stopReason ??= reason;
    // Undici rejects pending reads with this reason: it must not carry the upstream's address (its own errors do).
    this.controller.abort(new Error(`upstream request stopped (${reason})`));
  }

  /** Ends the exchange: the connection goes back to the pool when the body was read to its end, else it is closed. */
  private release(): void {
    if (this.settled) return;
    this.settled = true;
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.signal.removeEventListener('abort', this.onClientAbort);
    if (this.bodyEnded) return;
    if (this.sawDone && this.stopReason === undefined) {
      void this.drain();
      return;
    }
    this.stop('released');
  }

  /** After `[DONE]` only the end of the body is left: wait briefly for it so the connection can be reused. */
  private async drain(): Promise<void> {
    const timer = setTimeout(() => this.stop('released'), DRAIN_MS);
    timer.unref();
    try {
      for (let bytes = 0; bytes < ERROR_BODY_BYTES; ) {
        const result = await this.read();
        if (result.done === true) return;
        bytes += result.value.byteLength;
      }
      this.stop('released');
    } catch {
      // Aborted or reset: the connection is gone either way.
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The upstream's own output counts, for the fields it sent (the post-processor's tally stands in for the rest). */
function endUsage(usage: UpstreamUsage | undefined): Pick<EngineEndEvent, 'usage'> {
  const counts: NonNullable<EngineEndEvent['usage']> = {};
  if (usage?.completionTokens !== undefined) counts.completionTokens = usage.completionTokens;
  if (usage?.reasoningTokens !== undefined) counts.reasoningTokens = usage.reasoningTokens;
  return Object.keys(counts).length > 0 ? { usage: counts } : {};
}
