/**
 * Kiln's configuration: a YAML file validated at start (errors name the bad field), overridden by CLI flags.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { formatPath } from '../core/normalize-request.js';

/** server.gpu: llama.cpp's backend (engines/llama/runtime.ts). */
export const GPU_MODES = ['auto', 'cuda', 'vulkan', 'metal', 'off'] as const;

/** How a model's weights are loaded: `memory` reads them into Kiln's own memory, `mmap` maps the file. */
export const LOAD_MODES = ['memory', 'mmap'] as const;

/**
 * How long an idle model stays loaded, the way Ollama's keep_alive reads: seconds as a number, or a duration string
 * ("300ms", "30s", "5m", "1h"); -1 keeps it loaded, 0 unloads it as soon as its last request ends.
 */
const keepAliveSchema = z.union([
  z.number().min(-1),
  z.string().regex(/^(-1|\d+(\.\d+)?(ms|s|m|h)?)$/, 'must be seconds, a duration like "5m", "30s" or "1h", 0 or -1'),
]);

/** keep_alive in milliseconds (-1: never unload). */
export function keepAliveMs(value: z.infer<typeof keepAliveSchema>): number {
  if (typeof value === 'number') return value < 0 ? -1 : Math.round(value * 1000);
  if (value === '-1') return -1;
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value)!;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? 's'] ?? 1000;
  return Math.round(Number(match[1]) * unit);
}

/** Requests and tokens (prompt + completion) per minute. */
const rateLimitsSchema = z.strictObject({ rpm: z.int().min(1).optional(), tpm: z.int().min(1).optional() });

/** A key in the config file, limited like one made by `kiln keys create`. */
const configKeySchema = z.strictObject({
  key: z.string().min(1),
  name: z.string().min(1).max(64).optional(),
  tier: z.enum(['free', 'pro']).optional(),
  rpm: z.int().min(1).optional(),
  tpm: z.int().min(1).optional(),
  /** Model id globs the key may use (`*` any run of characters), e.g. `Qwen/*`; unset: all. */
  models: z.array(z.string().min(1)).min(1).optional(),
});

/** One OpenAI-compatible server that serves a model (vLLM, SGLang, llama-server, Ollama's /v1, TGI, another Kiln). */
const upstreamSchema = z.strictObject({
  /** Its OpenAI base URL, e.g. `http://gpu-node:8000/v1` (Kiln posts to `<url>/chat/completions`). Never logged. */
  url: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }).refine((url) => !/^https?:\/\/[^/]*@/.test(url), {
    message: 'must not carry credentials: put the key in the environment and name the variable in api_key_env',
  }),
  /** The model name that server serves. */
  model: z.string().min(1),
  /** Refused with a message that says where the key goes instead. */
  api_key: z.never({ error: 'keys never sit in the config file: put the key in an environment variable and name it in api_key_env' }).optional(),
  /** The environment variable holding its API key (keys never sit in the config file). */
  api_key_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name').optional(),
  /** Share of the load relative to the model's other deployments (default 1). */
  weight: z.number().positive().max(1000).optional(),
  /** Requests (choices) sent to it at once (default 64); beyond every deployment's capacity, requests queue in Kiln. */
  max_concurrency: z.int().min(1).max(100_000).optional(),
  /** How logs and metrics name it (default `<model id>#<index>`): its URL never appears. */
  name: z.string().min(1).max(128).optional(),
});

