/**
 * Real Kiln processes as upstream replicas of a front Kiln: N `kiln serve` children serving generated tiny models on
 * free loopback ports, and a front whose config lists them (and anything else, e.g. fault upstreams) as upstreams.
 * Each replica logs every request at info level (`incoming request`), so its request count is read from its output;
 * a replica can be killed outright (SIGKILL) mid-run.
 */
import { createServer } from 'node:net';
import type { KilnProcess } from './kiln-process.js';
import { startKiln, writeConfig } from './kiln-process.js';

export interface Replica {
  index: number;
  /** How the front's config names it (`upstreams[].name`). */
  name: string;
  /** Its OpenAI base URL (`http://127.0.0.1:PORT/v1`). */
  url: string;
  port: number;
  process: KilnProcess;
  /** Chat completion requests it has received so far (counted in its log). */
  requestCount(): number;
  /** SIGKILL: no drain, connections cut. */
  kill(): Promise<void>;
  readonly killed: boolean;
}

/** What the front's config needs of a replica, known before it has started. */
export type ReplicaAddress = Pick<Replica, 'index' | 'name' | 'url' | 'port'>;

export interface ReplicaOptions {
  count: number;
  /** The `models` of replica `index`'s config. */
  models(index: number): unknown[];
  /** Extra `server` settings of every replica (e.g. api_keys). */
  server?: Record<string, unknown>;
  /** Names in the front's config (default `replica-<index>`). */
  name?(index: number): string;
}

const CHAT_REQUEST_LINE = /"url":"\/v1\/chat\/completions"[^\n]*"msg":"incoming request"/g;

export function countChatRequests(output: string): number {
  return output.match(CHAT_REQUEST_LINE)?.length ?? 0;
}

/** A port free on the loopback now (for a child that will listen on it a moment later). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

/** Ports and names for `count` replicas, so that a front can be configured (and started) alongside them. */
export async function planReplicas(options: Pick<ReplicaOptions, 'count' | 'name'>): Promise<ReplicaAddress[]> {
  const ports = new Set<number>();
  while (ports.size < options.count) ports.add(await freePort());
  return [...ports].map((port, index) => ({ index, name: options.name?.(index) ?? `replica-${index}`, url: `http://127.0.0.1:${port}/v1`, port }));
}

/** Starts the replicas in parallel (info-level logs: each request is one `incoming request` line). */
export async function startReplicas(options: ReplicaOptions, planned?: ReplicaAddress[]): Promise<Replica[]> {
  const started = await Promise.allSettled(
    Array.from({ length: options.count }, async (_, index) => {
      const config = await writeConfig({ ...(options.server ? { server: options.server } : {}), models: options.models(index) });
      const port = planned?.[index]?.port;
      return startKiln(['--config', config, '--log-level', 'info', ...(port !== undefined ? ['--port', String(port)] : [])]);
    }),
  );
  const failed = started.find((result) => result.status === 'rejected');
  if (failed !== undefined) {
    await Promise.allSettled(started.map((result) => (result.status === 'fulfilled' ? result.value.stop() : undefined)));
    throw (failed as PromiseRejectedResult).reason;
  }
  return started.map((result, index) => {
    const process = (result as PromiseFulfilledResult<KilnProcess>).value;
    const port = Number(new URL(process.url).port);
    let killed = false;
    return {
      index,
      name: options.name?.(index) ?? `replica-${index}`,
      url: `${process.url}/v1`,
      port,
      process,
      requestCount: () => countChatRequests(process.output()),
      kill: async () => {
        killed = true;
        if (process.child.exitCode !== null || process.child.signalCode !== null) return;
        const exited = new Promise((resolve) => process.child.once('exit', resolve));
        process.child.kill('SIGKILL');
        await exited;
      },
      get killed() {
        return killed;
      },
    };
  });
}

/** Request counts of every replica. */
export function requestCounts(replicas: Replica[]): number[] {
  return replicas.map((replica) => replica.requestCount());
}

