/**
 * One OpenAI-compatible server (one deployment: vLLM, SGLang, llama-server, Ollama's /v1, TGI, another Kiln) as a
 * ChatEngine. The request goes out explicit (upstream-request.ts), the answer comes back as the raw text the shared
 * post-processor reads (upstream-stream.ts), and what fails before the first event is a DeploymentFailure that a
 * router may retry elsewhere (upstream-errors.ts).
 *
 * The base URL and the API key are secrets: neither appears in a log line or an error message.
 */
import { Pool } from 'undici';
import type { ChatRequest } from '../../core/chat-request.js';
import type { ChatEngine, EngineDescription, EngineRun, EngineStatus } from '../../core/engine.js';
import type { Log } from '../../core/log.js';
import { KilnError } from '../../errors/catalog.js';
import { identitySecrets, transportCode, type UpstreamIdentity } from './upstream-errors.js';
import { ChoiceExchange, type ExchangeContext } from './upstream-exchange.js';
import { wireBody } from './upstream-request.js';
import { UpstreamRun } from './upstream-run.js';

export interface UpstreamTimeouts {
  connectMs: number;
  firstTokenMs: number;
  idleMs: number;
  totalMs: number;
}

export interface UpstreamEngineSettings {
  /** Safe to log (never the URL). */
  name: string;
  /** The server's OpenAI base URL, e.g. http://gpu-node:8000/v1. Secret: never logged or returned. */
  baseUrl: string;
  /** The model name the server serves. */
  model: string;
  /** Secret: never logged or returned. */
  apiKey?: string;
  /** Whether the model reasons (`auto`: it may; reasoning is split out when the server sends it or inlines <think>). */
  reasoning: 'auto' | 'on' | 'off';
  /** Requests (choices) in flight to it at most; sizes the connection pool. */
  maxConcurrency: number;
  timeouts: UpstreamTimeouts;
  log: Log;
}

/** A probe waits at most this long for the answer after connecting, however long first tokens may take. */
const PROBE_ANSWER_MS = 5_000;

export class UpstreamEngine implements ChatEngine {
  readonly description: EngineDescription;
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly search: string;
  private readonly identity: UpstreamIdentity;
  private readonly context: ExchangeContext;
  private readonly inFlight = new Set<ChoiceExchange>();
  private warnedNoUsage = false;
  private closed = false;

  constructor(private readonly settings: UpstreamEngineSettings) {
    this.description = { name: `upstream:${settings.name}`, supportsImages: false };
    const url = new URL(settings.baseUrl);
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.search = url.search;
    this.identity = { name: settings.name, secrets: identitySecrets(settings.baseUrl, settings.apiKey) };
    this.pool = new Pool(url.origin, {
      // One more than the choices admitted, so a health probe does not queue behind long generations.
      connections: Math.max(1, settings.maxConcurrency) + 1,
      connect: { timeout: settings.timeouts.connectMs },
      // Timeouts are the exchange's own (first token, idle while the consumer waits, total): undici's would also
      // fire while a slow client holds the stream back.
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: 30_000,
    });
    const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'text/event-stream' };
    if (settings.apiKey !== undefined && settings.apiKey !== '') headers.authorization = `Bearer ${settings.apiKey}`;
    this.context = {
      pool: this.pool,
      path: `${this.basePath}/chat/completions${this.search}`,
      headers,
      identity: this.identity,
      timeouts: settings.timeouts,
      keepReasoning: settings.reasoning !== 'off',
      log: settings.log,
      onNoUsage: () => {
        if (this.warnedNoUsage) return;
        this.warnedNoUsage = true;
        settings.log.warn({ deployment: settings.name }, 'upstream sent no usage; token counts are estimated');
      },
    };
  }

  capacity(): number {
    return this.settings.maxConcurrency;
  }

  status(): EngineStatus {
    return { state: 'upstream' };
  }

  async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    signal.throwIfAborted();
    if (this.closed) throw new KilnError('shuttingDown');
    const exchanges = Array.from({ length: request.n }, (_, index) => {
      const exchange = new ChoiceExchange(this.context, JSON.stringify(wireBody(request, this.settings, index)), signal);
      this.inFlight.add(exchange);
      return exchange;
    });
    const opening = exchanges.map((exchange) => exchange.open());
    try {
      await Promise.all(opening);
    } catch (error) {
      // One choice failed: the others would only hold connections (and the upstream's slots) for nothing.
      for (const exchange of exchanges) {
        exchange.abort();
        this.inFlight.delete(exchange);
      }
      await Promise.allSettled(opening);
      if (signal.aborted) throw signal.reason;
      throw error;
    }
    return new UpstreamRun(request, exchanges, this.settings.reasoning === 'off' ? 'off' : 'optional', (exchange) => this.inFlight.delete(exchange));
  }

  async probe(signal: AbortSignal): Promise<void> {
    const controller = new AbortController();
    const stop = (): void => controller.abort(new Error('probe stopped'));
    signal.addEventListener('abort', stop, { once: true });
    const timer = setTimeout(stop, this.settings.timeouts.connectMs + Math.min(this.settings.timeouts.firstTokenMs, PROBE_ANSWER_MS));
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.settings.apiKey !== undefined && this.settings.apiKey !== '') headers.authorization = `Bearer ${this.settings.apiKey}`;
    try {
      const response = await this.pool.request({ path: `${this.basePath}/models${this.search}`, method: 'GET', headers, signal: controller.signal });
      await response.body.dump({ limit: 256 * 1024 }).catch(() => undefined);
      if (response.statusCode < 200 || response.statusCode >= 300) {
        throw new KilnError('upstreamUnavailable', { message: `upstream '${this.settings.name}' answered ${response.statusCode} to its health check` });
      }
    } catch (error) {
      if (error instanceof KilnError) throw error;
      signal.throwIfAborted();
      const why = controller.signal.aborted ? 'timed out' : (transportCode(error) ?? 'unknown error');
      throw new KilnError('upstreamUnavailable', { message: `upstream '${this.settings.name}' could not be reached (${why})` });
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', stop);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const exchange of this.inFlight) exchange.abort();
    this.inFlight.clear();
    await this.pool.destroy().catch(() => undefined);
  }
}
