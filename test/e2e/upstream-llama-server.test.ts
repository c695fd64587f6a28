/**
 * End to end, tool calls streamed through from llama.cpp's own server: llama-server (`--jinja`) as the upstream of a
 * front Kiln. `tool_choice: "required"` makes llama-server force the call by grammar; the front must stream it as
 * OpenAI `tool_calls` deltas with finish_reason `tool_calls`, with the name, arguments and any text before the call
 * exactly as llama-server gives them when asked directly.
 * Needs a llama-server build (see bench/llama-server.ts); skipped with the reason when there is none. Never builds it.
 *
 * The tiny model's template is Qwen2.5's with one change, and the change is what makes a random-weight model call a
 * tool: a turn's calls are written as one JSON array inside a single `<tool_call>` … `</tool_call>` block, with no
 * newline after `<tool_call>`. llama.cpp's template analyser (common/chat-diff-analyzer.cpp) derives the call syntax
 * from how the template renders calls, and for `tool_choice: "required"` the grammar it builds
 * (common/chat-auto-parser-generator.cpp) is active from the first token but lets free text come first, up to the
 * call opener. With Qwen2.5's own template the opener is `<tool_call>` plus a newline: a random model, even one that
 * favours the `<tool_call>` token (eagerToolCalls), never writes that newline, so it writes text until max_tokens and
 * llama-server answers with no call. Here the opener is the `<tool_call>` token alone, so once the model writes it
 * (eagerToolCalls makes it the likeliest token) the grammar forces the JSON of a call to a listed tool; the model
 * still picks the argument values. And because the calls are one section, closed once, the grammar ends there and
 * the model must end its turn: finish_reason `tool_calls`. (With a per-call opener the grammar allows one call after
 * another whatever `parallel_tool_calls` says, and the eager model opens calls until max_tokens.)
 * This build has no "generic" fallback format any more: a template that does not render tools gets no tool grammar.
 * Another llama-server build might not force the call: the tool-call test asks llama-server directly first and is
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
import { QWEN25_TEMPLATE } from '../../src/gguf/templates.js';
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

/** Qwen2.5's way of writing a turn's tool calls: one `<tool_call>` block each, a newline after the opener. */
const QWEN25_CALLS = `        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}`;
/** All of a turn's calls as one JSON array in a single `<tool_call>` block, the opener directly followed by it. */
const ARRAY_CALLS = `        {{- '\\n<tool_call>[' }}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {%- if not loop.first %}
                {{- ', ' }}
            {%- endif %}
            {{- '{"name": "' + tool_call.name + '", "arguments": ' + (tool_call.arguments | tojson) + '}' }}
        {%- endfor %}
        {{- ']</tool_call>' }}`;
const QWEN25_INSTRUCTION = '<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>';
const ARRAY_INSTRUCTION = '<tool_call>[{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}]</tool_call>';

/** Qwen2.5's template with its tool calls written as ARRAY_CALLS (and its system prompt describing them so). */
function arrayToolCallTemplate(): string {
  for (const part of [QWEN25_CALLS, QWEN25_INSTRUCTION]) {
    if (!QWEN25_TEMPLATE.includes(part)) throw new Error(`QWEN25_TEMPLATE no longer contains ${JSON.stringify(part.slice(0, 60))}…: update this test`);
  }
  return QWEN25_TEMPLATE.replace(QWEN25_CALLS, ARRAY_CALLS).replace(QWEN25_INSTRUCTION, ARRAY_INSTRUCTION);
}

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
  const model = await ensureTinyModel({ flavor: 'qwen2.5', eagerToolCalls: true, chatTemplate: arrayToolCallTemplate() });
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

/** What one streamed answer adds up to: its text, its calls (fragments joined), its finish_reason and the deltas. */
interface Streamed {
  content: string;
  calls: Array<{ id?: string; name: string; arguments: string }>;
  finish: string | null | undefined;
  deltas: Array<{ index: number; id?: string; type?: string; function?: { name?: string; arguments?: string } }>;
}

function addUp(chunks: Iterable<{ choices: Array<{ delta: { content?: string | null; tool_calls?: Streamed['deltas'] }; finish_reason?: string | null }> }>): Streamed {
  const out: Streamed = { content: '', calls: [], finish: undefined, deltas: [] };
  for (const chunk of chunks) {
    const choice = chunk.choices[0];
    if (choice === undefined) continue;
    out.content += choice.delta.content ?? '';
    for (const delta of choice.delta.tool_calls ?? []) {
      out.deltas.push(delta);
      const call = (out.calls[delta.index] ??= { name: '', arguments: '' });
      if (delta.id !== undefined) call.id = delta.id;
      call.name += delta.function?.name ?? '';
      call.arguments += delta.function?.arguments ?? '';
    }
    out.finish = choice.finish_reason ?? out.finish;
  }
  return out;
}

