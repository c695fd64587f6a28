/**
 * Graceful shutdown: stop accepting, let requests in flight finish up to a drain deadline, then end them with the
 * contract's error (in-band for streams) and close every connection, so the process can exit whatever its clients do.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { KilnError } from '../errors/catalog.js';

export interface ServerLifecycle {
  draining: boolean;
  /** Chat requests being served (their abort controllers). */
  readonly inFlight: Set<AbortController>;
  /** Open connections → their requests not yet answered, and the bytes read when the last one was. */
  readonly connections: Map<Socket, { active: number; readWhenIdle: number }>;
}

const lifecycles = new WeakMap<FastifyInstance, ServerLifecycle>();

/**
 * Registers the hooks that answer 503 while draining; returns the state the chat route fills in.
 * New connections are refused once draining (the listener is closed), which is what a load balancer expects; a
 * request arriving on a connection kept alive gets 503 with `Retry-After` and `Connection: close`.
 */
export function attachLifecycle(app: FastifyInstance, retryAfterSeconds = 1): ServerLifecycle {
  const lifecycle: ServerLifecycle = { draining: false, inFlight: new Set(), connections: new Map() };
  lifecycles.set(app, lifecycle);
  app.server.on('connection', (socket: Socket) => {
    // Idle until its first byte: a spare connection a client opened and never used (undici opens one after an aborted
    // request) must not hold the drain to its deadline.
    lifecycle.connections.set(socket, { active: 0, readWhenIdle: 0 });
    socket.once('close', () => lifecycle.connections.delete(socket));
  });
  app.addHook('onRequest', async (request, reply) => {
    // Counted per connection: Node reads requests pipelined behind one in flight at once, and answers them in turn.
    const connection = lifecycle.connections.get(request.raw.socket);
    if (connection !== undefined) {
      connection.active++;
      // 'close' follows 'finish' (the whole response reached the OS, not merely end() called) or an abort.
      reply.raw.once('close', () => {
        if (--connection.active === 0) connection.readWhenIdle = request.raw.socket.bytesRead;
      });
    }
    if (!lifecycle.draining) return;
    reply.header('connection', 'close');
    throw new KilnError('shuttingDown', { retryAfterSeconds });
  });
  return lifecycle;
}

export interface CloseOptions {
  /** How long requests in flight may take to finish. */
  drainTimeoutMs: number;
  /** After the deadline, how long their final error may take to reach the client before sockets are destroyed. */
  graceMs?: number;
}

export interface CloseResult {
  /** Requests still running at the deadline, ended with the shutdown error. */
  endedAtDeadline: number;
  /** Connections destroyed because they did not close within the grace. */
  forced: boolean;
}

export async function closeGracefully(app: FastifyInstance, options: CloseOptions): Promise<CloseResult> {
  const lifecycle = lifecycles.get(app);
  if (lifecycle === undefined) throw new Error('closeGracefully: server was not built by buildHttpServer');
  lifecycle.draining = true;
  const server = app.server;
  // Node closes the connections idle when the listener closes; this closes the others once idle. Not Node's
  // closeIdleConnections(), which also destroys responses that were ended but are still being flushed to a slow
  // reader; nor `Connection: close` on every response, which would drop requests pipelined behind it.
  const reaper = setInterval(() => {
    for (const [socket, { active, readWhenIdle }] of lifecycle.connections) {
      const busy = active > 0 || (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage != null;
      if (!busy && readWhenIdle === socket.bytesRead) socket.destroy();
    }
  }, 100);
  try {
    const closed = app.close();
    if (await settlesWithin(closed, options.drainTimeoutMs)) return { endedAtDeadline: 0, forced: false };
    const endedAtDeadline = lifecycle.inFlight.size;
    const reason = new KilnError('shuttingDown', { message: 'The server is shutting down; the request was ended at its drain deadline.' });
    for (const abort of lifecycle.inFlight) abort.abort(reason);
    const forced = !(await settlesWithin(closed, options.graceMs ?? 2000));
    if (forced) server.closeAllConnections();
    await closed;
    return { endedAtDeadline, forced };
  } finally {
    clearInterval(reaper);
  }
}

async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