/**
 * Waits until the replicas' logs show `expected` more requests than `before` in all (a replica writes its log line
 * when the request arrives, but the pipe may deliver it after the response), then a little longer for strays; returns
 * the per-replica differences.
 */
export async function requestsSince(replicas: Replica[], before: number[], expected: number, timeoutMs = 3000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  const delta = () => requestCounts(replicas).map((count, index) => count - before[index]!);
  while (delta().reduce((sum, value) => sum + value, 0) < expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await new Promise((resolve) => setTimeout(resolve, 50));
  return delta();
}

export interface Cluster {
  replicas: Replica[];
  front: KilnProcess;
  stop(): Promise<void>;
}

/**
 * Replicas and a front Kiln whose config `front(replicas)` builds, all started at once on ports chosen beforehand (the
 * front is run at `--log-level debug` unless `frontArgs` says otherwise, so that tests can check every line it writes).
 */
export async function startUpstreamCluster(options: ReplicaOptions & {
  front(replicas: ReplicaAddress[]): unknown;
  frontArgs?: string[];
  frontEnv?: NodeJS.ProcessEnv;
}): Promise<Cluster> {
  const planned = await planReplicas(options);
  const [replicas, front] = await Promise.allSettled([startReplicas(options, planned), startFront(options.front(planned), options.frontArgs, options.frontEnv)]);
  if (replicas.status === 'rejected' || front.status === 'rejected') {
    if (replicas.status === 'fulfilled') await Promise.allSettled(replicas.value.map((replica) => replica.process.stop()));
    if (front.status === 'fulfilled') await front.value.stop();
    throw replicas.status === 'rejected' ? replicas.reason : (front as PromiseRejectedResult).reason;
  }
  return {
    replicas: replicas.value,
    front: front.value,
    stop: async () => {
      await front.value.stop();
      await Promise.allSettled(replicas.value.map((replica) => replica.process.stop()));
    },
  };
}

export async function startFront(config: unknown, args: string[] = ['--log-level', 'debug'], env: NodeJS.ProcessEnv = {}): Promise<KilnProcess> {
  return startKiln(['--config', await writeConfig(config), ...args], env);
}

/**
 * What a response or a log may never show of an upstream: its API key, its address (the port, bare or in a URL).
 * Client ports in the server's request log (`remotePort`) are not upstream addresses and are left out. Returns what
 * leaked, with a little context.
 */
export function findLeaks(text: string, secrets: string[], upstreamPorts: number[]): string[] {
  const leaks: string[] = [];
  const around = (at: number) => JSON.stringify(text.slice(Math.max(0, at - 80), at + 40));
  for (const secret of secrets) {
    const at = text.indexOf(secret);
    if (at !== -1) leaks.push(`the upstream key ${secret.slice(0, 6)}… in ${around(at)}`);
  }
  const scrubbed = text.replace(/"remotePort":\d+/g, '"remotePort":0');
  for (const port of new Set(upstreamPorts)) {
    const match = new RegExp(`(?<![0-9])${port}(?![0-9])`).exec(scrubbed);
    if (match) leaks.push(`upstream port ${port} in ${JSON.stringify(scrubbed.slice(Math.max(0, match.index - 80), match.index + 40))}`);
  }
  return leaks;
}

/** A fetch that keeps every response's status, headers and whole body (read from a clone) for leak checks. */
export class ResponseRecorder {
  private readonly texts: string[] = [];
  private readonly pending: Array<Promise<void>> = [];

  readonly fetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const response = await fetch(input, init);
    const head = `${response.status} ${[...response.headers].map(([name, value]) => `${name}: ${value}`).join('\n')}\n\n`;
    this.pending.push(
      response
        .clone()
        .text()
        .then(
          (body) => void this.texts.push(head + body),
          () => void this.texts.push(head),
        ),
    );
    return response;
  };

  /** Everything recorded so far, once the bodies still being read have ended. */
  async all(): Promise<string> {
    await Promise.allSettled(this.pending);
    return this.texts.join('\n----\n');
  }

  get count(): number {
    return this.pending.length;
  }
}
