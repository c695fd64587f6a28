/**
 * A small OpenAI-compatible upstream (node:http) whose behaviour tests switch at run time, for the failure cases of
 * upstream deployments: answers normally (streamed or whole), hangs, answers late, cuts a stream, answers an error
 * status, inlines `<think>`, sends `reasoning_content` or streamed `tool_calls` the way vLLM does. It counts requests
 * and records each body and Authorization header; it can stop listening and listen again on the same port (a dead,
 * then recovered, replica).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export type FaultMode =
  /** Streams `chunks` as content deltas, then the finish chunk, the usage chunk (when asked for) and [DONE]; or JSON. */
  | { kind: 'ok'; chunks?: string[] }
  /** Reads the request and never answers (with `sendHeaders`: answers 200 text/event-stream, then nothing). */
  | { kind: 'hang'; sendHeaders?: boolean }
  /** Waits `ms` before anything (headers included), then answers like `ok`. */
  | { kind: 'slowFirstByte'; ms: number }
  /** Sends the headers and `afterChunks` content chunks, then destroys the connection. */
  | { kind: 'closeMidStream'; afterChunks: number }
  /** Answers `status` with an OpenAI error body, and `Retry-After` when given. */
  | { kind: 'status'; status: number; retryAfter?: number }
  /** Content `<think>reasoning</think>answer`, split across chunks in the middle of the tags. */
  | { kind: 'inlineThink' }
  /** Reasoning in `delta.reasoning_content` (vLLM's reasoning parser), then content. */
  | { kind: 'reasoningContent' }
  /** One tool call streamed as OpenAI `tool_calls` deltas (id and name first, arguments in pieces), finish `tool_calls`. */
  | { kind: 'toolCall' };

export const Fault = {
  ok: (chunks?: string[]): FaultMode => (chunks === undefined ? { kind: 'ok' } : { kind: 'ok', chunks }),
  hang: (sendHeaders = false): FaultMode => ({ kind: 'hang', sendHeaders }),
  slowFirstByte: (ms: number): FaultMode => ({ kind: 'slowFirstByte', ms }),
  closeMidStream: (afterChunks: number): FaultMode => ({ kind: 'closeMidStream', afterChunks }),
  status: (status: number, retryAfter?: number): FaultMode => (retryAfter === undefined ? { kind: 'status', status } : { kind: 'status', status, retryAfter }),
  inlineThink: (): FaultMode => ({ kind: 'inlineThink' }),
  reasoningContent: (): FaultMode => ({ kind: 'reasoningContent' }),
  toolCall: (): FaultMode => ({ kind: 'toolCall' }),
};

export const OK_CHUNKS = ['Hello', ' from', ' the', ' upstream.'];
/** What inlineThink and reasoningContent say. */
export const THINK_REASONING = 'Let me think about this.';
export const THINK_ANSWER = 'The answer is 42.';
/** inlineThink's content pieces: the tags are cut across chunks. */
export const INLINE_THINK_CHUNKS = ['<thi', `nk>${THINK_REASONING.slice(0, 7)}`, `${THINK_REASONING.slice(7)}</th`, 'ink>', THINK_ANSWER.slice(0, 6), THINK_ANSWER.slice(6)];
export const TOOL_CALL = { id: 'call_up123', name: 'get_weather', arguments: '{"city": "Paris", "days": 3}' };

export interface RecordedRequest {
  method: string;
  path: string;
  authorization: string | undefined;
  body: unknown;
}

export interface FaultUpstreamOptions {
  mode?: FaultMode;
  /** The model name it serves (echoed in responses and listed by GET /v1/models). */
  model?: string;
  port?: number;
}

export class FaultUpstream {
  mode: FaultMode;
  readonly model: string;
  /** Chat completion requests received (POST /v1/chat/completions), whatever the mode. */
  requests = 0;
  /** GET /v1/models requests (active health checks). */
  modelsRequests = 0;
  readonly recorded: RecordedRequest[] = [];
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private boundPort = 0;

  private constructor(options: FaultUpstreamOptions) {
    this.mode = options.mode ?? { kind: 'ok' };
    this.model = options.model ?? 'upstream-model';
  }

