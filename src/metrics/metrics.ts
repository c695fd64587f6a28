/**
 * Kiln's Prometheus metrics (`GET /metrics`), named after vLLM's with the `kiln:` prefix so that dashboards built for
 * vLLM adapt with a prefix change (docs/metrics.md lists each one and its vLLM counterpart). Each instance owns its
 * registry: several servers may live in one process (tests), and nothing leaks into prom-client's global one.
 *
 * Request metrics are counted from the one completion record each request ends with; queues, lifecycle states and
 * deployment health are read from their owners at scrape time (sources.ts).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { MetricsSources } from './sources.js';

export type { MetricsSources, ServedSnapshot } from './sources.js';
export { metricsSourcesFromRegistry } from './sources.js';

/** What one request that reached an engine did; the service's CompletionRecord is one. */
export interface CompletionObservation {
  /** The requested model id. */
  model: string;
  status: 'completed' | 'cancelled' | 'failed';
  /** Per choice; null for a choice that did not finish. */
  finishReasons: ReadonlyArray<string | null>;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  reasoningTokens: number;
  /** From arrival in the service to the end, queueing included. */
  durationMs: number;
  /** From arrival to the first delta; undefined when none came. */
  firstTokenMs?: number;
  /** Waiting for admission. */
  queueMs?: number;
}

export interface MetricsOptions {
  /** prom-client's process and Node.js metrics (`process_*`, `nodejs_*`) in the same registry; default true. */
  processMetrics?: boolean;
}

// vLLM's buckets (vllm/v1/metrics/loggers.py), so that its dashboards' quantiles read the same.
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];
/** vLLM's 1-2-5 series up to the model's context length; Kiln's models differ, so up to a million tokens. */
const TOKEN_BUCKETS = oneTwoFive(1_000_000);

/** Every state an engine reports (core/engine.ts EngineState): each id has one series per state, 1 for its own. */
const MODEL_STATES = ['unloaded', 'loading', 'ready', 'draining', 'upstream'] as const;

type CounterChild = Counter.Internal;
type HistogramChild = Histogram.Internal<string>;

/** One model's labelled series, bound once: the request path then only increments. */
interface ModelSeries {
  requests: Record<CompletionObservation['status'], CounterChild>;
  success: Map<string, CounterChild>;
  promptTokens: CounterChild;
  cachedTokens: CounterChild;
  generationTokens: CounterChild;
  reasoningTokens: CounterChild;
  ttft: HistogramChild;
  tpot: HistogramChild;
  e2e: HistogramChild;
  queue: HistogramChild;
  promptLength: HistogramChild;
  generationLength: HistogramChild;
}

export class Metrics {
  private readonly registry = new Registry();
  private readonly series = new Map<string, ModelSeries>();

  private readonly requests = this.counter('kiln:requests_total', 'Requests that reached an engine, by how they ended.', ['status']);
  private readonly rejected = this.counter('kiln:requests_rejected_total', 'Requests answered with an error before reaching an engine, by HTTP status.', ['code']);
  private readonly success = this.counter('kiln:request_success_total', 'Choices that ended, by finish reason (abort: cancelled, error: failed).', ['finished_reason']);
  private readonly promptTokens = this.counter('kiln:prompt_tokens_total', 'Prompt tokens of requests that reached an engine.');
  private readonly cachedTokens = this.counter('kiln:prompt_tokens_cached_total', 'Prompt tokens served from a prefix cache.');
  private readonly generationTokens = this.counter('kiln:generation_tokens_total', 'Tokens generated, every choice counted.');
  private readonly reasoningTokens = this.counter('kiln:reasoning_tokens_total', 'Generated tokens that were reasoning (part of generation_tokens).');

  private readonly ttft = this.histogram('kiln:time_to_first_token_seconds', 'From arrival to the first token, queueing and loading included.', TTFT_BUCKETS);
  private readonly tpot = this.histogram('kiln:time_per_output_token_seconds', "Each request's mean time per output token after the first.", TPOT_BUCKETS);
  private readonly e2e = this.histogram('kiln:e2e_request_latency_seconds', 'From arrival to the end, however the request ended.', LATENCY_BUCKETS);
  private readonly queue = this.histogram('kiln:request_queue_time_seconds', "Time spent waiting in the model's admission queue.", LATENCY_BUCKETS);
  private readonly promptLength = this.histogram('kiln:request_prompt_tokens', 'Prompt tokens per request.', TOKEN_BUCKETS);
  private readonly generationLength = this.histogram('kiln:request_generation_tokens', 'Generated tokens per request, every choice counted.', TOKEN_BUCKETS);

  private readonly running = this.gauge('kiln:num_requests_running', 'Choices running on a served model (a request of n choices counts n).', ['model_name']);
  private readonly waiting = this.gauge('kiln:num_requests_waiting', "Requests waiting in a served model's admission queue.", ['model_name']);
  private readonly modelState = this.gauge('kiln:model_state', "1 for a model id's current lifecycle state, 0 for the others.", ['model_name', 'state']);
  private readonly promptCacheBytes = this.gauge('kiln:prompt_cache_bytes', "Bytes of prompt states in a local model's prompt cache, by tier (ram, disk).", ['model_name', 'tier']);
  private readonly promptCacheEntries = this.gauge('kiln:prompt_cache_entries', "Prompt states in a local model's prompt cache, by tier (ram, disk).", ['model_name', 'tier']);
  private readonly deploymentHealthy = this.gauge('kiln:deployment_healthy', '1 while an upstream deployment is in service, 0 while ejected or awaiting its probe.', ['model_name', 'deployment']);

