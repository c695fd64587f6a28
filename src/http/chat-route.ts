/**
 * POST /v1/chat/completions: the request's abort signal (client gone, stalled, timed out, or ended by shutdown), the
 * service call, and JSON or SSE rendering.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { KilnError, errorBody, toKilnError } from '../errors/catalog.js';
import type { Caller } from '../service/caller.js';
import type { ChatService } from '../service/chat-service.js';
import { ClientGone, logClientGone, logFailure } from './errors.js';
import { writeEventStream } from './sse.js';

export interface ChatRouteOptions {
  service: ChatService;
  /** Resolved by the server's onRequest hook before the route runs. */
  callerOf(request: FastifyRequest): Promise<Caller>;
  requestTimeoutMs: number | undefined;
  stallTimeoutMs: number;
  /** Requests being served, so that shutdown can end them at its deadline. */
  inFlight: Set<AbortController>;
  /** Requests an engine took: their errors are counted by the completion record, not as refusals. */
  reachedEngine: WeakSet<FastifyRequest>;
}

export function registerChatRoute(app: FastifyInstance, options: ChatRouteOptions): void {
  app.post('/v1/chat/completions', async (request, reply) => {
    const abort = new AbortController();
    options.inFlight.add(abort);
    const timer = options.requestTimeoutMs === undefined ? undefined : setTimeout(() => abort.abort(new KilnError('timeout')), options.requestTimeoutMs);
    reply.raw.on('close', () => {
      clearTimeout(timer);
      options.inFlight.delete(abort);
      // The response closing before it finished means the client went away: stop generating.
      if (!reply.raw.writableFinished) abort.abort(new ClientGone());
    });

    let result;
    try {
      const created = options.service.create(request.body, { signal: abort.signal, caller: await options.callerOf(request), log: request.log, requestId: request.id, onEngineRun: () => options.reachedEngine.add(request) });
      // A timeout or shutdown is answered at once, even while the engine is still in a decode; what the service
      // returns afterwards is released.
      result = await Promise.race([created, endedByKilnError(abort.signal)]);
      if (result === undefined) {
        // A generator that never started would skip its cleanup on return(): start it, then end it.
        created.then((late) => (late.kind === 'stream' ? late.chunks.next().finally(() => late.chunks.return(undefined)) : undefined)).catch(() => {});
        throw abort.signal.reason;
      }
    } catch (error) {
      const reason: unknown = abort.signal.aborted ? abort.signal.reason : undefined;
      if (reason instanceof ClientGone) {
        logClientGone(request.log, reason);
        // Nobody is listening: send nothing.
        reply.hijack();
        return reply;
      }
      // Whatever the engine made of the abort, the client hears why the request ended.
      throw reason instanceof KilnError ? reason : error;
    }
    if (result.kind === 'json') {
      reply.headers(result.headers);
      return result.body;
    }

    reply.hijack();
    await writeEventStream(
      reply.raw,
      request.id,
      result.chunks,
      (error) => {
        const kilnError = toKilnError(error);
        logFailure(request.log, kilnError);
        return errorBody(kilnError);
      },
      { headers: result.headers, signal: abort.signal, stallTimeoutMs: options.stallTimeoutMs, onStall: () => abort.abort(new ClientGone('stalled')) },
    );
    if (abort.signal.reason instanceof ClientGone) logClientGone(request.log, abort.signal.reason);
    return reply;
  });
}

/** Resolves (to undefined) when the request is aborted with a KilnError; never otherwise. */
function endedByKilnError(signal: AbortSignal): Promise<undefined> {
  return new Promise((resolve) => {
    const check = () => {
      if (signal.reason instanceof KilnError) resolve(undefined);
    };
    if (signal.aborted) check();
    else signal.addEventListener('abort', check, { once: true });
  });
}
