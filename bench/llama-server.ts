/**
 * The peer: llama.cpp's own server, built from the llama.cpp source that node-llama-cpp ships
 * (node_modules/node-llama-cpp/llama/gitRelease.bundle), cached outside the repository.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

const REPO_ROOT = resolve(import.meta.dirname, '..');
const BUNDLE = join(REPO_ROOT, 'node_modules/node-llama-cpp/llama/gitRelease.bundle');
export const LLAMA_CPP_CACHE = join(process.env.KILN_CACHE_DIR ?? join(homedir(), '.cache/kiln'), 'llama.cpp');

function run(command: string, args: string[], cwd?: string): void {
  const result = spawnSync(command, args, { cwd, stdio: 'inherit' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed with ${result.status}`);
}

/** Returns a llama-server binary: the given one, the cached build, or a fresh build (about 10 minutes on 2 cores). */
export function locateLlamaServer(given?: string): string {
  if (given !== undefined) {
    if (!existsSync(given)) throw new Error(`--llama-server ${given}: no such file`);
    return given;
  }
  const binary = join(LLAMA_CPP_CACHE, 'build/bin/llama-server');
  if (existsSync(binary)) return binary;
  console.error(`Building llama-server from node-llama-cpp's bundled llama.cpp into ${LLAMA_CPP_CACHE} (one time)...`);
  if (!existsSync(LLAMA_CPP_CACHE)) run('git', ['clone', '--quiet', BUNDLE, LLAMA_CPP_CACHE]);
  run('cmake', ['-B', 'build', '-DCMAKE_BUILD_TYPE=Release', '-DLLAMA_CURL=OFF', '-DLLAMA_OPENSSL=OFF', '-DGGML_NATIVE=ON', '-DLLAMA_BUILD_TESTS=OFF'], LLAMA_CPP_CACHE);
  run('cmake', ['--build', 'build', '-j', '2', '--target', 'llama-server', 'llama-batched-bench'], LLAMA_CPP_CACHE);
  return binary;
}

/**
 * node-llama-cpp's prebuilt CPU binary has no OpenMP and never attaches a ggml threadpool, so every llama_decode
 * spawns and joins its worker threads (measured: ~10 ms per decode on the 2-core VM; a tiny model decodes 86 tok/s
 * with 2 threads against 2,000 with 1). A local build of the same bundled llama.cpp (OpenMP, native CPU flags) has
 * no such cost, and node-llama-cpp picks it up automatically. Builds it when absent (about 7 minutes on 2 cores).
 */
export function ensureLocalNodeLlamaCppBuild(): string {
  const builds = join(REPO_ROOT, 'node_modules/node-llama-cpp/llama/localBuilds');
  if (existsSync(builds)) return 'local build (present)';
  console.error('Building node-llama-cpp from its bundled llama.cpp source (one time, no network)...');
  run('npx', ['--no', 'node-llama-cpp', 'source', 'download', '--gpu', 'false'], REPO_ROOT);
  return 'local build (built now)';
}

export interface ServerProcess {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

export async function startLlamaServer(binary: string, options: { model: string; port: number; parallel: number; contextPerSequence: number; threads: number }): Promise<ServerProcess> {
  const args = [
    '-m', options.model,
    '--host', '127.0.0.1',
    '--port', String(options.port),
    '-np', String(options.parallel),
    '-c', String(options.contextPerSequence * options.parallel),
    '-t', String(options.threads),
    '-tb', String(options.threads),
    '--no-webui',
    // Its Jinja-based output parser rejects random-weight output ("does not match the expected format"); the
    // benchmark measures serving, so it uses the plain ChatML path, which is if anything cheaper per token.
    '--no-jinja',
  ];
  const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (data) => (log = (log + data).slice(-20_000)));
  const url = `http://127.0.0.1:${options.port}`;
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`llama-server exited with ${child.exitCode}:\n${log}`);
    if (Date.now() > deadline) throw new Error(`llama-server did not become healthy:\n${log}`);
    const healthy = await fetch(`${url}/health`).then((response) => response.ok, () => false);
    if (healthy) break;
    await new Promise((resolvePromise) => setTimeout(resolvePromise, 250));
  }
  return {
    url,
    pid: child.pid!,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolvePromise) => child.once('exit', resolvePromise));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
