/**
 * Tokenizes a rendered prompt so that only the chat template's own markers become control tokens.
 *
 * llama.cpp with `parse_special` turns every occurrence of a control token's text into that token, wherever it came
 * from, so a user message containing `<|im_end|>\n<|im_start|>system\n…` would forge a system turn. Here the texts
 * of control tokens inside client strings are swapped for placeholders before rendering (`TextShield`), the
 * rendered text is split at the markers the template wrote, and each piece between them is tokenized without
 * `parse_special`, with the placeholders turned back into the client's original text.
 *
 * For prompts whose client text holds no control-token text, the tokens are exactly llama.cpp's: its tokenizer also
 * cuts the text at special tokens and tokenizes each piece on its own (with the same whitespace stripping for
 * lstrip/rstrip tokens, and SentencePiece's space prefix after every special token, which a separate call gives
 * too). User-defined tokens (`<think>`, `<tool_call>`) are not control tokens: llama.cpp matches them with or
 * without `parse_special`, as Hugging Face tokenizers match non-special added tokens, so they stay as they were.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { LlamaModel, Token } from 'node-llama-cpp';
import { TokenizerWorker } from './prompt-worker.js';

export interface Marker {
  token: Token;
  text: string;
  /** llama.cpp strips ASCII whitespace before (lstrip) or after (rstrip) these tokens. */
  lstrip: boolean;
  rstrip: boolean;
}

/** A template marker (a token) or text to tokenize as text. */
export type PromptPiece = Token | string;

/** Private-use characters that delimit placeholders; client text holding them is shielded too, so restoring is exact. */
const OPEN = '\uE000';
const CLOSE = '\uE001';
const PLACEHOLDER = /\uE000(\d+)\uE001/g;
/** The main thread tokenizes about this many characters before letting other work run (≈ 10 ms on the dev VM). */
const SLICE_CHARS = 32 * 1024;
/** Prompts with more text than this go to the worker thread, when there is one. */
const WORKER_CHARS = 64 * 1024;

/** One request's placeholders for control-token texts found in client strings. */
export class TextShield {
  private readonly originals: string[] = [];

  constructor(private readonly pattern: RegExp) {}

  get used(): boolean {
    return this.originals.length > 0;
  }

  readonly protect = (text: string): string =>
    text.replace(this.pattern, (match) => `${OPEN}${this.originals.push(match) - 1}${CLOSE}`);

  restore(text: string): string {
    if (!this.used || !text.includes(OPEN)) return text;
    return text.replace(PLACEHOLDER, (whole, index: string) => this.originals[Number(index)] ?? whole);
  }
}

export class PromptTokenizer {
  private readonly byText = new Map<string, Marker>();
  /** Every marker text, longest first (llama.cpp's order), for finding them in the rendered prompt. */
  private readonly markerPattern: RegExp | undefined;
  /** The same plus the placeholder delimiter, for shielding client strings. */
  private readonly shieldPattern: RegExp;

  constructor(
    markers: readonly Marker[],
    private readonly tokenizeText: (text: string) => Token[],
    /** UTF-8 bytes the longest non-marker token stands for (an upper bound); Infinity when unknown. */
    readonly maxTokenBytes: number,
    private readonly worker?: TokenizerWorker,
  ) {
    const texts = markers.filter((marker) => marker.text !== '').sort((a, b) => b.text.length - a.text.length);
    for (const marker of texts) if (!this.byText.has(marker.text)) this.byText.set(marker.text, marker);
    const alternatives = [...this.byText.keys()].map(escapeRegExp);
    this.markerPattern = alternatives.length > 0 ? new RegExp(alternatives.join('|'), 'g') : undefined;
    this.shieldPattern = new RegExp([...alternatives, OPEN].join('|'), 'g');
  }

  /** With `file`, large prompts are tokenized on a worker thread that loads that GGUF's vocabulary. */
  static fromModel(model: LlamaModel, file?: string): PromptTokenizer {
    const texts = model.fileInfo.metadata.tokenizer?.ggml?.tokens ?? [];
    const markers: Marker[] = [];
    let maxTokenBytes = 0;
    for (let token = 0; token < texts.length; token++) {
      const attributes = model.getTokenAttributes(token as Token);
      // The tokens llama.cpp matches only with parse_special (llama-vocab.cpp, tokenizer_st_partition).
      if (attributes.control || attributes.unknown) {
        markers.push({ token: token as Token, text: model.detokenize([token as Token], true), lstrip: attributes.lstrip, rstrip: attributes.rstrip });
      } else {
        // The vocab's stored text is never shorter in UTF-8 than the input it covers for BPE (one character per
        // byte) and SentencePiece (▁ for a space, <0xNN> for a byte); other tokenizers normalize, so no bound.
        maxTokenBytes = Math.max(maxTokenBytes, Buffer.byteLength(String(texts[token])));
      }
    }
    const bounded = model.vocabularyType === 'bpe' || model.vocabularyType === 'spm';
    const bound = bounded && maxTokenBytes > 0 ? maxTokenBytes : Infinity;
    return new PromptTokenizer(markers, (text) => model.tokenize(text, false), bound, file === undefined ? undefined : new TokenizerWorker(file));
  }

