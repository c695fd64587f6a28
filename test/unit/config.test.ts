/**
 * parseConfig: a valid document, relative model files resolved against the config's folder, and errors that name
 * the bad field (ConfigError, prefixed with the source).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { ConfigError, loadConfigFile, parseConfig } from '../../src/config/config.js';

const BASE_DIR = resolve('/srv/kiln/conf');
const SOURCE = 'kiln.yaml';

function parse(yaml: string) {
  return parseConfig(yaml, BASE_DIR, SOURCE);
}

/** Asserts parseConfig rejects `yaml` with a ConfigError that names the source and matches every pattern. */
function rejects(yaml: string, ...patterns: RegExp[]): ConfigError {
  let caught: unknown;
  try {
    parse(yaml);
  } catch (error) {
    caught = error;
  }
  assert.ok(caught !== undefined, `expected a ConfigError for:\n${yaml}`);
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
  assert.equal(caught.name, 'ConfigError');
  assert.ok(caught.message.startsWith(`${SOURCE}: `), caught.message);
  for (const pattern of patterns) assert.match(caught.message, pattern);
  return caught;
}

const ONE_MODEL = 'models:\n  - id: Qwen/Qwen2.5-7B-Instruct\n    file: models/qwen.gguf\n';

describe('parseConfig: valid documents', () => {
  test('a full config parses with every field and resolved model paths', () => {
    const config = parse(`
server:
  host: 127.0.0.1
  port: 8080
  api_keys: [sk-one, sk-two]
  max_choices: 8
  body_limit_bytes: 1048576
models:
  - id: Qwen/Qwen2.5-7B-Instruct
    file: models/qwen.gguf
    parallel: 4
    context_size: 4096
    threads: 8
    batch_size: 512
    queue_depth: 16
    queue_wait_ms: 30000
    owned_by: Qwen
  - id: Pro/Qwen/Qwen2.5-7B-Instruct
    file: /abs/qwen.gguf
`);
    assert.deepEqual(config, {
      server: { host: '127.0.0.1', port: 8080, api_keys: ['sk-one', 'sk-two'], max_choices: 8, body_limit_bytes: 1048576 },
      models: [
        {
          id: 'Qwen/Qwen2.5-7B-Instruct',
          file: resolve(BASE_DIR, 'models/qwen.gguf'),
          parallel: 4,
          context_size: 4096,
          threads: 8,
          batch_size: 512,
          queue_depth: 16,
          queue_wait_ms: 30000,
          owned_by: 'Qwen',
        },
        { id: 'Pro/Qwen/Qwen2.5-7B-Instruct', file: resolve('/abs/qwen.gguf') },
      ],
    });
  });

  test('the minimal config: one model, no server section', () => {
    assert.deepEqual(parse(ONE_MODEL), { models: [{ id: 'Qwen/Qwen2.5-7B-Instruct', file: join(BASE_DIR, 'models', 'qwen.gguf') }] });
  });

  test('relative files resolve against baseDir, including ./ and ../', () => {
    const config = parse('models:\n  - {id: a, file: ./a.gguf}\n  - {id: b, file: ../shared/b.gguf}\n  - {id: c, file: c.gguf}\n');
    assert.deepEqual(config.models.map((model) => model.file), [
      join(BASE_DIR, 'a.gguf'),
      resolve(BASE_DIR, '..', 'shared', 'b.gguf'),
      join(BASE_DIR, 'c.gguf'),
    ]);
  });

  test('an absolute file is kept as is', () => {
    assert.equal(parse('models: [{id: a, file: /models/a.gguf}]').models[0]!.file, resolve('/models/a.gguf'));
  });

  test('ids with slashes, Pro/ and vendor prefixes are accepted verbatim', () => {
    const ids = ['Pro/deepseek-ai/DeepSeek-R1', 'Vendor-A/Qwen/Qwen2.5-72B-Instruct', 'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B', 'internlm/internlm2_5-7b-chat'];
    const config = parse(`models:\n${ids.map((id, index) => `  - id: ${id}\n    file: m${index}.gguf\n`).join('')}`);
    assert.deepEqual(config.models.map((model) => model.id), ids);
  });

  test('boundary values are accepted', () => {
    const config = parse(`
server: {port: 0, max_choices: 64, body_limit_bytes: 1024}
models:
  - {id: a, file: a.gguf, parallel: 1, context_size: 64, queue_depth: 0, queue_wait_ms: 1, threads: 1, batch_size: 1}
  - {id: b, file: b.gguf, parallel: 256}
`);
    assert.equal(config.server?.port, 0);
    assert.equal(config.server?.max_choices, 64);
    assert.equal(config.models[0]!.parallel, 1);
    assert.equal(config.models[0]!.queue_depth, 0);
    assert.equal(config.models[1]!.parallel, 256);
  });

  test('the default source name is "config"', () => {
    assert.throws(() => parseConfig('models: []', BASE_DIR), (error: unknown) => error instanceof ConfigError && error.message.startsWith('config: '));
  });
});

