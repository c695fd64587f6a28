/**
 * `kiln serve`: the models (engines), tenancy (keys, limits, usage), metrics and the HTTP server, put together from a
 * config file or the command line; SIGHUP reloads the models, SIGTERM/SIGINT drain and stop.
 */
import { access, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { ConfigError, GPU_MODES, LOAD_MODES, loadConfigFile, validateConfig, type FileConfig, type ModelConfig, type RateLimitsConfig } from '../config/config.js';
import { buildHttpServer, createLogger } from '../http/server.js';
import { closeGracefully } from '../http/shutdown.js';
import { Metrics, metricsSourcesFromRegistry } from '../metrics/metrics.js';
import { assembleKiln } from '../service/assemble.js';
import { openStore, storeOptionsFrom } from '../store/store.js';
import type { StaticKey } from '../tenancy/key-resolver.js';
import { openTenancy } from '../tenancy/tenancy.js';
import { integerFlag, type Flags } from './flags.js';

const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;
/** Past the drain deadline, how long closing connections and engines may take before the process exits anyway. */
const SHUTDOWN_BACKSTOP_MS = 10_000;

async function resolveConfig(flags: Flags): Promise<FileConfig> {
  const sources = [flags.config, flags.model, flags.upstream].filter((given) => given !== undefined).length;
  if (sources > 1) throw new ConfigError('give one of --config, --model or --upstream');
  if (flags.config !== undefined) return loadConfigFile(flags.config);
  if (flags.upstream !== undefined) return upstreamConfig(flags, flags.upstream);
  if (flags.model === undefined) throw new ConfigError('nothing to serve: give --config <file.yaml>, --model <file.gguf> or --upstream <url> (or try `kiln demo`)');
  // One model named on the command line is what the server is for: loaded at start and kept, as llama-server does.
  const model: ModelConfig = { id: flags['model-id'] ?? basename(flags.model).replace(/\.gguf$/i, ''), file: flags.model, preload: true, keep_alive: -1 };
  const parallel = integerFlag(flags, 'parallel');
  const contextSize = integerFlag(flags, 'context-size');
  const threads = integerFlag(flags, 'threads');
  if (parallel !== undefined) model.parallel = parallel;
  if (contextSize !== undefined) model.context_size = contextSize;
  if (threads !== undefined) model.threads = threads;
  if (flags.load !== undefined) {
    const load = LOAD_MODES.find((mode) => mode === flags.load);
    if (load === undefined) throw new ConfigError(`--load must be ${LOAD_MODES.join(' or ')}, got '${flags.load}'`);
    model.load = load;
  }
  return { models: [model] };
}

/** `--upstream` quick mode: one id served by the given servers, validated like the same lines of a config file. */
function upstreamConfig(flags: Flags, urls: string[]): FileConfig {
  const id = flags['model-id'];
  if (id === undefined) throw new ConfigError('--upstream needs --model-id: the id clients ask for');
  const upstreams = urls.map((url) => ({
    url,
    model: flags['upstream-model'] ?? id,
    ...(flags['upstream-key-env'] !== undefined ? { api_key_env: flags['upstream-key-env'] } : {}),
  }));
  return validateConfig({ models: [{ id, upstreams }] }, process.cwd(), 'command line');
}

/** Models given by `file:` alone must be there (one with a `source` may be missing until it is pulled). */
async function checkModelFiles(config: FileConfig): Promise<void> {
  for (const model of config.models) {
    if (model.file === undefined || model.source !== undefined || model.enabled === false) continue;
    await access(model.file).catch(() => {
      throw new ConfigError(`model '${model.id}': file not found: ${model.file}`);
    });
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** Keys from the config, KILN_API_KEYS, --api-key and the admin key, named for logs and usage. */
function staticKeysFrom(config: FileConfig, flags: Flags): StaticKey[] {
  const envKeys = (process.env.KILN_API_KEYS ?? '').split(',').map((key) => key.trim()).filter((key) => key !== '');
  const given = [...(config.server?.api_keys ?? []), ...envKeys, ...(flags['api-key'] ?? [])];
  const keys = given.map((entry, index): StaticKey => {
    if (typeof entry === 'string') return { key: entry, name: `key-${index + 1}`, tier: 'pro' };
    const { key, name, tier, ...limits } = entry;
    return { key, name: name ?? `key-${index + 1}`, tier: tier ?? 'pro', ...limits };
  });
  const adminKey = process.env.KILN_ADMIN_KEY || config.server?.admin_key;
  if (adminKey !== undefined) keys.push({ key: adminKey, name: 'admin', tier: 'pro', admin: true });
  return keys;
}

export interface Served {
  url: string;
  /** A key that may use the API, when the server has one from its config or command line. */
  apiKey?: string;
}

export async function serve(flags: Flags, configOverride?: FileConfig): Promise<Served> {
  const config = configOverride ?? (await resolveConfig(flags));
  const server = config.server ?? {};
  const host = flags.host ?? server.host ?? '127.0.0.1';
  const port = integerFlag(flags, 'port') ?? server.port ?? 8000;
  const drainTimeoutMs = integerFlag(flags, 'drain-timeout-ms') ?? server.drain_timeout_ms ?? DEFAULT_DRAIN_TIMEOUT_MS;
  const staticKeys = staticKeysFrom(config, flags);
  await checkModelFiles(config);

  const gpu = flags.gpu === undefined ? server.gpu : GPU_MODES.find((mode) => mode === flags.gpu);
  if (flags.gpu !== undefined && gpu === undefined) throw new ConfigError(`--gpu must be one of ${GPU_MODES.join(', ')}, got '${flags.gpu}'`);

  const startedAt = performance.now();
  const logger = createLogger(flags['log-level'] !== undefined ? { logLevel: flags['log-level'] } : {});
  // `kiln demo` (the only caller with a config of its own) keeps to its temporary data_dir, whatever DATABASE_URL says.
  const store = await openStore(storeOptionsFrom(config, configOverride !== undefined ? {} : process.env)).catch((error: Error) => {
    throw new ConfigError(error.message);
  });
  const modelLimits = new Map<string, RateLimitsConfig>();
  const applyModelLimits = (models: ModelConfig[]) => {
    modelLimits.clear();
    for (const model of models) if (model.rate_limits !== undefined) modelLimits.set(model.id, model.rate_limits);
  };
  applyModelLimits(config.models);
  const redisUrl = config.redis_url ?? (process.env.REDIS_URL || undefined);
  const tenancy = await openTenancy({
    store,
    staticKeys,
    ...(server.tier_limits !== undefined ? { tierLimits: server.tier_limits } : {}),
    modelLimits: (id) => modelLimits.get(id),
    ...(redisUrl !== undefined ? { redisUrl } : {}),
    ...(server.rate_limit_store_failure !== undefined ? { onRateLimitStoreFailure: server.rate_limit_store_failure } : {}),
    ...(server.usage_flush_ms !== undefined ? { usageFlushMs: server.usage_flush_ms } : {}),
    log: logger,
  });
  if (!isLoopback(host) && (await tenancy.auth.isOpen()) && !flags['insecure-no-auth']) {
    await tenancy.close();
    throw new ConfigError(`refusing to listen on ${host} without an API key: create one (kiln keys create), give --api-key (or KILN_API_KEYS), or --insecure-no-auth`);
  }
  let metrics: Metrics | undefined;
  const kiln = await assembleKiln(config.models, {
    log: logger,
    gate: tenancy.gate,
    onCompletion: (record) => {
      tenancy.record(record);
      metrics?.observeCompletion(record);
    },
    ...(server.max_choices !== undefined ? { maxChoices: server.max_choices } : {}),
    ...(server.limits !== undefined ? { limits: server.limits } : {}),
    ...(server.upstream !== undefined ? { upstream: server.upstream } : {}),
    ...(server.keep_alive !== undefined ? { keepAlive: server.keep_alive } : {}),
    ...(server.prompt_cache !== undefined ? { promptCache: server.prompt_cache } : {}),
    ...(server.memory_budget_mb !== undefined ? { memoryBudgetMb: server.memory_budget_mb } : {}),
    ...(server.vram_budget_mb !== undefined ? { vramBudgetMb: server.vram_budget_mb } : {}),
    ...(config.models_dir !== undefined ? { modelsDir: config.models_dir } : {}),
    ...(gpu !== undefined ? { gpu } : {}),
  }).catch(async (error: unknown) => {
    await tenancy.close();
    throw error;
  });
  metrics = new Metrics(metricsSourcesFromRegistry(kiln.registry));
  // Models on and offline without a restart: the config file is read again and its models applied (SIGHUP or POST
  // /admin/reload). Server settings other than the models need a restart.
  const configFile = flags.config;
  const reload =
    configFile === undefined
      ? undefined
      : async () => {
          const fresh = await loadConfigFile(configFile);
          await checkModelFiles(fresh);
          const summary = await kiln.reload(fresh.models);
          applyModelLimits(fresh.models);
          app.log.info(summary, 'configuration reloaded');
          return summary;
        };
  const app = buildHttpServer({
    service: kiln.service,
    auth: tenancy.auth,
    usage: tenancy.usage,
    metrics,
    ...(server.metrics !== undefined ? { metricsAccess: server.metrics } : {}),
    ...(server.body_limit_bytes !== undefined ? { bodyLimitBytes: server.body_limit_bytes } : {}),
    ...(server.request_timeout_ms !== undefined ? { requestTimeoutMs: server.request_timeout_ms } : {}),
    ...(server.stall_timeout_ms !== undefined ? { stallTimeoutMs: server.stall_timeout_ms } : {}),
    ...(server.headers_timeout_ms !== undefined ? { headersTimeoutMs: server.headers_timeout_ms } : {}),
    ...(server.body_timeout_ms !== undefined ? { bodyTimeoutMs: server.body_timeout_ms } : {}),
    logger,
    ...(reload !== undefined ? { reload } : {}),
  });
  const url = await app.listen({ host, port });
  app.log.info(
    {
      url,
      models: config.models.map((model) => model.id),
      auth: !(await tenancy.auth.isOpen()),
      store: `${store.kind} ${store.location}`,
      rateLimits: redisUrl !== undefined ? 'redis' : 'memory',
      startupMs: Math.round(performance.now() - startedAt),
    },
    'started',
  );
  // Printed whatever the log level: scripts and tests wait for this line.
  process.stdout.write(`Kiln listening on ${url}\n`);

  let closing = false;
  const shutdown = async (signal: NodeJS.Signals) => {
    if (closing) {
      app.log.warn(`${signal} again: exiting now`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    closing = true;
    const began = performance.now();
    app.log.info({ drainTimeoutMs }, `${signal}: draining, then exiting`);
    // Whatever hangs (an engine that does not let go), the process exits.
    setTimeout(() => {
      app.log.error('shutdown did not complete in time: exiting');
      process.exit(1);
    }, drainTimeoutMs + SHUTDOWN_BACKSTOP_MS).unref();
    let code = 0;
    try {
      const { endedAtDeadline, forced } = await closeGracefully(app, { drainTimeoutMs });
      await kiln.close();
      // After the engines: the last requests' completions are in the ledger, which is written now.
      await tenancy.close();
      app.log.info({ endedAtDeadline, forcedClose: forced, shutdownMs: Math.round(performance.now() - began) }, 'stopped');
    } catch (error) {
      app.log.error({ err: error }, 'shutdown failed');
      code = 1;
    }
    process.exit(code);
  };
  process.on('SIGHUP', () => {
    if (reload === undefined) {
      app.log.info('SIGHUP: nothing to reload (started without a config file)');
      return;
    }
    reload().catch((error: unknown) => app.log.error({ reason: (error as Error).message }, 'SIGHUP: the configuration was not applied; the running one stays'));
  });
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  const apiKey = staticKeys.find((key) => !key.admin)?.key ?? staticKeys[0]?.key;
  return { url, ...(apiKey !== undefined ? { apiKey } : {}) };
}

/** A data directory of its own for `kiln demo`, so that keys a user created elsewhere do not close the demo. */
export function temporaryDataDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'kiln-demo-'));
}