  static async start(options: FaultUpstreamOptions = {}): Promise<FaultUpstream> {
    const upstream = new FaultUpstream(options);
    await upstream.listen(options.port ?? 0);
    return upstream;
  }

  get port(): number {
    return this.boundPort;
  }

  /** Its OpenAI base URL, as an `upstreams[].url` names it. */
  get url(): string {
    return `http://127.0.0.1:${this.boundPort}/v1`;
  }

  get listening(): boolean {
    return this.server !== undefined;
  }

  /** The Authorization headers of the chat completion requests, in order. */
  get authorizations(): Array<string | undefined> {
    return this.recorded.filter((request) => request.path.endsWith('/chat/completions')).map((request) => request.authorization);
  }

  /** The bodies of the chat completion requests, in order. */
  get bodies(): unknown[] {
    return this.recorded.filter((request) => request.path.endsWith('/chat/completions')).map((request) => request.body);
  }

  setMode(mode: FaultMode): void {
    this.mode = mode;
  }

  /** Stops listening and cuts every connection (hung requests included): the replica is dead. */
  async stop(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    await closed;
  }

  /** Listens again on the same port (optionally in a new mode): the replica recovered. */
  async restart(mode?: FaultMode): Promise<void> {
    if (mode !== undefined) this.mode = mode;
    if (this.server !== undefined) return;
    await this.listen(this.boundPort);
  }

