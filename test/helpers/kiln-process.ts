/**
 * Starts the real `kiln` CLI (bin/kiln.cjs, i.e. the built dist/) as a child process on a free port and waits until
 * it listens. Tests talk to it over HTTP only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';

export const REPO_ROOT = resolve(import.meta.dirname, '../..');
const BIN = join(REPO_ROOT, 'bin/kiln.cjs');

export interface KilnProcess {
  url: string;
  child: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

/**
 * The environment of a kiln child process: its own empty data directory (its store: keys, usage) and no store or
 * Redis from the test runner's environment, unless the test gives them.
 */
export function childEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env };
  delete base.DATABASE_URL;
  delete base.REDIS_URL;
  delete base.KILN_ADMIN_KEY;
  delete base.KILN_API_KEYS;
  return { ...base, KILN_DATA_DIR: mkdtempSync(join(tmpdir(), 'kiln-data-')), ...env };
}

export async function writeConfig(config: unknown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-test-'));
  const path = join(dir, 'kiln.yaml');
  await writeFile(path, stringify(config));
  return path;
}

/** Runs `kiln <args>` to completion (for start-up refusals). */
export function runKiln(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (data) => (output += data));
    child.stderr.on('data', (data) => (output += data));
    child.on('exit', (code) => resolvePromise({ code, output }));
  });
}

export async function startKiln(args: string[], env: NodeJS.ProcessEnv = {}): Promise<KilnProcess> {
  const child = spawn(process.execPath, [BIN, 'serve', '--port', '0', ...args], {
    env: childEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const url = await new Promise<string>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`kiln did not start within 60 s:\n${output}`)), 60_000);
    const onData = (data: Buffer) => {
      output += data;
      const match = /Kiln listening on (http:\/\/[^\s"]+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[1]!);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kiln exited with ${code} before listening:\n${output}`));
    });
  });
  return {
    url,
    child,
    output: () => output,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolvePromise) => child.once('exit', resolvePromise));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Reads an SSE response body into its `data:` payloads, checking the framing on the way. */
export async function readEventStream(response: Response): Promise<string[]> {
  const text = await response.text();
  const events = text.split('\n\n');
  if (events.pop() !== '') throw new Error(`stream does not end with a blank line: ${JSON.stringify(text.slice(-80))}`);
  return events.map((event) => {
    if (!event.startsWith('data: ') || event.includes('\n')) throw new Error(`bad SSE event: ${JSON.stringify(event)}`);
    return event.slice('data: '.length);
  });
}
