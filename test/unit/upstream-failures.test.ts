/**
 * How an upstream fails: before the first event as DeploymentFailures a router can act on (retryable, unhealthy),
 * after it as KilnErrors thrown from the choice; aborts (client gone, consumer done, sibling failed) close the
 * upstream connection at once; a reader that stops pulling stops the upstream read; no message names the upstream's
 * address or key.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, describe, test } from 'node:test';
import { DeploymentFailure, type EngineRun } from '../../src/core/engine.js';
import { KilnError, type ErrorKind } from '../../src/errors/catalog.js';
import { chatRequest, chunk, collectingLog, events, startCannedUpstream, upstreamEngine as baseEngine, usageChunk, type CannedUpstream, type LogLine } from '../helpers/canned-upstream.js';

const servers: CannedUpstream[] = [];

async function serve(...args: Parameters<typeof startCannedUpstream>): Promise<CannedUpstream> {
  const server = await startCannedUpstream(...args);
  servers.push(server);
  return server;
}

const SECRET = 'sk-upstream-secret';
/** Every error and log line these tests saw, checked at the end for the upstream's address and key. */
const seen: Array<{ port: number; text: string }> = [];
const logs: Array<{ port: number; lines: LogLine[] }> = [];

function remember(upstream: { port: number }, error: unknown): unknown {
  const parts: string[] = [];
  for (let at: unknown = error, depth = 0; at instanceof Error && depth < 5; at = at.cause, depth++) parts.push(at.message, String(at.stack ?? ''));
  if (error instanceof KilnError) parts.push(JSON.stringify({ message: error.message, param: error.param }));
  seen.push({ port: upstream.port, text: parts.join('\n') });
  return error;
}

/** An engine whose log lines are kept for the final check. */
function upstreamEngine(upstream: Pick<CannedUpstream, 'url' | 'port'>, settings: Parameters<typeof baseEngine>[1] = {}) {
  const { log, lines } = collectingLog();
  logs.push({ port: upstream.port, lines });
  return baseEngine(upstream, { log, ...settings });
}

/** The DeploymentFailure that `start` rejects with. */
async function startFailure(upstream: CannedUpstream, extra: Record<string, unknown> = {}, settings: Parameters<typeof upstreamEngine>[1] = {}): Promise<DeploymentFailure> {
  const engine = upstreamEngine(upstream, settings);
  try {
    await engine.start(chatRequest(extra), new AbortController().signal);
  } catch (error) {
    remember(upstream, error);
    assert.ok(error instanceof DeploymentFailure, `expected a DeploymentFailure, got ${String(error)}`);
    return error;
  } finally {
    await engine.close();
  }
  assert.fail('start did not fail');
}

/** The error a started run's choice throws. */
async function choiceFailure(upstream: CannedUpstream, run: EngineRun): Promise<KilnError> {
  try {
    await events(run);
  } catch (error) {
    remember(upstream, error);
    assert.ok(error instanceof KilnError, `expected a KilnError, got ${String(error)}`);
    return error;
  }
  assert.fail('the choice did not fail');
}

function assertFailure(failure: DeploymentFailure, kind: ErrorKind, retryable: boolean, unhealthy: boolean): void {
  assert.deepEqual([failure.error.kind, failure.retryable, failure.unhealthy], [kind, retryable, unhealthy], failure.message);
}

const fast = { timeouts: { connectMs: 500, firstTokenMs: 300, idleMs: 300, totalMs: 5_000 } };