  private async listen(port: number): Promise<void> {
    const server = createServer((request, response) => {
      this.handle(request, response).catch(() => response.destroy());
    });
    server.keepAliveTimeout = 60_000;
    server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
    // The port was just freed by stop(): a lingering TIME_WAIT does not block a listener, but retry briefly anyway.
    for (let attempt = 0; ; attempt++) {
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(port, '127.0.0.1', () => {
            server.off('error', reject);
            resolve();
          });
        });
        break;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= 20) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    this.boundPort = (server.address() as { port: number }).port;
    this.server = server;
  }

  private later(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      this.timers.add(timer);
    });
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    let text = '';
    request.setEncoding('utf8');
    for await (const piece of request) text += piece;
    let body: unknown = undefined;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = text;
    }
    const path = (request.url ?? '/').split('?')[0]!;
    this.recorded.push({ method: request.method ?? '', path, authorization: request.headers.authorization, body });
    const mode = this.mode;

    if (request.method === 'GET' && path === '/v1/models') {
      this.modelsRequests++;
      if (mode.kind === 'hang' && !mode.sendHeaders) return;
      if (mode.kind === 'status') return this.sendError(response, mode.status, mode.retryAfter);
      if (mode.kind === 'slowFirstByte') await this.later(mode.ms);
      return this.sendJson(response, 200, { object: 'list', data: [{ id: this.model, object: 'model', created: 0, owned_by: 'fault-upstream' }] });
    }
    if (request.method !== 'POST' || path !== '/v1/chat/completions') return this.sendError(response, 404);
    this.requests++;
    const options = (typeof body === 'object' && body !== null ? body : {}) as { stream?: boolean; stream_options?: { include_usage?: boolean } };
    const stream = options.stream === true;
    const includeUsage = options.stream_options?.include_usage === true;

    switch (mode.kind) {
      case 'hang':
        if (mode.sendHeaders) response.writeHead(200, { 'content-type': 'text/event-stream' }).flushHeaders();
        return; // never answers; stop() cuts it
      case 'status':
        return this.sendError(response, mode.status, mode.retryAfter);
      case 'slowFirstByte':
        await this.later(mode.ms);
        if (response.destroyed) return;
        return this.answer(response, stream, includeUsage, contentDeltas(OK_CHUNKS), 'stop');
      case 'ok':
        return this.answer(response, stream, includeUsage, contentDeltas(mode.chunks ?? OK_CHUNKS), 'stop');
      case 'inlineThink':
        return this.answer(response, stream, includeUsage, contentDeltas(INLINE_THINK_CHUNKS), 'stop');
      case 'reasoningContent':
        return this.answer(
          response,
          stream,
          includeUsage,
          [
            { reasoning_content: THINK_REASONING.slice(0, 9) },
            { reasoning_content: THINK_REASONING.slice(9) },
            { content: THINK_ANSWER.slice(0, 6) },
            { content: THINK_ANSWER.slice(6) },
          ],
          'stop',
        );
      case 'toolCall': {
        const { id, name, arguments: args } = TOOL_CALL;
        const cut = Math.floor(args.length / 2);
        return this.answer(
          response,
          stream,
          includeUsage,
          [
            { tool_calls: [{ index: 0, id, type: 'function', function: { name, arguments: '' } }] },
            { tool_calls: [{ index: 0, function: { arguments: args.slice(0, cut) } }] },
            { tool_calls: [{ index: 0, function: { arguments: args.slice(cut) } }] },
          ],
          'tool_calls',
        );
      }
      case 'closeMidStream': {
        response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        const deltas = contentDeltas(OK_CHUNKS.concat(OK_CHUNKS, OK_CHUNKS)).slice(0, mode.afterChunks);
        response.write(sse(this.chunk({ role: 'assistant', content: '' }, null)));
        for (const delta of deltas) {
          response.write(sse(this.chunk(delta, null)));
          await this.later(10);
        }
        await this.later(20);
        response.socket?.destroy();
        return;
      }
    }
  }

  private chunk(delta: Record<string, unknown>, finishReason: string | null, usage?: unknown): Record<string, unknown> {
    return {
      id: 'chatcmpl-fault',
      object: 'chat.completion.chunk',
      created: Math.floor(Date.now() / 1000),
      model: this.model,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
      ...(usage !== undefined ? { usage } : {}),
    };
  }

  private async answer(response: ServerResponse, stream: boolean, includeUsage: boolean, deltas: Array<Record<string, unknown>>, finishReason: string): Promise<void> {
    const usage = { prompt_tokens: 11, completion_tokens: deltas.length, total_tokens: 11 + deltas.length };
    if (!stream) {
      const message: Record<string, unknown> = { role: 'assistant', content: null };
      for (const delta of deltas) {
        if (typeof delta.content === 'string') message.content = `${(message.content as string | null) ?? ''}${delta.content}`;
        if (typeof delta.reasoning_content === 'string') message.reasoning_content = `${(message.reasoning_content as string | undefined) ?? ''}${delta.reasoning_content}`;
      }
      if (finishReason === 'tool_calls') message.tool_calls = [{ id: TOOL_CALL.id, type: 'function', function: { name: TOOL_CALL.name, arguments: TOOL_CALL.arguments } }];
      return this.sendJson(response, 200, {
        id: 'chatcmpl-fault',
        object: 'chat.completion',
        created: Math.floor(Date.now() / 1000),
        model: this.model,
        choices: [{ index: 0, message, logprobs: null, finish_reason: finishReason }],
        usage,
      });
    }
    response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    response.write(sse(this.chunk({ role: 'assistant', content: '' }, null)));
    for (const delta of deltas) {
      if (response.destroyed) return;
      response.write(sse(this.chunk(delta, null)));
      await this.later(2);
    }
    if (response.destroyed) return;
    response.write(sse(this.chunk({}, finishReason)));
    if (includeUsage) response.write(sse({ id: 'chatcmpl-fault', object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000), model: this.model, choices: [], usage }));
    response.end('data: [DONE]\n\n');
  }

  private sendJson(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body);
    response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
    response.end(text);
  }

  private sendError(response: ServerResponse, status: number, retryAfter?: number): void {
    const type = status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error';
    this.sendJson(
      response,
      status,
      { error: { message: `fault upstream answers ${status}`, type, param: null, code: String(status) } },
      retryAfter !== undefined ? { 'retry-after': String(retryAfter) } : {},
    );
  }
}

function contentDeltas(pieces: string[]): Array<Record<string, unknown>> {
  return pieces.map((content) => ({ content }));
}

function sse(value: unknown): string {
  return `data: ${JSON.stringify(value)}\n\n`;
}
