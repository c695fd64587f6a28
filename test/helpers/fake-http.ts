/**
 * The real HTTP layer and ChatService in-process, over a fake engine that produces text as fast as it is pulled:
 * for transport tests (raw sockets, stalled readers, shutdown) that need no model.
 */
import { connect, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { ChatEngine, EngineEvent, EngineRun } from '../../src/core/engine.js';
import type { ChatRequest } from '../../src/core/chat-request.js';
import { buildHttpServer, type HttpOptions } from '../../src/http/server.js';
import { Admission } from '../../src/service/admission.js';
import { ChatService } from '../../src/service/chat-service.js';
import { ModelRegistry } from '../../src/service/model-registry.js';

export const MODEL = 'fake-model';

export interface FakeEngineStats {
  started: number;
  /** Runs whose every choice iteration has ended (the engine would have freed their sequences). */
  released: number;
  /** Runs whose start signal fired. */
  aborted: number;
}

/**
 * Emits `max_tokens` pieces of `pieceBytes` each, yielding to the event loop (or waiting `pieceDelayMs`) before each;
 * `start` may wait `startDelayMs` (and, like an engine in the middle of a decode, not notice an abort meanwhile).
 */
export function fakeEngine(options: { pieceBytes?: number; pieceDelayMs?: number; startDelayMs?: number; startIgnoresAbort?: boolean } = {}): { engine: ChatEngine; stats: FakeEngineStats } {
  const stats: FakeEngineStats = { started: 0, released: 0, aborted: 0 };
  const piece = 'x'.repeat(options.pieceBytes ?? 1024);
  const engine: ChatEngine = {
    description: { name: 'fake', contextSize: 4096, supportsImages: false },
    capacity: () => 64,
    async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
      stats.started++;
      signal.addEventListener('abort', () => stats.aborted++, { once: true });
      if (options.startDelayMs !== undefined) {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(resolve, options.startDelayMs);
          if (!options.startIgnoresAbort) signal.addEventListener('abort', () => (clearTimeout(timer), reject(signal.reason)), { once: true });
        });
      }
      let open = request.n;
      return {
        promptTokens: 3,
        reasoning: 'off',
        cachedTokens: 0,
        maxTokens: request.maxTokens,
        async *choice(): AsyncGenerator<EngineEvent, void, undefined> {
          try {
            for (let produced = 0; produced < request.maxTokens; produced++) {
              if (signal.aborted) return;
              await new Promise((resolve) => (options.pieceDelayMs === undefined ? setImmediate(resolve) : setTimeout(resolve, options.pieceDelayMs)));
              yield { type: 'text', text: piece, tokens: 1 };
            }
            yield { type: 'end', reason: 'length' };
          } finally {
            if (--open === 0) stats.released++;
          }
        },
        dispose() {},
      };
    },
    async close() {},
  };
  return { engine, stats };
}

export interface TestServer {
  app: FastifyInstance;
  port: number;
  stats: FakeEngineStats;
  /** Every log line so far, parsed. */
  logs(): Array<Record<string, unknown>>;
}

export async function startTestServer(
  httpOptions: Partial<HttpOptions> = {},
  engineOptions: Parameters<typeof fakeEngine>[0] = {},
): Promise<TestServer> {
  const { engine, stats } = fakeEngine(engineOptions);
  const registry = new ModelRegistry();
  registry.add({ id: MODEL, served: { engine, admission: new Admission(() => engine.capacity(), { depth: 64, waitMs: 60_000 }) }, ownedBy: 'kiln', created: 0 });
  const service = new ChatService(registry, { maxChoices: 8, systemFingerprint: 'test' });
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (data) => (text += data));
  const app = buildHttpServer({ service, apiKeys: [], logLevel: 'debug', logStream: stream, ...httpOptions });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    app,
    port: address.port,
    stats,
    logs: () => text.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}

export function chatBody(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, ...extra });
}

export function postRequest(body: string, headers: Record<string, string> = {}, path = '/v1/chat/completions'): string {
  const lines = Object.entries({ host: 'localhost', 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers });
  return `POST ${path} HTTP/1.1\r\n${lines.map(([name, value]) => `${name}: ${value}\r\n`).join('')}\r\n${body}`;
}

export function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Sends `raw` (unless empty) and collects everything the server sends until it closes the connection. */
export async function exchange(port: number, raw: string | Buffer, timeoutMs = 10_000): Promise<{ text: string; ms: number }> {
  const socket = await openSocket(port);
  const began = performance.now();
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within ${timeoutMs} ms; got ${JSON.stringify(text.slice(0, 300))}`));
    }, timeoutMs);
    socket.on('data', (data) => (text += data.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ text, ms: performance.now() - began });
    });
    if (raw.length > 0) socket.write(raw);
  });
}

export interface ParsedResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** The first HTTP/1.1 response in `text` (Content-Length framing only). */
export function parseResponse(text: string): ParsedResponse {
  const split = text.indexOf('\r\n\r\n');
  if (split === -1) throw new Error(`no complete response head: ${JSON.stringify(text.slice(0, 300))}`);
  const [statusLine, ...headerLines] = text.slice(0, split).split('\r\n');
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine!)?.[1]);
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = Number(headers['content-length'] ?? 0);
  return { status, headers, body: text.slice(split + 4, split + 4 + length) };
}

/** The body of a chunked response (possibly cut short) in `text`, the head and chunk framing removed. */
export function chunkedBody(text: string): string {
  let rest = text.slice(text.indexOf('\r\n\r\n') + 4);
  let body = '';
  for (;;) {
    const lineEnd = rest.indexOf('\r\n');
    if (lineEnd === -1) return body;
    const size = parseInt(rest.slice(0, lineEnd), 16);
    if (!(size > 0)) return body;
    body += rest.slice(lineEnd + 2, lineEnd + 2 + size);
    rest = rest.slice(lineEnd + 2 + size + 2);
  }
}
