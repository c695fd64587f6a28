/**
 * Realistic random-weight models for benchmarks: a real model's shape (Qwen2.5-0.5B by default), a real tokenizer
 * copied from a vocabulary-only GGUF, Q8_0 weights — so each token costs what the real model's would. With
 * `neverEnd`, the model can never emit a control or end-of-generation token, so every request runs to `max_tokens`
 * and runs are comparable (see ../shared/models/README.md for the trick).
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { cachedFile, DEFAULT_MODEL_CACHE, optionsHash } from './cache.js';
import { TensorType, TokenType, ValueType, type MetadataValue } from './format.js';
import { readGgufHeader } from './reader.js';
import { constantRows, randomRows, tensor, type RowFiller } from './weights.js';
import { writeGguf, type TensorSource } from './writer.js';

const SHARED_MODELS = resolve(import.meta.dirname, '../../../shared/models');
export const QWEN2_VOCAB_GGUF = join(SHARED_MODELS, 'vocab/ggml-vocab-qwen2.gguf');
export const QWEN25_TEMPLATE_FILE = join(SHARED_MODELS, 'templates/Qwen-Qwen2.5-7B-Instruct.jinja');

export interface BenchModelOptions {
  /** Vocabulary-only GGUF whose tokenizer.* keys are copied; default ../shared/models/vocab/ggml-vocab-qwen2.gguf. */
  vocabGguf?: string;
  architecture?: 'qwen2';
  layers: number;
  embeddingLength: number;
  heads: number;
  kvHeads: number;
  feedForwardLength: number;
  contextLength: number;
  /** Default 'Q8_0'. Norm weights and biases are F32 either way. */
  quantization?: 'Q8_0' | 'F16';
  /** Chat template text; overrides the vocabulary's own. */
  chatTemplate?: string;
  /** Chat template file, used when `chatTemplate` is absent; otherwise the vocabulary's own template is kept. */
  chatTemplateFile?: string;
  /** No output.weight: llama.cpp then uses token_embd as the LM head (as Qwen2.5-0.5B does). */
  tiedOutput?: boolean;
  /** Never emit a control, user-defined or end-of-generation token. */
  neverEnd?: boolean;
  /**
   * With `neverEnd`: also bar every token that is not printable ASCII (GPT-2 byte-level text), so outputs are
   * always valid UTF-8 — some servers' output parsers reject a reply cut off inside a multi-byte character.
   */
  asciiOutput?: boolean;
  seed?: number;
  /** general.name; default 'kiln-bench-random'. */
  name?: string;
}

export const QWEN25_05B_SHAPE = {
  architecture: 'qwen2',
  layers: 24,
  embeddingLength: 896,
  heads: 14,
  kvHeads: 2,
  feedForwardLength: 4864,
  contextLength: 32768,
} as const;

/**
 * Token texts that llama.cpp (the version bundled with node-llama-cpp 3.21.1) treats as end-of-generation whatever
 * their token type, e.g. Qwen2's ordinary token 128247 `</s>`. Barring only non-NORMAL tokens would miss them.
 */
const EOG_TEXTS = new Set([
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<|flush|>', '<|calls|>', '<end_of_turn>',
  '<|endoftext|>', '</s>', '<|eom_id|>', '<EOT>', '_<EOT>', '[EOT]', '[EOS]', '<|end_of_text|>', '<end_of_utterance>',
  '<eos>', '<turn|>', '<|tool_response>', '<｜end▁of▁sentence｜>', '[e~[',
  // FIM pad / repo / file-separator tokens are EOG too.
  '<|fim_pad|>', '<fim-pad>', '<fim_pad>', '<PAD>', '[PAD]', '<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>',
  '<reponame>', '<|file_sep|>',
]);

type Resolved = Required<Omit<BenchModelOptions, 'chatTemplate' | 'chatTemplateFile'>> &
  Pick<BenchModelOptions, 'chatTemplate' | 'chatTemplateFile'>;

function defaults(options: BenchModelOptions): Resolved {
  return {
    vocabGguf: QWEN2_VOCAB_GGUF,
    architecture: 'qwen2',
    quantization: 'Q8_0',
    tiedOutput: false,
    neverEnd: false,
    asciiOutput: false,
    seed: 1,
    name: 'kiln-bench-random',
    ...options,
  };
}

export async function writeBenchModel(filePath: string, options: BenchModelOptions): Promise<void> {
  const o = defaults(options);
  const { embeddingLength: e, heads, kvHeads, feedForwardLength: ff } = o;
  if (e % heads !== 0 || heads % kvHeads !== 0) throw new Error('embeddingLength must divide by heads, heads by kvHeads');
  if (o.quantization === 'Q8_0' && (e % 32 !== 0 || ff % 32 !== 0)) {
    throw new Error('Q8_0 needs embeddingLength and feedForwardLength to be multiples of 32');
  }
  const vocab = await readGgufHeader(o.vocabGguf);
  const arch = o.architecture;
  const u32 = (value: number): MetadataValue => ({ type: ValueType.UINT32, value });
  const metadata = new Map<string, MetadataValue>([
    ['general.architecture', { type: ValueType.STRING, value: arch }],
    ['general.name', { type: ValueType.STRING, value: o.name }],
    [`${arch}.context_length`, u32(o.contextLength)],
    [`${arch}.embedding_length`, u32(e)],
    [`${arch}.block_count`, u32(o.layers)],
    [`${arch}.feed_forward_length`, u32(ff)],
    [`${arch}.attention.head_count`, u32(heads)],
    [`${arch}.attention.head_count_kv`, u32(kvHeads)],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: ValueType.FLOAT32, value: 1e-6 }],
    [`${arch}.rope.freq_base`, { type: ValueType.FLOAT32, value: 1_000_000 }],
    // llama_ftype: 7 = MOSTLY_Q8_0, 1 = MOSTLY_F16.
    ['general.file_type', u32(o.quantization === 'Q8_0' ? 7 : 1)],
  ]);
  for (const [key, value] of vocab.metadata) if (key.startsWith('tokenizer.')) metadata.set(key, value);
  const template = o.chatTemplate ?? (o.chatTemplateFile ? await readFile(o.chatTemplateFile, 'utf8') : undefined);
  if (template !== undefined) metadata.set('tokenizer.chat_template', { type: ValueType.STRING, value: template });
  else if (!metadata.has('tokenizer.chat_template') && existsSync(QWEN25_TEMPLATE_FILE)) {
    metadata.set('tokenizer.chat_template', { type: ValueType.STRING, value: await readFile(QWEN25_TEMPLATE_FILE, 'utf8') });
  }
  await writeGguf(filePath, metadata, tensors(o, barredTokens(metadata, o)));
}

