/**
 * A canned OpenAI-compatible upstream for `npm run bench:gateway`: no model, no delays, every answer a precomputed
 * buffer, so that a gateway in front of it shows its own cost. POST /v1/chat/completions answers a stream of
 * CANNED_WORDS.length content chunks (the first also carries the role), a finish chunk, a usage chunk with
 * `choices: []` and `data: [DONE]` — all in one write, as a fast server would flush them — or the same completion as
 * one JSON body when the request has no `"stream": true`. GET /v1/models lists the one model; GET /bench/stats says
 * how many completions it served (the benchmark checks that the gateways really forward).
 *
 * Runs in a process of its own (startCannedUpstream), so that it does not share the client's event loop:
 *   node --import tsx bench/canned-upstream.ts [--port 0]   → prints `canned upstream listening on http://127.0.0.1:<port>`
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

export const CANNED_MODEL = 'canned';
export const CANNED_WORDS = Array.from({ length: 16 }, (_, i) => `w${i.toString(16)}${i === 15 ? '.' : ' '}`);
export const CANNED_CONTENT = CANNED_WORDS.join('');
export const CANNED_USAGE = { prompt_tokens: 12, completion_tokens: CANNED_WORDS.length, total_tokens: 12 + CANNED_WORDS.length };

const ID = 'chatcmpl-canned0000000000000000';
const CREATED = 1_764_460_800;

function streamBody(): Buffer {
  const base = { id: ID, object: 'chat.completion.chunk', created: CREATED, model: CANNED_MODEL };
  const events: object[] = CANNED_WORDS.map((word, i) => ({
    ...base,
    choices: [{ index: 0, delta: i === 0 ? { role: 'assistant', content: word } : { content: word }, logprobs: null, finish_reason: null }],
  }));
  events.push({ ...base, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }] });
  events.push({ ...base, choices: [], usage: CANNED_USAGE });
  return Buffer.from(events.map((event) => `data: ${JSON.stringify(event)}\n\n`).join('') + 'data: [DONE]\n\n');
}

function jsonBody(): Buffer {
  return Buffer.from(
    JSON.stringify({
      id: ID,
      object: 'chat.completion',
      created: CREATED,
      model: CANNED_MODEL,
      choices: [{ index: 0, message: { role: 'assistant', content: CANNED_CONTENT }, logprobs: null, finish_reason: 'stop' }],
      usage: CANNED_USAGE,
    }),
  );
}

const MODELS = Buffer.from(JSON.stringify({ object: 'list', data: [{ id: CANNED_MODEL, object: 'model', created: CREATED, owned_by: 'kiln-bench' }] }));

export function serveCanned(port: number, host = '127.0.0.1'): Promise<string> {
  const stream = streamBody();
  const json = jsonBody();
  // Chunked, as SSE servers send it (no Content-Length); the whole stream goes out in one write.
  const streamHeaders = { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' };
  const jsonHeaders = { 'content-type': 'application/json', 'content-length': String(json.length) };
  let served = 0;
  const send = (response: ServerResponse, status: number, body: Buffer | string) => {
    response.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
    response.end(body);
  };
  const server = createServer({ keepAliveTimeout: 60_000 }, (request: IncomingMessage, response: ServerResponse) => {
    if (request.method === 'POST' && request.url === '/v1/chat/completions') {
      const parts: Buffer[] = [];
      request.on('data', (part: Buffer) => parts.push(part));
      request.on('end', () => {
        let body: { stream?: unknown };
        try {
          body = JSON.parse(Buffer.concat(parts).toString('utf8')) as { stream?: unknown };
        } catch {
          send(response, 400, '{"error":{"message":"body is not JSON","type":"invalid_request_error"}}');
          return;
        }
        served++;
        if (body.stream === true) {
          response.writeHead(200, streamHeaders);
          response.end(stream);
        } else {
          response.writeHead(200, jsonHeaders);
          response.end(json);
        }
      });
      return;
    }
    request.resume();
    if (request.method === 'GET' && request.url === '/v1/models') {
      response.writeHead(200, { 'content-type': 'application/json', 'content-length': String(MODELS.length) });
      response.end(MODELS);
    } else if (request.method === 'GET' && request.url === '/bench/stats') {
      send(response, 200, JSON.stringify({ served }));
    } else {
      send(response, 404, '{"error":{"message":"not found","type":"invalid_request_error"}}');
    }
  });
  server.headersTimeout = 60_000;
  return new Promise((resolve) => server.listen(port, host, () => resolve(`http://${host}:${(server.address() as AddressInfo).port}`)));
}

export interface CannedUpstream {
  /** e.g. http://127.0.0.1:1234 (its OpenAI base URL is this + /v1). */
  url: string;
  child: ChildProcess;
  served(): Promise<number>;
  stop(): Promise<void>;
}

/** Starts the canned upstream in a child process and waits until it listens. */
export async function startCannedUpstream(): Promise<CannedUpstream> {
  const child = spawn(process.execPath, ['--import', 'tsx', import.meta.filename, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`canned upstream did not start within 30 s:\n${output}`)), 30_000);
    const onData = (data: Buffer) => {
      output += data;
      const match = /canned upstream listening on (http:\/\/\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`canned upstream exited with ${code}:\n${output}`));
    });
  });
  return {
    url,
    child,
    served: async () => ((await (await fetch(`${url}/bench/stats`)).json()) as { served: number }).served,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({ options: { port: { type: 'string', default: '0' }, host: { type: 'string', default: '127.0.0.1' } } });
  const url = await serveCanned(Number(values.port), values.host);
  console.log(`canned upstream listening on ${url}`);
}
