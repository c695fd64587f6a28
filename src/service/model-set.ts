/**
 * The served models of one configuration, and the change to another without a restart: ids added appear, ids removed
 * (or `enabled: false`) stop taking requests and answer "model disabled", ids whose settings changed get a new
 * engine. What is no longer served is retired: it finishes what it admitted (in-flight and queued requests), then
 * its engines close and its memory goes back. What did not change keeps its engine, queue and loaded weights.
 */
import type { ModelConfig } from '../config/config.js';
import type { ChatEngine } from '../core/engine.js';
import type { Log } from '../core/log.js';
import { Admission } from './admission.js';
import { createServingEngine, type DeploymentSpec, type EngineFactoryContext } from './engine-factory.js';
import type { ManagedEngine } from './model-lifecycle.js';
import type { ModelEntry, ModelRegistry, ServedModel } from './model-registry.js';
import type { Router } from './routing/router.js';

/** How often a retired model is checked for its last request. */
const RETIRE_POLL_MS = 200;

interface ServedRecord {
  served: ServedModel;
  router?: Router;
  /** Upstream engines made for it (closed with it). */
  upstreams: ChatEngine[];
  /** Local engines it uses (closed when no record uses them any more). */
  locals: ManagedEngine[];
}

export interface ModelPlan {
  model: ModelConfig;
  specs: DeploymentSpec[];
  /** Everything the served model is built from: equal keys share one engine and queue. */
  key: string;
  queue: { depth: number; waitMs: number };
}

export interface ReloadSummary {
  added: string[];
  removed: string[];
  changed: string[];
  unchanged: number;
}

export class ModelSet {
  private records = new Map<string, ServedRecord>();
  /** The key each id was served with, to tell changed ids from unchanged. */
  private keysById = new Map<string, string>();
  private readonly retiring = new Set<Promise<void>>();

  constructor(
    private readonly registry: ModelRegistry,
    private readonly context: EngineFactoryContext,
    private readonly log: Log,
  ) {}

  /**
   * Serves `plans` (enabled models) and disables `disabled` ids. Builds every new engine before anything changes, so
   * that a configuration that cannot be built leaves the running one as it was.
   */
  async apply(plans: ModelPlan[], disabled: readonly string[]): Promise<ReloadSummary> {
    const next = new Map<string, ServedRecord>();
    const made: ServedRecord[] = [];
    try {
      for (const plan of plans) {
        if (next.has(plan.key)) continue;
        const kept = this.records.get(plan.key);
        if (kept !== undefined) {
          next.set(plan.key, kept);
          continue;
        }
        const record = this.build(plan);
        made.push(record);
        next.set(plan.key, record);
      }
    } catch (error) {
      // Engines the running models share with what was built stay open.
      await Promise.allSettled(made.map((record) => this.closeRecord(record)));
      throw error;
    }

    const created = Math.floor(Date.now() / 1000);
    const entries: ModelEntry[] = plans.map(({ model, specs, key }) => {
      const local = specs.find((spec) => spec.kind === 'llama');
      const previous = this.keysById.get(model.id) === key ? this.registry.entry(model.id) : undefined;
      return {
        id: model.id,
        served: next.get(key)!.served,
        ownedBy: model.owned_by ?? 'kiln',
        created: previous?.created ?? created,
        ...(local?.kind === 'llama' ? { file: local.settings.file } : {}),
      };
    });
    const summary = this.summarise(plans, disabled);
    const offline = [...new Set([...disabled, ...summary.removed])];
    this.registry.replace(entries, offline);
    const retired = [...this.records].filter(([key]) => !next.has(key)).map(([, record]) => record);
    this.records = next;
    this.keysById = new Map(plans.map(({ model, key }) => [model.id, key]));
    for (const record of retired) this.retire(record);
    return summary;
  }

  /** Preloads the local engines of these ids (models marked `preload`). */
  async preload(ids: readonly string[]): Promise<void> {
    const engines = new Set<ManagedEngine>();
    for (const id of ids) {
      const record = this.records.get(this.keysById.get(id) ?? '');
      record?.locals.forEach((engine) => engines.add(engine));
    }
    await Promise.all([...engines].map((engine) => engine.preload()));
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.retiring]);
    await Promise.allSettled([...this.records.values()].map((record) => this.closeRecord(record, { all: true })));
  }

  private build(plan: ModelPlan): ServedRecord {
    const holder: { admission?: Admission } = {};
    const { engine, router, upstreams } = createServingEngine(plan.model, plan.specs, this.context, () => holder.admission?.poke());
    holder.admission = new Admission(() => engine.capacity(), plan.queue);
    const locals = plan.specs.flatMap((spec) => (spec.kind === 'llama' ? [this.context.llamaEngines.get(spec.key)!] : []));
    return { served: { engine, admission: holder.admission }, ...(router !== undefined ? { router } : {}), upstreams, locals };
  }

  private summarise(plans: ModelPlan[], disabled: readonly string[]): ReloadSummary {
    const ids = new Set(plans.map(({ model }) => model.id));
    const summary: ReloadSummary = { added: [], removed: [], changed: [], unchanged: 0 };
    for (const { model, key } of plans) {
      const before = this.keysById.get(model.id);
      if (before === undefined) summary.added.push(model.id);
      else if (before !== key) summary.changed.push(model.id);
      else summary.unchanged++;
    }
    for (const id of this.keysById.keys()) if (!ids.has(id)) summary.removed.push(id);
    for (const id of disabled) if (!summary.removed.includes(id) && this.keysById.has(id)) summary.removed.push(id);
    return summary;
  }

  /** Lets a record no longer served finish what it admitted, then closes what nothing else uses. */
  private retire(record: ServedRecord): void {
    const done = (async () => {
      const { admission } = record.served;
      while (admission.runningUnits > 0 || admission.waiting > 0) await new Promise((resolve) => setTimeout(resolve, RETIRE_POLL_MS));
      await this.closeRecord(record);
      this.log.info({ engine: record.served.engine.description.name }, 'retired model closed');
    })();
    this.retiring.add(done);
    void done.finally(() => this.retiring.delete(done));
  }

  /**
   * Closes a record's router, upstreams and the local engines no served model still uses (unless `all`). The unused
   * engines leave the shared map before anything is awaited, so a reload meanwhile cannot pick one up as it closes.
   */
  private async closeRecord(record: ServedRecord, options: { all?: boolean } = {}): Promise<void> {
    const inUse = options.all ? new Set<ManagedEngine>() : new Set([...this.records.values()].flatMap((kept) => kept.locals));
    const unused = record.locals.filter((engine) => !inUse.has(engine));
    for (const engine of unused) {
      for (const [key, value] of this.context.llamaEngines) if (value === engine) this.context.llamaEngines.delete(key);
    }
    await record.router?.close();
    await Promise.allSettled(record.upstreams.map((engine) => engine.close()));
    await Promise.allSettled(unused.map((engine) => engine.close()));
  }

}