  readonly contentType: string = this.registry.contentType;

  constructor(
    private readonly sources?: MetricsSources,
    options: MetricsOptions = {},
  ) {
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Counts one request that reached an engine, however it ended. */
  observeCompletion(record: CompletionObservation): void {
    const series = this.seriesOf(record.model);
    series.requests[record.status].inc();
    for (const reason of record.finishReasons) {
      // vLLM's reasons for a choice that did not finish: `abort` (cancelled), `error` (failed).
      const label = reason ?? (record.status === 'failed' ? 'error' : 'abort');
      let child = series.success.get(label);
      if (child === undefined) {
        child = this.success.labels(record.model, label);
        series.success.set(label, child);
      }
      child.inc();
    }
    series.promptTokens.inc(record.promptTokens);
    series.cachedTokens.inc(record.cachedTokens);
    series.generationTokens.inc(record.completionTokens);
    series.reasoningTokens.inc(record.reasoningTokens);
    series.promptLength.observe(record.promptTokens);
    series.generationLength.observe(record.completionTokens);
    series.e2e.observe(record.durationMs / 1000);
    if (record.queueMs !== undefined) series.queue.observe(record.queueMs / 1000);
    if (record.firstTokenMs === undefined) return;
    series.ttft.observe(record.firstTokenMs / 1000);
    // Choices generate side by side: the time after the first token is spread over one choice's share of the tokens.
    const perChoice = record.completionTokens / Math.max(1, record.finishReasons.length);
    if (perChoice >= 2) series.tpot.observe(Math.max(0, record.durationMs - record.firstTokenMs) / 1000 / (perChoice - 1));
  }

  /**
   * Counts a request answered with an error before any engine ran it (bad request, unknown model, refused key, rate
   * limit, full queue, no healthy deployment…). `model` labels it only when it is a served id.
   */
  observeRejection(model: string | undefined, status: number): void {
    const label = model !== undefined && this.sources?.serves(model) === true ? model : '';
    this.rejected.labels(label, String(status)).inc();
  }

  /** The Prometheus text exposition, with the gauges read from their sources now. */
  async render(): Promise<string> {
    this.refreshGauges();
    return this.registry.metrics();
  }

  private refreshGauges(): void {
    this.running.reset();
    this.waiting.reset();
    this.modelState.reset();
    this.deploymentHealthy.reset();
    this.promptCacheBytes.reset();
    this.promptCacheEntries.reset();
    if (this.sources === undefined) return;
    for (const { id, state = 'ready' } of this.sources.models()) {
      for (const each of MODEL_STATES) this.modelState.set({ model_name: id, state: each }, each === state ? 1 : 0);
    }
    for (const served of this.sources.served()) {
      this.running.set({ model_name: served.id }, served.running);
      this.waiting.set({ model_name: served.id }, served.waiting);
      const cache = served.promptCache;
      if (cache !== undefined) {
        this.promptCacheBytes.set({ model_name: served.id, tier: 'ram' }, cache.ramBytes);
        this.promptCacheBytes.set({ model_name: served.id, tier: 'disk' }, cache.diskBytes);
        this.promptCacheEntries.set({ model_name: served.id, tier: 'ram' }, cache.ramEntries);
        this.promptCacheEntries.set({ model_name: served.id, tier: 'disk' }, cache.diskEntries);
      }
      for (const { name, healthy } of served.deployments ?? []) {
        this.deploymentHealthy.set({ model_name: served.id, deployment: name }, healthy ? 1 : 0);
      }
    }
  }

  private seriesOf(model: string): ModelSeries {
    let series = this.series.get(model);
    if (series !== undefined) return series;
    series = {
      requests: {
        completed: this.requests.labels(model, 'completed'),
        cancelled: this.requests.labels(model, 'cancelled'),
        failed: this.requests.labels(model, 'failed'),
      },
      success: new Map(),
      promptTokens: this.promptTokens.labels(model),
      cachedTokens: this.cachedTokens.labels(model),
      generationTokens: this.generationTokens.labels(model),
      reasoningTokens: this.reasoningTokens.labels(model),
      ttft: this.ttft.labels(model),
      tpot: this.tpot.labels(model),
      e2e: this.e2e.labels(model),
      queue: this.queue.labels(model),
      promptLength: this.promptLength.labels(model),
      generationLength: this.generationLength.labels(model),
    };
    // Every status from the first request on, so that rate() and ratios see 0 rather than no series.
    for (const child of Object.values(series.requests)) child.inc(0);
    this.series.set(model, series);
    return series;
  }

  private counter(name: string, help: string, extra: string[] = []): Counter<string> {
    return new Counter({ name, help, labelNames: ['model_name', ...extra], registers: [this.registry] });
  }

  private histogram(name: string, help: string, buckets: number[]): Histogram<string> {
    return new Histogram({ name, help, labelNames: ['model_name'], buckets, registers: [this.registry] });
  }

  private gauge(name: string, help: string, labelNames: string[]): Gauge<string> {
    return new Gauge({ name, help, labelNames, registers: [this.registry] });
  }
}

function oneTwoFive(max: number): number[] {
  const buckets: number[] = [];
  for (let scale = 1; ; scale *= 10) {
    for (const mantissa of [1, 2, 5]) {
      if (mantissa * scale > max) return buckets;
      buckets.push(mantissa * scale);
    }
  }
}
