/** Admission control: requests beyond the model's sequences wait in a bounded queue and are turned away at once. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

let kiln: KilnProcess;
const MODEL = 'tiny';

before(async () => {
  const file = await ensureTinyModel({ neverEnd: true });
  const config = await writeConfig({ models: [{ id: MODEL, file, parallel: 1, queue_depth: 1, queue_wait_ms: 1500, context_size: 16384 }] });
  kiln = await startKiln(['--config', config]);
});

after(async () => kiln?.stop());

const body = (maxTokens: number) => JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: maxTokens, stream: true });
const post = (maxTokens: number, signal?: AbortSignal) =>
  fetch(`${kiln.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(maxTokens), ...(signal ? { signal } : {}) });

test('a full queue answers 429 with Retry-After at once, a wait past the deadline 503, while the running request finishes', async () => {
  // Holds the only sequence (the model never ends a turn by itself, so this runs for 16,000 tokens: several seconds
  // even at the tiny model's ~3,000 tokens/s, well past the 1.5 s queue deadline).
  const running = await post(16_000);
  assert.equal(running.status, 200);
  const queued = post(1); // waits in the queue (depth 1)
  await new Promise((resolve) => setTimeout(resolve, 200));

  const started = Date.now();
  const refused = await post(1);
  assert.equal(refused.status, 429);
  assert.ok(Date.now() - started < 1000, 'the refusal must be immediate');
  assert.ok(Number(refused.headers.get('retry-after')) >= 1);
  const refusal = await refused.json();
  assert.equal(refusal.error.type, 'rate_limit_error');

  const timedOut = await queued;
  assert.equal(timedOut.status, 503);
  assert.ok(Number(timedOut.headers.get('retry-after')) >= 1);
  assert.equal((await timedOut.json()).error.type, 'service_unavailable');

  // The running request is unaffected: it is still streaming tokens after all of that.
  const reader = running.body!.getReader();
  const { value } = await reader.read();
  assert.match(new TextDecoder().decode(value), /^data: \{"id"/);
  await reader.cancel();
});

/** Waits until the aborted stream of the previous test has released the only sequence (slow CI machines take a while). */
async function untilIdle(deadlineMs = 15_000): Promise<void> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const probe = await post(1);
    await probe.text();
    if (probe.status === 200) return;
    if (Date.now() > until) throw new Error(`the sequence was not released: last status ${probe.status}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('a request waiting in the queue is served when the sequence frees up', async () => {
  await untilIdle();
  // The second waits while the first generates: well inside the 1.5 s queue deadline even on a loaded machine.
  const first = post(8);
  const second = post(8);
  const [a, b] = await Promise.all([first, second]);
  assert.equal(a.status, 200);
  assert.equal(b.status, 200);
  assert.match(await a.text(), /\[DONE\]/);
  assert.match(await b.text(), /\[DONE\]/);
});
