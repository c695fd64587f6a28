/**
 * The catalog: `GET /v1/models` keeps OpenAI's shape and adds a `kiln` object per entry (state, idle time, memory,
 * size on disk, presence), from the registry's served engines; and `kiln models`' table from the config and the disk.
 */
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { ChatEngine, EngineRun } from '../../src/core/engine.js';
import { SILENT_LOG } from '../../src/core/log.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { buildHttpServer } from '../../src/http/server.js';
import { normalizeChatRequest } from '../../src/core/normalize-request.js';
import type { ModelListWire } from '../../src/protocol/response.js';
import { Admission } from '../../src/service/admission.js';
import { assembleKiln } from '../../src/service/assemble.js';
import { MemoryBudget } from '../../src/service/memory-budget.js';
import { ManagedEngine } from '../../src/service/model-lifecycle.js';
import { ModelRegistry } from '../../src/service/model-registry.js';
import { defaultServerUrl, formatIdle, renderTable, staticCatalog } from '../../src/cli/models-command.js';
import { validateConfig } from '../../src/config/config.js';
import { FakeEngine, testRouter } from '../helpers/fake-engines.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const request = normalizeChatRequest({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, { maxChoices: 8 });

function fakeLoaded(): ChatEngine {
  return {
    description: { name: 'fake', supportsImages: false },
    capacity: () => 2,
    status: () => ({ state: 'ready', gpuLayers: 7 }),
    async start(): Promise<EngineRun> {
      return {
        promptTokens: 1,
        cachedTokens: 0,
        reasoning: 'off',
        maxTokens: 2,
        async *choice() {
          yield { type: 'end', reason: 'eog' };
        },
        dispose() {},
      };
    },
    async close() {},
  };
}

test('registry listing: unloaded, loading, ready (memory, idle, gpu layers), upstream; size and presence from the disk', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-catalog-'));
  const file = join(dir, 'm.gguf');
  await writeFile(file, Buffer.alloc(12_345));
  let finishLoad!: () => void;
  const loadGate = new Promise<void>((resolve) => (finishLoad = resolve));
  const managed = new ManagedEngine(
    'local',
    async () => {
      await loadGate;
      return fakeLoaded();
    },
    { description: { name: 'fake', supportsImages: false }, capacity: 2 },
    { keepAliveMs: -1, loadWaitMs: 10_000, retryFailedAfterMs: 1_000 },
    SILENT_LOG,
    { budget: new MemoryBudget({ ram: Infinity, vram: async () => Infinity }, SILENT_LOG), estimate: async () => ({ ram: 3 * 2 ** 20 + 1, vram: 0 }) },
  );
  const upstream = testRouter([{ engine: new FakeEngine('u') }]).router;
  const admission = (engine: ChatEngine) => new Admission(() => engine.capacity(), { depth: 4, waitMs: 1000 });
  const registry = new ModelRegistry();
  registry.add({ id: 'local', served: { engine: managed, admission: admission(managed) }, ownedBy: 'kiln', created: 1, file });
  registry.add({ id: 'gone', served: { engine: new FakeEngine('g'), admission: admission(managed) }, ownedBy: 'kiln', created: 1, file: join(dir, 'missing.gguf') });
  registry.add({ id: 'remote', served: { engine: upstream, admission: admission(upstream) }, ownedBy: 'kiln', created: 1 });

  const byId = async () => new Map((await registry.list()).data.map((entry) => [entry.id, entry]));
  let listed = await byId();
  assert.deepEqual(Object.keys(listed.get('local')!).sort(), ['created', 'id', 'kiln', 'object', 'owned_by']);
  assert.deepEqual(listed.get('local')!.kiln, { state: 'unloaded', idle_ms: null, memory_mb: null, gpu_layers: null, size_bytes: 12_345, present: true });
  // An engine without status() is always ready; its file is missing.
  assert.deepEqual(listed.get('gone')!.kiln, { state: 'ready', idle_ms: null, memory_mb: null, gpu_layers: null, size_bytes: null, present: false });
  assert.deepEqual(listed.get('remote')!.kiln, { state: 'upstream', idle_ms: null, memory_mb: null, gpu_layers: null, size_bytes: null, present: null });

  const started = managed.start(request, new AbortController().signal);
  await sleep(20);
  assert.equal((await byId()).get('local')!.kiln!.state, 'loading');
  finishLoad();
  const run = await started;
  for await (const _ of run.choice(0));
  run.dispose();
  await sleep(30);
  listed = await byId();
  const local = listed.get('local')!.kiln!;
  assert.equal(local.state, 'ready');
  assert.equal(local.memory_mb, 4, 'the reserved estimate, rounded up to MiB');
  assert.equal(local.gpu_layers, 7);
  assert.ok(local.idle_ms !== null && local.idle_ms >= 20 && local.idle_ms < 5_000, `idle_ms ${local.idle_ms}`);

  // A router with a local deployment reports the local model's state.
  const mixed = testRouter([{ engine: managed }, { engine: new FakeEngine('u2') }]).router;
  assert.equal(mixed.status().state, 'ready');
  await managed.close();
  await upstream.close();
  await mixed.close();
});

