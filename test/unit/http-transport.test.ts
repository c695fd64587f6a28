/**
 * Transport-level answers over raw sockets (issue 9, points 6, 7 and 8): every status the HTTP layer or Node sends
 * carries the contract's error body; receipt timeouts; no key in any log line; a client gone early is no error.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { chatBody, exchange, openSocket, parseResponse, postRequest, startTestServer, type TestServer } from '../helpers/fake-http.js';

function assertContract(response: { status: number; headers: Record<string, string>; body: string }, status: number, code?: string): void {
  assert.equal(response.status, status, response.body);
  assert.match(response.headers['content-type'] ?? '', /^application\/json/);
  const body = JSON.parse(response.body) as { code: unknown; message: unknown; data: unknown; error: Record<string, unknown> };
  assert.equal(typeof body.code, 'number');
  assert.equal(typeof body.message, 'string');
  assert.equal(body.data, null);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.message, body.message);
  if (code !== undefined) assert.equal(body.error.code, code);
}

const get = (path: string, headers = '') => `GET ${path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n${headers}\r\n`;

describe('transport errors carry the contract body', () => {
  let server: TestServer;
  before(async () => {
    server = await startTestServer({ bodyLimitBytes: 2048, headersTimeoutMs: 400, bodyTimeoutMs: 800 });
  });
  after(() => server.app.close());

  test('404 names the path only', async () => {
    const response = parseResponse((await exchange(server.port, get('/nowhere?api_key=sk-secret-404'))).text);
    assertContract(response, 404, 'not_found');
    assert.doesNotMatch(response.body, /secret/);
    assert.match(response.body, /GET \/nowhere\./);
  });

  test('405 with Allow on a known path', async () => {
    const response = parseResponse((await exchange(server.port, get('/v1/chat/completions'))).text);
    assertContract(response, 405, 'method_not_allowed');
    assert.equal(response.headers.allow, 'POST');
    const models = parseResponse((await exchange(server.port, postRequest('{}', { connection: 'close' }, '/v1/models'))).text);
    assertContract(models, 405);
    assert.equal(models.headers.allow, 'GET, HEAD');
  });

  test('413 for a body over the limit', async () => {
    const response = parseResponse((await exchange(server.port, postRequest(chatBody({ pad: 'x'.repeat(5000) }), { connection: 'close' }))).text);
    assertContract(response, 413, 'request_too_large');
  });

  test('413 reaches a client that is still uploading: the rest is read and discarded, not reset', async () => {
    // Half-open: like an HTTP client, it goes on sending after the server's FIN.
    const socket = connect({ port: server.port, host: '127.0.0.1', allowHalfOpen: true });
    await once(socket, 'connect');
    const closed = once(socket, 'close');
    const total = 4 * 1024 * 1024;
    const head = `POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: ${total}\r\n\r\n`;
    let received = '';
    let failure: Error | undefined;
    socket.on('data', (data) => (received += data));
    socket.on('error', (error) => (failure = error));
    socket.write(head);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.match(received, /^HTTP\/1\.1 413 /, 'the answer comes before the body');
    // The client goes on uploading after the answer, as HTTP clients do; without the lingering read the kernel
    // resets the connection under it.
    const piece = Buffer.alloc(64 * 1024, 'a');
    for (let sent = 0; sent < total && failure === undefined && !socket.destroyed; sent += piece.length) {
      if (!socket.write(piece)) await Promise.race([new Promise((resolve) => socket.once('drain', resolve)), closed]);
    }
    socket.end();
    await closed;
    assert.equal(failure, undefined, `the upload was reset: ${failure?.message}`);
    assertContract(parseResponse(received), 413, 'request_too_large');
  });

  test('417 for an Expect other than 100-continue', async () => {
    const response = parseResponse((await exchange(server.port, postRequest(chatBody(), { expect: '200-ok' }))).text);
    assertContract(response, 417, 'expectation_failed');
  });

  test('431 for a 100 KB query string and for a 1 MB header', async () => {
    const longQuery = parseResponse((await exchange(server.port, get(`/v1/models?q=${'a'.repeat(100_000)}`))).text);
    assertContract(longQuery, 431, 'headers_too_large');
    const bigHeader = parseResponse((await exchange(server.port, get('/v1/models', `x-big: ${'b'.repeat(1024 * 1024)}\r\n`))).text);
    assertContract(bigHeader, 431, 'headers_too_large');
  });

  test('400 for malformed framing', async () => {
    for (const raw of ['NONSENSE\r\n\r\n', 'POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n', 'GET / HTTP/1.1\r\nbad header line\r\n\r\n', 'GET /health HTTP/1.1\r\n\r\n']) {
      const response = parseResponse((await exchange(server.port, raw)).text);
      assertContract(response, 400, 'bad_request');
    }
  });

  test('408 when the headers do not arrive in time', async () => {
    const { text, ms } = await exchange(server.port, 'GET /health HTTP/1.1\r\nhost: loc');
    assertContract(parseResponse(text), 408, 'request_timeout');
    assert.ok(ms < 3000, `answered after ${ms} ms`);
  });

  test('408 for a connection that sends nothing', async () => {
    const { text, ms } = await exchange(server.port, '');
    assertContract(parseResponse(text), 408, 'request_timeout');
    assert.ok(ms < 3000, `answered after ${ms} ms`);
  });

  test('408 for a body trickled one byte at a time', async () => {
    const body = chatBody();
    const socket = await openSocket(server.port);
    let text = '';
    socket.on('data', (data) => (text += data));
    const began = performance.now();
    const closed = new Promise((resolve) => socket.on('close', resolve));
    socket.write(postRequest(body).slice(0, -body.length));
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent < body.length && !socket.destroyed) socket.write(body[sent++]!);
    }, 100);
    await closed;
    clearInterval(trickle);
    assert.ok(sent < body.length, 'the body was not served');
    assertContract(parseResponse(text), 408, 'request_timeout');
    assert.ok(performance.now() - began < 4000);
  });

  test('a request within the limits is still served', async () => {
    const response = parseResponse((await exchange(server.port, postRequest(chatBody(), { connection: 'close' }))).text);
    assert.equal(response.status, 200, response.body);
  });
});

describe('logs', () => {
  test('a key in the query string or the Authorization header appears in no log line', async () => {
    const server = await startTestServer({ apiKeys: [{ key: 'sk-secret-key-1', tier: 'pro' }] });
    try {
      await exchange(server.port, get('/v1/models?api_key=sk-secret-key-1', 'authorization: Bearer sk-secret-key-1\r\n'));
      await exchange(server.port, get('/v1/models?api_key=sk-secret-key-2&x=1'));
      await exchange(server.port, get('/nowhere?api_key=sk-secret-key-3'));
      await exchange(server.port, postRequest('{bad json', { connection: 'close', authorization: 'Bearer sk-secret-key-1' }, '/v1/chat/completions?key=sk-secret-key-4'));
      const lines = server.logs();
      assert.ok(lines.some((line) => (line.req as { url?: string } | undefined)?.url === '/v1/models'), 'the path is logged');
      for (const line of lines) assert.doesNotMatch(JSON.stringify(line), /sk-secret/);
    } finally {
      await server.app.close();
    }
  });

  test('a client that disconnects before its stream starts is logged at info as a 499, not an error', async () => {
    const server = await startTestServer({}, { startDelayMs: 400 });
    try {
      const socket = await openSocket(server.port);
      socket.write(postRequest(chatBody({ stream: true })));
      await new Promise((resolve) => setTimeout(resolve, 100));
      socket.destroy();
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(server.stats.aborted, 1);
      const lines = server.logs();
      assert.deepEqual(lines.filter((line) => (line.level as number) >= 50), []);
      const gone = lines.filter((line) => line.status === 499);
      assert.equal(gone.length, 1);
      assert.equal(gone[0]!.level, 30);
      assert.equal(gone[0]!.err, undefined);
    } finally {
      await server.app.close();
    }
  });
});
