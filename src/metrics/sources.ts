/**
 * What the metrics read at scrape time rather than count as requests go: queues, lifecycle states and deployment
 * health, taken from the live model registry, so that a reload's new models appear at the next scrape and retired ones
 * disappear with no bookkeeping on the request path.
 */
import type { PromptCacheUse } from '../core/engine.js';
import type { Admission } from '../service/admission.js';
import type { ModelRegistry } from '../service/model-registry.js';
import { Router } from '../service/routing/router.js';

/** One served model's load: ids sharing an engine and queue (`X`, `Pro/X`) are one served model. */
export interface ServedSnapshot {
  /** The label it is reported under: the first of its ids in the configuration. */
  id: string;
  /** Choices running (a request of `n` choices counts `n`, as vLLM counts each of its `n` sequences). */
  running: number;
  /** Requests waiting in its admission queue. */
  waiting: number;
  /** What its local engine's prompt cache holds, when it has one. */
  promptCache?: PromptCacheUse;
  /** Its deployments when a router serves it; names as the router logs them, never URLs. */
  deployments?: ReadonlyArray<{ name: string; healthy: boolean }>;
}

export interface MetricsSources {
  /** Every served id with its lifecycle state (`ready` when its engine does not say). */
  models(): Iterable<{ id: string; state?: string }>;
  /** Each served model once. */
  served(): Iterable<ServedSnapshot>;
  /**
   * Whether `id` is served: a refused request is labelled with its model only then, so that clients sending made-up
   * model ids cannot grow the number of series without bound.
   */
  serves(id: string): boolean;
}

export function metricsSourcesFromRegistry(registry: ModelRegistry): MetricsSources {
  return {
    *models() {
      for (const entry of registry.all()) yield { id: entry.id, state: entry.served.engine.status?.().state ?? 'ready' };
    },
    *served() {
      const seen = new Set<Admission>();
      for (const { id, served } of registry.all()) {
        if (seen.has(served.admission)) continue;
        seen.add(served.admission);
        const { engine, admission } = served;
        const snapshot: ServedSnapshot = { id, running: admission.runningUnits, waiting: admission.waiting };
        // A probing deployment is still ejected until its probe answers: counted unhealthy.
        const promptCache = engine.status?.().promptCache;
        if (promptCache !== undefined) snapshot.promptCache = promptCache;
        if (engine instanceof Router) snapshot.deployments = engine.stats().map(({ name, state }) => ({ name, healthy: state === 'healthy' }));
        yield snapshot;
      }
    },
    serves: (id) => registry.entry(id) !== undefined,
  };
}