test('GET /v1/models in-process: OpenAI shape plus kiln; a model loads on its request and shows ready with memory', async () => {
  const file = await ensureTinyModel();
  const kiln = await assembleKiln([
    { id: 'tiny', file, parallel: 1, context_size: 256, threads: 1, gpu_layers: 'auto' },
    { id: 'not-here', file: '/nonexistent/dir/model.gguf' },
    { id: 'remote', upstreams: [{ url: 'http://127.0.0.1:9/v1', model: 'x', name: 'gpu-box' }] },
  ]);
  const app = buildHttpServer({ service: kiln.service, apiKeys: [], logLevel: 'silent' });
  try {
    const list = async () => (await app.inject({ method: 'GET', url: '/v1/models' })).json<ModelListWire>();
    let body = await list();
    assert.equal(body.object, 'list');
    assert.deepEqual(body.data.map((entry) => [entry.id, entry.object, entry.owned_by]), [
      ['tiny', 'model', 'kiln'],
      ['not-here', 'model', 'kiln'],
      ['remote', 'model', 'kiln'],
    ]);
    assert.equal(JSON.stringify(body).includes('127.0.0.1:9'), false, 'no upstream URL in the listing');
    const [tiny, missing, remote] = body.data.map((entry) => entry.kiln!);
    assert.equal(tiny!.state, 'unloaded');
    assert.equal(tiny!.present, true);
    assert.ok(tiny!.size_bytes! > 0);
    assert.deepEqual([missing!.state, missing!.present, missing!.size_bytes], ['unloaded', false, null]);
    assert.equal(remote!.state, 'upstream');

    const completion = await app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      payload: { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 },
    });
    assert.equal(completion.statusCode, 200);
    body = await list();
    const loaded = body.data[0]!.kiln!;
    assert.equal(loaded.state, 'ready');
    assert.ok(loaded.memory_mb! > 0, `memory_mb ${loaded.memory_mb}`);
    assert.equal(loaded.gpu_layers, 0, 'no GPU here: nothing offloaded');
    assert.equal(typeof loaded.idle_ms, 'number');
    // SiliconFlow's filters still apply.
    const filtered = (await app.inject({ method: 'GET', url: '/v1/models?type=image' })).json<ModelListWire>();
    assert.deepEqual(filtered.data, []);
  } finally {
    await app.close();
    await kiln.close();
  }
});

test('kiln models, static part: source (file, source:, upstream names — never URLs), size, presence', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-catalog-'));
  await writeFile(join(dir, 'a.gguf'), Buffer.alloc(2_000));
  const config = validateConfig(
    {
      models_dir: join(dir, 'cache'),
      server: { host: '0.0.0.0', port: 9123 },
      models: [
        { id: 'a', file: 'a.gguf' },
        { id: 'b', source: 'hf:owner/repo/b-Q4_K_M.gguf' },
        { id: 'c', upstreams: [{ url: 'http://secret-host:8000/v1', model: 'c', name: 'big-gpu' }, { url: 'http://other:8000/v1', model: 'c' }] },
      ],
    },
    dir,
    'test',
  );
  const rows = await staticCatalog(config, {});
  assert.deepEqual(
    rows.map((row) => [row.id, row.source, row.sizeBytes, row.present]),
    [
      ['a', join(dir, 'a.gguf'), 2_000, true],
      ['b', 'hf:owner/repo/b-Q4_K_M.gguf', undefined, false],
      ['c', 'upstreams: big-gpu, c#1', undefined, undefined],
    ],
  );
  assert.equal(rows[1]!.file, join(dir, 'cache', 'hf', 'owner', 'repo', 'b-Q4_K_M.gguf'));
  const table = renderTable(rows, false);
  assert.match(table, /^ID\s+SOURCE\s+SIZE\s+PRESENT\n/);
  assert.match(table, /\na\s+\S+a\.gguf\s+2\.0 kB\s+yes\n/);
  assert.doesNotMatch(table, /secret-host|other:8000/);
  assert.equal(defaultServerUrl(config), 'http://127.0.0.1:9123');
  assert.equal(defaultServerUrl(undefined), 'http://127.0.0.1:8000');
  assert.deepEqual([formatIdle(0), formatIdle(42_500), formatIdle(200_000), formatIdle(7_500_000)], ['0s', '42s', '3m 20s', '2h 5m']);

  rows[0]!.live = { state: 'ready', idle_ms: 61_000, memory_mb: 812, gpu_layers: 33, size_bytes: 2_000, present: true };
  const live = renderTable(rows, true);
  assert.match(live, /STATE\s+MEMORY\s+IDLE\s+GPU LAYERS/);
  assert.match(live, /\na\s.*yes\s+ready\s+812 MiB\s+1m 1s\s+33\n/);
  assert.match(live, /\nb\s.*no\s+not served\s+-\s+-\s+-\n/);
});
