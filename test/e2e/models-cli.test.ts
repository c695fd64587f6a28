/** `kiln models`: the config's ids and the disk without a server; the live columns from a running one. */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { runKiln, startKiln, writeConfig } from '../helpers/kiln-process.js';

/** A port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test('kiln models without a server: ids, sources, sizes, presence, and a note saying no server answered', async () => {
  const model = await ensureTinyModel();
  const port = await closedPort();
  const config = await writeConfig({
    server: { port },
    models: [
      { id: 'tiny', file: model },
      { id: 'later', source: 'hf:owner/repo/later-Q4_K_M.gguf' },
      { id: 'remote', upstreams: [{ url: 'http://10.1.2.3:8000/v1', model: 'r', name: 'gpu-box' }] },
    ],
  });
  const { code, output } = await runKiln(['models', '--config', config], { KILN_MODELS_DIR: '/nonexistent-kiln-cache' });
  assert.equal(code, 0, output);
  assert.match(output, /^ID\s+SOURCE\s+SIZE\s+PRESENT\n/);
  assert.match(output, /\ntiny\s+\S+\.gguf\s+\d+\.\d kB\s+yes\n/);
  assert.match(output, /\nlater\s+hf:owner\/repo\/later-Q4_K_M\.gguf\s+-\s+no\n/);
  assert.match(output, /\nremote\s+upstreams: gpu-box\s+-\s+-\n/);
  assert.doesNotMatch(output, /10\.1\.2\.3/);
  assert.match(output, new RegExp(`no Kiln server answering at http://127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\): showing what is on disk only`));
});

test('kiln models with a server: state, memory and idle time of the loaded model; the others unloaded', async () => {
  const model = await ensureTinyModel();
  const config = await writeConfig({
    server: { api_keys: ['k1'] },
    models: [
      { id: 'tiny', file: model, parallel: 1, context_size: 256 },
      { id: 'idle', file: model.replace(/\.gguf$/, '.copy.gguf') },
    ],
  });
  // The server refuses to start with a missing file, so it serves another config: 'idle' is not served, 'spare' is
  // served but not in the config the listing reads.
  const spare = await ensureTinyModel({ flavor: 'qwen2.5' });
  const serving = await writeConfig({ server: { api_keys: ['k1'] }, models: [{ id: 'tiny', file: model, parallel: 1, context_size: 256 }, { id: 'spare', file: spare }] });
  const kiln = await startKiln(['--config', serving]);
  try {
    const answer = await fetch(`${kiln.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: 'Bearer k1', 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }),
    });
    assert.equal(answer.status, 200);
    const { code, output } = await runKiln(['models', '--config', config, '--url', kiln.url]);
    assert.equal(code, 0, output);
    assert.match(output, /^ID\s+SOURCE\s+SIZE\s+PRESENT\s+STATE\s+MEMORY\s+IDLE\n/);
    assert.match(output, /\ntiny\s+\S+\s+\d+\.\d kB\s+yes\s+ready\s+\d+ MiB\s+\d+s\n/);
    assert.match(output, /\nidle\s+\S+\s+-\s+no\s+not served\s+-\s+-\n/);
    assert.match(output, /\nspare\s+\(served; not in this config\)\s+\d+\.\d kB\s+yes\s+unloaded\s+-\s+-\n/);
    assert.match(output, /server at http:\/\/127\.0\.0\.1:\d+: 2 models served/);
    // Without the key the server says 401, and the listing says what to give.
    const denied = await runKiln(['models', '--url', kiln.url], { KILN_API_KEYS: '' });
    assert.match(denied.output, /answered 401 \(give --api-key\)/);
  } finally {
    await kiln.stop();
  }
});
