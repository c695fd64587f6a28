/**
 * Builds the running service from configuration: one engine per distinct GGUF file, shared by every id that
 * points at it.
 */
import { ConfigError, type LimitsConfig, type ModelConfig } from '../config/config.js';
import type { ChatEngine } from '../core/engine.js';
import { LlamaEngine, type LlamaEngineSettings } from '../engines/llama/llama-engine.js';
import type { RequestLimits } from '../core/request-limits.js';
import { ChatService } from './chat-service.js';
import { ModelRegistry } from './model-registry.js';

export const KILN_VERSION = '0.1.0';

export const MODEL_DEFAULTS = {
  parallel: 4,
  queueDepth: 64,
  queueWaitMs: 60_000,
  maxChoices: 8,
} as const;

/** Settings that belong to the loaded file, not the id: ids sharing a file must agree on them. */
const ENGINE_FIELDS = ['parallel', 'context_size', 'threads', 'batch_size', 'queue_depth', 'queue_wait_ms', 'reasoning', 'flash_attention', 'load'] as const;

export interface Kiln {
  service: ChatService;
  registry: ModelRegistry;
  close(): Promise<void>;
}

export async function assembleKiln(models: ModelConfig[], options: { maxChoices?: number; limits?: LimitsConfig } = {}): Promise<Kiln> {
  const registry = new ModelRegistry();
  const engines = new Map<string, Promise<ChatEngine>>();
  const firstByFile = new Map<string, ModelConfig>();
  try {
    for (const model of models) {
      const first = firstByFile.get(model.file);
      if (first === undefined) {
        firstByFile.set(model.file, model);
        engines.set(model.file, LlamaEngine.load(engineSettings(model)));
        continue;
      }
      for (const field of ENGINE_FIELDS) {
        if (model[field] !== undefined && model[field] !== first[field]) {
          throw new ConfigError(`model '${model.id}': '${field}' differs from model '${first.id}', which loads the same file`);
        }
      }
    }
    const created = Math.floor(Date.now() / 1000);
    for (const model of models) {
      const engine = await engines.get(model.file)!;
      registry.add({ id: model.id, engine, ownedBy: model.owned_by ?? 'kiln', created });
    }
  } catch (error) {
    const loaded = await Promise.allSettled(engines.values());
    await Promise.allSettled(loaded.map((result) => (result.status === 'fulfilled' ? result.value.close() : undefined)));
    throw error;
  }
  const service = new ChatService(registry, {
    maxChoices: options.maxChoices ?? MODEL_DEFAULTS.maxChoices,
    limits: requestLimits(options.limits ?? {}),
    systemFingerprint: `kiln-${KILN_VERSION}`,
  });
  return { service, registry, close: () => registry.close() };
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

function engineSettings(model: ModelConfig): LlamaEngineSettings {
  return {
    file: model.file,
    parallel: model.parallel ?? MODEL_DEFAULTS.parallel,
    ...(model.context_size !== undefined ? { contextSize: model.context_size } : {}),
    ...(model.threads !== undefined ? { threads: model.threads } : {}),
    ...(model.batch_size !== undefined ? { batchSize: model.batch_size } : {}),
    reasoning: model.reasoning ?? 'auto',
    ...(model.flash_attention !== undefined ? { flashAttention: model.flash_attention === 'auto' ? 'auto' : model.flash_attention === 'on' } : {}),
    ...(model.load !== undefined ? { load: model.load } : {}),
    queue: {
      depth: model.queue_depth ?? MODEL_DEFAULTS.queueDepth,
      waitMs: model.queue_wait_ms ?? MODEL_DEFAULTS.queueWaitMs,
    },
  };
}
