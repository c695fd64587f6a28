/**
 * A reference point for `npm run bench:gateway --targets ...,floor`: the least a Fastify + undici gateway can do for
 * the same request — parse the body, post a streaming request upstream with keep-alive, parse every SSE event and
 * re-serialise it under its own id (or assemble the JSON completion) — with no validation, admission, routing,
 * timeouts, post-processing or error handling. Not a product: what Kiln's own layers cost shows against it.
 *   node --import tsx bench/gateway-floor.ts <upstream origin>   → prints `floor gateway listening on <url>`
 */
import Fastify from 'fastify';
import { Pool } from 'undici';

interface Body {
  model?: unknown;
  messages?: unknown;
  max_tokens?: unknown;
  stream?: unknown;
}

interface UpstreamChunk {
  choices?: Array<{ index: number; delta?: { content?: string }; finish_reason?: string | null }>;
  usage?: unknown;
}

const upstream = process.argv[2];
if (upstream === undefined) throw new Error('usage: gateway-floor.ts <upstream origin>');
const pool = new Pool(upstream, { connections: 257, keepAliveTimeout: 30_000 });
const app = Fastify({ logger: false });
let served = 0;

app.post('/v1/chat/completions', async (request, reply) => {
  const body = request.body as Body;
  if (typeof body?.model !== 'string' || !Array.isArray(body.messages)) return reply.code(400).send({ error: { message: 'model and messages are required' } });
  const response = await pool.request({
    path: '/v1/chat/completions',
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ model: 'canned', messages: body.messages, max_tokens: body.max_tokens, stream: true, stream_options: { include_usage: true } }),
  });
  response.body.setEncoding('utf8');
  const id = `chatcmpl-${(++served).toString(16)}`;
  const created = Math.floor(Date.now() / 1000);
  const stream = body.stream === true;
  let buffer = '';
  let content = '';
  let usage: unknown;
  if (stream) {
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  }
  for await (const part of response.body as AsyncIterable<string>) {
    buffer += part;
    for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice('data: '.length)) as UpstreamChunk;
      if (chunk.usage !== undefined && chunk.usage !== null) usage = chunk.usage;
      if (!stream) {
        content += chunk.choices?.[0]?.delta?.content ?? '';
        continue;
      }
      const choices = (chunk.choices ?? []).map((choice) => ({ index: choice.index, delta: choice.delta ?? {}, finish_reason: choice.finish_reason ?? null }));
      reply.raw.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: body.model, choices, ...(usage !== undefined && choices.length === 0 ? { usage } : {}) })}\n\n`);
    }
  }
  if (stream) {
    reply.raw.end('data: [DONE]\n\n');
    return reply;
  }
  return { id, object: 'chat.completion', created, model: body.model, choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }], usage };
});

// A clean exit on SIGTERM/SIGINT, so that `--cpu-prof` writes its profile.
for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => process.exit(0));
await app.listen({ port: 0, host: '127.0.0.1' });
const address = app.server.address();
console.log(`floor gateway listening on http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`);
