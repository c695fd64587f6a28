/**
 * An in-process OpenAI-compatible server with canned answers, for the upstream engine's tests: streams scripted SSE
 * chunks, fails in the ways real servers fail (status codes, hanging, closing mid-stream), records every request body
 * and counts what it managed to write and which connections the client closed.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { ChatRequest } from '../../src/core/chat-request.js';
import type { EngineEvent, EngineRun } from '../../src/core/engine.js';
import type { Log } from '../../src/core/log.js';
import { normalizeChatRequest, REQUEST_LIMIT_DEFAULTS } from '../../src/core/normalize-request.js';
import { UpstreamEngine, type UpstreamEngineSettings } from '../../src/engines/upstream/upstream-engine.js';

export type Script =
  /** SSE: each chunk as `data: <json>` (a string is sent raw, as is), then the usage chunk (unless null) and [DONE]. */
  | {
      kind: 'sse';
      chunks: Array<object | string>;
      usage?: object | null;
      /** Send `data: [DONE]` at the end (default true). */
      done?: boolean;
      /** Wait between chunks. */
      delayMs?: number;
      /** After this many chunks, stop sending and keep the connection open. */
      hangAfter?: number;
      /** After this many chunks, destroy the socket. */
      closeAfter?: number;
      /** Keep the response open after [DONE] instead of ending it. */
      holdAfterDone?: boolean;
    }
  | { kind: 'status'; status: number; body?: unknown; headers?: Record<string, string> }
  | { kind: 'json'; body: object; status?: number }
  /** Never sends headers. */
  | { kind: 'hang' }
  /** Headers, then `bytes` of content chunks as fast as the client takes them (respects backpressure). */
  | { kind: 'big'; bytes: number };

export interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Record<string, unknown> | undefined;
}

export interface CannedUpstream {
  url: string;
  port: number;
  requests: RecordedRequest[];
  /** Responses whose connection closed before the response ended (the client aborted). */
  abortedResponses: number;
  /** Bytes written to responses of kind `big`. */
  bigBytesWritten: number;
  /** Sockets opened so far (keep-alive reuse keeps this low). */
  sockets: number;
  /** Resolves once `count` responses were aborted by the client. */
  waitForAborted(count: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export function chunk(delta: object, finishReason: string | null = null): object {
  return { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finishReason }] };
}

