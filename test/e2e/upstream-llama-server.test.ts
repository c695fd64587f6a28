/**
 * End to end, tool calls streamed through from llama.cpp's own server: llama-server (`--jinja`, the tiny model's
 * Qwen2.5 tool template) as the upstream of a front Kiln. `tool_choice: "required"` makes llama-server force the call
 * by grammar; the front must stream it as OpenAI `tool_calls` deltas with finish_reason `tool_calls`.
 * Needs a llama-server build (see bench/llama-server.ts); skipped with the reason when there is none. Never builds it.
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
  const model = await ensureTinyModel({ flavor: 'qwen2.5' });
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
    models: [{ id: 'Qwen/Qwen2.5-7B-Instruct', upstreams: [{ url: `http://127.0.0.1:${port}/v1`, model: 'tiny-qwen', name: 'llama-server-0' }] }],
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

test('tool_choice "required" through llama-server: tool_calls deltas in the contract shape, finish_reason tool_calls', { skip: SKIP }, async () => {
  const client = new OpenAI({ baseURL: `${front!.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const stream = await client.chat.completions.create({
    model: 'Qwen/Qwen2.5-7B-Instruct',
    messages: [{ role: 'user', content: 'Use celsius please.' }],
    tools,
    tool_choice: 'required',
    max_tokens: 200,
    seed: 1,
    stream: true,
  });
  const deltas = [];
  let finish: string | null | undefined;
  let content = '';
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    assert.equal(chunk.model, 'Qwen/Qwen2.5-7B-Instruct');
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
  assert.ok(['celsius', 'fahrenheit'].includes(args.unit), JSON.stringify(args));
  assert.deepEqual(findLeaks(front!.output(), [], [port]), []);
});
