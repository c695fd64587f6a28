/**
 * Steers one choice's generation as its text comes out: which grammar constrains the next token, and when Kiln must
 * write tokens itself. Reasoning runs free until `</think>` (or until `thinking_budget` tokens, when Kiln closes the
 * block itself and the answer follows); the answer then runs under the answer grammar if the request has one
 * (JSON output, forced tool call); with `tool_choice` "auto" the text runs free until the model opens `<tool_call>`,
 * and the rest of the call is constrained.
 */
import { THINK_CLOSE, THINK_OPEN, TOOL_CALL_OPEN } from '../../core/postprocess/choice-processor.js';

export type GrammarName = 'answer' | 'toolCallBody';

export interface SteeringChange {
  /** The grammar from the next token on (undefined: unconstrained). */
  grammar: GrammarName | undefined;
  /** Text Kiln appends to the output before the next token (evaluated as if the model wrote it). */
  inject?: string;
}

export interface SteeringOptions {
  reasoning: 'open' | 'optional' | 'off';
  thinkingBudget: number;
  /** Tokens of BUDGET_CLOSE: they count as reasoning, so the block is closed early enough for them to fit the budget. */
  budgetCloseTokens: number;
  hasAnswerGrammar: boolean;
  hasToolCallBodyGrammar: boolean;
}

/** Closes a reasoning block that hit its budget; the answer follows after a blank line, as these models write it. */
export const BUDGET_CLOSE = `\n${THINK_CLOSE}\n\n`;
const TAIL = 32;

export class OutputSteering {
  private state: 'reasoning' | 'free' | 'constrained';
  private reasoningTokens = 0;
  private tail = '';
  /** Only whitespace so far: a model with optional reasoning may still open `<think>`. */
  private blank: boolean;
  readonly initialGrammar: GrammarName | undefined;

  constructor(private readonly options: SteeringOptions) {
    this.blank = options.reasoning === 'optional';
    if (options.reasoning === 'open') this.state = 'reasoning';
    else this.state = options.hasAnswerGrammar ? 'constrained' : 'free';
    this.initialGrammar = this.state === 'constrained' ? 'answer' : undefined;
  }

  /** Called with each generated token's text; returns what changes before the next token, if anything. */
  afterToken(text: string): SteeringChange | undefined {
    this.tail = (this.tail + text).slice(-TAIL);
    switch (this.state) {
      case 'constrained':
        return undefined;
      case 'reasoning':
        this.reasoningTokens++;
        if (this.tail.includes(THINK_CLOSE)) return this.answer();
        if (this.reasoningTokens + this.options.budgetCloseTokens >= this.options.thinkingBudget) return { ...this.answer(), inject: BUDGET_CLOSE };
        return undefined;
      case 'free':
        if (this.blank) {
          const visible = this.tail.trimStart();
          if (visible === THINK_OPEN) {
            this.blank = false;
            this.state = 'reasoning';
            this.tail = '';
            return undefined;
          }
          if (visible !== '' && !THINK_OPEN.startsWith(visible)) this.blank = false;
        }
        if (this.options.hasToolCallBodyGrammar && this.tail.endsWith(TOOL_CALL_OPEN)) {
          this.state = 'constrained';
          return { grammar: 'toolCallBody' };
        }
        return undefined;
    }
  }

  private answer(): SteeringChange {
    this.state = this.options.hasAnswerGrammar ? 'constrained' : 'free';
    this.tail = '';
    return { grammar: this.options.hasAnswerGrammar ? 'answer' : undefined };
  }
}
