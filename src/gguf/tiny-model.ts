/**
 * Tiny random-weight llama/qwen2 models for tests and the demo: a few layers, a byte-level vocabulary (GPT-2 style:
 * one token per byte, so any text can be expressed) plus ChatML and reasoning/tool special tokens, and an embedded
 * chat template. They answer gibberish, but exercise the real loader, tokenizer, template and sampler.
 * A flavor swaps in a real model's chat template and the special tokens it uses.
 */
import { createHash } from 'node:crypto';
import { access, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { TensorType, TokenType, ValueType, type MetadataValue } from './format.js';
import { QWEN25_TEMPLATE, R1_DISTILL_TEMPLATE } from './templates.js';
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
  /** 'chatml' (default): ChatML template and tokens. Others: that real model's template and special tokens. */
  flavor?: TinyModelFlavor;
  /** Make `<tool_call>` the most likely token, so that free-running generation opens tool calls (tests of tool_choice auto). */
  eagerToolCalls?: boolean;
}

export type TinyModelFlavor = 'chatml' | 'qwen2.5' | 'r1-distill';

export const CHATML_TEMPLATE = `{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}`;

const BYTE_TOKENS = 256;

/** Special tokens after the 256 byte tokens, with their llama.cpp token types; bos/eos/padding index into the vocab. */
interface Specials {
  tokens: Array<[string, TokenType]>;
  bos: number;
  /** Also the end-of-turn token. */
  eos: number;
  padding: number;
}

const CHATML_SPECIALS: Specials = {
  tokens: [
    ['<|endoftext|>', TokenType.CONTROL],
    ['<|im_start|>', TokenType.CONTROL],
    ['<|im_end|>', TokenType.CONTROL],
    ['<think>', TokenType.USER_DEFINED],
    ['</think>', TokenType.USER_DEFINED],
    ['<tool_call>', TokenType.USER_DEFINED],
    ['</tool_call>', TokenType.USER_DEFINED],
  ],
  bos: BYTE_TOKENS, // <|endoftext|>
  eos: BYTE_TOKENS + 2, // <|im_end|>
  padding: BYTE_TOKENS,
};

/** DeepSeek-R1-Distill's own markers (fullwidth bars, U+2581 for spaces), as its template writes them. */
const R1_DISTILL_SPECIALS: Specials = {
  tokens: [
    ...[
      '<｜begin▁of▁sentence｜>',
      '<｜end▁of▁sentence｜>',
      '<｜User｜>',
      '<｜Assistant｜>',
      '<｜tool▁calls▁begin｜>',
      '<｜tool▁calls▁end｜>',
      '<｜tool▁call▁begin｜>',
      '<｜tool▁call▁end｜>',
      '<｜tool▁sep｜>',
      '<｜tool▁outputs▁begin｜>',
      '<｜tool▁outputs▁end｜>',
      '<｜tool▁output▁begin｜>',
      '<｜tool▁output▁end｜>',
    ].map((text): [string, TokenType] => [text, TokenType.CONTROL]),
    ['<think>', TokenType.USER_DEFINED],
    ['</think>', TokenType.USER_DEFINED],
  ],
  bos: BYTE_TOKENS,
  eos: BYTE_TOKENS + 1,
  padding: BYTE_TOKENS + 1,
};

const FLAVORS: Record<TinyModelFlavor, { template: string; specials: Specials }> = {
  chatml: { template: CHATML_TEMPLATE, specials: CHATML_SPECIALS },
  'qwen2.5': { template: QWEN25_TEMPLATE, specials: CHATML_SPECIALS },
  'r1-distill': { template: R1_DISTILL_TEMPLATE, specials: R1_DISTILL_SPECIALS },
};

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
  const flavor = options.flavor ?? 'chatml';
  return {
    architecture: options.architecture ?? 'llama',
    layers: options.layers ?? 2,
    embeddingLength: options.embeddingLength ?? 64,
    heads: options.heads ?? 4,
    kvHeads: options.kvHeads ?? 2,
    feedForwardLength: options.feedForwardLength ?? 128,
    contextLength: options.contextLength ?? 4096,
    chatTemplate: options.chatTemplate ?? FLAVORS[flavor].template,
    seed: options.seed ?? 1,
    name: options.name ?? 'kiln-tiny-random',
    neverEnd: options.neverEnd ?? false,
    flavor,
    eagerToolCalls: options.eagerToolCalls ?? false,
  };
}

function metadata(o: Resolved): Map<string, MetadataValue> {
  const arch = o.architecture;
  const specials = FLAVORS[o.flavor].specials;
  const bytes = byteToUnicode();
  const tokens = [...bytes, ...specials.tokens.map(([text]) => text)];
  const types = [...bytes.map(() => TokenType.NORMAL), ...specials.tokens.map(([, type]) => type)];
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
    ['tokenizer.ggml.bos_token_id', { type: ValueType.UINT32, value: specials.bos }],
    ['tokenizer.ggml.eos_token_id', { type: ValueType.UINT32, value: specials.eos }],
    ['tokenizer.ggml.padding_token_id', { type: ValueType.UINT32, value: specials.padding }],
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
  const specials = FLAVORS[o.flavor].specials;
  const vocab = BYTE_TOKENS + specials.tokens.length;
  const headDim = e / o.heads;
  const kv = headDim * o.kvHeads;
  const random = (name: string, std: number) => randomRows(o.seed, name, std);
  const { set: withConstant, keep: zeroRow } = constantDimension(e - 1);
  const outputBias = (token: number): number => {
    if (token === specials.eos) return o.neverEnd ? -16 : 1;
    if (o.eagerToolCalls && specials.tokens[token - BYTE_TOKENS]?.[0] === '<tool_call>') return 12;
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
  // Options at their defaults stay out of the hash so that files cached before those options existed keep their names.
  const { flavor, eagerToolCalls, ...hashed } = resolved;
  const key = { v: 1, ...hashed, ...(flavor !== 'chatml' ? { flavor } : {}), ...(eagerToolCalls ? { eagerToolCalls } : {}) };
  const hash = createHash('sha256').update(JSON.stringify(key)).digest('hex').slice(0, 12);
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