/** How Kiln treats upstream deployments; server-wide. */
const upstreamPolicySchema = z.strictObject({
  /** TCP (and TLS) connection set-up (default 5 s). */
  connect_timeout_ms: z.int().min(1).optional(),
  /** From sending the request to the upstream's first event (default 60 s: a long prompt's prefill on a busy server). */
  first_token_timeout_ms: z.int().min(1).optional(),
  /** Longest silence between two events of a response (default 30 s). */
  idle_timeout_ms: z.int().min(1).optional(),
  /** A whole upstream response (default 10 min). */
  total_timeout_ms: z.int().min(1).optional(),
  /** Deployments tried for one request before its response begins (default 3). */
  max_attempts: z.int().min(1).max(16).optional(),
  /** Time those attempts may take together (default 30 s). */
  retry_budget_ms: z.int().min(1).optional(),
  /** Consecutive failures (errors, timeouts) that eject a deployment (default 3). */
  failure_threshold: z.int().min(1).optional(),
  /** How long an ejected deployment rests before one probing request is let through; doubles on each failed probe (default 5 s). */
  eject_ms: z.int().min(1).optional(),
  /** The longest rest (default 60 s). */
  max_eject_ms: z.int().min(1).optional(),
  /** Active checks: `GET <url>/models` this often on every deployment (default 0: off, passive checks only). */
  health_check_interval_ms: z.int().min(0).optional(),
});

/**
 * Sequence states (tokens + KV) kept beyond the `parallel` sequences, so that a conversation's next turn or a shared
 * system prompt starts from its cached prefix instead of being prefilled again (docs/prompt-cache.md).
 */
const promptCacheSchema = z.strictObject({
  /** Host memory for states, in MiB; 0 turns the cache off (default: 8 GiB like llama-server, at most half the free RAM-backed space). */
  ram_mb: z.int().min(0).optional(),
  /** A directory where states evicted from memory spill and survive restarts; unset: no disk tier. */
  disk_dir: z.string().min(1).optional(),
  /** Disk the tier may fill, in MiB (default 10240). */
  disk_mb: z.int().min(1).optional(),
});

const modelSchema = z.strictObject({
  id: z.string().min(1),
  /**
   * false: listed but offline — requests get "model disabled" (SiliconFlow's 30003); a reload that sets it lets the
   * model's requests in flight finish, then unloads it.
   */
  enabled: z.boolean().optional(),
  /** A local GGUF file served in-process (llama.cpp). */
  file: z.string().min(1).optional(),
  /**
   * Where `kiln pull <id>` downloads the GGUF from: `hf:owner/repo/path/file.gguf` (`hf:owner/repo@revision/…` for
   * another revision than main) or an http(s) URL. Without `file`, the model's file is the source's path in the model
   * cache (src/models/hub-source.ts, modelFilePath).
   */
  source: z
    .string()
    .regex(/^(hf:[^/\s]+\/[^/\s]+\/\S+|https?:\/\/\S+)$/, 'must be hf:owner/repo/path/file.gguf or an http(s) URL')
    .optional(),
  /** With `source`: a request for the model while its file is missing starts the download (it gets 503 meanwhile). */
  auto_pull: z.boolean().optional(),
  /** Idle time before the local model unloads (default: server.keep_alive, else 5 minutes). */
  keep_alive: keepAliveSchema.optional(),
  /** Load the local model at start instead of on its first request (default false). */
  preload: z.boolean().optional(),
  /** OpenAI-compatible servers that serve this id; with `file`, the local engine is one more deployment. */
  upstreams: z.array(upstreamSchema).min(1).max(256).optional(),
  /**
   * Requests that share a conversation's beginning prefer the deployment that served it, whose KV cache still holds
   * it (default true when there are several deployments); never past a deployment's fair share of the load.
   */
  prefix_affinity: z.boolean().optional(),
  /** Concurrent sequences for this model's file. */
  parallel: z.int().min(1).max(256).optional(),
  /** Tokens per sequence. */
  context_size: z.int().min(64).optional(),
  threads: z.int().min(1).optional(),
  batch_size: z.int().min(1).optional(),
  queue_depth: z.int().min(0).optional(),
  queue_wait_ms: z.int().min(1).optional(),
  /** llama.cpp flash attention (default auto: llama.cpp decides for the model and hardware). */
  flash_attention: z.enum(['auto', 'on', 'off']).optional(),
  /** See LOAD_MODES; default `memory`. */
  load: z.enum(LOAD_MODES).optional(),
  /** Whether the model reasons in <think> … </think>; `auto`: detected from its chat template. */
  reasoning: z.enum(['auto', 'on', 'off']).optional(),
  /**
   * Layers offloaded to the GPU (with server.gpu not off and a GPU found): a number, `max` (all of them; the load
   * fails when they do not fit) or `auto` (default): as many as fit in free VRAM next to the model's contexts.
   */
  gpu_layers: z.union([z.int().min(0), z.enum(['auto', 'max'])]).optional(),
  owned_by: z.string().optional(),
  /** Per key on this id: each key's requests and tokens per minute here, on top of the key's own limits. */
  rate_limits: rateLimitsSchema.optional(),
  /** Overrides server.prompt_cache for this model, field by field. */
  prompt_cache: promptCacheSchema.optional(),
});

