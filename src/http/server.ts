/**
 * The HTTP transport: routes, auth, request ids, and the mapping of service results to JSON or SSE. It is the only
 * place that renders errors (errors/catalog.ts decides what they say).
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { KilnError, errorBody, toKilnError } from '../errors/catalog.js';
import type { Caller, ChatService } from '../service/chat-service.js';
import { checkApiKey, type ApiKey } from './auth.js';
import { writeEventStream } from './sse.js';

export interface HttpOptions {
  service: ChatService;
  /** Empty: no authentication. */
  apiKeys: readonly ApiKey[];
  /** A request still generating after this long ends with 504 (in-band when streaming). */
  requestTimeoutMs?: number;
  bodyLimitBytes?: number;
  logLevel?: string;
}

const REQUEST_ID_HEADER = 'x-request-id';
const REQUEST_ID_PATTERN = /^[\w.:-]{1,128}$/;
const callers = new WeakMap<FastifyRequest, Caller>();

export function buildHttpServer(options: HttpOptions): FastifyInstance {
  const app = Fastify({
    logger: { level: options.logLevel ?? 'info' },
    bodyLimit: options.bodyLimitBytes ?? 16 * 1024 * 1024,
    genReqId: (request) => {
      const given = request.headers[REQUEST_ID_HEADER];
      return typeof given === 'string' && REQUEST_ID_PATTERN.test(given) ? given : randomUUID().replaceAll('-', '');
    },
  });

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
    if (request.url.startsWith('/v1/')) callers.set(request, checkApiKey(request.headers.authorization, options.apiKeys));
  });

  app.setErrorHandler((error: FastifyError | KilnError, request, reply) => sendError(request, reply, fromFastify(error)));
  app.setNotFoundHandler((request, reply) =>
    sendError(request, reply, new KilnError('notFound', { message: `No route for ${request.method} ${request.url.split('?')[0]}.` })),
  );

  app.get('/health', async () => ({ status: 'ok' }));
  // SiliconFlow's filters: every model Kiln serves is a text chat model.
  app.get<{ Querystring: { type?: string; sub_type?: string } }>('/v1/models', async (request) => {
    const list = options.service.listModels();
    const { type, sub_type: subType } = request.query;
    const matches = (type === undefined || type === 'text') && (subType === undefined || subType === 'chat');
    return matches ? list : { ...list, data: [] };
  });

  app.post('/v1/chat/completions', async (request, reply) => {
    const abort = new AbortController();
    const timer = options.requestTimeoutMs === undefined ? undefined : setTimeout(() => abort.abort(new KilnError('timeout')), options.requestTimeoutMs);
    reply.raw.on('close', () => {
      clearTimeout(timer);
      // The response closing before it finished means the client went away: stop generating.
      if (!reply.raw.writableFinished) abort.abort(new Error('client disconnected'));
    });
    const result = await options.service.create(request.body, abort.signal, callers.get(request) ?? { pro: true });
    if (result.kind === 'json') return result.body;
    reply.hijack();
    await writeEventStream(reply.raw, request.id, result.chunks, (error) => {
      const kilnError = toKilnError(error);
      logFailure(request, kilnError);
      return errorBody(kilnError);
    });
    return reply;
  });

  return app;
}

function fromFastify(error: FastifyError | KilnError): KilnError {
  if (error instanceof KilnError) return error;
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new KilnError('bodyTooLarge');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new KilnError('invalidJson');
  }
  if (error.statusCode === 413) return new KilnError('bodyTooLarge');
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    return new KilnError('invalidParameter', { message: error.message });
  }
  return toKilnError(error);
}

function sendError(request: FastifyRequest, reply: FastifyReply, error: KilnError): FastifyReply {
  logFailure(request, error);
  if (error.retryAfterSeconds !== undefined) reply.header('retry-after', String(error.retryAfterSeconds));
  return reply.status(error.status).send(errorBody(error));
}

function logFailure(request: FastifyRequest, error: KilnError): void {
  if (error.status >= 500 && error.kind === 'internal') request.log.error({ err: error.cause ?? error }, 'request failed');
  else request.log.info({ status: error.status, code: error.entry.code, param: error.param }, error.message);
}
