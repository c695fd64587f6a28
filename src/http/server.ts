/**
 * The HTTP transport: routes, auth, request ids, receipt timeouts, and the mapping of service results to JSON or
 * SSE. It is the only place that renders errors (errors/catalog.ts decides what they say; ./errors.ts renders them).
 */
import type { IncomingMessage } from 'node:http';
import { pino } from 'pino';
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify';
import { KilnError } from '../errors/catalog.js';
import type { Caller } from '../service/caller.js';
import type { ChatService } from '../service/chat-service.js';
import { registerAdminRoutes, type MetricsEndpoint, type UsageReader } from './admin-routes.js';
import { bearerToken, staticKeys, type ApiKey, type Authenticator } from './auth.js';
import { registerChatRoute } from './chat-route.js';
import { answerExpectation, fromFastify, makeClientErrorHandler, requestIdFrom, sendError } from './errors.js';
import { attachLifecycle } from './shutdown.js';

export interface HttpOptions {
  service: ChatService;
  /** Who a bearer key belongs to (tenancy's KeyResolver); absent: `apiKeys`. */
  auth?: Authenticator;
  /** A fixed list of keys when there is no `auth`; empty: no authentication. */
  apiKeys?: readonly ApiKey[];
  /** GET /v1/usage. */
  usage?: UsageReader;
  /** GET /metrics, and rejected requests counted by model and status. */
  metrics?: MetricsEndpoint & { observeRejection?(model: string | undefined, status: number): void };
  /** Who may read /metrics (default open, as vLLM's). */
  metricsAccess?: 'open' | 'admin' | 'off';
  /** A request still generating after this long ends with 504 (in-band when streaming). */
  requestTimeoutMs?: number;
  /** A stream whose client takes nothing for this long is ended and its connection closed. */
  stallTimeoutMs?: number;
  /** The request line and headers must arrive within this long (408). */
  headersTimeoutMs?: number;
  /** The whole request, body included, must arrive within this long (408). */
  bodyTimeoutMs?: number;
  bodyLimitBytes?: number;
  logLevel?: string;
  /** Where log lines go (default stdout); tests read them. */
  logStream?: NodeJS.WritableStream;
  /** A logger made by createLogger and shared with the engines (then logLevel and logStream are its own). */
  logger?: FastifyBaseLogger;
  /** Re-reads the configuration and applies its models (POST /admin/reload); absent: nothing to reload. */
  reload?: () => Promise<unknown>;
}

/** Kiln's pino logger: the server's and the engines' lines in one stream, requests logged without query strings. */
export function createLogger(options: { logLevel?: string; logStream?: NodeJS.WritableStream } = {}): FastifyBaseLogger {
  return pino(
    { level: options.logLevel ?? 'info', serializers: { req: requestForLog } },
    (options.logStream ?? process.stdout) as pino.DestinationStream,
  ) as FastifyBaseLogger;
}

export const HTTP_DEFAULTS = {
  stallTimeoutMs: 30_000,
  headersTimeoutMs: 20_000,
  bodyTimeoutMs: 60_000,
  // Parsing is the one piece of a request's work done on the main thread before any limit can be checked: a body of
  // many tiny JSON values parses at roughly 70–100 MB/s here, so 4 MiB holds the event loop for tens of milliseconds
  // (16 MiB held it for 150–230 ms). Message text itself is bounded lower (server.limits.max_text_bytes, 1 MiB).
  bodyLimitBytes: 4 * 1024 * 1024,
} as const;

const REQUEST_ID_HEADER = 'x-request-id';

/** What is logged of a request: never the query string, which may carry a key (`?api_key=…`). */
function requestForLog(request: FastifyRequest) {
  return { method: request.method, url: pathOf(request.url), remoteAddress: request.ip, remotePort: request.socket?.remotePort };
}

function pathOf(url: string): string {
  const query = url.indexOf('?');
  return query === -1 ? url : url.slice(0, query);
}