/** Tokens the never-end trick keeps out of the output: control/special, EOG by id or text, and optionally non-ASCII. */
function barredTokens(metadata: Map<string, MetadataValue>, o: Resolved): boolean[] {
  const types = metadata.get('tokenizer.ggml.token_type');
  const tokens = metadata.get('tokenizer.ggml.tokens');
  if (types?.type !== ValueType.ARRAY || tokens?.type !== ValueType.ARRAY) {
    throw new Error(`${o.vocabGguf} has no tokenizer.ggml.tokens / token_type`);
  }
  const eogIds = new Set(
    ['eos', 'eot', 'eom'].map((kind) => metadata.get(`tokenizer.ggml.${kind}_token_id`)?.value).filter((id) => typeof id === 'number'),
  );
  return (tokens.value as string[]).map(
    (text, token) =>
      types.value[token] !== TokenType.NORMAL ||
      EOG_TEXTS.has(text) ||
      eogIds.has(token) ||
      // GPT-2 byte-level text: printable ASCII, with Ġ standing for a space.
      (o.asciiOutput && !/^[!-~\u0120]+$/.test(text)),
  );
}

function tensors(o: Resolved, barred: boolean[]): TensorSource[] {
  const e = o.embeddingLength;
  const vocab = barred.length;
  const kv = (e / o.heads) * o.kvHeads;
  const ff = o.feedForwardLength;
  const type = o.quantization === 'Q8_0' ? TensorType.Q8_0 : TensorType.F16;
  const held = e - 1;
  const random = (name: string, std: number) => randomRows(o.seed, name, std);
  // The never-end trick: no layer writes to residual dimension `held`, so it carries the input embedding's value
  // there to the LM head unchanged (and, being large next to the 0.02-scale weights, dominates the RMS norm, so it
  // arrives at ~sqrt(e) after normalisation). An LM-head row with -50 there makes that token's logit hopeless.
  const hold = (fill: RowFiller, valueFor: (row: number) => number): RowFiller =>
    o.neverEnd ? (row, values) => { fill(row, values); values[held] = valueFor(row); } : fill;
  const zeroHeldRow = (fill: RowFiller): RowFiller =>
    o.neverEnd ? (row, values) => { fill(row, values); if (row === held) values.fill(0); } : fill;
  // Tied: one row per token serves as embedding and LM head, so the held value cannot be 1 for inputs and -50 for
  // barred outputs. Positive values 4 (allowed) and 1 (barred) keep every allowed logit ahead by >= ~3 * sqrt(e)
  // after whichever token came last, barred or not: held value h gives allowed 4h, barred 1h.
  const embeddingHeld = o.tiedOutput ? (token: number) => (barred[token] ? 1 : 4) : () => 1;

  const list: TensorSource[] = [
    tensor('token_embd.weight', [e, vocab], type, hold(random('token_embd', 0.02), embeddingHeld)),
    tensor('output_norm.weight', [e], TensorType.F32, constantRows(1)),
  ];
  if (!o.tiedOutput) {
    list.push(tensor('output.weight', [e, vocab], type, hold(random('output', 0.02), (token) => (barred[token] ? -50 : 0))));
  }
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
      tensor(`${p}attn_output.weight`, [e, e], type, zeroHeldRow(random(`${p}o`, 0.02))),
      tensor(`${p}ffn_norm.weight`, [e], TensorType.F32, constantRows(1)),
      tensor(`${p}ffn_gate.weight`, [e, ff], type, random(`${p}gate`, 0.02)),
      tensor(`${p}ffn_up.weight`, [e, ff], type, random(`${p}up`, 0.02)),
      tensor(`${p}ffn_down.weight`, [ff, e], type, zeroHeldRow(random(`${p}down`, 0.02))),
    );
  }
  return list;
}

/** The cached bench model for these options, generated on first use (~676 MB for Qwen2.5-0.5B's shape in Q8_0). */
export async function ensureBenchModel(options: BenchModelOptions & { cacheDir?: string }): Promise<string> {
  const { cacheDir = DEFAULT_MODEL_CACHE, ...rest } = options;
  const resolved = defaults(rest);
  // Bump `v` whenever the bytes written for the same options change. The template file's content is hashed too.
  const templateFile = resolved.chatTemplateFile ? await readFile(resolved.chatTemplateFile, 'utf8') : undefined;
  const hash = optionsHash({ v: 2, ...resolved, chatTemplateFile: templateFile, vocabGguf: resolve(resolved.vocabGguf) });
  const name = `bench-${resolved.architecture}-${resolved.quantization}-${hash}.gguf`;
  return cachedFile(cacheDir, name, (path) => {
    console.error(`Generating the benchmark model ${path} (one time)...`);
    return writeBenchModel(path, resolved);
  });
}
