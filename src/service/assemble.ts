/**
 * Builds the running service from configuration: each model id's deployments (a local GGUF and/or upstream servers)
 * through the engine factory, one engine per distinct GGUF file shared by every id that points at it, and one
 * admission queue per distinct list of deployments (so that `X` and `Pro/X` share it, and `Pro/` goes first).
 */
import { freemem } from 'node:os';
import { ConfigError, keepAliveMs, type KeepAliveConfig, type LimitsConfig, type ModelConfig, type PromptCacheConfig, type UpstreamPolicyConfig } from '../config/config.js';
import { SILENT_LOG, type Log } from '../core/log.js';
import { LlamaEngine, type LlamaEngineSettings } from '../engines/llama/llama-engine.js';
import { configureRuntime, type GpuSetting } from '../engines/llama/runtime.js';
import type { RequestLimits } from '../core/request-limits.js';
import { modelFilePath, modelsDirectory } from '../models/hub-source.js';
import { MemoryBudget } from './memory-budget.js';
import { ChatService } from './chat-service.js';
import type { DeploymentSpec, EngineFactoryContext } from './engine-factory.js';
import { ModelRegistry } from './model-registry.js';
import type { RequestGate } from './request-gate.js';
import type { CompletionRecord } from './completion-record.js';
import { ModelSet, type ModelPlan, type ReloadSummary } from './model-set.js';

export const KILN_VERSION = '0.1.0';

/** Of the memory available when Kiln starts, what local models may take by default: most, not all. */
const DEFAULT_BUDGET_SHARE = 0.8;

export const MODEL_DEFAULTS = {
  parallel: 4,
  queueDepth: 64,
  queueWaitMs: 60_000,
  maxChoices: 8,
  keepAliveMs: 5 * 60_000,
  /** After a failed load, how long requests are answered 503 before the next try. */
  retryFailedLoadAfterMs: 30_000,
} as const;

/** Settings that belong to the loaded file, not the id: ids sharing a file must agree on them. */
const ENGINE_FIELDS = ['parallel', 'context_size', 'threads', 'batch_size', 'queue_depth', 'queue_wait_ms', 'reasoning', 'flash_attention', 'load', 'keep_alive', 'preload', 'gpu_layers', 'prompt_cache'] as const;

export interface Kiln {
  service: ChatService;
  registry: ModelRegistry;
  /**
   * Serves a new model list without a restart (SIGHUP, POST /admin/reload): rejects, changing nothing, when it cannot
   * be built. Server settings other than the models need a restart.
   */
  reload(models: ModelConfig[]): Promise<ReloadSummary>;
  close(): Promise<void>;
}

export interface AssembleOptions {
  maxChoices?: number;
  limits?: LimitsConfig;
  upstream?: UpstreamPolicyConfig;
  /** Host memory local models may take together (default: DEFAULT_BUDGET_SHARE of the memory available at start). */
  memoryBudgetMb?: number;
  /** GPU memory they may take together (default: DEFAULT_BUDGET_SHARE of the VRAM free at the first load). */
  vramBudgetMb?: number;
  /** The model cache (config `models_dir`; default KILN_MODELS_DIR, else under the user's cache directory). */
  modelsDir?: string;
  /** Server-wide keep_alive for local models that set none. */
  keepAlive?: KeepAliveConfig;
  /** Server-wide prompt cache settings; a model's own override them field by field. */
  promptCache?: PromptCacheConfig;
  /** llama.cpp's backend (default auto: a GPU when one is found); the runtime logs its choice at the first load. */
  gpu?: GpuSetting;
  log?: Log;
  /** Where upstream API keys are read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Callers' quotas and rate limits. */
  gate?: RequestGate;
  /** Every request that reached an engine, when it ends (usage ledger, metrics). */
  onCompletion?: (record: CompletionRecord) => void;
}

export async function assembleKiln(configured: ModelConfig[], options: AssembleOptions = {}): Promise<Kiln> {
  const log = options.log ?? SILENT_LOG;
  configureRuntime({ gpu: options.gpu ?? 'auto', log });
  const registry = new ModelRegistry();
  const context: EngineFactoryContext = {
    policy: options.upstream ?? {},
    log,
    env: options.env ?? process.env,
    llamaEngines: new Map(),
    budget: new MemoryBudget(
      {
        ram: options.memoryBudgetMb !== undefined ? options.memoryBudgetMb * 2 ** 20 : Math.floor(freemem() * DEFAULT_BUDGET_SHARE),
        vram: async () => (options.vramBudgetMb !== undefined ? options.vramBudgetMb * 2 ** 20 : Math.floor((await LlamaEngine.freeVram()) * DEFAULT_BUDGET_SHARE)),
      },
      log,
    ),
  };
  const models = new ModelSet(registry, context, log);
  const apply = async (list: ModelConfig[]): Promise<ReloadSummary> => {
    const { plans, disabled } = planModels(list, options);
    const summary = await models.apply(plans, disabled);
    // Models marked preload load now, together; the others on their first request.
    await models.preload(plans.filter(({ model }) => model.preload === true).map(({ model }) => model.id));
    return summary;
  };
  try {
    await apply(configured);
  } catch (error) {
    await models.close();
    throw error;
  }
  const service = new ChatService(registry, {
    maxChoices: options.maxChoices ?? MODEL_DEFAULTS.maxChoices,
    limits: requestLimits(options.limits ?? {}),
    systemFingerprint: `kiln-${KILN_VERSION}`,
    ...(options.gate !== undefined ? { gate: options.gate } : {}),
    ...(options.onCompletion !== undefined ? { onCompletion: options.onCompletion } : {}),
  });
  // One reload at a time: a second waits for the first.
  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (list: ModelConfig[]): Promise<ReloadSummary> => {
    const next = reloading.then(() => apply(list));
    reloading = next.catch(() => undefined);
    return next;
  };
  return { service, registry, reload, close: () => models.close() };
}

