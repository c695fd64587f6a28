/**
 * Shutdown of the real process (issue 9, point 5): SIGTERM with a stream whose client stopped reading exits at the
 * drain deadline; a second signal exits at once.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

async function pausedStream(kiln: KilnProcess): Promise<Socket> {
  const { hostname, port } = new URL(kiln.url);
  const socket = connect(Number(port), hostname);
  socket.on('error', () => {});
  await new Promise((resolve) => socket.once('connect', resolve));
  const body = JSON.stringify({ model: 'endless', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3000, stream: true });
  const firstBytes = new Promise((resolve) => socket.once('data', resolve));
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  await firstBytes;
  socket.pause();
  return socket;
}

function exited(kiln: KilnProcess): Promise<number | null> {
  return new Promise((resolve) => (kiln.child.exitCode !== null ? resolve(kiln.child.exitCode) : kiln.child.once('exit', resolve)));
}

test('SIGTERM with a client that stopped reading: the process exits at the drain deadline', async (t) => {
  const model = await ensureTinyModel({ neverEnd: true });
  const config = await writeConfig({ server: { drain_timeout_ms: 1000 }, models: [{ id: 'endless', file: model, parallel: 2 }] });
  const kiln = await startKiln(['--config', config]);
  try {
    const socket = await pausedStream(kiln);
    const began = performance.now();
    kiln.child.kill('SIGTERM');
    const code = await exited(kiln);
    const ms = performance.now() - began;
    t.diagnostic(`exited ${Math.round(ms)} ms after SIGTERM (drain deadline 1000 ms)`);
    assert.equal(code, 0, kiln.output());
    assert.ok(ms >= 900 && ms < 6000, `exited ${Math.round(ms)} ms after SIGTERM`);
    assert.match(kiln.output(), /"endedAtDeadline":1/);
    socket.destroy();
  } finally {
    await kiln.stop();
  }
});

test('a second signal exits at once', async (t) => {
  const model = await ensureTinyModel({ neverEnd: true });
  const config = await writeConfig({ server: { drain_timeout_ms: 30_000 }, models: [{ id: 'endless', file: model, parallel: 2 }] });
  const kiln = await startKiln(['--config', config]);
  try {
    const socket = await pausedStream(kiln);
    kiln.child.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(kiln.child.exitCode, null, 'still draining');
    const began = performance.now();
    kiln.child.kill('SIGINT');
    const code = await exited(kiln);
    const ms = performance.now() - began;
    t.diagnostic(`exited ${Math.round(ms)} ms after the second signal`);
    assert.equal(code, 130);
    assert.ok(ms < 3000);
    socket.destroy();
  } finally {
    await kiln.stop();
  }
});