const configSchema = z.strictObject({
  /** The model cache `kiln pull` downloads into (default: $KILN_MODELS_DIR, else ~/.cache/kiln/models). */
  models_dir: z.string().min(1).optional(),
  /** Where the embedded store (SQLite: keys, usage) lives (default: $KILN_DATA_DIR, else ~/.local/share/kiln). */
  data_dir: z.string().min(1).optional(),
  /** PostgreSQL instead of SQLite, for several Kiln instances (or DATABASE_URL): postgres://user@host:5432/db. */
  database_url: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL').optional(),
  /** Rate-limit counters in Redis, shared by every instance (or REDIS_URL): redis://host:6379. */
  redis_url: z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL').optional(),
  server: z
    .strictObject({
      host: z.string().min(1).optional(),
      port: z.int().min(0).max(65535).optional(),
      /**
       * Keys for simple set-ups, next to those `kiln keys` keeps in the store: a plain key may use every model; an
       * object may name the key (logs and usage show the name) and limit it like a stored key.
       */
      api_keys: z.array(z.union([z.string().min(1), configKeySchema])).optional(),
      /** The key for the admin endpoints (/admin/*, /v1/usage), also a pro key for the API; or KILN_ADMIN_KEY. */
      admin_key: z.string().min(1).optional(),
      /** Limits for keys that set none, by tier; unset: unlimited. */
      tier_limits: z.strictObject({ free: rateLimitsSchema.optional(), pro: rateLimitsSchema.optional() }).optional(),
      /**
       * With redis_url: when Redis cannot be reached, `open` (default) keeps serving with this instance's own counters
       * and logs it; `closed` answers 503 until Redis is back.
       */
      rate_limit_store_failure: z.enum(['open', 'closed']).optional(),
      /** How often the usage ledger is written (default 1000 ms): what a crash can lose. */
      usage_flush_ms: z.int().min(10).max(60_000).optional(),
      /** GET /metrics: `open` (default, as vLLM), `admin` (the admin key; 404 to others) or `off`. */
      metrics: z.enum(['open', 'admin', 'off']).optional(),
      /**
       * Host memory all local models may take together, in MiB (default: 80% of the memory available at start). Before
       * a load, idle models are unloaded least recently used first to make room; a model that still cannot fit gets 503.
       */
      memory_budget_mb: z.int().min(1).optional(),
      /** The prompt cache of every local model (each may override it): see promptCacheSchema. */
      prompt_cache: promptCacheSchema.optional(),
      /** GPU memory local models may take together, in MiB (default: 80% of the VRAM free at the first load). */
      vram_budget_mb: z.int().min(1).optional(),
      /** Idle time before a local model unloads, for models that set none (default 5 minutes, like Ollama). */
      keep_alive: keepAliveSchema.optional(),
      /**
       * llama.cpp's backend: `auto` (default) uses CUDA or Vulkan (Metal on Apple silicon) when found, else the CPU;
       * a named one that cannot load falls back to the CPU with a warning; `off`: the CPU only.
       */
      gpu: z.enum(GPU_MODES).optional(),
      /** A request still generating after this long ends with 504 (in-band when streaming). */
      request_timeout_ms: z.int().min(1).optional(),
      max_choices: z.int().min(1).max(64).optional(),
      body_limit_bytes: z.int().min(1024).optional(),
      /** A stream whose client takes nothing for this long is ended and its connection closed (default 30 s). */
      stall_timeout_ms: z.int().min(1).optional(),
      /** The request line and headers must arrive within this long, else 408 (default 20 s). */
      headers_timeout_ms: z.int().min(1).optional(),
      /** The whole request, body included, must arrive within this long, else 408 (default 60 s). */
      body_timeout_ms: z.int().min(1).optional(),
      /** On SIGTERM/SIGINT, how long requests in flight may take to finish before they are ended (default 30 s). */
      drain_timeout_ms: z.int().min(0).optional(),
      /** Bounds on one request's size, checked before any work on it; each excess is a 400 naming the field. */
      upstream: upstreamPolicySchema.optional(),
      limits: z
        .strictObject({
          max_messages: z.int().min(1).optional(),
          /** Content parts over all messages together. */
          max_content_parts: z.int().min(1).optional(),
          max_tools: z.int().min(1).optional(),
          /** UTF-8 bytes of all client text together (contents, tool call arguments, tool descriptions). */
          max_text_bytes: z.int().min(1).optional(),
          /** JSON nesting of a tool's parameters or a json_schema. */
          max_schema_depth: z.int().min(1).optional(),
          /** JSON values in one such schema. */
          max_schema_nodes: z.int().min(1).optional(),
        })
        .optional(),
    })
    .optional(),
  models: z.array(modelSchema).min(1, 'at least one model is required'),
});