export function buildHttpServer(options: HttpOptions): FastifyInstance {
  const headersTimeoutMs = options.headersTimeoutMs ?? HTTP_DEFAULTS.headersTimeoutMs;
  const bodyTimeoutMs = Math.max(options.bodyTimeoutMs ?? HTTP_DEFAULTS.bodyTimeoutMs, headersTimeoutMs);
  // Fastify binds the client error handler to the instance, which is not built yet here.
  const logger: { current?: FastifyBaseLogger } = {};
  const app = Fastify({
    loggerInstance: options.logger ?? createLogger(options),
    bodyLimit: options.bodyLimitBytes ?? HTTP_DEFAULTS.bodyLimitBytes,
    requestTimeout: bodyTimeoutMs,
    http: {
      headersTimeout: headersTimeoutMs,
      // Node checks receipt deadlines every 30 s by default, which would let a 20 s deadline run to 50 s.
      connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(headersTimeoutMs / 4))),
      // Node answers a missing Host itself, with an empty body; the hook below answers it in the contract's shape.
      requireHostHeader: false,
    },
    // Shutdown answers 503 in the contract's shape itself (shutdown.ts).
    return503OnClosing: false,
    clientErrorHandler: makeClientErrorHandler(() => logger.current!),
    genReqId: (request: IncomingMessage) => requestIdFrom(request.headers[REQUEST_ID_HEADER]),
  });
  logger.current = app.log;
  app.server.on('checkExpectation', answerExpectation);
  const lifecycle = attachLifecycle(app);
  const auth = options.auth ?? staticKeys(options.apiKeys ?? []);
  // Resolved once per request, on first use: the API's routes resolve it before anything else.
  const callers = new WeakMap<FastifyRequest, Promise<Caller>>();
  const reachedEngine = new WeakSet<FastifyRequest>();
  const callerOf = (request: FastifyRequest): Promise<Caller> => {
    let caller = callers.get(request);
    if (caller === undefined) {
      caller = auth.resolve(bearerToken(request.headers.authorization));
      callers.set(request, caller);
    }
    return caller;
  };

  // Any content type is read as JSON: clients that forget the header still get a precise error or an answer.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, body === '' ? undefined : JSON.parse(body as string));
    } catch (error) {
      done(new KilnError('invalidJson', { message: `Request body is not valid JSON: ${(error as Error).message}` }), undefined);
    }
  });

  app.addHook('onRequest', async (request, reply) => {
    reply.header(REQUEST_ID_HEADER, request.id);
    if (request.raw.httpVersion === '1.1' && request.headers.host === undefined) {
      reply.header('connection', 'close');
      throw new KilnError('badRequest', { message: 'An HTTP/1.1 request needs a Host header.' });
    }
    if (request.url.startsWith('/v1/') || request.url.startsWith('/admin/')) {
      const caller = await callerOf(request);
      // Every line about the request names the key (never the key itself).
      // pino binds it to the request's own child logger in place: no second child per request.
      const log = request.log as FastifyBaseLogger & { setBindings?(bindings: object): void };
      if (log.setBindings !== undefined) log.setBindings({ key: caller.name });
      else request.log = log.child({ key: caller.name });
    }
  });

  // Methods per path, for 405 with `Allow` on a known path.
  const methods = new Map<string, Set<string>>();
  app.addHook('onRoute', (route) => {
    const known = methods.get(route.url) ?? new Set<string>();
    for (const method of [route.method].flat()) known.add(method);
    methods.set(route.url, known);
  });

  app.setErrorHandler((error: FastifyError | KilnError, request, reply) => {
    const kilnError = fromFastify(error);
    if (request.routeOptions.url === '/v1/chat/completions' && !reachedEngine.has(request)) options.metrics?.observeRejection?.(modelOf(request.body), kilnError.status);
    return sendError(request, reply, kilnError);
  });
  app.setNotFoundHandler((request, reply) => {
    const path = pathOf(request.url);
    const allowed = methods.get(path);
    if (allowed === undefined) return sendError(request, reply, new KilnError('notFound', { message: `No route for ${request.method} ${path}.` }));
    const allow = [...allowed].sort().join(', ');
    reply.header('allow', allow);
    return sendError(request, reply, new KilnError('methodNotAllowed', { message: `Method ${request.method} is not allowed on ${path}; allowed: ${allow}.` }));
  });

  app.get('/health', async () => ({ status: 'ok' }));
  registerAdminRoutes(app, {
    callerOf,
    ...(options.reload !== undefined ? { reload: options.reload } : {}),
    ...(options.usage !== undefined ? { usage: options.usage } : {}),
    ...(options.metrics !== undefined ? { metrics: options.metrics } : {}),
    metricsAccess: options.metricsAccess ?? 'open',
  });
  // SiliconFlow's filters: every model Kiln serves is a text chat model.
  app.get<{ Querystring: { type?: string; sub_type?: string } }>('/v1/models', async (request) => {
    const list = await options.service.listModels(await callerOf(request));
    const { type, sub_type: subType } = request.query;
    const matches = (type === undefined || type === 'text') && (subType === undefined || subType === 'chat');
    return matches ? list : { ...list, data: [] };
  });

  registerChatRoute(app, {
    service: options.service,
    callerOf,
    reachedEngine,
    requestTimeoutMs: options.requestTimeoutMs,
    stallTimeoutMs: options.stallTimeoutMs ?? HTTP_DEFAULTS.stallTimeoutMs,
    inFlight: lifecycle.inFlight,
  });

  return app;
}

/** The requested model of a chat request body, for counting refusals by model. */
function modelOf(body: unknown): string | undefined {
  const model = (body as { model?: unknown } | null | undefined)?.model;
  return typeof model === 'string' && model.length <= 256 ? model : undefined;
}
