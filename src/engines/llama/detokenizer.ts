/**
 * Token-by-token detokenization that never splits a UTF-8 character: byte tokens of a multi-byte character decode to
 * U+FFFD until the character is complete, so such tokens are held (up to a few) and decoded together.
 */
import type { LlamaModel, Token } from 'node-llama-cpp';

const MAX_HELD_TOKENS = 4;
const CONTEXT_TOKENS = 4;

export class IncrementalDetokenizer {
  private pending: Token[] = [];
  private context: Token[] = [];

  constructor(private readonly model: LlamaModel) {}

  /** Returns the text completed by this token ('' while a character is still incomplete). */
  push(token: Token): string {
    this.pending.push(token);
    const text = this.model.detokenize(this.pending, false, this.context);
    if (text.endsWith('\uFFFD') && this.pending.length < MAX_HELD_TOKENS) return '';
    this.settle();
    return text;
  }

  flush(): string {
    if (this.pending.length === 0) return '';
    const text = this.model.detokenize(this.pending, false, this.context);
    this.settle();
    return text;
  }

  private settle(): void {
    this.context = this.context.concat(this.pending).slice(-CONTEXT_TOKENS);
    this.pending = [];
  }
}
