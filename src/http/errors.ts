/**
 * Rendering errors, the HTTP layer's and the transport's: every response Kiln sends carries the catalog's body,
 * including those Node.js would otherwise write itself (framing errors, oversized headers, receipt timeouts,
 * unsupported `Expect`).
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyBaseLogger, FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { KilnError, errorBody, toKilnError } from '../errors/catalog.js';

/** The abort reason when the client's connection closed before the response finished. */
export class ClientGone extends Error {
  override name = 'ClientGone';
  constructor(readonly why: 'disconnected' | 'stalled' = 'disconnected') {
    super(why === 'stalled' ? 'client stopped reading' : 'client disconnected');
  }
}

export function fromFastify(error: FastifyError | KilnError): KilnError {
  if (error instanceof KilnError) return error;
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new KilnError('bodyTooLarge');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new KilnError('invalidJson');
  }
  switch (error.statusCode) {
    case 408:
      return new KilnError('requestReceiptTimeout');
    case 413:
      return new KilnError('bodyTooLarge');
    case 415:
      return new KilnError('unsupportedMediaType');
    case 431:
      return new KilnError('headersTooLarge');
  }
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    return new KilnError('invalidParameter', { message: error.message });
  }
  return toKilnError(error);
}

/** How long a refused upload may go on being read (and discarded) so that its client gets the answer. */
const LINGER_MS = 2_000;

/**
 * Closing a connection whose request body is still arriving makes the kernel reset it, and a client still uploading
 * then sees EPIPE or ECONNRESET instead of the 413 sent to it (flaky under load). Like nginx's lingering close: after
 * the answer, the rest of the upload is read and discarded for a short while, then the socket is closed.
 */
function lingerOnClose(socket: Socket): void {
  const closing = socket as Socket & { destroySoon?: () => void };
  closing.destroySoon = () => {
    socket.end();
    socket.resume();
    socket.once('end', () => socket.destroy());
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
  };
}

export function sendError(request: FastifyRequest, reply: FastifyReply, error: KilnError): FastifyReply {
  logFailure(request.log, error);
  if (error.kind === 'bodyTooLarge' && !request.raw.complete) lingerOnClose(request.raw.socket);
  // Also when a hook failed before the one that sets it.
  reply.header('x-request-id', request.id);
  if (error.retryAfterSeconds !== undefined) reply.header('retry-after', String(error.retryAfterSeconds));
  if (error.headers !== undefined) reply.headers(error.headers);
  return reply.status(error.status).send(errorBody(error));
}

/** Bugs at error level with their stack; everything a client caused or asked for at info, without one. */
export function logFailure(log: FastifyBaseLogger, error: KilnError): void {
  if (error.status >= 500 && error.kind === 'internal') log.error({ err: error.cause ?? error }, 'request failed');
  else log.info({ status: error.status, code: error.entry.code, param: error.param }, error.message);
}

/** Not a server error: logged like nginx's 499, at info, without a stack. */
export function logClientGone(log: FastifyBaseLogger, reason: ClientGone): void {
  log.info({ status: 499 }, reason.why === 'stalled' ? 'client stopped reading; response ended' : 'client disconnected before the response finished');
}

const REQUEST_ID_PATTERN = /^[\w.:-]{1,128}$/;

/** The client's `X-Request-Id` when it is a sane token, else a fresh one. */
export function requestIdFrom(given: unknown): string {
  return typeof given === 'string' && REQUEST_ID_PATTERN.test(given) ? given : randomUUID().replaceAll('-', '');
}

/** A whole HTTP/1.1 response, for a socket that has no ServerResponse (the request could not be parsed). */
function rawResponse(error: KilnError): string {
  const body = JSON.stringify(errorBody(error));
  const headers = {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    'x-request-id': requestIdFrom(undefined),
    connection: 'close',
  };
  const lines = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`);
  return `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? ''}\r\n${lines.join('')}\r\n${body}`;
}

function clientErrorKind(code: string | undefined): KilnError | undefined {
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') return new KilnError('requestReceiptTimeout');
  if (code === 'HPE_HEADER_OVERFLOW') return new KilnError('headersTooLarge');
  if (code === 'ECONNRESET' || code === 'EPIPE') return undefined;
  return new KilnError('badRequest');
}

/**
 * Node's 'clientError': the request could not be parsed or did not arrive in time. Replaces Fastify's handler, which
 * answers in its own `{error, message, statusCode}` shape.
 */
export function makeClientErrorHandler(log: () => FastifyBaseLogger) {
  return (error: NodeJS.ErrnoException, socket: Socket): void => {
    const kilnError = clientErrorKind(error.code);
    // Only a socket with no response under way can take one (Node's own rule).
    const started = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage?.headersSent === true;
    if (kilnError !== undefined && socket.writable && !started) {
      log().info({ status: kilnError.status, code: kilnError.entry.code, reason: error.code }, kilnError.message);
      socket.end(rawResponse(kilnError));
      // A client that does not read the answer does not keep the socket.
      setTimeout(() => socket.destroy(), 1000).unref();
      return;
    }
    socket.destroy();
  };
}

/** Node's 'checkExpectation': any `Expect` other than `100-continue`. */
export function answerExpectation(request: IncomingMessage, response: ServerResponse): void {
  const body = JSON.stringify(errorBody(new KilnError('expectationFailed')));
  response.writeHead(417, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-request-id': requestIdFrom(request.headers['x-request-id']),
    connection: 'close',
  });
  response.end(body);
}