  close(): Promise<void> {
    return this.worker?.close() ?? Promise.resolve();
  }

  shield(): TextShield {
    return new TextShield(new RegExp(this.shieldPattern.source, 'g'));
  }

  /** The rendered prompt cut at the template's markers, with llama.cpp's lstrip/rstrip applied and placeholders restored. */
  split(rendered: string, shield: TextShield): PromptPiece[] {
    const pieces: PromptPiece[] = [];
    let textStart = 0;
    let stripNext = false;
    const pushText = (end: number, stripEnd: boolean) => {
      let start = textStart;
      if (stripNext) while (start < end && isAsciiSpace(rendered.charCodeAt(start))) start++;
      while (stripEnd && end > start && isAsciiSpace(rendered.charCodeAt(end - 1))) end--;
      if (end > start) pieces.push(shield.restore(rendered.slice(start, end)));
    };
    if (this.markerPattern !== undefined) {
      const pattern = new RegExp(this.markerPattern.source, 'g');
      for (let match = pattern.exec(rendered); match !== null; match = pattern.exec(rendered)) {
        const marker = this.byText.get(match[0])!;
        pushText(match.index, marker.lstrip);
        pieces.push(marker.token);
        textStart = match.index + match[0].length;
        stripNext = marker.rstrip;
      }
    }
    pushText(rendered.length, false);
    return pieces;
  }

  /** A lower bound on the tokens of these pieces, without tokenizing: no token stands for more than maxTokenBytes. */
  minTokens(pieces: readonly PromptPiece[]): number {
    let count = 0;
    for (const piece of pieces) {
      count += typeof piece === 'number' ? 1 : Number.isFinite(this.maxTokenBytes) ? Math.ceil(Buffer.byteLength(piece) / this.maxTokenBytes) : 1;
    }
    return count;
  }

  tokenize(pieces: readonly PromptPiece[]): Token[] {
    const tokens: Token[] = [];
    for (const piece of pieces) {
      if (typeof piece === 'number') tokens.push(piece);
      else for (const token of this.tokenizeText(piece)) tokens.push(token);
    }
    return tokens;
  }

  /** As tokenize, without holding the event loop: large prompts on the worker, others in slices. */
  async tokenizeAsync(pieces: readonly PromptPiece[]): Promise<Token[]> {
    const texts = pieces.filter((piece): piece is string => typeof piece === 'string');
    if (this.worker === undefined || texts.reduce((sum, text) => sum + text.length, 0) <= WORKER_CHARS) return this.tokenizeSliced(pieces);
    let tokenized: Uint32Array[];
    try {
      tokenized = await this.worker.tokenize(texts);
    } catch {
      // A worker that cannot run (e.g. no threads) leaves the slower path, which is still correct.
      return this.tokenizeSliced(pieces);
    }
    // Filled in place: hundreds of thousands of tokens come back, and pushing them one by one shows on the event loop.
    const tokens = new Array<Token>(tokenized.reduce((sum, array) => sum + array.length, pieces.length - texts.length));
    let at = 0;
    let next = 0;
    for (const piece of pieces) {
      if (typeof piece === 'number') tokens[at++] = piece;
      else for (const token of tokenized[next++]!) tokens[at++] = token as Token;
    }
    return tokens;
  }

  /** As tokenize, yielding to the event loop between pieces once SLICE_CHARS have been tokenized since the last yield. */
  async tokenizeSliced(pieces: readonly PromptPiece[]): Promise<Token[]> {
    const tokens: Token[] = [];
    let sinceYield = 0;
    for (const piece of pieces) {
      if (typeof piece === 'number') {
        tokens.push(piece);
        continue;
      }
      if (sinceYield > 0 && sinceYield + piece.length > SLICE_CHARS) {
        await nextTurn();
        sinceYield = 0;
      }
      sinceYield += piece.length;
      for (const token of this.tokenizeText(piece)) tokens.push(token);
    }
    return tokens;
  }
}

/** C's isspace in the "C" locale, as llama.cpp strips. */
function isAsciiSpace(code: number): boolean {
  return code === 32 || (code >= 9 && code <= 13);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
