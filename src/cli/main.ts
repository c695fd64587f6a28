/**
 * `kiln serve` — start the server from a config file or a single GGUF;
 * `kiln demo` — generate a random-weight model, serve it and show one chat completion.
 */
import { access } from 'node:fs/promises';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, GPU_MODES, LOAD_MODES, loadConfigFile, validateConfig, type FileConfig, type ModelConfig } from '../config/config.js';
import { ensureTinyModel } from '../gguf/tiny-model.js';
import { buildHttpServer, createLogger } from '../http/server.js';
import { closeGracefully } from '../http/shutdown.js';
import type { ApiKey } from '../http/auth.js';
import { assembleKiln } from '../service/assemble.js';
import { pullCommand } from './pull-command.js';
import { defaultServerUrl, modelsCommand } from './models-command.js';

const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;
/** Past the drain deadline, how long closing connections and engines may take before the process exits anyway. */
const SHUTDOWN_BACKSTOP_MS = 10_000;

const USAGE = `Usage:
  kiln serve [--config kiln.yaml | --model file.gguf [--model-id id] | --upstream URL ... --model-id id] [options]
  kiln demo  [--port 8000]        serve a generated random-weight model and show one completion
  kiln pull  <hf:owner/repo/path/file.gguf | https://…/file.gguf | model id [--config kiln.yaml]>
                                  download a GGUF into the model cache (models_dir, else $KILN_MODELS_DIR, else
                                  ~/.cache/kiln/models), resuming and verifying it; HF_ENDPOINT, HF_TOKEN are honoured
  kiln models [--config kiln.yaml] [--url http://host:port]
                                  list the configured ids: source, size on disk, present; with a server running
                                  there (default: the config's host and port) also state, memory and idle time

Options:
  --config <file>        YAML config (see examples/kiln.yaml)
  --model <file.gguf>    quick mode: serve one GGUF file
  --model-id <id>        id for --model (default: the file's name without .gguf) or --upstream (required)
  --upstream <url>       quick mode: serve --model-id through this OpenAI-compatible server (its base URL, e.g.
                         http://gpu-node:8000/v1); repeatable: requests are balanced over them
  --upstream-model <name>  the model name the upstream serves (default: --model-id)
  --upstream-key-env <VAR> the environment variable holding the upstream's API key
  --host <host>          default 127.0.0.1
  --port <port>          default 8000
  --api-key <key>        repeatable; also KILN_API_KEYS=key1,key2
  --insecure-no-auth     allow a non-loopback host without API keys
  --parallel <n>         concurrent sequences for --model (default 4)
  --context-size <n>     tokens per sequence for --model
  --threads <n>          CPU threads for --model (default: usable cores)
  --load <memory|mmap>   how --model's weights are loaded (default memory: read into Kiln's memory)
  --gpu <auto|cuda|vulkan|metal|off>  llama.cpp's backend (default: server.gpu, else auto: a GPU when one is found)
  --url <url>            kiln models: the running server to ask (default http://<config host>:<config port>)
  --drain-timeout-ms <n> on SIGTERM/SIGINT, how long requests in flight may finish (default 30000); a second
                         signal exits at once
  --log-level <level>    fatal, error, warn, info (default), debug
`;

