/**
 * The model state machine over a fake engine: one load for concurrent first requests, idle unload after keep_alive,
 * no unload under a running request, failed loads answered 503 and retried after a pause.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ChatEngine, EngineRun } from '../../src/core/engine.js';
import { SILENT_LOG } from '../../src/core/log.js';
import { KilnError } from '../../src/errors/catalog.js';
import { ManagedEngine, type LifecycleSettings } from '../../src/service/model-lifecycle.js';
import { normalizeChatRequest } from '../../src/core/normalize-request.js';

const request = normalizeChatRequest({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, { maxChoices: 8 });
const never = new AbortController().signal;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Counters {
  loads: number;
  closes: number;
  live: number;
}

/** A loader whose engines yield one text event; `failLoads` loads fail first. */
function loader(options: { loadMs?: number; failLoads?: number } = {}): { load: () => Promise<ChatEngine>; counters: Counters } {
  const counters: Counters = { loads: 0, closes: 0, live: 0 };
  let failures = options.failLoads ?? 0;
  const load = async (): Promise<ChatEngine> => {
    counters.loads++;
    await sleep(options.loadMs ?? 5);
    if (failures-- > 0) throw new Error('unsupported model architecture');
    counters.live++;
    let closed = false;
    return {
      description: { name: 'fake', supportsImages: false },
      capacity: () => 4,
      async start(): Promise<EngineRun> {
        if (closed) throw new Error('started on a closed engine');
        return {
          promptTokens: 1,
          cachedTokens: 0,
          reasoning: 'off',
          maxTokens: 2,
          async *choice() {
            await sleep(1);
            if (closed) throw new Error('generating on a closed engine');
            yield { type: 'text', text: 'x', tokens: 1 };
            yield { type: 'end', reason: 'eog' };
          },
          dispose() {},
        };
      },
      async close() {
        closed = true;
        counters.closes++;
        counters.live--;
      },
    };
  };
  return { load, counters };
}

function managed(load: () => Promise<ChatEngine>, settings: Partial<LifecycleSettings> = {}): ManagedEngine {
  return new ManagedEngine('fake.gguf', load, { description: { name: 'fake', supportsImages: false }, capacity: 4 }, { keepAliveMs: 50, loadWaitMs: 2_000, retryFailedAfterMs: 100, ...settings }, SILENT_LOG);
}

async function complete(engine: ManagedEngine): Promise<void> {
  const run = await engine.start(request, never);
  for await (const _event of run.choice(0));
  run.dispose();
}

describe('model lifecycle', () => {
  test('nothing loads until asked; 10 concurrent first requests share one load', async () => {
    const { load, counters } = loader({ loadMs: 30 });
    const engine = managed(load, { keepAliveMs: -1 });
    assert.equal(engine.state, 'unloaded');
    assert.equal(counters.loads, 0);
    await Promise.all(Array.from({ length: 10 }, () => complete(engine)));
    assert.equal(counters.loads, 1);
    assert.equal(engine.state, 'ready');
    await engine.close();
    assert.equal(counters.closes, 1);
  });

  test('an idle model unloads after keep_alive and loads again on demand', async () => {
    const { load, counters } = loader();
    const engine = managed(load, { keepAliveMs: 40 });
    await complete(engine);
    assert.equal(engine.state, 'ready');
    await sleep(120);
    assert.equal(engine.state, 'unloaded');
    assert.equal(counters.live, 0);
    await complete(engine);
    assert.equal(counters.loads, 2);
    await engine.close();
  });

  test('keep_alive 0 unloads as soon as the last request ends; -1 never does', async () => {
    const zero = loader();
    const now = managed(zero.load, { keepAliveMs: 0 });
    await complete(now);
    await sleep(20);
    assert.equal(now.state, 'unloaded');
    const forever = loader();
    const kept = managed(forever.load, { keepAliveMs: -1 });
    await complete(kept);
    await sleep(60);
    assert.equal(kept.state, 'ready');
    await kept.close();
  });

  test('a running request holds the model past keep_alive; its end starts the idle clock', async () => {
    const { load, counters } = loader();
    const engine = managed(load, { keepAliveMs: 10 });
    const run = await engine.start(request, never);
    const choice = run.choice(0);
    await choice.next();
    await sleep(60);
    assert.equal(engine.state, 'ready', 'a request is running');
    assert.equal(engine.holding, 1);
    run.dispose(); // disposed early: the started choice still runs, so the model stays
    await sleep(40);
    assert.equal(engine.state, 'ready');
    for await (const _event of choice);
    await sleep(60);
    assert.equal(engine.state, 'unloaded');
    assert.equal(counters.closes, 1);
  });

  test('a failed load answers 503 with the reason, is not retried on every request, and is retried later', async () => {
    const { load, counters } = loader({ failLoads: 1 });
    const engine = managed(load, { retryFailedAfterMs: 80 });
    await assert.rejects(complete(engine), (error: KilnError) => error.status === 503 && /unsupported model architecture/.test(error.message) && error.retryAfterSeconds! >= 1);
    const unavailable = engine.unavailable();
    assert.ok(unavailable !== undefined && /could not be loaded/.test(unavailable.message));
    await assert.rejects(complete(engine), (error: KilnError) => error.status === 503);
    assert.equal(counters.loads, 1, 'not retried within the pause');
    await sleep(100);
    assert.equal(engine.unavailable(), undefined);
    await complete(engine);
    assert.equal(counters.loads, 2);
    await engine.close();
  });

  test('a load slower than the queue deadline answers 503 "still loading", and the load goes on for later requests', async () => {
    const { load, counters } = loader({ loadMs: 80 });
    const engine = managed(load, { loadWaitMs: 20, keepAliveMs: -1 });
    await assert.rejects(complete(engine), (error: KilnError) => error.status === 503 && /still loading/.test(error.message));
    await sleep(100);
    assert.equal(engine.state, 'ready');
    await complete(engine);
    assert.equal(counters.loads, 1);
    await engine.close();
  });

  test('preload loads at once; a request arriving while it unloads waits and loads it again', async () => {
    const { load, counters } = loader();
    const engine = managed(load, { keepAliveMs: 0 });
    await engine.preload();
    assert.equal(engine.state, 'ready');
    await complete(engine);
    await sleep(0);
    await complete(engine); // may meet the model draining
    assert.ok(counters.loads >= 2);
    assert.ok(counters.live <= 1);
    await engine.close();
  });
});
