/**
 * Server-sent events for streamed completions: `data: <json>\n\n` per chunk, then `data: [DONE]`. An error after the
 * stream began is sent as one `data: {"error": ...}` event and the stream closes.
 */
import type { ServerResponse } from 'node:http';
import { once } from 'node:events';

export async function writeEventStream(
  response: ServerResponse,
  requestId: string,
  chunks: AsyncGenerator<unknown, void, undefined>,
  describeError: (error: unknown) => unknown,
): Promise<void> {
  response.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    'x-request-id': requestId,
  });
  try {
    for await (const chunk of chunks) {
      if (response.destroyed) break;
      if (!response.write(`data: ${JSON.stringify(chunk)}\n\n`)) await drained(response);
    }
    if (!response.destroyed) response.end('data: [DONE]\n\n');
  } catch (error) {
    if (!response.destroyed) response.end(`data: ${JSON.stringify(describeError(error))}\n\n`);
  }
}

/** Waits for the socket to take more, or to close (then the loop above sees `destroyed`). */
async function drained(response: ServerResponse): Promise<void> {
  await Promise.race([once(response, 'drain'), once(response, 'close')]);
}