describe('upstream failures before the first event', { timeout: 15_000 }, () => {
  test('429 is rate limiting with the upstream Retry-After; retryable, not unhealthy', async () => {
    const upstream = await serve(() => ({ kind: 'status', status: 429, headers: { 'retry-after': '7' }, body: { error: { message: 'slow down' } } }));
    const failure = await startFailure(upstream);
    assertFailure(failure, 'upstreamRateLimited', true, false);
    assert.equal(failure.error.retryAfterSeconds, 7);
    const bare = await startFailure(await serve(() => ({ kind: 'status', status: 429 })));
    assert.equal(bare.error.retryAfterSeconds, 1);
  });

  test('5xx is unavailable: retryable and unhealthy', async () => {
    const upstream = await serve(() => ({ kind: 'status', status: 500, body: 'Internal Server Error' }));
    assertFailure(await startFailure(upstream), 'upstreamUnavailable', true, true);
    assertFailure(await startFailure(await serve(() => ({ kind: 'status', status: 503 }))), 'upstreamUnavailable', true, true);
  });

  test('401/403: the upstream refused Kiln credentials; retryable elsewhere and unhealthy', async () => {
    const failure = await startFailure(await serve(() => ({ kind: 'status', status: 401, body: { error: { message: `bad key ${SECRET}` } } })));
    assertFailure(failure, 'upstreamUnavailable', true, true);
    assert.match(failure.message, /credentials/);
    assert.equal(failure.message.includes(SECRET), false);
  });

  test('400 carries the upstream message, is neither retryable nor unhealthy; context length is recognised', async () => {
    const openai = await startFailure(await serve(() => ({ kind: 'status', status: 400, body: { error: { message: "'temperature' is odd", type: 'invalid_request_error', param: 'temperature' } } })));
    assertFailure(openai, 'invalidParameter', false, false);
    assert.equal(openai.error.message, "'temperature' is odd");
    assert.equal(openai.error.param, 'temperature');
    const fastapi = await startFailure(await serve(() => ({ kind: 'status', status: 422, body: { detail: 'bad field' } })));
    assertFailure(fastapi, 'invalidParameter', false, false);
    assert.equal(fastapi.error.message, 'bad field');
    const flat = await startFailure(await serve(() => ({ kind: 'status', status: 400, body: { message: 'flat message' } })));
    assert.equal(flat.error.message, 'flat message');
    const vllm = "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.";
    const context = await startFailure(await serve(() => ({ kind: 'status', status: 400, body: { object: 'error', message: vllm } })));
    assertFailure(context, 'contextLengthExceeded', false, false);
    assert.equal(context.error.message, vllm);
  });

  test('connection refused: unavailable, retryable, unhealthy, without the address', async () => {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const upstream = { url: `http://127.0.0.1:${port}/v1`, port } as CannedUpstream;
    const failure = await startFailure(upstream);
    assertFailure(failure, 'upstreamUnavailable', true, true);
    assert.match(failure.message, /ECONNREFUSED/);
    assert.match(failure.message, /'canned'/);
  });

  test('no headers within the first-token timeout: timeout, retryable, unhealthy; the request is aborted', async () => {
    const upstream = await serve(() => ({ kind: 'hang' }));
    const started = Date.now();
    assertFailure(await startFailure(upstream, {}, fast), 'upstreamTimeout', true, true);
    assert.ok(Date.now() - started < 2_000);
    await upstream.waitForAborted(1);
  });

  test('headers but no first event within the first-token timeout is also a timeout', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'late' })], hangAfter: 0 }));
    assertFailure(await startFailure(upstream, {}, fast), 'upstreamTimeout', true, true);
    await upstream.waitForAborted(1);
  });

  test('an error event before the first token is a failure; a context-length one is the client’s', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [{ error: { message: 'engine crashed' } }] }));
    assertFailure(await startFailure(upstream), 'upstreamUnavailable', true, true);
    const context = await serve(() => ({ kind: 'sse', chunks: [{ error: { message: 'the request exceeds the available context size' } }] }));
    assertFailure(await startFailure(context), 'contextLengthExceeded', false, false);
  });

  test('one of n choices failing aborts the others at once', async () => {
    const upstream = await serve((_body, n) => (n === 1 ? { kind: 'status', status: 500 } : { kind: 'hang' }));
    assertFailure(await startFailure(upstream, { n: 3 }), 'upstreamUnavailable', true, true);
    await upstream.waitForAborted(2);
  });

  test('a client abort during start rejects with its reason and aborts the upstream request', async () => {
    const upstream = await serve(() => ({ kind: 'hang' }));
    const engine = upstreamEngine(upstream);
    const controller = new AbortController();
    const reason = new Error('client gone');
    setTimeout(() => controller.abort(reason), 50);
    await assert.rejects(engine.start(chatRequest(), controller.signal), (error) => error === reason);
    await upstream.waitForAborted(1);
    await engine.close();
  });
});

