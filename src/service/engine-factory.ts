/**
 * The one place that turns configured deployments into engines: `kind: llama` (a local GGUF, in-process) or
 * `kind: upstream` (an OpenAI-compatible server). A model id with one local deployment is served by its engine
 * directly; any other list goes behind a router (balancing, health, failover).
 */
import { basename } from 'node:path';
import { ConfigError, type ModelConfig, type UpstreamConfig, type UpstreamPolicyConfig } from '../config/config.js';
import type { ChatEngine } from '../core/engine.js';
import type { Log } from '../core/log.js';
import { LlamaEngine, type LlamaEngineSettings } from '../engines/llama/llama-engine.js';
import { UpstreamEngine, type UpstreamTimeouts } from '../engines/upstream/upstream-engine.js';
import type { MemoryBudget } from './memory-budget.js';
import { ModelFile, type ModelFileSettings } from './model-file.js';
import { ManagedEngine, type LifecycleSettings } from './model-lifecycle.js';
import { Router, type Deployment, type RoutingPolicy } from './routing/router.js';

export type DeploymentSpec =
  | {
      kind: 'llama';
      settings: LlamaEngineSettings;
      lifecycle: LifecycleSettings;
      file: Omit<ModelFileSettings, 'modelId' | 'log'>;
      /** What the engine is built from: ids with equal keys share one engine (a reload keeps it when unchanged). */
      key: string;
    }
  | { kind: 'upstream'; name: string; config: UpstreamConfig; reasoning: 'auto' | 'on' | 'off' };

export const UPSTREAM_DEFAULTS = {
  weight: 1,
  maxConcurrency: 64,
  connectTimeoutMs: 5_000,
  firstTokenTimeoutMs: 60_000,
  idleTimeoutMs: 30_000,
  totalTimeoutMs: 600_000,
  maxAttempts: 3,
  retryBudgetMs: 30_000,
  failureThreshold: 3,
  ejectMs: 5_000,
  maxEjectMs: 60_000,
  healthCheckIntervalMs: 0,
} as const;

export function upstreamTimeouts(policy: UpstreamPolicyConfig): UpstreamTimeouts {
  return {
    connectMs: policy.connect_timeout_ms ?? UPSTREAM_DEFAULTS.connectTimeoutMs,
    firstTokenMs: policy.first_token_timeout_ms ?? UPSTREAM_DEFAULTS.firstTokenTimeoutMs,
    idleMs: policy.idle_timeout_ms ?? UPSTREAM_DEFAULTS.idleTimeoutMs,
    totalMs: policy.total_timeout_ms ?? UPSTREAM_DEFAULTS.totalTimeoutMs,
  };
}

export function routingPolicy(model: ModelConfig, policy: UpstreamPolicyConfig): RoutingPolicy {
  return {
    prefixAffinity: model.prefix_affinity ?? true,
    maxAttempts: policy.max_attempts ?? UPSTREAM_DEFAULTS.maxAttempts,
    retryBudgetMs: policy.retry_budget_ms ?? UPSTREAM_DEFAULTS.retryBudgetMs,
    failureThreshold: policy.failure_threshold ?? UPSTREAM_DEFAULTS.failureThreshold,
    ejectMs: policy.eject_ms ?? UPSTREAM_DEFAULTS.ejectMs,
    maxEjectMs: policy.max_eject_ms ?? UPSTREAM_DEFAULTS.maxEjectMs,
    healthCheckIntervalMs: policy.health_check_interval_ms ?? UPSTREAM_DEFAULTS.healthCheckIntervalMs,
  };
}

/** The upstream's API key from the environment; a variable that is named but unset stops the start-up. */
function apiKeyOf(modelId: string, name: string, config: UpstreamConfig, env: NodeJS.ProcessEnv): string | undefined {
  if (config.api_key_env === undefined) return undefined;
  const key = env[config.api_key_env];
  if (key === undefined || key === '') {
    throw new ConfigError(`model '${modelId}', upstream '${name}': environment variable ${config.api_key_env} (its api_key_env) is not set`);
  }
  return key;
}

