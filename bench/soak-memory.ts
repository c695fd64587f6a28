/**
 * Soak part m (see soak.ts): where the server's memory goes on the biggest bodies it accepts. Each kind of body (just
 * under the default 4 MiB body limit, or a schema near the converter's bounds) is sent 4 at a time, --rounds times; per kind the
 * statuses, the slowest answer, and the server's RSS at peak and after. Pair it with --arena-max 2 to tell glibc
 * malloc fragmentation (arenas per thread holding freed memory) from memory still in use.
 */
import { RssWatch, rssMiB, send } from './soak-client.js';
import { count, sleep, tallyText } from './soak-streams.js';

/** Just under the default body limit (4 MiB). */
const BYTES = 3.9 * 1024 * 1024;
const CONCURRENT = 4;

function kinds(model: string): Array<[string, () => unknown]> {
  const user = (content: string) => ({ model, max_tokens: 4, messages: [{ role: 'user', content }] });
  const repeat = (unit: string) => unit.repeat(Math.floor(BYTES / Buffer.byteLength(unit)));
  const properties = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`property_${i}`, { type: 'string' }]));
  const schemaBody = (schema: unknown) => ({ model, max_tokens: 4, messages: [{ role: 'user', content: 'hi' }], response_format: { type: 'json_schema', json_schema: { name: 'out', schema } } });
  return [
    ['3.9 MB of "x" in one message', () => user(repeat('x'))],
    ['3.9 MB of "hello " in one message', () => user(repeat('hello '))],
    ['3.9 MB of "<|im_start|>" in one message', () => user(repeat('<|im_start|>'))],
    ['3.9 MB of emoji in one message', () => user(repeat('😀'))],
    ['130,000 empty messages', () => ({ model, max_tokens: 4, messages: Array.from({ length: 130_000 }, (_, i) => ({ role: i % 2 === 0 ? 'user' : 'assistant', content: '' })) })],
    ['json_schema: enum of 1,000 strings', () => schemaBody({ enum: Array.from({ length: 1_000 }, (_, i) => `value number ${i}`) })],
    ['json_schema: 3,000 required string properties', () => schemaBody({ type: 'object', properties: properties(3_000), required: Object.keys(properties(3_000)) })],
    ['json_schema: 100-deep nested arrays', () => schemaBody(JSON.parse('{"type":"array","items":'.repeat(100) + '{"type":"integer"}' + '}'.repeat(100)))],
  ];
}

/** `only`: indices into the list of kinds (an old server takes minutes over some of them). */
export async function memoryPart(url: string, pid: number, model: string, rounds: number, only?: number[]): Promise<Array<[string, string]>> {
  const figures: Array<[string, string]> = [];
  for (const [index, [name, make]] of kinds(model).entries()) {
    if (only !== undefined && !only.includes(index)) continue;
    const payload = JSON.stringify(make());
    const watch = await RssWatch.start(pid);
    const statuses = new Map<string | number, number>();
    let slowest = 0;
    const afterRounds: number[] = [];
    for (let round = 0; round < rounds; round++) {
      await Promise.all(
        Array.from({ length: CONCURRENT }, async () => {
          try {
            const result = await send(url, '/v1/chat/completions', payload, { 'content-type': 'application/json' }, 300_000);
            count(statuses, result.status);
            slowest = Math.max(slowest, result.ms);
          } catch (error) {
            count(statuses, (error as Error).message.slice(0, 40));
          }
        }),
      );
      afterRounds.push(await rssMiB(pid));
    }
    await sleep(1_000);
    const rss = await watch.stop();
    const line = `${tallyText(statuses)}; slowest ${slowest.toFixed(0)} ms; RSS ${rss.before.toFixed(0)} → peak ${rss.peak.toFixed(0)} → ${rss.after.toFixed(0)} MiB (after each round: ${afterRounds.map((v) => v.toFixed(0)).join(', ')})`;
    console.error(`  ${name} (${(payload.length / 1e6).toFixed(1)} MB) ×${CONCURRENT * rounds}: ${line}`);
    figures.push([`${name} ×${CONCURRENT * rounds}`, line]);
  }
  return figures;
}
