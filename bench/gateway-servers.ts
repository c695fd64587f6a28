/**
 * The gateways `npm run bench:gateway` puts in front of the canned upstream, each in a process of its own:
 * - Kiln: the built CLI (dist/, `npx tsc -p .` first) with a config whose one model is served by the upstream;
 * - Portkey's open-source gateway (@portkey-ai/gateway, its Node server), installed on first use into
 *   `${KILN_CACHE_DIR ?? ~/.cache/kiln}/portkey` — never a dependency of Kiln's.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';

const REPO_ROOT = resolve(import.meta.dirname, '..');
export const PORTKEY_VERSION = '1.15.2';
export const PORTKEY_DIR = join(process.env.KILN_CACHE_DIR ?? join(homedir(), '.cache/kiln'), 'portkey');
const PORTKEY_PACKAGE = join(PORTKEY_DIR, 'node_modules/@portkey-ai/gateway');

export interface ServerProcess {
  /** Origin, e.g. http://127.0.0.1:1234. */
  url: string;
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

function stopper(child: ChildProcess): () => Promise<void> {
  return async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolvePromise) => child.once('exit', resolvePromise));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  };
}

/**
 * @hono/node-server 1.14.2 and 1.19.19 (tried) hand a proxied response's own (immutable) Headers to Portkey, whose response
 * service then appends its x-portkey-* headers and throws `TypeError: immutable`: every streamed chat completion
 * answers 500 "Something went wrong" (Portkey-AI/gateway issues 1389 and 1550). 1.13.8 copies the headers; its
 * websocket companion is pinned to a release that accepts it.
 */
export const PORTKEY_PINS = { '@portkey-ai/gateway': PORTKEY_VERSION, '@hono/node-server': '1.13.8', '@hono/node-ws': '1.1.7' };

async function installedVersion(name: string): Promise<string | undefined> {
  const manifest = join(PORTKEY_DIR, 'node_modules', name, 'package.json');
  return existsSync(manifest) ? (JSON.parse(await readFile(manifest, 'utf8')) as { version: string }).version : undefined;
}

/** Installs the Portkey gateway (with PORTKEY_PINS) into PORTKEY_DIR unless it is there already (about 20 s, 95 packages). */
export async function ensurePortkey(): Promise<void> {
  const installed = await Promise.all(Object.entries(PORTKEY_PINS).map(async ([name, version]) => (await installedVersion(name)) === version));
  if (installed.every(Boolean)) return;
  console.error(`Installing @portkey-ai/gateway@${PORTKEY_VERSION} into ${PORTKEY_DIR} (one time)...`);
  await mkdir(PORTKEY_DIR, { recursive: true });
  const { '@portkey-ai/gateway': _, ...overrides } = PORTKEY_PINS;
  await writeFile(join(PORTKEY_DIR, 'package.json'), `${JSON.stringify({ private: true, dependencies: PORTKEY_PINS, overrides }, null, 2)}\n`);
  await rm(join(PORTKEY_DIR, 'node_modules'), { recursive: true, force: true });
  await rm(join(PORTKEY_DIR, 'package-lock.json'), { force: true });
  // Its postinstall (patch-package) has no patches in the published package: scripts stay off.
  const result = spawnSync('npm', ['install', '--prefix', PORTKEY_DIR, '--no-audit', '--no-fund', '--ignore-scripts'], { stdio: 'inherit' });
  if (result.status !== 0) throw new Error(`npm install @portkey-ai/gateway@${PORTKEY_VERSION} failed (${result.status ?? result.signal}); is the npm registry reachable?`);
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolvePromise) => server.listen(0, '127.0.0.1', resolvePromise));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolvePromise) => server.close(resolvePromise));
  return port;
}

/**
 * Portkey's Node server (build/start-server.js, the package's bin) with `--port=<free port>` and `--headless` (no
 * request-log console: the production set-up). It is ready when `GET /` answers.
 */