describe('parseConfig: errors name the field', () => {
  test('a bad value in the second model names models[1].parallel', () => {
    rejects('models:\n  - {id: a, file: a.gguf}\n  - {id: b, file: b.gguf, parallel: 0}\n', /'models\[1\]\.parallel'/);
    rejects('models:\n  - {id: a, file: a.gguf}\n  - {id: b, file: b.gguf, parallel: 257}\n', /'models\[1\]\.parallel'/);
    rejects('models:\n  - {id: a, file: a.gguf, parallel: 2.5}\n', /'models\[0\]\.parallel'/);
    rejects('models:\n  - {id: a, file: a.gguf, parallel: "4"}\n', /'models\[0\]\.parallel'/);
  });

  test('other out-of-range fields are named', () => {
    rejects(`server: {port: 65536}\n${ONE_MODEL}`, /'server\.port'/);
    rejects(`server: {max_choices: 0}\n${ONE_MODEL}`, /'server\.max_choices'/);
    rejects(`server: {max_choices: 65}\n${ONE_MODEL}`, /'server\.max_choices'/);
    rejects(`server: {body_limit_bytes: 1023}\n${ONE_MODEL}`, /'server\.body_limit_bytes'/);
    rejects(`server: {api_keys: [ok, ""]}\n${ONE_MODEL}`, /'server\.api_keys\[1\]'/);
    rejects('models: [{id: a, file: a.gguf, context_size: 63}]', /'models\[0\]\.context_size'/);
    rejects('models: [{id: a, file: a.gguf, queue_depth: -1}]', /'models\[0\]\.queue_depth'/);
    rejects('models: [{id: a, file: a.gguf, queue_wait_ms: 0}]', /'models\[0\]\.queue_wait_ms'/);
  });

  test('missing or empty required fields are named', () => {
    rejects('models: [{file: a.gguf}]', /'models\[0\]\.id'/);
    rejects('models: [{id: a}]', /'models\[0\]\.file'/);
    rejects('models: [{id: "", file: a.gguf}]', /'models\[0\]\.id'/);
    rejects('models: [{id: a, file: ""}]', /'models\[0\]\.file'/);
  });

  test('models must be a non-empty list', () => {
    rejects('models: []', /'models'/, /at least one model/);
    rejects('server: {port: 1}', /'models'/);
    rejects('models: {id: a, file: a.gguf}', /'models'/);
  });

  test('an empty document is rejected for its missing models', () => {
    rejects('', /'models'/);
    rejects('# only a comment\n', /'models'/);
  });

  test('a document that is not a mapping is rejected at the root', () => {
    rejects('just a string', /\(root\)/);
    rejects('- a\n- b\n', /\(root\)/);
  });

  test('unknown keys are rejected and named, at every level', () => {
    rejects(`colour: blue\n${ONE_MODEL}`, /\(root\)/, /colour/);
    rejects(`server: {hots: localhost}\n${ONE_MODEL}`, /'server'/, /hots/);
    rejects('models:\n  - {id: a, file: a.gguf}\n  - {id: b, file: b.gguf, paralel: 2}\n', /'models\[1\]'/, /paralel/);
  });

  test('duplicate ids are rejected naming the second occurrence', () => {
    rejects('models:\n  - {id: Qwen/QwQ-32B, file: a.gguf}\n  - {id: other, file: b.gguf}\n  - {id: Qwen/QwQ-32B, file: c.gguf}\n',
      /'models\[2\]\.id'/, /Qwen\/QwQ-32B/, /twice/);
  });

  test('ids differing only by prefix are distinct, not duplicates', () => {
    const config = parse('models:\n  - {id: Qwen/Qwen2.5-7B-Instruct, file: a.gguf}\n  - {id: Pro/Qwen/Qwen2.5-7B-Instruct, file: a.gguf}\n');
    assert.equal(config.models.length, 2);
  });

  test('invalid YAML is a ConfigError saying so', () => {
    rejects('models: [\n', /not valid YAML/);
    rejects('models:\n  - id: a\n   file: b\n', /not valid YAML/);
    rejects('a: 1\na: 2\n', /not valid YAML/);
    rejects('a: 1\n---\nb: 2\n', /not valid YAML/);
  });
});