describe('the first token, not the role chunk, is what start waits for', { timeout: 15_000 }, () => {
  test('an upstream that dies after its role-only chunk (during its prefill) fails start, so it can be failed over', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ role: 'assistant', content: '' }), chunk({ content: 'a' }), chunk({}, 'stop')], closeAfter: 1 }));
    const engine = upstreamEngine(upstream);
    await assert.rejects(engine.start(chatRequest(), new AbortController().signal), (error) => error instanceof DeploymentFailure && error.retryable && error.unhealthy);
    await engine.close();
  });
});

describe('upstream failures after the first event', { timeout: 15_000 }, () => {
  test('the connection closing mid-stream: the choice throws upstreamUnavailable', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'a' }), chunk({ content: 'b' }), chunk({}, 'stop')], closeAfter: 2 }));
    const engine = upstreamEngine(upstream);
    const run = await engine.start(chatRequest(), new AbortController().signal);
    const error = await choiceFailure(upstream, run);
    assert.equal(error.kind, 'upstreamUnavailable');
    assert.equal(error.message, "The model's server failed mid-response.");
    await engine.close();
  });

  test('an error event, malformed data and a body ending without a finish are failures mid-response', async () => {
    const scripts = [
      { kind: 'sse' as const, chunks: [chunk({ content: 'a' }), { error: { message: 'out of memory' } }] },
      { kind: 'sse' as const, chunks: [chunk({ content: 'a' }), 'data: {not json\n\n'] },
      { kind: 'sse' as const, chunks: [chunk({ content: 'a' })], done: false },
    ];
    for (const script of scripts) {
      const upstream = await serve(() => script);
      const engine = upstreamEngine(upstream);
      const run = await engine.start(chatRequest(), new AbortController().signal);
      assert.equal((await choiceFailure(upstream, run)).kind, 'upstreamUnavailable');
      await engine.close();
    }
  });

  test('no event within the idle timeout: upstreamTimeout, and the connection is closed', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'a' }), chunk({}, 'stop')], hangAfter: 1 }));
    const engine = upstreamEngine(upstream, fast);
    const run = await engine.start(chatRequest(), new AbortController().signal);
    const started = Date.now();
    const error = await choiceFailure(upstream, run);
    assert.equal(error.kind, 'upstreamTimeout');
    assert.equal(error.message, "The model's server stopped sending mid-response.");
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 250 && elapsed < 2_000, `the idle timeout fired after ${elapsed} ms`);
    await upstream.waitForAborted(1);
    await engine.close();
  });

  test('a slow consumer does not trip the idle timeout; the total timeout still ends the stream', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: Array.from({ length: 50 }, () => chunk({ content: 'x' })), delayMs: 40 }));
    const engine = upstreamEngine(upstream, { timeouts: { connectMs: 500, firstTokenMs: 1_000, idleMs: 200, totalMs: 600 } });
    const run = await engine.start(chatRequest(), new AbortController().signal);
    const iterator = run.choice(0);
    await iterator.next();
    await new Promise((resolve) => setTimeout(resolve, 300)); // longer than idleMs, while nothing is asked for
    await iterator.next();
    const error = await (async () => {
      try {
        for (;;) if ((await iterator.next()).done === true) return undefined;
      } catch (caught) {
        return remember(upstream, caught);
      }
    })();
    assert.ok(error instanceof KilnError);
    assert.equal(error.kind, 'upstreamTimeout');
    assert.equal(error.message, "The model's server did not finish in time.");
    await engine.close();
  });

  test('a client abort mid-stream closes the upstream connection at once', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'a' }), chunk({ content: 'b' })], hangAfter: 1 }));
    const engine = upstreamEngine(upstream);
    const controller = new AbortController();
    const run = await engine.start(chatRequest(), controller.signal);
    const iterator = run.choice(0);
    assert.deepEqual((await iterator.next()).value, { type: 'text', text: 'a', tokens: 1 });
    const pending = iterator.next();
    const reason = new Error('client gone');
    controller.abort(reason);
    await assert.rejects(pending, (error) => error === reason);
    await upstream.waitForAborted(1, 500);
    await engine.close();
  });

  test('a consumer that stops early closes the connection, which the pool replaces', async () => {
    const upstream = await serve((_body, n) =>
      n < 3 ? { kind: 'sse', chunks: [chunk({ content: 'a' }), chunk({ content: 'b' })], hangAfter: 1 } : { kind: 'sse', chunks: [chunk({ content: 'ok' }, 'stop')], usage: usageChunk(1, 1) },
    );
    // One choice at a time (the pool keeps one more connection for health probes): three abandoned streams would
    // exhaust it if stopping did not give their connections up.
    const engine = upstreamEngine(upstream, { maxConcurrency: 1 });
    for (let i = 0; i < 3; i++) {
      const run = await engine.start(chatRequest(), new AbortController().signal);
      for await (const event of run.choice(0)) {
        assert.equal(event.type, 'text');
        break;
      }
      run.dispose();
      await upstream.waitForAborted(i + 1, 500);
    }
    const last = await engine.start(chatRequest(), new AbortController().signal);
    assert.equal((await events(last)).at(-1)?.type, 'end');
    await engine.close();
  });

  test('dispose aborts the choices that never started', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'a' }), chunk({}, 'stop')], hangAfter: 1 }));
    const engine = upstreamEngine(upstream);
    const run = await engine.start(chatRequest({ n: 2 }), new AbortController().signal);
    run.dispose();
    await upstream.waitForAborted(2, 500);
    await engine.close();
  });

  test('close aborts streams in flight', async () => {
    const upstream = await serve(() => ({ kind: 'sse', chunks: [chunk({ content: 'a' }), chunk({}, 'stop')], hangAfter: 1 }));
    const engine = upstreamEngine(upstream);
    await engine.start(chatRequest(), new AbortController().signal);
    await engine.close();
    await upstream.waitForAborted(1, 500);
  });

  test('a reader that stops pulling stops the upstream read (backpressure)', async () => {
    const total = 32 * 1024 * 1024;
    const upstream = await serve(() => ({ kind: 'big', bytes: total }));
    const engine = upstreamEngine(upstream);
    const run = await engine.start(chatRequest(), new AbortController().signal);
    const iterator = run.choice(0);
    for (let i = 0; i < 10; i++) await iterator.next();
    await new Promise((resolve) => setTimeout(resolve, 400));
    const stalled = upstream.bigBytesWritten;
    await new Promise((resolve) => setTimeout(resolve, 300));
    const written = upstream.bigBytesWritten;
    // The upstream's writes stall once the socket buffers and one read-ahead chunk are full: far from the whole body.
    assert.equal(written, stalled, 'the upstream kept writing to a reader that stopped');
    assert.ok(written < total / 2, `the upstream wrote ${written} bytes for a reader that stopped`);
    await iterator.return(undefined);
    await upstream.waitForAborted(1, 500);
    await engine.close();
  });
});

