/**
 * Load on demand and idle unload on a realistic model: the Qwen2.5-0.5B-shaped random-weight Q8_0 GGUF of
 * `npm run bench`, served by the real CLI with a short keep_alive. Per round: the cold request's time to first token
 * (load included), the load time Kiln logs, a warm request's TTFT, the unload time, and the server's RSS idle, loaded
 * and after the unload.
 *
 *   node --import tsx bench/model-lifecycle.ts [--rounds 3] [--keep-alive-ms 2000]
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureBenchModel, QWEN25_05B_SHAPE } from '../src/gguf/bench-model.js';
import { writeConfig } from '../test/helpers/kiln-process.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, 'keep-alive-ms': { type: 'string', default: '2000' } } });
const rounds = Number(values.rounds);
const keepAliveMs = Number(values['keep-alive-ms']);
const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

const file = await ensureBenchModel({ ...QWEN25_05B_SHAPE, neverEnd: true });
const config = await writeConfig({ models: [{ id: 'bench', file, parallel: 4, context_size: 2048, keep_alive: `${keepAliveMs}ms` }] });
const child = spawn(process.execPath, [resolve(import.meta.dirname, '../bin/kiln.cjs'), 'serve', '--config', config, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
let output = '';
child.stdout.on('data', (data) => (output += data));
child.stderr.on('data', (data) => (output += data));
const startedAt = performance.now();
while (!/Kiln listening on (\S+)/.test(output)) await sleep(20);
const startupMs = performance.now() - startedAt;
const url = /Kiln listening on (\S+)/.exec(output)![1]!;

const rssMiB = async () => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${child.pid}/status`, 'utf8'))![1]) / 1024;
const logged = (message: string) => output.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, number | string>).filter((line) => line.msg === message);

async function ttft(): Promise<number> {
  const began = performance.now();
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'Say something about kilns.' }], max_tokens: 8, stream: true }),
  });
  const reader = response.body!.getReader();
  let first: number | undefined;
  let text = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += Buffer.from(value).toString();
    if (first === undefined && /"content":"[^"]/.test(text)) first = performance.now() - began;
  }
  if (response.status !== 200 || first === undefined) throw new Error(`request failed: ${response.status} ${text.slice(0, 200)}`);
  return first;
}

const rows: string[] = [];
for (let round = 1; round <= rounds; round++) {
  const idle = await rssMiB();
  const cold = await ttft();
  const loaded = await rssMiB();
  const warm = await ttft();
  const unloadsBefore = logged('model unloaded').length;
  while (logged('model unloaded').length === unloadsBefore) await sleep(50);
  await sleep(200);
  const after = await rssMiB();
  const load = logged('model loaded').at(-1)!.loadMs;
  const unload = logged('model unloaded').at(-1)!.unloadMs;
  rows.push(`| ${round} | ${cold.toFixed(0)} | ${load} | ${warm.toFixed(0)} | ${unload} | ${idle.toFixed(0)} | ${loaded.toFixed(0)} | ${after.toFixed(0)} |`);
}
child.kill('SIGTERM');
console.log(`Model lifecycle — ${new Date().toISOString()} — Qwen2.5-0.5B-shaped Q8_0 (${file.split('/').at(-1)}), parallel 4 × 2048, keep_alive ${keepAliveMs} ms; start-up to listening ${startupMs.toFixed(0)} ms\n`);
console.log('| round | cold TTFT ms (load included) | load ms (logged) | warm TTFT ms | unload ms | RSS idle MiB | RSS loaded MiB | RSS after unload MiB |');
console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const row of rows) console.log(row);
