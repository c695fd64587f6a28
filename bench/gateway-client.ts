/**
 * The load generator of `npm run bench:gateway`: closed-loop clients over undici keep-alive pools, the same for every
 * target. Every answer is checked (status, the canned text, `[DONE]`), so a gateway that answers quickly with the
 * wrong thing counts errors, not speed.
 */
import { Pool } from 'undici';
import { CANNED_CONTENT, CANNED_WORDS } from './canned-upstream.js';

export interface Target {
  name: string;
  /** Origin: POST <origin>/v1/chat/completions. */
  origin: string;
  pool: Pool;
  headers: Record<string, string>;
  bodies: { json: string; stream: string };
}

export function makeTarget(name: string, origin: string, model: string, extraHeaders: Record<string, string> = {}, connections = 256): Target {
  const messages = [{ role: 'user', content: 'Say sixteen words.' }];
  return {
    name,
    origin,
    pool: new Pool(origin, { connections, pipelining: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 }),
    headers: { 'content-type': 'application/json', authorization: 'Bearer bench-key', ...extraHeaders },
    bodies: {
      json: JSON.stringify({ model, messages, max_tokens: 64, stream: false }),
      stream: JSON.stringify({ model, messages, max_tokens: 64, stream: true, stream_options: { include_usage: true } }),
    },
  };
}

export type Mode = 'json' | 'stream';

/** The first event that carries text (a role-only first chunk `"content":""` does not count). */
const FIRST_CONTENT = /"content":\s*"[^"]/;
const LAST_CHUNK = `"content":${JSON.stringify(CANNED_WORDS.at(-1))}`;
const WHOLE_CONTENT = `"content":${JSON.stringify(CANNED_CONTENT)}`;

export interface Sample {
  ok: boolean;
  /** Non-streaming: the whole response; streaming: time to the first content chunk. */
  ms: number;
  error?: string;
}

export async function once(target: Target, mode: Mode): Promise<Sample> {
  const started = performance.now();
  try {
    const { statusCode, body } = await target.pool.request({ path: '/v1/chat/completions', method: 'POST', headers: target.headers, body: target.bodies[mode] });
    body.setEncoding('utf8');
    let text = '';
    let firstContent = Number.NaN;
    for await (const part of body as AsyncIterable<string>) {
      text += part;
      if (mode === 'stream' && Number.isNaN(firstContent) && FIRST_CONTENT.test(text)) firstContent = performance.now() - started;
    }
    const total = performance.now() - started;
    if (statusCode !== 200) return { ok: false, ms: total, error: `HTTP ${statusCode}: ${text.slice(0, 300)}` };
    if (mode === 'json') return text.includes(WHOLE_CONTENT) ? { ok: true, ms: total } : { ok: false, ms: total, error: `unexpected body: ${text.slice(0, 300)}` };
    const complete = text.includes(LAST_CHUNK) && /data: \[DONE\]\s*$/.test(text) && !Number.isNaN(firstContent);
    return complete ? { ok: true, ms: firstContent } : { ok: false, ms: total, error: `incomplete stream: ${text.slice(-300)}` };
  } catch (error) {
    return { ok: false, ms: performance.now() - started, error: String(error) };
  }
}

export interface LoopResult {
  /** Latencies of the successful requests (ms), in completion order. */
  latencies: number[];
  ok: number;
  errors: number;
  firstError?: string;
  seconds: number;
  rps: number;
}

/** `concurrency` clients, each sending its next request as soon as the last one ends, for `seconds`. */
export async function closedLoop(target: Target, mode: Mode, concurrency: number, seconds: number): Promise<LoopResult> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const sample = await once(target, mode);
        if (sample.ok) latencies.push(sample.ms);
        else {
          errors++;
          firstError ??= sample.error;
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  return { latencies, ok: latencies.length, errors, ...(firstError !== undefined ? { firstError } : {}), seconds: elapsed, rps: latencies.length / elapsed };
}

/** One request of each mode, read in full and compared with the canned completion; throws on any difference. */
export async function verify(target: Target): Promise<void> {
  const post = (mode: Mode) => target.pool.request({ path: '/v1/chat/completions', method: 'POST', headers: target.headers, body: target.bodies[mode] });
  const json = await post('json');
  const jsonText = await json.body.text();
  if (json.statusCode !== 200) throw new Error(`${target.name}: non-streaming request answered HTTP ${json.statusCode}: ${jsonText}`);
  const completion = JSON.parse(jsonText) as { choices?: Array<{ message?: { content?: string } }>; usage?: { completion_tokens?: number } };
  const content = completion.choices?.[0]?.message?.content;
  if (content !== CANNED_CONTENT) throw new Error(`${target.name}: non-streaming content is ${JSON.stringify(content)}, not the canned ${JSON.stringify(CANNED_CONTENT)}:\n${jsonText}`);
  if (completion.usage?.completion_tokens !== CANNED_WORDS.length) throw new Error(`${target.name}: non-streaming usage is ${JSON.stringify(completion.usage)}`);

  const stream = await post('stream');
  const streamText = await stream.body.text();
  if (stream.statusCode !== 200) throw new Error(`${target.name}: streaming request answered HTTP ${stream.statusCode}: ${streamText}`);
  const events = streamText.split(/\r?\n\r?\n/).map((event) => event.trim()).filter((event) => event !== '');
  if (events.at(-1) !== 'data: [DONE]') throw new Error(`${target.name}: stream does not end with data: [DONE]:\n${streamText.slice(-500)}`);
  let text = '';
  let usage: { completion_tokens?: number } | undefined;
  for (const event of events.slice(0, -1)) {
    if (!event.startsWith('data: ')) throw new Error(`${target.name}: not an SSE data event: ${JSON.stringify(event)}`);
    const chunk = JSON.parse(event.slice('data: '.length)) as { choices: Array<{ delta?: { content?: string | null } }>; usage?: { completion_tokens?: number } | null };
    text += chunk.choices[0]?.delta?.content ?? '';
    usage = chunk.usage ?? usage;
  }
  if (text !== CANNED_CONTENT) throw new Error(`${target.name}: streamed content is ${JSON.stringify(text)}, not the canned ${JSON.stringify(CANNED_CONTENT)}:\n${streamText}`);
  if (usage?.completion_tokens !== CANNED_WORDS.length) throw new Error(`${target.name}: stream usage is ${JSON.stringify(usage)} (stream_options.include_usage asked for it)`);
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export const median = (values: readonly number[]) => percentile(values, 50);
