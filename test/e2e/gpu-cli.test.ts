/** `server.gpu` and `--gpu` reach the runtime: the first load logs the backend chosen and why. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { runKiln, startKiln, writeConfig } from '../helpers/kiln-process.js';

test('server.gpu: off in the config gives the CPU backend, said once at the first load; a bad --gpu is refused', async () => {
  const model = await ensureTinyModel();
  const config = await writeConfig({ server: { gpu: 'off' }, models: [{ id: 'tiny', file: model, preload: true, gpu_layers: 'max' }] });
  const kiln = await startKiln(['--config', config]);
  try {
    const lines = kiln.output().split('\n').filter((line) => line.includes('"llama.cpp backend"'));
    assert.equal(lines.length, 1, kiln.output());
    const logged = JSON.parse(lines[0]!) as { backend: string; reason: string; gpuSetting: string };
    assert.deepEqual([logged.backend, logged.reason, logged.gpuSetting], ['cpu', 'server.gpu is off', 'off']);
    const listed = (await (await fetch(`${kiln.url}/v1/models`)).json()) as { data: Array<{ kiln: { state: string; gpu_layers: number } }> };
    assert.deepEqual([listed.data[0]!.kiln.state, listed.data[0]!.kiln.gpu_layers], ['ready', 0]);
  } finally {
    await kiln.stop();
  }
  const refused = await runKiln(['serve', '--model', model, '--port', '0', '--gpu', 'fast']);
  assert.equal(refused.code, 2);
  assert.match(refused.output, /--gpu must be one of auto, cuda, vulkan, metal, off, got 'fast'/);
});
