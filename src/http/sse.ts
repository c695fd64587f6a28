/**
 * Server-sent events for streamed completions: `data: <json>\n\n` per chunk, then `data: [DONE]`. An error after the
 * stream began is sent as one `data: {"error": ...}` event and the stream closes.
 *
 * A stream never waits on its socket for ever: a client that takes nothing for `stallTimeoutMs` loses its connection
 * (which aborts the request, so the engine frees its sequences), and a request aborted with a KilnError (timeout,
 * shutdown) gets that error as its last event even while the socket is full, then the socket is destroyed if it
 * does not take it within a short grace.
 */
import type { ServerResponse } from 'node:http';
import { KilnError } from '../errors/catalog.js';

export interface EventStreamOptions {
  /** More response headers (x-ratelimit-*). */
  headers?: Readonly<Record<string, string>>;
  /** The request's signal. A KilnError reason ends the stream with that error in-band. */
  signal: AbortSignal;
  /** How long the socket may take nothing while data waits for it. */
  stallTimeoutMs: number;
  /** Called before a stalled response is destroyed. */
  onStall(): void;
  /** How long an aborted stream's last event may wait for the socket. */
  abortGraceMs?: number;
}

type Wait = 'ready' | 'closed' | 'stalled' | 'aborted';

const ABORTED = Symbol('aborted');

export async function writeEventStream(
  response: ServerResponse,
  requestId: string,
  chunks: AsyncGenerator<unknown, void, undefined>,
  describeError: (error: unknown) => unknown,
  options: EventStreamOptions,
): Promise<void> {
  const { signal } = options;
  response.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    'x-accel-buffering': 'no',
    'x-request-id': requestId,
    ...options.headers,
  });
  const aborted = new Promise<typeof ABORTED>((resolve) => {
    if (signal.aborted) resolve(ABORTED);
    else signal.addEventListener('abort', () => resolve(ABORTED), { once: true });
  });
  const endAborted = () => {
    if (signal.reason instanceof KilnError && !response.destroyed) endWithin(response, event(describeError(signal.reason)), options.abortGraceMs ?? 1000);
    else response.destroy();
  };
  let finished = false;
  try {
    for (;;) {
      // Raced so that a timeout or shutdown ends the stream even while the generator has nothing to give.
      const next = await Promise.race([chunks.next(), aborted]);
      if (next === ABORTED) return endAborted();
      if (next.done) break;
      if (response.destroyed) return;
      if (response.write(event(next.value))) continue;
      const outcome = await waitForSocket(response, options.stallTimeoutMs, signal);
      if (outcome === 'closed') return;
      if (outcome === 'aborted') return endAborted();
      if (outcome === 'stalled') {
        options.onStall();
        response.destroy();
        return;
      }
    }
    finished = true;
    if (response.destroyed) return;
    response.end('data: [DONE]\n\n');
    // The last events may still be queued for a slow reader; one that stops reading does not keep the socket.
    if ((await waitForSocket(response, options.stallTimeoutMs)) === 'stalled') {
      options.onStall();
      response.destroy();
    }
  } catch (error) {
    finished = true;
    if (signal.aborted) return endAborted();
    if (!response.destroyed) endWithin(response, event(describeError(error)), options.stallTimeoutMs);
  } finally {
    // Leaving early: let the generator run its cleanup (it releases the engine's run).
    if (!finished) chunks.return(undefined).catch(() => {});
  }
}

function event(payload: unknown): string {
  return `data: ${JSON.stringify(payload)}\n\n`;
}

/** Ends the response with `last`; a socket that has not taken it after `graceMs` is destroyed. */
function endWithin(response: ServerResponse, last: string, graceMs: number): void {
  response.end(last);
  if (response.writableFinished) return;
  const timer = setTimeout(() => response.destroy(), graceMs);
  response.once('close', () => clearTimeout(timer));
}

/**
 * Waits until the socket has taken what is queued ('drain' or, after `end`, 'finish'), closed, or the request was
 * aborted. Progress is the queue getting shorter: a slow reader that keeps reading is not stalled.
 */
function waitForSocket(response: ServerResponse, stallTimeoutMs: number, signal?: AbortSignal): Promise<Wait> {
  if (response.destroyed) return Promise.resolve('closed');
  if (response.writableFinished) return Promise.resolve('ready');
  return new Promise<Wait>((resolve) => {
    let lowest = response.writableLength;
    let lastProgress = performance.now();
    const check = setInterval(() => {
      const queued = response.writableLength;
      if (queued < lowest) {
        lowest = queued;
        lastProgress = performance.now();
      } else if (performance.now() - lastProgress >= stallTimeoutMs) done('stalled');
    }, Math.max(10, Math.min(1000, Math.floor(stallTimeoutMs / 4))));
    const onReady = () => done('ready');
    const onClose = () => done('closed');
    const onAbort = () => done('aborted');
    function done(outcome: Wait): void {
      clearInterval(check);
      response.off('drain', onReady).off('finish', onReady).off('close', onClose);
      signal?.removeEventListener('abort', onAbort);
      resolve(outcome);
    }
    response.on('drain', onReady).on('finish', onReady).on('close', onClose);
    if (signal?.aborted) done('aborted');
    else signal?.addEventListener('abort', onAbort, { once: true });
  });
}
