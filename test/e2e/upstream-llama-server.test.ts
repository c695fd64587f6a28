/**
 * End to end, tool calls streamed through from llama.cpp's own server: llama-server (`--jinja`, the tiny model's
 * Qwen2.5 tool template) as the upstream of a front Kiln. `tool_choice: "required"` makes llama-server force the call
 * by grammar; the front must stream it as OpenAI `tool_calls` deltas with finish_reason `tool_calls`.
 * Needs a llama-server build (see bench/llama-server.ts); skipped with the reason when there is none. Never builds it.
 * Some llama-server builds do not force the call on a random-weight model (their grammar is lazy: it starts only once
 * the model itself writes `<tool_call>` and a newline); the tool-call test asks llama-server directly first and is
 * skipped, saying so, when llama-server itself gives no call.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import type { KilnProcess } from '../helpers/kiln-process.js';
import { findLeaks, startFront } from '../helpers/upstream-cluster.js';

const LLAMA_SERVER = join(process.env.KILN_CACHE_DIR ?? join(homedir(), '.cache/kiln'), 'llama.cpp/build/bin/llama-server');
const SKIP = existsSync(LLAMA_SERVER) ? false : `no llama-server build at ${LLAMA_SERVER} (npm run bench builds one; this test never does)`;

let server: ChildProcess | undefined;
let serverLog = '';
let port = 0;
let front: KilnProcess | undefined;
const FRONT_ID = 'Qwen/Qwen2.5-7B-Instruct';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port: free } = probe.address() as { port: number };
      probe.close(() => resolve(free));
    });
  });
}

before(async () => {
  if (SKIP) return;
  const model = await ensureTinyModel({ flavor: 'qwen2.5', eagerToolCalls: true });
  port = await freePort();
  server = spawn(LLAMA_SERVER, ['-m', model, '--host', '127.0.0.1', '--port', String(port), '-np', '2', '-c', '4096', '-t', '1', '-tb', '1', '--no-webui', '--jinja'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  server.stderr!.on('data', (data) => (serverLog = (serverLog + data).slice(-20_000)));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (server.exitCode !== null) throw new Error(`llama-server exited with ${server.exitCode}:\n${serverLog}`);
    if (Date.now() > deadline) throw new Error(`llama-server did not become healthy:\n${serverLog}`);
    if (await fetch(`http://127.0.0.1:${port}/health`).then((response) => response.ok, () => false)) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  front = await startFront({
    server: { upstream: { first_token_timeout_ms: 30_000 } },
    models: [{ id: FRONT_ID, upstreams: [{ url: `http://127.0.0.1:${port}/v1`, model: 'tiny-qwen', name: 'llama-server-0' }] }],
  });
});

after(async () => {
  await front?.stop();
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server!.once('exit', resolve));
    server.kill('SIGTERM');
    await exited;
  }
});

const tools = [
  {
    type: 'function' as const,
    function: {
      name: 'set_unit',
      description: 'Set the temperature unit',
      parameters: { type: 'object', properties: { unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } }, required: ['unit'], additionalProperties: false },
    },
  },
];

/** Every sampling parameter explicit, as the front sends them, so that llama-server asked directly answers the same. */
const sampling = { temperature: 1, top_p: 1, top_k: 0, min_p: 0, frequency_penalty: 0, presence_penalty: 0, seed: 1 };
const ask = [{ role: 'user' as const, content: 'Use celsius please.' }];

test('plain chat through llama-server, whole and streamed: the front id, usage, and nothing of the upstream', { skip: SKIP }, async () => {
  const client = new OpenAI({ baseURL: `${front!.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const whole = await client.chat.completions.create({ model: FRONT_ID, messages: ask, max_tokens: 16, ...sampling });
  assert.equal(whole.model, FRONT_ID);
  assert.equal(typeof whole.choices[0]!.message.content, 'string');
  assert.ok(whole.usage!.prompt_tokens > 5 && whole.usage!.completion_tokens >= 1 && whole.usage!.completion_tokens <= 16, JSON.stringify(whole.usage));
  const direct = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny-qwen', messages: ask, max_tokens: 16, ...sampling }),
  });
  const reference = (await direct.json()).choices[0].message.content;
  assert.equal(whole.choices[0]!.message.content, reference, 'the same text as llama-server gives directly');

  const stream = await client.chat.completions.create({ model: FRONT_ID, messages: ask, max_tokens: 16, ...sampling, stream: true, stream_options: { include_usage: true } });
  let content = '';
  const raw: string[] = [];
  for await (const chunk of stream) {
    raw.push(JSON.stringify(chunk));
    assert.equal(chunk.model, FRONT_ID);
    content += chunk.choices[0]?.delta.content ?? '';
  }
  assert.equal(content, reference);
  assert.ok(JSON.parse(raw.at(-1)!).usage.completion_tokens >= 1);
  // llama-server names its model by the GGUF's path; the front never passes that on.
  assert.doesNotMatch(JSON.stringify(whole) + raw.join(''), /\.gguf|system_fingerprint":"b\d/);
});

test('tool_choice "required" through llama-server: tool_calls deltas in the contract shape, finish_reason tool_calls', { skip: SKIP }, async (t) => {
  const request = { messages: ask, tools, tool_choice: 'required' as const, parallel_tool_calls: false, max_tokens: 200, ...sampling };
  const direct = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...request, model: 'tiny-qwen' }),
  });
  const directText = await direct.text();
  const directCalls = direct.status === 200 ? JSON.parse(directText).choices[0].message.tool_calls : undefined;
  if (!Array.isArray(directCalls) || directCalls.length === 0) {
    t.skip(`this llama-server build does not force the call on the random-weight model (asked directly: ${direct.status} ${directText.slice(0, 120)}…)`);
    return;
  }
  const client = new OpenAI({ baseURL: `${front!.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const stream = await client.chat.completions.create({ ...request, model: FRONT_ID, stream: true });
  const deltas = [];
  let finish: string | null | undefined;
  let content = '';
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    assert.equal(chunk.model, FRONT_ID);
    for (const delta of chunk.choices[0]?.delta.tool_calls ?? []) deltas.push(delta);
    content += chunk.choices[0]?.delta.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(finish, 'tool_calls', `content ${JSON.stringify(content)}`);
  assert.ok(deltas.length >= 1);
  const [first, ...rest] = deltas;
  assert.equal(first!.index, 0);
  assert.match(first!.id!, /^call_/);
  assert.equal(first!.type, 'function');
  assert.equal(first!.function!.name, 'set_unit');
  for (const delta of rest) assert.equal(delta.id, undefined, 'only the first delta of a call carries its id');
  const args = JSON.parse(deltas.filter((delta) => delta.index === 0).map((delta) => delta.function?.arguments ?? '').join(''));
  assert.deepEqual(args, JSON.parse(directCalls[0].function.arguments));
});

test('no llama-server address in the front\'s log', { skip: SKIP }, () => {
  assert.deepEqual(findLeaks(front!.output(), [], [port]), []);
});