const options = {
  config: { type: 'string' },
  model: { type: 'string' },
  'model-id': { type: 'string' },
  upstream: { type: 'string', multiple: true },
  'upstream-model': { type: 'string' },
  'upstream-key-env': { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  'api-key': { type: 'string', multiple: true },
  'insecure-no-auth': { type: 'boolean' },
  parallel: { type: 'string' },
  'context-size': { type: 'string' },
  threads: { type: 'string' },
  load: { type: 'string' },
  gpu: { type: 'string' },
  url: { type: 'string' },
  'drain-timeout-ms': { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>['values'];

export async function main(argv: string[]): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (error) {
    fail((error as Error).message);
  }
  const { values: flags, positionals } = parsed;
  const command = positionals[0];
  if (flags.help || command === undefined) {
    process.stdout.write(USAGE);
    return;
  }
  try {
    if (command === 'serve') await serve(flags);
    else if (command === 'demo') await demo(flags);
    else if (command === 'pull') await pullCommand(positionals.slice(1), flags.config);
    else if (command === 'models') await models(flags);
    else fail(`unknown command '${command}'`);
  } catch (error) {
    if (error instanceof ConfigError) fail(error.message);
    throw error;
  }
}

function fail(message: string): never {
  process.stderr.write(`kiln: ${message}\n\n${USAGE}`);
  process.exit(2);
}

function integerFlag(flags: Flags, name: 'port' | 'parallel' | 'context-size' | 'threads' | 'drain-timeout-ms'): number | undefined {
  const raw = flags[name];
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new ConfigError(`--${name} must be a non-negative integer, got '${raw}'`);
  return value;
}

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

async function serve(flags: Flags, configOverride?: FileConfig): Promise<{ url: string; apiKeys: ApiKey[] }> {
  const config = configOverride ?? (await resolveConfig(flags));
  const host = flags.host ?? config.server?.host ?? '127.0.0.1';
  const port = integerFlag(flags, 'port') ?? config.server?.port ?? 8000;
  const drainTimeoutMs = integerFlag(flags, 'drain-timeout-ms') ?? config.server?.drain_timeout_ms ?? DEFAULT_DRAIN_TIMEOUT_MS;
  const envKeys = (process.env.KILN_API_KEYS ?? '').split(',').map((key) => key.trim()).filter((key) => key !== '');
  const adminKey = process.env.KILN_ADMIN_KEY ?? config.server?.admin_key;
  const apiKeys: ApiKey[] = [
    ...[...(config.server?.api_keys ?? []), ...envKeys, ...(flags['api-key'] ?? [])].map((entry): ApiKey => (typeof entry === 'string' ? { key: entry, tier: 'pro' } : entry)),
    ...(adminKey !== undefined && adminKey !== '' ? [{ key: adminKey, tier: 'pro' as const, admin: true }] : []),
  ];
  if (!isLoopback(host) && apiKeys.length === 0 && !flags['insecure-no-auth']) {
    throw new ConfigError(`refusing to listen on ${host} without an API key: give --api-key (or KILN_API_KEYS), or --insecure-no-auth`);
  }
  await checkModelFiles(config);

  const gpu = flags.gpu === undefined ? config.server?.gpu : GPU_MODES.find((mode) => mode === flags.gpu);
  if (flags.gpu !== undefined && gpu === undefined) throw new ConfigError(`--gpu must be one of ${GPU_MODES.join(', ')}, got '${flags.gpu}'`);

  const startedAt = performance.now();
  const logger = createLogger(flags['log-level'] !== undefined ? { logLevel: flags['log-level'] } : {});
  const kiln = await assembleKiln(config.models, {
    log: logger,
    ...(config.server?.max_choices !== undefined ? { maxChoices: config.server.max_choices } : {}),
    ...(config.server?.limits !== undefined ? { limits: config.server.limits } : {}),
    ...(config.server?.upstream !== undefined ? { upstream: config.server.upstream } : {}),
    ...(config.server?.keep_alive !== undefined ? { keepAlive: config.server.keep_alive } : {}),
    ...(config.server?.memory_budget_mb !== undefined ? { memoryBudgetMb: config.server.memory_budget_mb } : {}),
    ...(config.server?.vram_budget_mb !== undefined ? { vramBudgetMb: config.server.vram_budget_mb } : {}),
    ...(config.models_dir !== undefined ? { modelsDir: config.models_dir } : {}),
    ...(gpu !== undefined ? { gpu } : {}),
  });
  const server = config.server ?? {};
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
          app.log.info(summary, 'configuration reloaded');
          return summary;
        };
  const app = buildHttpServer({
    service: kiln.service,
    apiKeys,
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
    { url, models: config.models.map((model) => model.id), auth: apiKeys.length > 0, startupMs: Math.round(performance.now() - startedAt) },
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
  return { url, apiKeys };
}

async function demo(flags: Flags): Promise<void> {
  process.stdout.write('Generating a tiny RANDOM-WEIGHT model (it answers gibberish; it proves the pipeline, not the model)...\n');
  const file = await ensureTinyModel();
  const id = 'kiln-demo-random';
  const { url, apiKeys } = await serve({ ...flags, 'log-level': flags['log-level'] ?? 'warn' }, { models: [{ id, file, preload: true, keep_alive: -1 }] });
  const body = { model: id, messages: [{ role: 'user', content: 'Hello, Kiln!' }], max_tokens: 32 };
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (apiKeys[0] !== undefined) headers.authorization = `Bearer ${apiKeys[0].key}`;
  const response = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify(body) });
  process.stdout.write(`\nPOST ${url}/v1/chat/completions ${JSON.stringify(body)}\n→ HTTP ${response.status}\n`);
  process.stdout.write(`${JSON.stringify(await response.json(), null, 2)}\n`);
  process.stdout.write(
    `\nKiln is serving '${id}' at ${url} (Ctrl-C to stop). Try:\n` +
      `  curl ${url}/v1/chat/completions -H 'content-type: application/json' -d '{"model":"${id}","messages":[{"role":"user","content":"Hi"}],"stream":true}'\n` +
      `To serve a real model instead: npx kiln serve --model /path/to/model.gguf\n`,
  );
}

/** `kiln models`: the config's ids and what the disk holds, with the running server's view when one answers. */
async function models(flags: Flags): Promise<void> {
  if (flags.config === undefined && flags.url === undefined) throw new ConfigError('kiln models needs --config <file.yaml> (and/or --url of a running server)');
  const config = flags.config !== undefined ? await loadConfigFile(flags.config) : undefined;
  const apiKey = flags['api-key']?.[0] ?? (process.env.KILN_API_KEYS ?? '').split(',')[0]?.trim() ?? undefined;
  const configKey = config?.server?.api_keys?.[0];
  const key = apiKey !== undefined && apiKey !== '' ? apiKey : typeof configKey === 'string' ? configKey : configKey?.key;
  await modelsCommand({ ...(config !== undefined ? { config } : {}), url: flags.url ?? defaultServerUrl(config), ...(key !== undefined ? { apiKey: key } : {}), out: process.stdout });
}
