/**
 * A short request sent while a long prompt is being prefilled: prints the time to first token of a ~2k-token prompt
 * and of three ~75-token prompts sent 300 ms after it, against any OpenAI-compatible server serving model `bench`:
 *
 *   node --import tsx bench/long-prefill.ts http://127.0.0.1:8000
 *
 * (start Kiln and llama-server on the benchmark model as `npm run bench` does, and run it against each, alternately).
 */
import OpenAI from 'openai';

const url = process.argv[2] ?? 'http://127.0.0.1:8000';
const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: process.env.KILN_API_KEY ?? 'none', maxRetries: 0 });
const WORDS = 'amber birch cedar delta ember fjord glacier harbor island juniper kestrel lantern meadow nectar orchard prairie quartz river summit tundra'.split(' ');
const salt = Math.floor(Math.random() * 1e6); // prompts of their own: no prefix-cache hits from an earlier run
const words = (count: number, offset: number) => Array.from({ length: count }, (_, i) => WORDS[(i * 7 + offset) % WORDS.length]).join(' ');

async function timeToFirstToken(content: string, delayMs: number): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, delayMs));
  const started = performance.now();
  const stream = await client.chat.completions.create({
    model: 'bench',
    messages: [{ role: 'system', content: 'You are a helpful assistant.' }, { role: 'user', content }],
    max_tokens: 16,
    stream: true,
  });
  let ttft = Number.NaN;
  for await (const chunk of stream) if (Number.isNaN(ttft) && chunk.choices[0]?.delta.content) ttft = performance.now() - started;
  return Math.round(ttft);
}

const [long, ...short] = await Promise.all([
  timeToFirstToken(`${salt} ${words(1800, salt)}`, 0),
  ...[1, 2, 3].map((i) => timeToFirstToken(`${salt} ${i} ${words(60, i)}`, 300)),
]);
console.log(`long prompt TTFT ${long} ms; short prompts TTFT ${short.join(' ')} ms`);