export interface EngineFactoryContext {
  policy: UpstreamPolicyConfig;
  log: Log;
  env: NodeJS.ProcessEnv;
  /** Local engines by spec key, shared by every id that loads the same GGUF the same way; each loads on demand. */
  llamaEngines: Map<string, ManagedEngine>;
  /** The host memory local models may take together. */
  budget: MemoryBudget;
}

/** A deployment's engine: the shared local engine of its file, or a new upstream engine (its owner closes it). */
function createEngine(spec: DeploymentSpec, modelId: string, context: EngineFactoryContext): ChatEngine {
  if (spec.kind === 'llama') {
    let engine = context.llamaEngines.get(spec.key);
    if (engine === undefined) {
      const { settings } = spec;
      const expected = {
        description: { name: `llama.cpp:${basename(settings.file)}`, supportsImages: false, maxChoices: settings.parallel, maxChoicesReason: "its 'parallel' setting" },
        capacity: settings.parallel,
      };
      // Nothing is estimated or loaded before the file is there (a missing file answers 503 saying how to get it).
      const file = new ModelFile({ ...spec.file, modelId, log: context.log });
      const memory = {
        budget: context.budget,
        estimate: async () => {
          await file.ensurePresent();
          return LlamaEngine.estimateMemory(settings);
        },
      };
      const load = async () => {
        await file.ensurePresent();
        return LlamaEngine.load({ ...settings, log: context.log });
      };
      // Named by the first id that serves the file (ids sharing it are the same model, e.g. `X` and `Pro/X`).
      engine = new ManagedEngine(modelId, load, expected, spec.lifecycle, context.log, memory);
      context.llamaEngines.set(spec.key, engine);
    }
    return engine;
  }
  const { config } = spec;
  const apiKey = apiKeyOf(modelId, spec.name, config, context.env);
  return new UpstreamEngine({
    name: spec.name,
    baseUrl: config.url,
    model: config.model,
    ...(apiKey !== undefined ? { apiKey } : {}),
    reasoning: spec.reasoning,
    maxConcurrency: config.max_concurrency ?? UPSTREAM_DEFAULTS.maxConcurrency,
    timeouts: upstreamTimeouts(context.policy),
    log: context.log,
  });
}

/**
 * The engine serving one model id: its only local engine, or a router over all its deployments; with the upstream
 * engines made for it (closed with it — local engines are shared and closed by whoever tracks their users).
 */
export function createServingEngine(
  model: ModelConfig,
  specs: DeploymentSpec[],
  context: EngineFactoryContext,
  onCapacityChange: () => void,
): { engine: ChatEngine; router?: Router; upstreams: ChatEngine[] } {
  if (specs.length === 1 && specs[0]!.kind === 'llama') return { engine: createEngine(specs[0]!, model.id, context), upstreams: [] };
  const deployments: Deployment[] = [];
  const upstreams: ChatEngine[] = [];
  for (const spec of specs) {
    const engine = createEngine(spec, model.id, context);
    if (spec.kind === 'upstream') upstreams.push(engine);
    deployments.push(
      spec.kind === 'llama'
        ? { name: `${model.id}#local`, engine, weight: UPSTREAM_DEFAULTS.weight, maxConcurrency: engine.capacity() }
        : {
            name: spec.name,
            engine,
            weight: spec.config.weight ?? UPSTREAM_DEFAULTS.weight,
            maxConcurrency: spec.config.max_concurrency ?? UPSTREAM_DEFAULTS.maxConcurrency,
          },
    );
  }
  const router = new Router(model.id, deployments, routingPolicy(model, context.policy), { log: context.log, onCapacityChange });
  return { engine: router, router, upstreams };
}
