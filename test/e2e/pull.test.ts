/** `kiln pull` as a user runs it (bin/kiln.cjs, the built dist/), against a local fake hub named by HF_ENDPOINT. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { startFakeHub } from '../helpers/fake-hub.js';
import { runKiln, writeConfig } from '../helpers/kiln-process.js';

const dirs: string[] = [];
after(() => Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true }))));

async function modelsDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-pull-e2e-'));
  dirs.push(dir);
  return dir;
}

const exists = (path: string) => stat(path).then(() => true, () => false);

test('kiln pull hf:… downloads a GGUF with progress lines, resumes a cut transfer and verifies its sha256', async () => {
  const data = await readFile(await ensureTinyModel());
  const hub = await startFakeHub({ failOnceAfter: Math.floor(data.length / 3), redirect: true });
  try {
    const source = hub.add({ repo: 'kiln-test/Tiny-GGUF', path: 'tiny.gguf', data });
    const dir = await modelsDir();
    const { code, output } = await runKiln(['pull', source], { HF_ENDPOINT: hub.url, KILN_MODELS_DIR: dir });
    assert.equal(code, 0, output);
    const dest = join(dir, 'hf', 'kiln-test', 'Tiny-GGUF', 'tiny.gguf');
    assert.ok(output.includes(dest), output);
    assert.match(output, /sha256 verified/);
    assert.match(output, /\(100%\), [\d.]+ (B|kB|MB|GB)\/s, ETA \d+s/, 'plain progress lines when not a terminal');
    assert.match(output, /transfer interrupted at .*retrying/);
    assert.match(output, /resuming at/);
    assert.ok(hub.requests.some((request) => request.method === 'GET' && /^bytes=[1-9]\d*-$/.test(request.range ?? '') && request.status === 206), 'a Range request');
    assert.ok((await readFile(dest)).equals(data), 'byte-identical');
    assert.equal(await exists(`${dest}.partial`), false);
  } finally {
    await hub.close();
  }
});

test('kiln pull <configured id> --config: the source from the config; a second pull downloads nothing', async () => {
  const data = await readFile(await ensureTinyModel());
  const hub = await startFakeHub();
  try {
    const source = hub.add({ repo: 'kiln-test/Tiny-GGUF', path: 'q8/tiny.gguf', data });
    const dir = await modelsDir();
    const config = await writeConfig({ models_dir: dir, models: [{ id: 'tiny', source }] });
    const first = await runKiln(['pull', 'tiny', '--config', config], { HF_ENDPOINT: hub.url, KILN_MODELS_DIR: '' });
    assert.equal(first.code, 0, first.output);
    const dest = join(dir, 'hf', 'kiln-test', 'Tiny-GGUF', 'q8', 'tiny.gguf');
    assert.ok((await readFile(dest)).equals(data));
    const gets = hub.requests.filter((request) => request.method === 'GET').length;
    const second = await runKiln(['pull', 'tiny', '--config', config], { HF_ENDPOINT: hub.url });
    assert.equal(second.code, 0, second.output);
    assert.match(second.output, /already present/);
    const bodies = hub.requests.filter((request) => request.method === 'GET').slice(gets).filter((request) => request.range !== 'bytes=0-0');
    assert.deepEqual(bodies, []);
  } finally {
    await hub.close();
  }
});

test('kiln pull with a wrong published sha256 fails and leaves no file; an unreachable hub names the path', async () => {
  const hub = await startFakeHub({ wrongSha256: true });
  const dir = await modelsDir();
  const dest = join(dir, 'hf', 'kiln-test', 'Tiny-GGUF', 'tiny.gguf');
  try {
    const source = hub.add({ repo: 'kiln-test/Tiny-GGUF', path: 'tiny.gguf', data: Buffer.alloc(200_000, 7) });
    const bad = await runKiln(['pull', source], { HF_ENDPOINT: hub.url, KILN_MODELS_DIR: dir });
    assert.equal(bad.code, 1, bad.output);
    assert.match(bad.output, /kiln pull: .*sha256 is [0-9a-f]{64}, expected [0-9a-f]{64}; the download was removed/);
    assert.equal(await exists(dest), false);
    assert.equal(await exists(`${dest}.partial`), false);
  } finally {
    await hub.close();
  }
  // The hub is gone now: nothing listens on its port.
  const offline = await runKiln(['pull', 'hf:kiln-test/Tiny-GGUF/tiny.gguf'], { HF_ENDPOINT: hub.url, KILN_MODELS_DIR: dir });
  assert.equal(offline.code, 1, offline.output);
  assert.match(offline.output, /could not reach the Hugging Face hub at http:\/\/127\.0\.0\.1:\d+ \(.*ECONNREFUSED/);
  assert.ok(offline.output.includes(`and save it as\n  ${dest}`), offline.output);
});

test('kiln pull <URL> downloads into the cache under the host name', async () => {
  const hub = await startFakeHub();
  try {
    const data = Buffer.alloc(300_000, 3);
    const url = hub.addPlain('model.gguf', data);
    const dir = await modelsDir();
    const { code, output } = await runKiln(['pull', url], { KILN_MODELS_DIR: dir });
    assert.equal(code, 0, output);
    assert.ok((await readFile(join(dir, 'url', new URL(hub.url).host.replace(':', '_'), 'model.gguf'))).equals(data));
  } finally {
    await hub.close();
  }
});
