/**
 * Streams whose client stops reading, request timeouts whatever the socket does, and graceful shutdown
 * (issue 9, points 1 and 5), over real sockets against the real HTTP layer and ChatService with a fake engine.
 */
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { closeGracefully } from '../../src/http/shutdown.js';
import { chatBody, chunkedBody, exchange, openSocket, parseResponse, postRequest, startTestServer, type TestServer } from '../helpers/fake-http.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<number> {
  const began = performance.now();
  while (!condition()) {
    if (performance.now() - began > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
  return performance.now() - began;
}

/** Starts a stream of large pieces and stops reading once its first bytes arrived. */
async function stalledStream(server: TestServer): Promise<Socket> {
  const socket = await openSocket(server.port);
  socket.on('error', () => {});
  const firstBytes = new Promise((resolve) => socket.once('data', resolve));
  socket.write(postRequest(chatBody({ stream: true, max_tokens: 16384 })));
  await firstBytes;
  socket.pause();
  return socket;
}

/** Streams and reads everything until the server closes. */
async function readStream(server: TestServer, extra: Record<string, unknown> = {}): Promise<{ socket: Socket; text: Promise<string> }> {
  const socket = await openSocket(server.port);
  socket.on('error', () => {});
  let text = '';
  socket.on('data', (data) => (text += data));
  const done = new Promise<string>((resolve) => socket.on('close', () => resolve(text)));
  socket.write(postRequest(chatBody({ stream: true, max_tokens: 16384, ...extra }), { connection: 'close' }));
  return { socket, text: done };
}

const lastEvent = (text: string) => chunkedBody(text).trim().split('\n\n').pop()!;
const openConnections = (server: TestServer) => new Promise<number>((resolve) => server.app.server.getConnections((_error, count) => resolve(count)));

test('a client that stops reading loses its stream after the stall timeout and the engine is released', async () => {
  const server = await startTestServer({ stallTimeoutMs: 300 }, { pieceBytes: 16 * 1024 });
  try {
    const socket = await stalledStream(server);
    const ms = await until(() => server.stats.released === 1, 5000, 'the run to be released');
    assert.equal(server.stats.aborted, 1);
    assert.ok(ms < 3000, `released after ${Math.round(ms)} ms`);
    await until(() => server.logs().some((line) => line.status === 499), 2000, 'the 499 log line');
    assert.equal(await openConnections(server), 0);
    socket.destroy();
    // Others are served as before.
    const other = await readStream(server, { max_tokens: 3 });
    assert.equal(lastEvent(await other.text), 'data: [DONE]');
  } finally {
    await server.app.close();
  }
});

test('a slow reader that keeps reading is not stalled', async () => {
  // The kernel's socket buffers (MBs on loopback) wake the writer only once a good part of them drained: the
  // timeout has to be above that time at this reader's pace.
  const server = await startTestServer({ stallTimeoutMs: 1500 }, { pieceBytes: 64 * 1024 });
  try {
    const socket = await openSocket(server.port);
    let received = 0;
    const closed = new Promise((resolve) => socket.on('close', resolve));
    socket.on('data', (data) => {
      received += data.length;
      socket.pause();
      setTimeout(() => socket.resume(), 10);
    });
    socket.write(postRequest(chatBody({ stream: true, max_tokens: 200 }), { connection: 'close' }));
    await closed;
    assert.ok(received > 200 * 64 * 1024, `received ${received} bytes`);
    assert.equal(server.stats.released, 1);
    assert.equal(server.logs().filter((line) => line.status === 499).length, 0);
  } finally {
    await server.app.close();
  }
});

test('request_timeout_ms ends a stream whose client stopped reading, and its socket', async () => {
  const server = await startTestServer({ requestTimeoutMs: 500, stallTimeoutMs: 60_000 }, { pieceBytes: 16 * 1024 });
  try {
    const began = performance.now();
    const socket = await stalledStream(server);
    await until(() => server.stats.released === 1, 5000, 'the run to be released');
    await until(() => server.logs().some((line) => line.code === 'timeout'), 3000, 'the timeout to be logged');
    // The timeout event cannot reach a client that does not read: its socket is destroyed after a short grace.
    while ((await openConnections(server)) > 0) {
      assert.ok(performance.now() - began < 4000, 'the socket was not destroyed');
      await sleep(20);
    }
    socket.destroy();
  } finally {
    await server.app.close();
  }
});

test('request_timeout_ms: a client that reads gets the timeout as the last event', async () => {
  const server = await startTestServer({ requestTimeoutMs: 300 }, { pieceBytes: 16, pieceDelayMs: 5 });
  try {
    const { text } = await readStream(server);
    assert.match(lastEvent(await text), /^data: \{"code":50507,.*"code":"timeout"/);
    await until(() => server.stats.released === 1, 2000, 'the run to be released');
  } finally {
    await server.app.close();
  }
});

test('request_timeout_ms answers 504 at the deadline even while the engine has not noticed the abort', async () => {
  const server = await startTestServer({ requestTimeoutMs: 200 }, { startDelayMs: 1500, startIgnoresAbort: true });
  try {
    const began = performance.now();
    const response = parseResponse((await exchange(server.port, postRequest(chatBody(), { connection: 'close' }))).text);
    assert.equal(response.status, 504);
    assert.equal((JSON.parse(response.body) as { error: { type: string } }).error.type, 'timeout_error');
    assert.ok(performance.now() - began < 1000);
    // The late run is still released.
    await until(() => server.stats.released === 1, 5000, 'the late run to be released');
  } finally {
    await server.app.close();
  }
});

test('shutdown: requests in flight finish, new connections are refused', async () => {
  const server = await startTestServer({}, { startDelayMs: 400 });
  const socket = await openSocket(server.port);
  let text = '';
  socket.on('data', (data) => (text += data));
  const closed = new Promise((resolve) => socket.on('close', resolve));
  // Two pipelined requests, both received before the drain begins: both are answered.
  socket.write(postRequest(chatBody()) + postRequest(chatBody()));
  await sleep(100);
  const result = await closeGracefully(server.app, { drainTimeoutMs: 5000 });
  await closed;
  assert.deepEqual(result, { endedAtDeadline: 0, forced: false });
  const first = parseResponse(text);
  assert.equal(first.status, 200, first.body);
  const second = parseResponse(text.slice(text.indexOf('\r\n\r\n') + 4 + first.body.length));
  assert.equal(second.status, 200, second.body);
  await assert.rejects(openSocket(server.port), /ECONNREFUSED/);
});

test('shutdown: a request arriving on a kept-alive connection while draining gets 503 with Retry-After', async () => {
  const server = await startTestServer({}, { startDelayMs: 400 });
  const keptAlive = await openSocket(server.port);
  let text = '';
  const second = new Promise<void>((resolve, reject) => {
    keptAlive.on('data', (data) => {
      text += data;
      if (/HTTP\/1\.1 503/.test(text) && text.endsWith('}')) resolve();
    });
    keptAlive.on('close', () => reject(new Error(`the connection closed before the 503: ${JSON.stringify(text.slice(0, 300))}`)));
  });
  // The second request is sent while the first is still in flight and the drain has begun (asking only after the
  // first answer would race the server closing the connection, idle by then, which is what it should do).
  keptAlive.write(postRequest(chatBody()));
  await sleep(100);
  const closing = closeGracefully(server.app, { drainTimeoutMs: 5000 });
  await sleep(100);
  keptAlive.write(postRequest(chatBody()));
  await second;
  assert.match(text, /^HTTP\/1\.1 200/, 'the request in flight finished');
  const answer = parseResponse(text.slice(text.indexOf('HTTP/1.1 503')));
  assert.equal(answer.status, 503);
  assert.equal(answer.headers['retry-after'], '1');
  assert.match(answer.headers['x-request-id'] ?? '', /^\w+$/);
  assert.equal(answer.headers.connection, 'close');
  assert.equal((JSON.parse(answer.body) as { error: { code: string } }).error.code, 'shutting_down');
  assert.deepEqual(await closing, { endedAtDeadline: 0, forced: false });
});

test('shutdown: requests pipelined on one connection before the drain are all answered', async () => {
  const server = await startTestServer({}, { startDelayMs: 400 });
  const socket = await openSocket(server.port);
  let text = '';
  const answered = new Promise<void>((resolve, reject) => {
    socket.on('data', (data) => {
      text += data;
      if ((text.match(/HTTP\/1\.1 200/g) ?? []).length === 2 && text.endsWith('}')) resolve();
    });
    socket.on('close', () => reject(new Error(`closed with ${(text.match(/HTTP\/1\.1 200/g) ?? []).length} of 2 answers`)));
  });
  socket.write(postRequest(chatBody()) + postRequest(chatBody()));
  await sleep(100);
  const closing = closeGracefully(server.app, { drainTimeoutMs: 5000 });
  await answered;
  assert.deepEqual(await closing, { endedAtDeadline: 0, forced: false });
});

test('shutdown: at the drain deadline a reading stream ends with the shutdown error event', async () => {
  const server = await startTestServer({}, { pieceBytes: 16, pieceDelayMs: 5 });
  const { text } = await readStream(server);
  await sleep(100);
  const began = performance.now();
  const result = await closeGracefully(server.app, { drainTimeoutMs: 300 });
  const ms = performance.now() - began;
  assert.equal(result.endedAtDeadline, 1);
  assert.equal(result.forced, false);
  assert.ok(ms < 1500, `closed after ${Math.round(ms)} ms`);
  assert.match(lastEvent(await text), /^data: \{"code":50505,.*"type":"service_unavailable".*"code":"shutting_down"/);
  await until(() => server.stats.released === 1, 2000, 'the run to be released');
});

test('shutdown: a client that stopped reading does not hold the process past the deadline and grace', async () => {
  const server = await startTestServer({ stallTimeoutMs: 60_000 }, { pieceBytes: 16 * 1024 });
  const socket = await stalledStream(server);
  const began = performance.now();
  const result = await closeGracefully(server.app, { drainTimeoutMs: 300, graceMs: 300 });
  const ms = performance.now() - began;
  assert.equal(result.endedAtDeadline, 1);
  assert.ok(ms < 2000, `closed after ${Math.round(ms)} ms`);
  await until(() => server.stats.released === 1, 2000, 'the run to be released');
  socket.destroy();
});