export function usageChunk(prompt: number, completion: number, extra: { cached?: number; reasoning?: number } = {}): object {
  return {
    id: 'chatcmpl-1',
    object: 'chat.completion.chunk',
    created: 1,
    model: 'm',
    choices: [],
    usage: {
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: prompt + completion,
      ...(extra.cached !== undefined ? { prompt_tokens_details: { cached_tokens: extra.cached } } : {}),
      ...(extra.reasoning !== undefined ? { completion_tokens_details: { reasoning_tokens: extra.reasoning } } : {}),
    },
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `script(body, n)`: the answer to the n-th chat request (0-based); GET /v1/models answers `models` (default 200). */
export async function startCannedUpstream(
  script: (body: Record<string, unknown> | undefined, n: number) => Script,
  options: { modelsStatus?: number } = {},
): Promise<CannedUpstream> {
  const sockets = new Set<Socket>();
  const waiters: Array<{ count: number; resolve: () => void }> = [];
  const state: CannedUpstream = {
    url: '',
    port: 0,
    requests: [],
    abortedResponses: 0,
    bigBytesWritten: 0,
    sockets: 0,
    waitForAborted(count, timeoutMs = 2_000) {
      if (state.abortedResponses >= count) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${state.abortedResponses} of ${count} responses were aborted`)), timeoutMs);
        waiters.push({
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        });
      });
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
  const onAborted = (): void => {
    state.abortedResponses++;
    for (const waiter of waiters.splice(0)) {
      if (state.abortedResponses >= waiter.count) waiter.resolve();
      else waiters.push(waiter);
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const raw: Buffer[] = [];
    for await (const piece of req) raw.push(piece as Buffer);
    const text = Buffer.concat(raw).toString('utf8');
    let body: Record<string, unknown> | undefined;
    try {
      body = text === '' ? undefined : (JSON.parse(text) as Record<string, unknown>);
    } catch {
      body = undefined;
    }
    const n = state.requests.filter((request) => request.method === 'POST').length;
    state.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
    res.on('close', () => {
      if (!res.writableFinished) onAborted();
    });
    if (req.method === 'GET' && req.url?.endsWith('/models') === true) {
      res.writeHead(options.modelsStatus ?? 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'm', object: 'model' }] }));
      return;
    }
    const answer = script(body, n);
    switch (answer.kind) {
      case 'hang':
        return;
      case 'status':
        res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers });
        res.end(answer.body === undefined ? '' : typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body));
        return;
      case 'json':
        res.writeHead(answer.status ?? 200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer.body));
        return;
      case 'big': {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const piece = `data: ${JSON.stringify(chunk({ content: 'x'.repeat(1000) }))}\n\n`;
        while (state.bigBytesWritten < answer.bytes && !res.destroyed) {
          state.bigBytesWritten += Buffer.byteLength(piece);
          if (!res.write(piece)) {
            await new Promise<void>((resolve) => {
              res.once('drain', resolve);
              res.once('close', resolve);
            });
          }
        }
        if (!res.destroyed) res.end(`data: ${JSON.stringify(chunk({}, 'stop'))}\n\ndata: [DONE]\n\n`);
        return;
      }
      case 'sse': {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        const events = answer.chunks.map((item) => (typeof item === 'string' ? item : `data: ${JSON.stringify(item)}\n\n`));
        if (answer.usage !== null && answer.usage !== undefined) events.push(`data: ${JSON.stringify(answer.usage)}\n\n`);
        if (answer.done !== false) events.push('data: [DONE]\n\n');
        for (let index = 0; index < events.length; index++) {
          if (answer.hangAfter === index) return;
          if (answer.closeAfter === index) {
            // Let what was written reach the client first: destroying discards unsent data.
            await sleep(50);
            res.socket?.destroy();
            return;
          }
          if (answer.delayMs !== undefined && index > 0) await sleep(answer.delayMs);
          if (res.destroyed) return;
          res.write(events[index]);
        }
        if (answer.holdAfterDone !== true) res.end();
        return;
      }
    }
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  server.on('connection', (socket) => {
    state.sockets++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as AddressInfo).port;
  state.url = `http://127.0.0.1:${state.port}/v1`;
  return state;
}

// Driving an UpstreamEngine against a canned upstream.

export function chatRequest(extra: Record<string, unknown> = {}): ChatRequest {
  return normalizeChatRequest({ model: 'kiln-test', messages: [{ role: 'user', content: 'Hi there' }], ...extra }, { ...REQUEST_LIMIT_DEFAULTS, maxChoices: 8 });
}

export interface LogLine {
  level: string;
  fields: object;
  message: string;
}

export function collectingLog(): { log: Log; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (fields: object, message: string) => lines.push({ level, fields, message });
  return { log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }, lines };
}

export function upstreamEngine(upstream: Pick<CannedUpstream, "url">, overrides: Partial<UpstreamEngineSettings> = {}): UpstreamEngine {
  return new UpstreamEngine({
    name: 'canned',
    baseUrl: upstream.url,
    model: 'served-model',
    apiKey: 'sk-upstream-secret',
    reasoning: 'auto',
    maxConcurrency: 4,
    timeouts: { connectMs: 1_000, firstTokenMs: 2_000, idleMs: 2_000, totalMs: 10_000 },
    log: collectingLog().log,
    ...overrides,
  });
}

export async function events(run: EngineRun, index = 0): Promise<EngineEvent[]> {
  const out: EngineEvent[] = [];
  for await (const event of run.choice(index)) out.push(event);
  return out;
}

