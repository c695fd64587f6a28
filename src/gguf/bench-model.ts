/**
 * Realistic random-weight models for benchmarks: a real model's shape (Qwen2.5-0.5B by default), a real tokenizer
 * copied from a vocabulary-only GGUF, Q8_0 weights — so each token costs what the real model's would. With
 * `neverEnd`, the model can never emit a control token, so every request runs to `max_tokens` and runs are
 * comparable (see ../shared/models/README.md for the trick).
 */
import { createHash } from 'node:crypto';
import { access, mkdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { TensorType, TokenType, ValueType, type MetadataValue } from './format.js';
import { readGgufHeader } from './reader.js';
import { DEFAULT_MODEL_CACHE } from './tiny-model.js';
import { constantDimension, constantRows, randomRows, tensor, type RowFiller } from './weights.js';
import { writeGguf, type TensorSource } from './writer.js';

const SHARED_MODELS = resolve(import.meta.dirname, '../../../shared/models');

export interface BenchModelOptions {
  /** Vocabulary-only GGUF whose tokenizer.* keys are copied. */
  vocabGguf?: string;
  /** Jinja chat template file, used when the vocabulary GGUF has none. */
  chatTemplateFile?: string;
  layers: number;
  embeddingLength: number;
  heads: number;
  kvHeads: number;
  feedForwardLength: number;
  contextLength: number;
  quantization?: 'Q8_0' | 'F16';
  neverEnd?: boolean;
  /**
   * With `neverEnd`: also bar every token that is not printable ASCII (GPT-2 byte-level text), so outputs are
   * always valid UTF-8 — some servers' output parsers reject a reply cut off inside a multi-byte character.
   */
  asciiOutput?: boolean;
  seed?: number;
}

export const QWEN25_05B_SHAPE = {
  layers: 24,
  embeddingLength: 896,
  heads: 14,
  kvHeads: 2,
  feedForwardLength: 4864,
  contextLength: 32768,
} as const;

function defaults(options: BenchModelOptions): Required<BenchModelOptions> {
  return {
    vocabGguf: join(SHARED_MODELS, 'vocab/ggml-vocab-qwen2.gguf'),
    chatTemplateFile: join(SHARED_MODELS, 'templates/Qwen-Qwen2.5-7B-Instruct.jinja'),
    quantization: 'Q8_0',
    neverEnd: false,
    asciiOutput: false,
    seed: 1,
    ...options,
  };
}

export async function writeBenchModel(filePath: string, options: BenchModelOptions): Promise<void> {
  const o = defaults(options);
  const vocab = await readGgufHeader(o.vocabGguf);
  const metadata = new Map<string, MetadataValue>([
    ['general.architecture', { type: ValueType.STRING, value: 'qwen2' }],
    ['general.name', { type: ValueType.STRING, value: 'kiln-bench-random' }],
    ['qwen2.context_length', { type: ValueType.UINT32, value: o.contextLength }],
    ['qwen2.embedding_length', { type: ValueType.UINT32, value: o.embeddingLength }],
    ['qwen2.block_count', { type: ValueType.UINT32, value: o.layers }],
    ['qwen2.feed_forward_length', { type: ValueType.UINT32, value: o.feedForwardLength }],
    ['qwen2.attention.head_count', { type: ValueType.UINT32, value: o.heads }],
    ['qwen2.attention.head_count_kv', { type: ValueType.UINT32, value: o.kvHeads }],
    ['qwen2.attention.layer_norm_rms_epsilon', { type: ValueType.FLOAT32, value: 1e-6 }],
    ['qwen2.rope.freq_base', { type: ValueType.FLOAT32, value: 1_000_000 }],
    ['general.file_type', { type: ValueType.UINT32, value: o.quantization === 'Q8_0' ? 7 : 1 }],
  ]);
  for (const [key, value] of vocab.metadata) if (key.startsWith('tokenizer.')) metadata.set(key, value);
  if (!metadata.has('tokenizer.chat_template')) {
    metadata.set('tokenizer.chat_template', { type: ValueType.STRING, value: await readFile(o.chatTemplateFile, 'utf8') });
  }
  const tokenTypes = metadata.get('tokenizer.ggml.token_type');
  if (tokenTypes?.type !== ValueType.ARRAY) throw new Error(`${o.vocabGguf} has no tokenizer.ggml.token_type`);
  const tokens = metadata.get('tokenizer.ggml.tokens');
  if (tokens?.type !== ValueType.ARRAY) throw new Error(`${o.vocabGguf} has no tokenizer.ggml.tokens`);
  const barred = (tokenTypes.value as number[]).map(
    (type, token) => type !== TokenType.NORMAL || (o.asciiOutput && !/^[!-~\u0120]+$/.test(tokens.value[token] as string)),
  );
  await writeGguf(filePath, metadata, tensors(o, barred));
}

function tensors(o: Required<BenchModelOptions>, barred: boolean[]): TensorSource[] {
  const e = o.embeddingLength;
  const vocab = barred.length;
  const kv = (e / o.heads) * o.kvHeads;
  const ff = o.feedForwardLength;
  const type = o.quantization === 'Q8_0' ? TensorType.Q8_0 : TensorType.F16;
  const random = (name: string, std: number) => randomRows(o.seed, name, std);
  // The never-end trick: the last dimension of the residual stream is 1 everywhere (embedding column 1, no layer
  // writes to it), so an output row with -50 there makes that token's logit hopeless: control tokens (and, with
  // asciiOutput, non-ASCII ones) are never sampled.
  const trick = constantDimension(e - 1);
  const hold = (fill: RowFiller, valueFor: (row: number) => number): RowFiller => (o.neverEnd ? trick.set(fill, valueFor) : fill);
  const zeroRow = (fill: RowFiller): RowFiller => (o.neverEnd ? trick.keep(fill) : fill);

  const list: TensorSource[] = [
    tensor('token_embd.weight', [e, vocab], type, hold(random('token_embd', 0.02), () => 1)),
    tensor('output_norm.weight', [e], TensorType.F32, constantRows(1)),
    tensor('output.weight', [e, vocab], type, hold(random('output', 0.02), (token) => (barred[token] ? -50 : 0))),
  ];
  for (let layer = 0; layer < o.layers; layer++) {
    const p = `blk.${layer}.`;
    list.push(
      tensor(`${p}attn_norm.weight`, [e], TensorType.F32, constantRows(1)),
      tensor(`${p}attn_q.weight`, [e, e], type, random(`${p}q`, 0.02)),
      tensor(`${p}attn_k.weight`, [e, kv], type, random(`${p}k`, 0.02)),
      tensor(`${p}attn_v.weight`, [e, kv], type, random(`${p}v`, 0.02)),
      tensor(`${p}attn_q.bias`, [e], TensorType.F32, constantRows(0)),
      tensor(`${p}attn_k.bias`, [kv], TensorType.F32, constantRows(0)),
      tensor(`${p}attn_v.bias`, [kv], TensorType.F32, constantRows(0)),
      tensor(`${p}attn_output.weight`, [e, e], type, zeroRow(random(`${p}o`, 0.02))),
      tensor(`${p}ffn_norm.weight`, [e], TensorType.F32, constantRows(1)),
      tensor(`${p}ffn_gate.weight`, [e, ff], type, random(`${p}gate`, 0.02)),
      tensor(`${p}ffn_up.weight`, [e, ff], type, random(`${p}up`, 0.02)),
      tensor(`${p}ffn_down.weight`, [ff, e], type, zeroRow(random(`${p}down`, 0.02))),
    );
  }
  return list;
}

/** The cached bench model for these options, generated on first use (about 700 MB for Qwen2.5-0.5B's shape). */
export async function ensureBenchModel(options: BenchModelOptions & { cacheDir?: string }): Promise<string> {
  const { cacheDir = DEFAULT_MODEL_CACHE, ...rest } = options;
  const resolved = defaults(rest);
  const hash = createHash('sha256').update(JSON.stringify({ v: 1, ...resolved })).digest('hex').slice(0, 12);
  const filePath = join(cacheDir, `bench-qwen2-${resolved.quantization}-${hash}.gguf`);
  try {
    await access(filePath);
  } catch {
    await mkdir(cacheDir, { recursive: true });
    console.error(`Generating the benchmark model ${filePath} (one time)...`);
    await writeBenchModel(filePath, resolved);
  }
  return filePath;
}
