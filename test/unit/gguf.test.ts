/** The GGUF writer and reader against each other, and the tiny models against llama.cpp's tokenizer. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { TensorType, ValueType } from '../../src/gguf/format.js';
import { readGgufHeader } from '../../src/gguf/reader.js';
import { CHATML_TEMPLATE, ensureTinyModel, writeTinyModel } from '../../src/gguf/tiny-model.js';

test('a written tiny model reads back with its metadata and tensor shapes', async () => {
  const path = join(await mkdtemp(join(tmpdir(), 'kiln-gguf-')), 'tiny.gguf');
  await writeTinyModel(path, { architecture: 'qwen2', layers: 3, embeddingLength: 32, heads: 4, kvHeads: 2, feedForwardLength: 64 });
  const header = await readGgufHeader(path);
  assert.equal(header.version, 3);
  assert.deepEqual(header.metadata.get('general.architecture'), { type: ValueType.STRING, value: 'qwen2' });
  assert.deepEqual(header.metadata.get('qwen2.block_count'), { type: ValueType.UINT32, value: 3 });
  assert.deepEqual(header.metadata.get('tokenizer.chat_template'), { type: ValueType.STRING, value: CHATML_TEMPLATE });
  const tokens = header.metadata.get('tokenizer.ggml.tokens');
  assert.equal(tokens?.type === ValueType.ARRAY && tokens.value.length, 256 + 7);
  const byName = new Map(header.tensors.map((tensor) => [tensor.name, tensor]));
  assert.deepEqual(byName.get('token_embd.weight')?.dims, [32, 263]);
  assert.deepEqual(byName.get('blk.2.attn_k.weight')?.dims, [32, 16]);
  assert.deepEqual(byName.get('blk.0.attn_q.bias')?.dims, [32]);
  assert.equal(byName.get('blk.0.ffn_down.weight')?.type, TensorType.F32);
  assert.equal(header.tensors.length, 3 + 3 * 12);
  for (const tensor of header.tensors) assert.equal(tensor.offset % 32n, 0n, tensor.name);
});

test('the same options give the same cached file; other options another', async () => {
  const cacheDir = await mkdtemp(join(tmpdir(), 'kiln-cache-'));
  const a = await ensureTinyModel({ cacheDir });
  assert.equal(await ensureTinyModel({ cacheDir }), a);
  assert.notEqual(await ensureTinyModel({ cacheDir, seed: 2 }), a);
});

test('llama.cpp loads the tiny model; any text round-trips; ChatML markers are single special tokens', async () => {
  const llama = await getLlama({ gpu: false, build: 'never', maxThreads: 1, logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: await ensureTinyModel() });
  try {
    for (const text of ['Hello, world', ' leading and trailing ', 'emoji 🙂, 中文, ünïcödé\nnew\tline', '<|im_start|> as plain text']) {
      assert.equal(model.detokenize(model.tokenize(text)), text);
    }
    assert.equal(model.tokenize('<|im_start|>', true).length, 1);
    assert.equal(model.tokenize('<|im_start|>', false).length, '<|im_start|>'.length);
    assert.ok(model.isEogToken(model.tokenize('<|im_end|>', true)[0]!));
  } finally {
    await model.dispose();
  }
});

test('the third-party tiny GGUF reads with the same reader (when ../shared is present)', { skip: !existsSync(resolve(import.meta.dirname, '../../../shared/models/llama-2-tiny-random.gguf')) }, async () => {
  const header = await readGgufHeader(resolve(import.meta.dirname, '../../../shared/models/llama-2-tiny-random.gguf'));
  assert.deepEqual(header.metadata.get('general.architecture'), { type: ValueType.STRING, value: 'llama' });
  assert.ok(header.tensors.some((tensor) => tensor.name === 'token_embd.weight'));
});