export type ModelConfig = z.infer<typeof modelSchema>;
export type UpstreamConfig = z.infer<typeof upstreamSchema>;
export type KeepAliveConfig = z.infer<typeof keepAliveSchema>;
export type UpstreamPolicyConfig = z.infer<typeof upstreamPolicySchema>;
export type RateLimitsConfig = z.infer<typeof rateLimitsSchema>;
export type ConfigKey = z.infer<typeof configKeySchema>;
export type PromptCacheConfig = z.infer<typeof promptCacheSchema>;
export type LimitsConfig = NonNullable<NonNullable<z.infer<typeof configSchema>['server']>['limits']>;
export type FileConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Parses and validates a config document; relative model paths resolve against `baseDir`. */
export function parseConfig(text: string, baseDir: string, source = 'config'): FileConfig {
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (error) {
    throw new ConfigError(`${source}: not valid YAML: ${(error as Error).message}`);
  }
  return validateConfig(document, baseDir, source);
}

/** Validates a config document already parsed (the CLI's quick modes build one from flags). */
export function validateConfig(document: unknown, baseDir: string, source: string): FileConfig {
  const parsed = configSchema.safeParse(document ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = formatPath(issue.path) || '(root)';
    throw new ConfigError(`${source}: invalid field '${field}': ${issue.message}`);
  }
  const config = parsed.data;
  const ids = new Set<string>();
  config.models.forEach((model, index) => {
    if (ids.has(model.id)) throw new ConfigError(`${source}: invalid field 'models[${index}].id': '${model.id}' is listed twice`);
    ids.add(model.id);
    if (model.file === undefined && model.source === undefined && model.upstreams === undefined) {
      throw new ConfigError(
        `${source}: invalid field 'models[${index}].file': is required unless 'source' names where to pull it from or 'upstreams' lists servers that serve the model`,
      );
    }
    if (model.file !== undefined) model.file = resolve(baseDir, model.file);
  });
  if (config.models_dir !== undefined) config.models_dir = resolve(baseDir, config.models_dir);
  for (const cache of [config.server?.prompt_cache, ...config.models.map((model) => model.prompt_cache)]) {
    if (cache?.disk_dir !== undefined) cache.disk_dir = resolve(baseDir, cache.disk_dir);
  }
  return config;
}

export async function loadConfigFile(path: string): Promise<FileConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read config file '${path}': ${(error as Error).message}`);
  }
  return parseConfig(text, dirname(resolve(path)), path);
}
