/**
 * Client side of `npm run soak`: raw HTTP requests (node:http, so that headers are exactly what the case says,
 * including none), SSE streams read or aborted, a client that stops reading (a node:net socket paused after the
 * headers), a `/health` poller that stands in for the server's event-loop delay, and an RSS sampler.
 */
import { readFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { Worker } from 'node:worker_threads';

const agent = new Agent({ keepAlive: true, maxSockets: 256 });

export interface HttpResult {
  status: number;
  contentType: string | undefined;
  retryAfter: string | undefined;
  body: string;
  ms: number;
}

/** One request; rejects on a socket error or when `timeoutMs` passes without a complete answer. */
export function send(url: string, path: string, body: string | undefined, headers: Record<string, string>, timeoutMs: number): Promise<HttpResult> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(`${url}${path}`, { method: body === undefined ? 'GET' : 'POST', headers, agent, timeout: timeoutMs }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (data: Buffer) => parts.push(data));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'], retryAfter: res.headers['retry-after'], body: Buffer.concat(parts).toString('utf8'), ms: performance.now() - started }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

export function post(url: string, body: unknown, timeoutMs = 120_000): Promise<HttpResult> {
  return send(url, '/v1/chat/completions', JSON.stringify(body), { 'content-type': 'application/json' }, timeoutMs);
}

export type StreamEnd = 'complete' | 'error event' | 'cut' | 'refused';

export interface StreamResult {
  end: StreamEnd;
  status: number;
  tokens: number;
  firstChunkMs: number;
  ms: number;
  detail: string;
}

/** Classifies what a client got: `[DONE]` (complete), an in-band error event, or a stream that just stopped. */
export function classifyStream(status: number, text: string): { end: StreamEnd; tokens: number; detail: string } {
  if (status !== 200) return { end: 'refused', tokens: 0, detail: `${status} ${text.slice(0, 120)}` };
  const events = text.split('\n\n').filter((event) => event.startsWith('data: '));
  let tokens = 0;
  let end: StreamEnd = 'cut';
  let detail = '';
  for (const event of events) {
    const data = event.slice(6);
    if (data === '[DONE]') {
      end = 'complete';
      continue;
    }
    try {
      const parsed = JSON.parse(data) as { error?: { code?: string; message?: string }; usage?: { completion_tokens?: number } | null; choices?: unknown[] };
      if (parsed.error) {
        end = 'error event';
        detail = `${parsed.error.code}: ${parsed.error.message}`;
      }
      if (parsed.usage?.completion_tokens !== undefined) tokens = parsed.usage.completion_tokens;
      else if (parsed.choices?.length) tokens++;
    } catch {
      // A cut-off last event: the stream was cut.
    }
  }
  return { end, tokens, detail };
}

/** Streams a request to the end (or until `abortAfterFirstChunk`), counting the tokens the usage chunk reports. */
export function stream(url: string, body: Record<string, unknown>, options: { abortAfterFirstChunk?: boolean; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<StreamResult> {
  const started = performance.now();
  const payload = JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } });
  return new Promise((resolve) => {
    let firstChunkMs = Number.NaN;
    let status = 0;
    let text = '';
    const finish = () => resolve({ ...classifyStream(status, text), status, firstChunkMs, ms: performance.now() - started });
    const req = request(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, agent, timeout: options.timeoutMs ?? 300_000 }, (res) => {
      status = res.statusCode ?? 0;
      res.setEncoding('utf8');
      res.on('data', (data: string) => {
        text += data;
        if (Number.isNaN(firstChunkMs)) {
          firstChunkMs = performance.now() - started;
          if (options.abortAfterFirstChunk) req.destroy();
        }
      });
      res.on('end', finish);
      res.on('close', finish);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', finish);
    options.signal?.addEventListener('abort', () => req.destroy(), { once: true });
    req.end(payload);
  });
}

/**
 * A client that sends a streaming request and stops reading as soon as the response headers are in. The kernel's
 * socket buffers (send buffer autotuned up to tcp_wmem's 4 MB, plus the receive buffer) hold megabytes before the
 * server sees any backpressure, so `backedUp` watches the server side of the connection in /proc/net/tcp until its
 * send queue stops growing: from then on the server cannot write, and its stall timeout runs.
 */
export class StalledReader {
  private socket: Socket;
  private received = '';
  private closedAt: number | undefined;
  private readonly serverPort: number;
  readonly opened = performance.now();
  readonly headers: Promise<number>;

  constructor(url: string, body: Record<string, unknown>) {
    const { hostname, port } = new URL(url);
    this.serverPort = Number(port);
    const payload = JSON.stringify({ ...body, stream: true });
    this.socket = connect(this.serverPort, hostname);
    this.socket.setEncoding('utf8');
    this.socket.on('connect', () => {
      this.socket.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: ${hostname}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
    });
    this.headers = new Promise((resolve) => {
      const onData = (data: string) => {
        this.received += data;
        const match = /^HTTP\/1\.1 (\d+)/.exec(this.received);
        if (match && this.received.includes('\r\n\r\n')) {
          this.socket.pause();
          this.socket.off('data', onData);
          resolve(Number(match[1]));
        }
      };
      this.socket.on('data', onData);
      this.socket.on('close', () => resolve(0));
    });
    this.socket.on('close', () => (this.closedAt ??= performance.now()));
    this.socket.on('error', () => undefined);
  }

  /** The server side of this connection in /proc/net/tcp: its send queue in bytes, or undefined once it is closed. */
  async serverSendQueue(): Promise<number | undefined> {
    const local = this.socket.localPort;
    if (local === undefined) return undefined;
    const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, '0');
    const table = await readFile('/proc/net/tcp', 'utf8');
    for (const line of table.split('\n').slice(1)) {
      const [, localAddress, remoteAddress, state, queues] = line.trim().split(/\s+/);
      if (localAddress?.endsWith(`:${hex(this.serverPort)}`) && remoteAddress?.endsWith(`:${hex(local)}`)) {
        return state === '01' ? Number.parseInt(queues!.split(':')[0]!, 16) : undefined;
      }
    }
    return undefined;
  }

  /** Resolves with the time (performance.now) the server's send queue stopped growing, or undefined on timeout. */
  async backedUp(timeoutMs: number): Promise<number | undefined> {
    const deadline = performance.now() + timeoutMs;
    let last = -1;
    let since = performance.now();
    while (performance.now() < deadline) {
      const queued = await this.serverSendQueue();
      if (queued === undefined) return undefined;
      if (queued > last) {
        last = queued;
        since = performance.now();
      } else if (performance.now() - since >= 1_000) return since;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return undefined;
  }

  /** Resolves with the time (performance.now) the server closed its side, or undefined if it is still open at `until`. */
  async serverClosed(until: number): Promise<number | undefined> {
    while (performance.now() < until) {
      if ((await this.serverSendQueue()) === undefined) return performance.now();
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return undefined;
  }

  /** Reads whatever the server sent (buffered while paused) until it closes or `waitMs` passes. */
  async drain(waitMs: number): Promise<{ end: StreamEnd | 'still open'; bytes: number; detail: string; closedAt: number | undefined }> {
    this.socket.on('data', (data: string) => (this.received += data));
    this.socket.resume();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      if (this.socket.destroyed) resolve();
    });
    const open = !this.socket.destroyed;
    this.socket.destroy();
    const body = this.received.slice(this.received.indexOf('\r\n\r\n') + 4);
    const classified = classifyStream(200, dechunk(body));
    return { ...classified, end: open ? 'still open' : classified.end, bytes: this.received.length, closedAt: open ? undefined : this.closedAt };
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Undoes HTTP/1.1 chunked framing well enough to find the SSE events (sizes are hex lines between chunks). */
function dechunk(body: string): string {
  return body.replace(/(^|\r\n)[0-9a-f]+\r\n/g, '');
}

/**
 * Polls `/health` every `everyMs`, one request at a time, from a worker thread so that the soak's own work (generating
 * and checking bodies) does not show up as server latency; the latencies stand in for the server's event-loop delay.
 */
export class HealthPoller {
  private latencies: number[] = [];
  private worker: Worker;

  constructor(url: string, everyMs = 20) {
    this.worker = new Worker(HEALTH_WORKER, { eval: true, workerData: { url: `${url}/health`, everyMs } });
    this.worker.on('message', (ms: number) => this.latencies.push(ms));
  }

  /** Worst and p99 since the last call, then starts over. */
  take(): { worst: number; p99: number; count: number } {
    const sorted = this.latencies.sort((a, b) => a - b);
    this.latencies = [];
    return { worst: sorted.at(-1) ?? Number.NaN, p99: sorted[Math.floor(sorted.length * 0.99)] ?? Number.NaN, count: sorted.length };
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}

const HEALTH_WORKER = `
const { get, Agent } = require('node:http');
const { parentPort, workerData } = require('node:worker_threads');
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
const once = () => new Promise((resolve) => {
  const req = get(workerData.url, { agent, timeout: 120000 }, (res) => { res.resume(); res.on('end', resolve); res.on('error', resolve); });
  req.on('timeout', () => req.destroy());
  req.on('error', resolve);
});
(async () => {
  for (;;) {
    const started = performance.now();
    await once();
    const ms = performance.now() - started;
    parentPort.postMessage(ms);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, workerData.everyMs - ms)));
  }
})();
`;

export async function rssMiB(pid: number): Promise<number> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN) / 1024;
  } catch {
    return Number.NaN;
  }
}

/** RSS sampled every 100 ms: before, after and the peak of one part. */
export class RssWatch {
  private peak = 0;
  private timer: NodeJS.Timeout;
  private constructor(
    private readonly pid: number,
    readonly before: number,
  ) {
    this.peak = before;
    this.timer = setInterval(() => void rssMiB(pid).then((rss) => (this.peak = Math.max(this.peak, rss || 0))), 100);
  }

  static async start(pid: number): Promise<RssWatch> {
    return new RssWatch(pid, await rssMiB(pid));
  }

  async stop(): Promise<{ before: number; after: number; peak: number }> {
    clearInterval(this.timer);
    const after = await rssMiB(this.pid);
    return { before: this.before, after, peak: Math.max(this.peak, after || 0) };
  }
}
