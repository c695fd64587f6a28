/**
 * Tiny random-weight llama/qwen2 models for tests and the demo: a few layers, a byte-level vocabulary (GPT-2 style:
 * one token per byte, so any text can be expressed) plus ChatML and reasoning/tool special tokens, and an embedded
 * chat template. They answer gibberish, but exercise the real loader, tokenizer, template and sampler.
 */
import { createHash } from 'node:crypto';
import { access, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { TensorType, TokenType, ValueType, type MetadataValue } from './format.js';
import { constantDimension, constantRows, randomRows, tensor } from './weights.js';
import { writeGguf, type TensorSource } from './writer.js';

export interface TinyModelOptions {
  architecture?: 'llama' | 'qwen2';
  layers?: number;
  embeddingLength?: number;
  heads?: number;
  kvHeads?: number;
  feedForwardLength?: number;
  /** Training context written to the metadata. */
  contextLength?: number;
  chatTemplate?: string;
  seed?: number;
  name?: string;
  /** Never emit the end-of-turn token, so every request runs to max_tokens. */
  neverEnd?: boolean;
}

export const CHATML_TEMPLATE = `{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}`;

/** Special tokens after the 256 byte tokens, with their llama.cpp token types. */
const SPECIAL_TOKENS: Array<[string, TokenType]> = [
  ['<|endoftext|>', TokenType.CONTROL],
  ['<|im_start|>', TokenType.CONTROL],
  ['<|im_end|>', TokenType.CONTROL],
  ['<think>', TokenType.USER_DEFINED],
  ['</think>', TokenType.USER_DEFINED],
  ['<tool_call>', TokenType.USER_DEFINED],
  ['</tool_call>', TokenType.USER_DEFINED],
];
const BYTE_TOKENS = 256;
const ENDOFTEXT = BYTE_TOKENS;
const IM_END = BYTE_TOKENS + 2;

/** GPT-2's reversible byte → printable character map, which byte-level BPE vocabularies are written in. */
function byteToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) map[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + extra++);
  return map;
}

type Resolved = Required<Omit<TinyModelOptions, 'name'>> & { name: string };

function resolveOptions(options: TinyModelOptions): Resolved {
  return {
    architecture: options.architecture ?? 'llama',
    layers: options.layers ?? 2,
    embeddingLength: options.embeddingLength ?? 64,
    heads: options.heads ?? 4,
    kvHeads: options.kvHeads ?? 2,
    feedForwardLength: options.feedForwardLength ?? 128,
    contextLength: options.contextLength ?? 4096,
    chatTemplate: options.chatTemplate ?? CHATML_TEMPLATE,
    seed: options.seed ?? 1,
    name: options.name ?? 'kiln-tiny-random',
    neverEnd: options.neverEnd ?? false,
  };
}

function metadata(o: Resolved): Map<string, MetadataValue> {
  const arch = o.architecture;
  const bytes = byteToUnicode();
  const tokens = [...bytes, ...SPECIAL_TOKENS.map(([text]) => text)];
  const types = [...bytes.map(() => TokenType.NORMAL), ...SPECIAL_TOKENS.map(([, type]) => type)];
  const entries: Array<[string, MetadataValue]> = [
    ['general.architecture', { type: ValueType.STRING, value: arch }],
    ['general.name', { type: ValueType.STRING, value: o.name }],
    [`${arch}.context_length`, { type: ValueType.UINT32, value: o.contextLength }],
    [`${arch}.embedding_length`, { type: ValueType.UINT32, value: o.embeddingLength }],
    [`${arch}.block_count`, { type: ValueType.UINT32, value: o.layers }],
    [`${arch}.feed_forward_length`, { type: ValueType.UINT32, value: o.feedForwardLength }],
    [`${arch}.attention.head_count`, { type: ValueType.UINT32, value: o.heads }],
    [`${arch}.attention.head_count_kv`, { type: ValueType.UINT32, value: o.kvHeads }],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: ValueType.FLOAT32, value: 1e-6 }],
    [`${arch}.rope.freq_base`, { type: ValueType.FLOAT32, value: 10000 }],
    ['general.file_type', { type: ValueType.UINT32, value: 0 }],
    ['tokenizer.ggml.model', { type: ValueType.STRING, value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: ValueType.STRING, value: 'qwen2' }],
    ['tokenizer.ggml.tokens', { type: ValueType.ARRAY, itemType: ValueType.STRING, value: tokens }],
    ['tokenizer.ggml.token_type', { type: ValueType.ARRAY, itemType: ValueType.INT32, value: types }],
    ['tokenizer.ggml.merges', { type: ValueType.ARRAY, itemType: ValueType.STRING, value: [] }],
    ['tokenizer.ggml.bos_token_id', { type: ValueType.UINT32, value: ENDOFTEXT }],
    ['tokenizer.ggml.eos_token_id', { type: ValueType.UINT32, value: IM_END }],
    ['tokenizer.ggml.padding_token_id', { type: ValueType.UINT32, value: ENDOFTEXT }],
    ['tokenizer.ggml.add_bos_token', { type: ValueType.BOOL, value: false }],
    ['tokenizer.chat_template', { type: ValueType.STRING, value: o.chatTemplate }],
  ];
  return new Map(entries);
}