/** What each enabled model is built from, and the ids switched off; checks the list as a whole first. */
function planModels(configured: ModelConfig[], options: AssembleOptions): { plans: ModelPlan[]; disabled: string[] } {
  const modelsDir = modelsDirectory(options.modelsDir);
  // A model named by its `source` is served from that source's place in the model cache.
  const enabled = configured.filter((model) => model.enabled !== false).map((model) => ({ ...model, file: modelFilePath(model, modelsDir) }));
  checkSharedFiles(enabled);
  const plans = enabled.map((model) => {
    const specs = deploymentSpecs(model, options, modelsDir);
    const queue = { depth: model.queue_depth ?? MODEL_DEFAULTS.queueDepth, waitMs: model.queue_wait_ms ?? MODEL_DEFAULTS.queueWaitMs };
    // Ids share a served model only when everything it is built from agrees (routing and queue settings too).
    return { model, specs, queue, key: JSON.stringify([specs, model.prefix_affinity, queue]) };
  });
  return { plans, disabled: configured.filter((model) => model.enabled === false).map((model) => model.id) };
}

/** Ids that load the same file share its engine, so they must agree on what the engine is built with. */
function checkSharedFiles(models: ModelConfig[]): void {
  const firstByFile = new Map<string, ModelConfig>();
  for (const model of models) {
    if (model.file === undefined) continue;
    const first = firstByFile.get(model.file);
    if (first === undefined) {
      firstByFile.set(model.file, model);
      continue;
    }
    for (const field of ENGINE_FIELDS) {
      const differs = (a: unknown, b: unknown) => (typeof a === 'object' ? JSON.stringify(a) !== JSON.stringify(b) : a !== b);
      if (model[field] !== undefined && differs(model[field], first[field])) {
        throw new ConfigError(`model '${model.id}': '${field}' differs from model '${first.id}', which loads the same file`);
      }
    }
  }
}

/** A model's deployments in config order: its local file first, then its upstreams. */
function deploymentSpecs(model: ModelConfig, options: AssembleOptions, modelsDir: string): DeploymentSpec[] {
  const specs: DeploymentSpec[] = [];
  if (model.file !== undefined) {
    const keepAlive = model.keep_alive ?? options.keepAlive;
    const lifecycle = {
      keepAliveMs: keepAlive === undefined ? MODEL_DEFAULTS.keepAliveMs : keepAliveMs(keepAlive),
      loadWaitMs: model.queue_wait_ms ?? MODEL_DEFAULTS.queueWaitMs,
      retryFailedAfterMs: MODEL_DEFAULTS.retryFailedLoadAfterMs,
    };
    const file = { path: model.file, autoPull: model.auto_pull ?? false, modelsDir, ...(model.source !== undefined ? { source: model.source } : {}) };
    const settings = engineSettings(model, model.file, options.promptCache);
    specs.push({ kind: 'llama', settings, lifecycle, file, key: JSON.stringify([settings, lifecycle, file]) });
  }
  if (model.file === undefined && model.upstreams === undefined) {
    throw new ConfigError(`model '${model.id}': no file to serve yet (its source must be pulled first: kiln pull ${model.id})`);
  }
  model.upstreams?.forEach((config, index) => {
    specs.push({ kind: 'upstream', name: config.name ?? `${model.id}#${index}`, config, reasoning: model.reasoning ?? 'auto' });
  });
  return specs;
}

/** Unset limits stay unset: normalizeChatRequest and the schema checks hold the defaults. */
function requestLimits(config: LimitsConfig): RequestLimits {
  const limits: RequestLimits = {};
  if (config.max_messages !== undefined) limits.maxMessages = config.max_messages;
  if (config.max_content_parts !== undefined) limits.maxContentParts = config.max_content_parts;
  if (config.max_tools !== undefined) limits.maxTools = config.max_tools;
  if (config.max_text_bytes !== undefined) limits.maxTextBytes = config.max_text_bytes;
  if (config.max_schema_depth !== undefined) limits.maxSchemaDepth = config.max_schema_depth;
  if (config.max_schema_nodes !== undefined) limits.maxSchemaNodes = config.max_schema_nodes;
  return limits;
}

function engineSettings(model: ModelConfig, file: string, serverPromptCache: PromptCacheConfig | undefined): LlamaEngineSettings {
  const cache = { ...serverPromptCache, ...model.prompt_cache };
  return {
    file,
    parallel: model.parallel ?? MODEL_DEFAULTS.parallel,
    ...(model.context_size !== undefined ? { contextSize: model.context_size } : {}),
    ...(model.threads !== undefined ? { threads: model.threads } : {}),
    ...(model.batch_size !== undefined ? { batchSize: model.batch_size } : {}),
    reasoning: model.reasoning ?? 'auto',
    ...(model.flash_attention !== undefined ? { flashAttention: model.flash_attention === 'auto' ? 'auto' : model.flash_attention === 'on' } : {}),
    ...(model.load !== undefined ? { load: model.load } : {}),
    ...(model.gpu_layers !== undefined ? { gpuLayers: model.gpu_layers } : {}),
    promptCache: {
      ...(cache.ram_mb !== undefined ? { ramMb: cache.ram_mb } : {}),
      ...(cache.disk_dir !== undefined ? { diskDir: cache.disk_dir } : {}),
      ...(cache.disk_mb !== undefined ? { diskMb: cache.disk_mb } : {}),
    },
  };
}
