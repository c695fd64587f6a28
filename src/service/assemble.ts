/**
 * Builds the running service from configuration: each model id's deployments (a local GGUF and/or upstream servers)
 * through the engine factory, one engine per distinct GGUF file shared by every id that points at it, and one
 * admission queue per distinct list of deployments (so that `X` and `Pro/X` share it, and `Pro/` goes first).
 */
import { freemem } from 'node:os';
import { ConfigError, keepAliveMs, type KeepAliveConfig, type LimitsConfig, type ModelConfig, type UpstreamPolicyConfig } from '../config/config.js';
import { SILENT_LOG, type Log } from '../core/log.js';
import type { LlamaEngineSettings } from '../engines/llama/llama-engine.js';
import { configureRuntime, type GpuSetting } from '../engines/llama/runtime.js';
import type { RequestLimits } from '../core/request-limits.js';
import { modelFilePath, modelsDirectory } from '../models/hub-source.js';
import { Admission } from './admission.js';
import { MemoryBudget } from './memory-budget.js';
import { ChatService } from './chat-service.js';
import { createServingEngine, type DeploymentSpec, type EngineFactoryContext } from './engine-factory.js';
import { ModelRegistry, type ServedModel } from './model-registry.js';
import type { Router } from './routing/router.js';

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
const ENGINE_FIELDS = ['parallel', 'context_size', 'threads', 'batch_size', 'queue_depth', 'queue_wait_ms', 'reasoning', 'flash_attention', 'load', 'keep_alive', 'preload', 'gpu_layers'] as const;

export interface Kiln {
  service: ChatService;
  registry: ModelRegistry;
  close(): Promise<void>;
}

export interface AssembleOptions {
  maxChoices?: number;
  limits?: LimitsConfig;
  upstream?: UpstreamPolicyConfig;
  /** Host memory local models may take together (default: DEFAULT_BUDGET_SHARE of the memory available at start). */
  memoryBudgetMb?: number;
  /** The model cache (config `models_dir`; default KILN_MODELS_DIR, else under the user's cache directory). */
  modelsDir?: string;
  /** Server-wide keep_alive for local models that set none. */
  keepAlive?: KeepAliveConfig;
  /** llama.cpp's backend (default auto: a GPU when one is found); the runtime logs its choice at the first load. */
  gpu?: GpuSetting;
  log?: Log;
  /** Where upstream API keys are read (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export async function assembleKiln(configured: ModelConfig[], options: AssembleOptions = {}): Promise<Kiln> {
  const modelsDir = modelsDirectory(options.modelsDir);
  // A model named by its `source` is served from that source's place in the model cache.
  const models = configured.map((model) => ({ ...model, file: modelFilePath(model, modelsDir) }));
  checkSharedFiles(models);
  configureRuntime({ gpu: options.gpu ?? 'auto', log: options.log ?? SILENT_LOG });
  const registry = new ModelRegistry();
  const context: EngineFactoryContext = {
    policy: options.upstream ?? {},
    log: options.log ?? SILENT_LOG,
    env: options.env ?? process.env,
    llamaEngines: new Map(),
    budget: new MemoryBudget(options.memoryBudgetMb !== undefined ? options.memoryBudgetMb * 2 ** 20 : Math.floor(freemem() * DEFAULT_BUDGET_SHARE), options.log ?? SILENT_LOG),
    upstreamEngines: [],
  };
  const served = new Map<string, ServedModel>();
  const routers: Router[] = [];
  const close = async () => {
    await Promise.allSettled(routers.map((router) => router.close()));
    await Promise.allSettled(context.upstreamEngines.map((engine) => engine.close()));
    await Promise.allSettled([...context.llamaEngines.values()].map((engine) => engine.close()));
  };
  try {
    const created = Math.floor(Date.now() / 1000);
    for (const model of models) {
      const specs = deploymentSpecs(model, options.keepAlive, modelsDir);
      // Ids share a served model only when everything it is built from agrees (routing and queue settings too).
      const key = JSON.stringify([specs, model.prefix_affinity, model.queue_depth, model.queue_wait_ms]);
      let entry = served.get(key);
      if (entry === undefined) {
        const holder: { admission?: Admission } = {};
        const { engine, router } = await createServingEngine(model, specs, context, () => holder.admission?.poke());
        if (router !== undefined) routers.push(router);
        holder.admission = new Admission(() => engine.capacity(), {
          depth: model.queue_depth ?? MODEL_DEFAULTS.queueDepth,
          waitMs: model.queue_wait_ms ?? MODEL_DEFAULTS.queueWaitMs,
        });
        entry = { engine, admission: holder.admission };
        served.set(key, entry);
      }
      const local = specs.find((spec) => spec.kind === 'llama');
      registry.add({ id: model.id, served: entry, ownedBy: model.owned_by ?? 'kiln', created, ...(local?.kind === 'llama' ? { file: local.settings.file } : {}) });
    }
    // Models marked preload load now, together; the others on their first request.
    const preloads = models.filter((model) => model.preload === true && model.file !== undefined).map((model) => context.llamaEngines.get(model.file!)!);
    await Promise.all([...new Set(preloads)].map((engine) => engine.preload()));
  } catch (error) {
    await close();
    throw error;
  }
  const service = new ChatService(registry, {
    maxChoices: options.maxChoices ?? MODEL_DEFAULTS.maxChoices,
    limits: requestLimits(options.limits ?? {}),
    systemFingerprint: `kiln-${KILN_VERSION}`,
  });
  return { service, registry, close };
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
      if (model[field] !== undefined && model[field] !== first[field]) {
        throw new ConfigError(`model '${model.id}': '${field}' differs from model '${first.id}', which loads the same file`);
      }
    }
  }
}

/** A model's deployments in config order: its local file first, then its upstreams. */
function deploymentSpecs(model: ModelConfig, serverKeepAlive: KeepAliveConfig | undefined, modelsDir: string): DeploymentSpec[] {
  const specs: DeploymentSpec[] = [];
  if (model.file !== undefined) {
    const keepAlive = model.keep_alive ?? serverKeepAlive;
    const lifecycle = {
      keepAliveMs: keepAlive === undefined ? MODEL_DEFAULTS.keepAliveMs : keepAliveMs(keepAlive),
      loadWaitMs: model.queue_wait_ms ?? MODEL_DEFAULTS.queueWaitMs,
      retryFailedAfterMs: MODEL_DEFAULTS.retryFailedLoadAfterMs,
    };
    const file = { path: model.file, autoPull: model.auto_pull ?? false, modelsDir, ...(model.source !== undefined ? { source: model.source } : {}) };
    specs.push({ kind: 'llama', settings: engineSettings(model, model.file), lifecycle, file });
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

function engineSettings(model: ModelConfig, file: string): LlamaEngineSettings {
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
  };
}
