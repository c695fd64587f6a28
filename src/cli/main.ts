/**
 * The `kiln` command line: serve, demo, pull, models, keys, usage.
 */
import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from '../config/config.js';
import { ensureTinyModel } from '../gguf/tiny-model.js';
import { openStore, storeOptionsFrom } from '../store/store.js';
import { options, type Flags } from './flags.js';
import { keysCommand } from './keys-command.js';
import { defaultServerUrl, modelsCommand } from './models-command.js';
import { pullCommand } from './pull-command.js';
import { serve, temporaryDataDir } from './serve-command.js';
import { usageCommand } from './usage-command.js';

const USAGE = `Usage:
  kiln serve [--config kiln.yaml | --model file.gguf [--model-id id] | --upstream URL ... --model-id id] [options]
  kiln demo  [--port 8000]        serve a generated random-weight model and show one completion
  kiln pull  <hf:owner/repo/path/file.gguf | https://…/file.gguf | model id [--config kiln.yaml]>
                                  download a GGUF into the model cache (models_dir, else $KILN_MODELS_DIR, else
                                  ~/.cache/kiln/models), resuming and verifying it; HF_ENDPOINT, HF_TOKEN are honoured
  kiln models [--config kiln.yaml] [--url http://host:port]
                                  list the configured ids: source, size on disk, present; with a server running
                                  there (default: the config's host and port) also state, memory and idle time
  kiln keys create --name <n> [--tier free|pro] [--rpm N] [--tpm N] [--models <glob,...>]
                   [--quota-tokens N --quota-period day|month] [--config kiln.yaml]
  kiln keys list [--all] | revoke <name|id> | update <name|id> [flags as for create]
                                  API keys in the store the server uses (data_dir / database_url of the config, else
                                  $DATABASE_URL, else $KILN_DATA_DIR or ~/.local/share/kiln)
  kiln usage [--from 2026-11-01] [--to …] [--group-by key|model|day] [--config kiln.yaml]
                                  tokens and requests from the usage ledger

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

export async function main(argv: string[]): Promise<void> {
  // These take their own flags; only --config is shared with the others.
  if (argv[0] === 'keys' || argv[0] === 'usage') {
    process.exitCode = await storeCommand(argv[0], argv.slice(1));
    return;
  }
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

async function demo(flags: Flags): Promise<void> {
  process.stdout.write('Generating a tiny RANDOM-WEIGHT model (it answers gibberish; it proves the pipeline, not the model)...\n');
  const file = await ensureTinyModel();
  const id = 'kiln-demo-random';
  const { url, apiKey } = await serve({ ...flags, 'log-level': flags['log-level'] ?? 'warn' }, { data_dir: await temporaryDataDir(), models: [{ id, file, preload: true, keep_alive: -1 }] });
  const body = { model: id, messages: [{ role: 'user', content: 'Hello, Kiln!' }], max_tokens: 32 };
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (apiKey !== undefined) headers.authorization = `Bearer ${apiKey}`;
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

/** `kiln keys …` and `kiln usage …` on the store `--config` names (the one `kiln serve --config` uses). */
async function storeCommand(command: 'keys' | 'usage', args: string[]): Promise<number> {
  const rest = [...args];
  const at = rest.findIndex((arg) => arg === '--config' || arg.startsWith('--config='));
  let configFile: string | undefined;
  if (at !== -1) {
    const [flag] = rest.splice(at, 1);
    configFile = flag!.includes('=') ? flag!.slice('--config='.length) : rest.splice(at, 1)[0];
    if (configFile === undefined || configFile === '') fail('--config needs a file');
  }
  try {
    const config = configFile !== undefined ? await loadConfigFile(configFile) : undefined;
    const store = await openStore(storeOptionsFrom(config));
    try {
      return await (command === 'keys' ? keysCommand : usageCommand)(rest, { store, out: process.stdout });
    } finally {
      await store.close();
    }
  } catch (error) {
    if (error instanceof ConfigError) fail(error.message);
    process.stderr.write(`kiln ${command}: ${(error as Error).message}\n`);
    return 1;
  }
}