/**
 * One residual dimension is held at 1 (embedding column set, no layer writes to it) so the output layer can bias
 * tokens: readable ASCII is favoured over stray bytes, and the end-of-turn token stays possible but not dominant.
 */
function tensors(o: Resolved): TensorSource[] {
  const e = o.embeddingLength;
  const vocab = BYTE_TOKENS + SPECIAL_TOKENS.length;
  const headDim = e / o.heads;
  const kv = headDim * o.kvHeads;
  const random = (name: string, std: number) => randomRows(o.seed, name, std);
  const { set: withConstant, keep: zeroRow } = constantDimension(e - 1);
  const outputBias = (token: number): number => {
    if (token === IM_END) return o.neverEnd ? -16 : 1;
    if (token >= BYTE_TOKENS) return -16;
    if (token >= 0x61 && token <= 0x7a) return 6; // a-z
    if (token === 0x20) return 7; // space
    if ((token >= 0x41 && token <= 0x5a) || token === 0x2e || token === 0x2c) return 4; // A-Z . ,
    if (token >= 0x21 && token < 0x7f) return 1;
    return -12;
  };

  const list: TensorSource[] = [
    tensor('token_embd.weight', [e, vocab], TensorType.F32, withConstant(random('token_embd', 1), () => 1)),
    tensor('output_norm.weight', [e], TensorType.F32, constantRows(1)),
    tensor('output.weight', [e, vocab], TensorType.F32, withConstant(random('output', 0.25), outputBias)),
  ];
  for (let layer = 0; layer < o.layers; layer++) {
    const p = `blk.${layer}.`;
    list.push(
      tensor(`${p}attn_norm.weight`, [e], TensorType.F32, constantRows(1)),
      tensor(`${p}attn_q.weight`, [e, e], TensorType.F32, random(`${p}q`, 0.3)),
      tensor(`${p}attn_k.weight`, [e, kv], TensorType.F32, random(`${p}k`, 0.3)),
      tensor(`${p}attn_v.weight`, [e, kv], TensorType.F32, random(`${p}v`, 0.3)),
      tensor(`${p}attn_output.weight`, [e, e], TensorType.F32, zeroRow(random(`${p}o`, 0.1))),
      tensor(`${p}ffn_norm.weight`, [e], TensorType.F32, constantRows(1)),
      tensor(`${p}ffn_gate.weight`, [e, o.feedForwardLength], TensorType.F32, random(`${p}gate`, 0.2)),
      tensor(`${p}ffn_up.weight`, [e, o.feedForwardLength], TensorType.F32, random(`${p}up`, 0.2)),
      tensor(`${p}ffn_down.weight`, [o.feedForwardLength, e], TensorType.F32, zeroRow(random(`${p}down`, 0.1))),
    );
    if (o.architecture === 'qwen2') {
      list.push(
        tensor(`${p}attn_q.bias`, [e], TensorType.F32, random(`${p}qb`, 0.05)),
        tensor(`${p}attn_k.bias`, [kv], TensorType.F32, random(`${p}kb`, 0.05)),
        tensor(`${p}attn_v.bias`, [kv], TensorType.F32, random(`${p}vb`, 0.05)),
      );
    }
  }
  return list;
}

export async function writeTinyModel(filePath: string, options: TinyModelOptions = {}): Promise<void> {
  const resolved = resolveOptions(options);
  if (resolved.embeddingLength % resolved.heads !== 0) throw new Error('embeddingLength must be a multiple of heads');
  await writeGguf(filePath, metadata(resolved), tensors(resolved));
}

export const DEFAULT_MODEL_CACHE = resolve(import.meta.dirname, '../../.cache/models');

/** The cached model for these options, generated on first use (the file name is a hash of the options). */
export async function ensureTinyModel(options: TinyModelOptions & { cacheDir?: string } = {}): Promise<string> {
  const { cacheDir = DEFAULT_MODEL_CACHE, ...rest } = options;
  const resolved = resolveOptions(rest);
  const hash = createHash('sha256').update(JSON.stringify({ v: 1, ...resolved })).digest('hex').slice(0, 12);
  const filePath = join(cacheDir, `tiny-${resolved.architecture}-${hash}.gguf`);
  try {
    await access(filePath);
    return filePath;
  } catch {
    await mkdir(cacheDir, { recursive: true });
    await writeTinyModel(filePath, resolved);
    return filePath;
  }
}