describe('upstream probe', { timeout: 15_000 }, () => {
  test('resolves on 2xx, rejects on non-2xx and on a refused connection, without the address', async () => {
    const ok = await serve(() => ({ kind: 'hang' }));
    const engine = upstreamEngine(ok);
    await engine.probe(new AbortController().signal);
    assert.equal(ok.requests[0]?.url, '/v1/models');
    assert.equal(ok.requests[0]?.headers.authorization, `Bearer ${SECRET}`);
    await engine.close();

    const down = await serve(() => ({ kind: 'hang' }), { modelsStatus: 503 });
    const downEngine = upstreamEngine(down);
    await assert.rejects(downEngine.probe(new AbortController().signal), (error) => remember(down, error) instanceof KilnError);
    await downEngine.close();

    const gone = await serve(() => ({ kind: 'hang' }));
    const goneEngine = upstreamEngine(gone);
    await gone.close();
    await assert.rejects(goneEngine.probe(new AbortController().signal), (error) => {
      remember(gone, error);
      return error instanceof KilnError && /could not be reached/.test(error.message);
    });
    await goneEngine.close();
  });
});

after(async () => {
  await Promise.all(servers.map((server) => server.close()));
  // Checked last, over every failure above: never the host, port, URL or key.
  assert.ok(seen.length >= 15, `only ${seen.length} errors were checked`);
  for (const { port, text } of seen) {
    for (const secret of [String(port), '127.0.0.1', 'localhost', SECRET, 'http://']) {
      assert.equal(text.includes(secret), false, `an error names ${secret}: ${text}`);
    }
  }
  assert.ok(logs.some(({ lines }) => lines.some((line) => line.level === 'warn')), 'no warning was logged to check');
  for (const { port, lines } of logs) {
    const text = JSON.stringify(lines);
    for (const secret of [String(port), '127.0.0.1', SECRET]) assert.equal(text.includes(secret), false, `a log line names ${secret}: ${text}`);
  }
});