describe('loadConfigFile', () => {
  test('reads a file and resolves model paths against its folder', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-config-'));
    try {
      const path = join(dir, 'kiln.yaml');
      await writeFile(path, 'models:\n  - {id: a, file: weights/a.gguf}\n');
      const config = await loadConfigFile(path);
      assert.equal(config.models[0]!.file, join(dir, 'weights', 'a.gguf'));
      await writeFile(path, 'models: []\n');
      await assert.rejects(loadConfigFile(path), (error: unknown) => error instanceof ConfigError && error.message.startsWith(`${path}: `));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('a missing file is a ConfigError naming the path', async () => {
    const path = join(tmpdir(), 'kiln-does-not-exist', 'nope.yaml');
    await assert.rejects(loadConfigFile(path), (error: unknown) => error instanceof ConfigError && error.message.includes(path));
  });
});

describe('api keys and the example config', () => {
  test('keys are plain strings or {key, tier}; a bad tier is named', () => {
    const config = parse(`server:\n  api_keys: [sk-one, {key: sk-free, tier: free}]\n  request_timeout_ms: 1000\n${ONE_MODEL}`);
    assert.deepEqual(config.server?.api_keys, ['sk-one', { key: 'sk-free', tier: 'free' }]);
    assert.equal(config.server?.request_timeout_ms, 1000);
    rejects(`server:\n  api_keys: [{key: sk-x, tier: gold}]\n${ONE_MODEL}`, /server\.api_keys\[0\]/);
  });

  test("examples/kiln.yaml parses and lists the seed's 32 model ids", async () => {
    const config = await loadConfigFile(resolve(import.meta.dirname, '../../examples/kiln.yaml'));
    const ids = config.models.map((model) => model.id);
    assert.equal(new Set(ids).size, 32);
    for (const id of ['Qwen/QwQ-32B', 'Pro/deepseek-ai/DeepSeek-R1', 'Vendor-A/Qwen/Qwen2.5-72B-Instruct', 'Pro/THUDM/glm-4-9b-chat', 'TeleAI/TeleChat2']) {
      assert.ok(ids.includes(id), id);
    }
  });
});

describe('upstream deployments', () => {
  const upstream = (fields: string) => `models:\n  - id: big\n    upstreams:\n      - {url: "http://gpu-a:8000/v1", model: served${fields}}\n`;

  test('a model may be served by upstreams alone, with the policy block server-wide', () => {
    const config = parse(`server:\n  upstream: {first_token_timeout_ms: 500, max_attempts: 2}\n${upstream(', api_key_env: VLLM_KEY, weight: 2, max_concurrency: 8, name: a')}`);
    assert.equal(config.models[0]!.file, undefined);
    assert.deepEqual(config.models[0]!.upstreams, [{ url: 'http://gpu-a:8000/v1', model: 'served', api_key_env: 'VLLM_KEY', weight: 2, max_concurrency: 8, name: 'a' }]);
    assert.deepEqual(config.server?.upstream, { first_token_timeout_ms: 500, max_attempts: 2 });
  });

  test('a model needs a file or upstreams', () => {
    rejects('models:\n  - id: nothing\n', /models\[0\]\.file/, /upstreams/);
  });

  test('keys never sit in the file: a plain api_key and credentials in the URL are refused', () => {
    rejects(upstream(', api_key: sk-secret'), /models\[0\]\.upstreams\[0\]/, /api_key/);
    rejects('models:\n  - id: big\n    upstreams:\n      - {url: "http://user:sk-secret@gpu-a:8000/v1", model: served}\n', /models\[0\]\.upstreams\[0\]\.url/, /api_key_env/);
    rejects(upstream(', api_key_env: "not a name"'), /api_key_env/);
  });

  test('only http(s) URLs', () => {
    rejects('models:\n  - id: big\n    upstreams:\n      - {url: "ftp://gpu-a/v1", model: served}\n', /upstreams\[0\]\.url/);
  });
});

describe('parseConfig: tenancy settings', () => {
  test('stores, keys with limits, tier limits and per-model limits parse', () => {
    const config = parse(`
data_dir: /var/lib/kiln
database_url: postgres://kiln@db:5432/kiln
redis_url: redis://cache:6379/2
server:
  admin_key: sk-admin
  api_keys:
    - sk-plain
    - {key: sk-ci, name: ci, tier: free, rpm: 30, tpm: 60000, models: ["Qwen/*"]}
  tier_limits: {free: {rpm: 60}, pro: {rpm: 1000, tpm: 2000000}}
  rate_limit_store_failure: closed
  usage_flush_ms: 500
  metrics: admin
models:
  - id: Qwen/Qwen2.5-7B-Instruct
    file: models/qwen.gguf
    rate_limits: {rpm: 5}
`);
    assert.equal(config.database_url, 'postgres://kiln@db:5432/kiln');
    assert.deepEqual(config.server?.api_keys?.[1], { key: 'sk-ci', name: 'ci', tier: 'free', rpm: 30, tpm: 60000, models: ['Qwen/*'] });
    assert.deepEqual(config.server?.tier_limits?.free, { rpm: 60 });
    assert.deepEqual(config.models[0]!.rate_limits, { rpm: 5 });
  });

  test('wrong store URLs, limits and access modes name the field', () => {
    rejects(`database_url: mysql://db/kiln\n${ONE_MODEL}`, /database_url/, /postgres:\/\//);
    rejects(`redis_url: http://cache:6379\n${ONE_MODEL}`, /redis_url/);
    rejects(`server:\n  tier_limits: {free: {rpm: 0}}\n${ONE_MODEL}`, /tier_limits\.free\.rpm/);
    rejects(`server:\n  api_keys: [{key: k, rps: 3}]\n${ONE_MODEL}`, /api_keys\[0\]/, /rps/);
    rejects(`server:\n  metrics: public\n${ONE_MODEL}`, /server\.metrics/);
  });
});