/** Asks llama-server itself, whole and streamed. */
async function askDirectly(request: object): Promise<{ status: number; text: string; whole?: { content: string | null; calls: Array<{ name: string; arguments: string }>; finish: string }; streamed?: Streamed }> {
  const post = (body: object) =>
    fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...request, ...body, model: 'tiny-qwen' }) });
  const direct = await post({});
  const text = await direct.text();
  if (direct.status !== 200) return { status: direct.status, text };
  const choice = JSON.parse(text).choices[0];
  const calls = (choice.message.tool_calls ?? []).map((call: { function: { name: string; arguments: string } }) => ({ name: call.function.name, arguments: call.function.arguments }));
  const whole = { content: choice.message.content, calls, finish: choice.finish_reason };
  const sse = await (await post({ stream: true })).text();
  const chunks = sse
    .split('\n')
    .filter((line) => line.startsWith('data: ') && line !== 'data: [DONE]')
    .map((line) => JSON.parse(line.slice('data: '.length)));
  return { status: 200, text, whole, streamed: addUp(chunks) };
}

test('tool_choice "required" through llama-server: tool_calls deltas in the contract shape, finish_reason tool_calls, the call llama-server made', { skip: SKIP }, async (t) => {
  // Greedy, so that the front's answer and llama-server's own are the same tokens.
  const request = { messages: ask, tools, tool_choice: 'required' as const, parallel_tool_calls: false, max_tokens: 400, ...sampling, temperature: 0 };
  const direct = await askDirectly(request);
  if (direct.whole === undefined || direct.whole.calls.length === 0) {
    t.skip(`this llama-server build does not force the call on the random-weight model (asked directly: ${direct.status} ${direct.text.slice(0, 160)}…)`);
    return;
  }
  // llama-server's own answer, whole and streamed, is the reference: one call to the listed tool, the turn ended by it.
  assert.equal(direct.whole.finish, 'tool_calls', direct.text.slice(0, 400));
  assert.equal(direct.whole.calls.length, 1, 'parallel_tool_calls false: one call');
  assert.equal(direct.whole.calls[0]!.name, 'set_unit');
  assert.ok(['celsius', 'fahrenheit'].includes(JSON.parse(direct.whole.calls[0]!.arguments).unit), direct.whole.calls[0]!.arguments);
  assert.deepEqual(direct.streamed!.calls.map(({ name, arguments: args }) => ({ name, arguments: args })), direct.whole.calls, 'llama-server streams the call it answers whole');
  assert.equal(direct.streamed!.finish, 'tool_calls');
  const directContent = direct.whole.content ?? '';
  assert.equal(direct.streamed!.content, directContent);

  const client = new OpenAI({ baseURL: `${front!.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const stream = await client.chat.completions.create({ ...request, model: FRONT_ID, stream: true });
  const chunks = [];
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    assert.equal(chunk.model, FRONT_ID);
    chunks.push(chunk);
  }
  const throughFront = addUp(chunks as Parameters<typeof addUp>[0]);
  assert.equal(throughFront.finish, 'tool_calls', `content ${JSON.stringify(throughFront.content)}`);
  assert.ok(throughFront.deltas.length >= 1);
  const [first, ...rest] = throughFront.deltas;
  assert.equal(first!.index, 0);
  assert.match(first!.id!, /^call_/);
  assert.equal(first!.type, 'function');
  assert.equal(first!.function!.name, 'set_unit');
  for (const delta of rest) {
    assert.equal(delta.index, 0, 'one call');
    assert.equal(delta.id, undefined, 'only the first delta of a call carries its id');
    assert.equal(delta.function?.name, undefined, 'only the first delta of a call carries its name');
  }
  // The same call as llama-server's own, to the byte (its arguments as llama-server wrote them), and the same text before it.
  assert.deepEqual(throughFront.calls.map(({ name, arguments: args }) => ({ name, arguments: args })), direct.whole.calls);
  assert.equal(throughFront.content, directContent);

  const whole = await client.chat.completions.create({ ...request, model: FRONT_ID });
  assert.equal(whole.choices[0]!.finish_reason, 'tool_calls');
  const message = whole.choices[0]!.message;
  assert.deepEqual(
    message.tool_calls!.map((call) => ({ name: call.type === 'function' ? call.function.name : '', arguments: call.type === 'function' ? call.function.arguments : '' })),
    direct.whole.calls,
  );
  assert.match(message.tool_calls![0]!.id, /^call_/);
  assert.equal(message.content ?? '', directContent);
});

test('no llama-server address in the front\'s log', { skip: SKIP }, () => {
  assert.deepEqual(findLeaks(front!.output(), [], [port]), []);
});
