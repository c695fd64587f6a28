/**
 * The llama.cpp runtime's backend choice: a GPU backend that cannot be used falls back to the CPU build with a warning
 * and one line saying which backend was chosen and why; gpu_layers on the CPU offload nothing and do not change the
 * memory estimate. (The runtime is one per process: node --test runs this file in its own.)
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { LlamaEngine } from '../../src/engines/llama/llama-engine.js';
import { configureRuntime, getRuntime, runtimeBackend } from '../../src/engines/llama/runtime.js';
import { collectingLog } from '../helpers/fake-engines.js';

// A backend this platform never has: Metal off macOS, CUDA on Apple silicon.
const UNAVAILABLE = process.platform === 'darwin' ? 'cuda' : 'metal';

test(`gpu: ${UNAVAILABLE} here falls back to the CPU, logged once with the reason`, async () => {
  const log = collectingLog();
  configureRuntime({ gpu: UNAVAILABLE, log });
  const llama = await getRuntime();
  assert.equal(llama.gpu, false);
  assert.equal(await getRuntime(), llama, 'one runtime per process');
  const warned = log.entries.filter((entry) => entry.level === 'warn');
  assert.equal(warned.length, 1);
  assert.match(String(warned[0]!.fields.reason), /not available on/);
  const chosen = log.entries.filter((entry) => entry.message === 'llama.cpp backend');
  assert.equal(chosen.length, 1);
  assert.equal(chosen[0]!.fields.backend, 'cpu');
  assert.equal(chosen[0]!.fields.gpuSetting, UNAVAILABLE);
  assert.deepEqual(runtimeBackend()?.backend, 'cpu');
  assert.ok(Array.isArray(runtimeBackend()?.detected));

  // The setting applies to the runtime's creation only: a later, different one is refused with a warning.
  configureRuntime({ gpu: 'auto', log });
  assert.equal(log.entries.filter((entry) => entry.level === 'warn').length, 2);
  assert.equal(log.entries.filter((entry) => entry.message === 'llama.cpp backend').length, 1);
});

test('gpu_layers on the CPU: nothing offloaded, the same host memory estimate as none', async () => {
  const file = await ensureTinyModel();
  const base = { file, parallel: 2, contextSize: 256, threads: 1 };
  const none = await LlamaEngine.estimateMemory({ ...base, gpuLayers: 0 });
  assert.deepEqual(await LlamaEngine.estimateMemory({ ...base, gpuLayers: 'max' }), none);
  assert.deepEqual(await LlamaEngine.estimateMemory(base), none);
  assert.equal(none.vram, 0, 'nothing on a GPU without one');
  const engine = await LlamaEngine.load({ ...base, gpuLayers: 'max' });
  try {
    assert.deepEqual(engine.status(), { state: 'ready', gpuLayers: 0 });
  } finally {
    await engine.close();
  }
});