export async function startPortkey(nodeFlags: string[] = []): Promise<ServerProcess> {
  const port = await freePort();
  // Under a profiler it must exit, not die, on SIGTERM, or --cpu-prof writes nothing.
  const exitOnTerm = nodeFlags.length === 0 ? [] : ['--import', `data:text/javascript,process.on('SIGTERM',()=>process.exit(0))`];
  const child = spawn(process.execPath, [...nodeFlags, ...exitOnTerm, join(PORTKEY_PACKAGE, 'build/start-server.js'), `--port=${port}`, '--headless'], {
    cwd: PORTKEY_DIR,
    env: { ...process.env, NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (data) => (output = (output + data).slice(-20_000)));
  child.stderr!.on('data', (data) => (output = (output + data).slice(-20_000)));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`portkey exited with ${child.exitCode}:\n${output}`);
    if (Date.now() > deadline) throw new Error(`portkey did not answer GET / within 60 s:\n${output}`);
    if (await fetch(`${url}/`).then((response) => response.ok, () => false)) break;
    await new Promise((resolvePromise) => setTimeout(resolvePromise, 200));
  }
  return { url, child, output: () => output, stop: stopper(child) };
}

export const KILN_MODEL = 'bench-model';

/** Environment variables of the caller's that would change which store, counters or keys Kiln uses. */
const CALLER_ONLY = ['DATABASE_URL', 'REDIS_URL', 'KILN_API_KEYS', 'KILN_ADMIN_KEY', 'KILN_DATA_DIR'];

export interface KilnGatewayOptions {
  /** Node flags for the server process, e.g. --cpu-prof. */
  nodeFlags?: string[];
  /** Its store and config live here (default: a fresh temporary directory). */
  dataDir?: string;
  /** More top-level config (redis_url, …) and `server` settings (admin_key, …). */
  config?: Record<string, unknown>;
  server?: Record<string, unknown>;
}

/**
 * `kiln serve` with one model served by the upstream at `upstreamUrl` (its origin; Kiln is given `<origin>/v1`), its
 * own data directory, and an environment without the caller's store, Redis or keys: a developer's shell must not
 * decide what is measured.
 */
export async function startKilnGateway(upstreamUrl: string, upstreamModel: string, options: KilnGatewayOptions = {}): Promise<ServerProcess> {
  const dir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'kiln-gateway-bench-')));
  const config = join(dir, 'kiln.yaml');
  await writeFile(
    config,
    stringify({
      data_dir: dir,
      ...options.config,
      server: { ...options.server, upstream: { first_token_timeout_ms: 60_000 } },
      models: [{ id: KILN_MODEL, upstreams: [{ url: `${upstreamUrl}/v1`, model: upstreamModel, max_concurrency: 256 }], queue_depth: 1024 }],
    }),
  );
  const bin = join(REPO_ROOT, 'bin/kiln.cjs');
  if (!existsSync(join(REPO_ROOT, 'dist/cli/main.js'))) throw new Error('dist/ is missing: run `npx tsc -p .` first');
  const env = { ...process.env };
  for (const name of CALLER_ONLY) delete env[name];
  const child = spawn(process.execPath, [...(options.nodeFlags ?? []), bin, 'serve', '--config', config, '--port', '0', '--log-level', 'warn'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const url = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`kiln did not start within 60 s:\n${output}`)), 60_000);
    const onData = (data: Buffer) => {
      output = (output + data).slice(-50_000);
      const match = /Kiln listening on (http:\/\/[^\s"]+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]!.replace(/\/$/, ''));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kiln exited with ${code} before listening:\n${output}`));
    });
  });
  return { url, child, output: () => output, stop: stopper(child) };
}

/** bench/gateway-floor.ts in front of the upstream: the reference for what Fastify + undici cost by themselves. */
export async function startFloorGateway(upstreamUrl: string, nodeFlags: string[] = []): Promise<ServerProcess> {
  const child = spawn(process.execPath, [...nodeFlags, '--import', 'tsx', join(REPO_ROOT, 'bench/gateway-floor.ts'), upstreamUrl], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const url = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`floor gateway did not start within 30 s:\n${output}`)), 30_000);
    const onData = (data: Buffer) => {
      output = (output + data).slice(-20_000);
      const match = /floor gateway listening on (http:\/\/\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]!);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`floor gateway exited with ${code}:\n${output}`));
    });
  });
  return { url, child, output: () => output, stop: stopper(child) };
}

/** User + system CPU time of a process so far, in ms (/proc: 10 ms ticks, plenty over a few thousand requests). */
export function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
  } catch {
    return Number.NaN;
  }
}
