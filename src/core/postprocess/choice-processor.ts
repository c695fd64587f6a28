/**
 * The one post-processor every engine's output goes through, per choice: stop strings, then reasoning (`<think>` …
 * `</think>` → reasoning_content), then tool calls (`<tool_call>` … `</tool_call>` → tool_calls), then the finish
 * reason and token counts. Engines feed it raw decoded text in whatever pieces they have; what comes out does not
 * depend on how the text was split (test/unit/choice-processor.test.ts feeds it whole, per piece and per character).
 */
import { randomUUID } from 'node:crypto';
import type { FinishReason } from '../../protocol/response.js';
import type { EngineEvent } from '../engine.js';
import { MarkerScanner } from './marker-scanner.js';
import { StopMatcher } from './stop-matcher.js';
import { ToolCallBodyParser, type CallEvent } from './tool-call-parser.js';

export const THINK_OPEN = '<think>';
export const THINK_CLOSE = '</think>';
export const TOOL_CALL_OPEN = '<tool_call>';
export const TOOL_CALL_CLOSE = '</tool_call>';

export interface ToolCallDelta {
  index: number;
  /** Present on a call's first delta, with the name. */
  id?: string;
  name?: string;
  arguments: string;
}

export interface ChoiceDelta {
  content?: string;
  reasoningContent?: string;
  toolCall?: ToolCallDelta;
}

export type ChoiceUpdate =
  | { type: 'delta'; delta: ChoiceDelta }
  | { type: 'finish'; finishReason: FinishReason; completionTokens: number; reasoningTokens: number };

export interface ChoiceProcessorOptions {
  stop: readonly string[];
  /**
   * How the model reasons: `open` — the prompt already opened `<think>`, so output starts as reasoning; `optional` —
   * the model may open `<think>` first thing; `off` — no reasoning is split out.
   */
  reasoning: 'open' | 'optional' | 'off';
  /** Parse `<tool_call>` blocks into tool calls (the request offered tools). */
  tools: boolean;
  /** At most this many calls are reported (1 when the request set `parallel_tool_calls: false`). */
  maxToolCalls?: number;
  /** Tool-call ids; random `call_…` by default (tests pass a counter). */
  newCallId?: () => string;
}

type State = 'awaitThink' | 'reasoning' | 'content' | 'toolCall' | 'afterToolCalls';

export class ChoicePostProcessor {
  private readonly stopMatcher: StopMatcher;
  private readonly scanner = new MarkerScanner();
  private state: State;
  /** Whitespace not yet known to be content (leading whitespace of a section is dropped, trailing reasoning whitespace too). */
  private heldSpace = '';
  private sectionStart = true;
  private call: ToolCallBodyParser | undefined;
  private calls = 0;
  private completeCalls = 0;
  private completionTokens = 0;
  private reasoningTokens = 0;
  private finished = false;

  constructor(private readonly options: ChoiceProcessorOptions) {
    this.stopMatcher = new StopMatcher(options.stop);
    this.state = options.reasoning === 'open' ? 'reasoning' : options.reasoning === 'optional' ? 'awaitThink' : 'content';
  }

  /** Tokens counted so far (what a request cut short used); the finish update carries the final counts. */
  get tokensSoFar(): { completionTokens: number; reasoningTokens: number } {
    return { completionTokens: this.completionTokens, reasoningTokens: this.reasoningTokens };
  }

  /**
   * Turns one engine event into what the client should see. After a `finish` update the caller stops pulling from
   * the engine (which stops generating).
   */
  accept(event: EngineEvent): ChoiceUpdate[] {
    if (this.finished) return [];
    if (event.type === 'end') {
      const updates = this.finish(event.reason === 'length' ? 'length' : 'stop', this.stopMatcher.flush());
      const finish = updates[updates.length - 1] as Extract<ChoiceUpdate, { type: 'finish' }>;
      if (event.usage?.completionTokens !== undefined) finish.completionTokens = event.usage.completionTokens;
      if (event.usage?.reasoningTokens !== undefined) finish.reasoningTokens = event.usage.reasoningTokens;
      return updates;
    }
    this.completionTokens += event.tokens;
    // A token counts as reasoning when it was generated inside <think> … </think> (its closing tag included).
    const reasoningBefore = this.state === 'reasoning';
    const text = this.stopMatcher.push(event.text);
    const updates = this.stopMatcher.hasStopped ? this.finish('stop', text) : this.scan(text);
    if (reasoningBefore || this.state === 'reasoning') this.reasoningTokens += event.tokens;
    const last = updates[updates.length - 1];
    if (last?.type === 'finish') last.reasoningTokens = this.reasoningTokens;
    return updates;
  }

  private finish(reason: 'stop' | 'length', lastText: string): ChoiceUpdate[] {
    this.finished = true;
    const updates = this.scan(lastText);
    updates.push(...this.endOfText());
    const finishReason: FinishReason = reason === 'stop' && this.completeCalls > 0 ? 'tool_calls' : reason;
    updates.push({ type: 'finish', finishReason, completionTokens: this.completionTokens, reasoningTokens: this.reasoningTokens });
    return updates;
  }

  private markers(): readonly string[] {
    switch (this.state) {
      case 'awaitThink':
        return this.options.tools ? [THINK_OPEN, TOOL_CALL_OPEN] : [THINK_OPEN];
      case 'reasoning':
        return [THINK_CLOSE];
      case 'content':
      case 'afterToolCalls':
        return this.options.tools ? [TOOL_CALL_OPEN] : [];
      case 'toolCall':
        return [TOOL_CALL_CLOSE];
    }
  }

  private scan(text: string): ChoiceUpdate[] {
    const updates: ChoiceUpdate[] = [];
    if (text === '') return updates;
    this.scanner.push(
      text,
      () => this.markers(),
      (piece) => (piece.type === 'text' ? this.text(piece.text, updates) : this.marker(piece.marker, updates)),
    );
    return updates;
  }

  private text(text: string, updates: ChoiceUpdate[]): void {
    switch (this.state) {
      case 'awaitThink':
      case 'content':
      case 'afterToolCalls': {
        if (this.state === 'awaitThink' || this.state === 'afterToolCalls') {
          // Whitespace before `<think>` or between calls is layout; anything else is the answer.
          const firstVisible = text.search(/\S/);
          if (firstVisible === -1) {
            this.heldSpace += text;
            return;
          }
          if (this.state === 'awaitThink') text = this.heldSpace + text;
          else text = text.slice(firstVisible);
          this.heldSpace = '';
          this.state = 'content';
        }
        this.emitContent(text, updates);
        return;
      }
      case 'reasoning':
        this.emitReasoning(text, updates);
        return;
      case 'toolCall':
        this.callEvents(this.call!.push(text), updates);
        return;
    }
  }

  private marker(marker: string, updates: ChoiceUpdate[]): void {
    switch (marker) {
      case THINK_OPEN:
        this.heldSpace = '';
        this.state = 'reasoning';
        this.sectionStart = true;
        return;
      case THINK_CLOSE:
        this.heldSpace = '';
        this.state = 'content';
        this.sectionStart = true;
        return;
      case TOOL_CALL_OPEN:
        this.heldSpace = '';
        this.call = new ToolCallBodyParser();
        this.state = 'toolCall';
        return;
      case TOOL_CALL_CLOSE:
        this.closeCall(updates, TOOL_CALL_CLOSE);
        return;
    }
  }

  /** Leading whitespace of the answer after reasoning is dropped; the rest is content as is. */
  private emitContent(text: string, updates: ChoiceUpdate[]): void {
    if (this.sectionStart) {
      const firstVisible = text.search(/\S/);
      if (firstVisible === -1 && this.options.reasoning !== 'off') return;
      this.sectionStart = false;
      if (this.options.reasoning !== 'off') text = text.slice(firstVisible);
    }
    if (text !== '') updates.push({ type: 'delta', delta: { content: text } });
  }

  /** Reasoning without its surrounding whitespace: leading whitespace dropped, trailing whitespace held until more follows. */
  private emitReasoning(text: string, updates: ChoiceUpdate[]): void {
    let visible = this.heldSpace + text;
    if (this.sectionStart) {
      const firstVisible = visible.search(/\S/);
      if (firstVisible === -1) {
        this.heldSpace = '';
        return;
      }
      visible = visible.slice(firstVisible);
      this.sectionStart = false;
    }
    const trimmed = visible.trimEnd();
    this.heldSpace = visible.slice(trimmed.length);
    if (trimmed !== '') updates.push({ type: 'delta', delta: { reasoningContent: trimmed } });
  }

  private callEvents(events: CallEvent[], updates: ChoiceUpdate[]): void {
    const limit = this.options.maxToolCalls ?? Infinity;
    for (const event of events) {
      if (event.type === 'start') {
        this.calls++;
        if (this.calls > limit) continue;
        const id = this.options.newCallId?.() ?? newCallId();
        updates.push({ type: 'delta', delta: { toolCall: { index: this.calls - 1, id, name: event.name, arguments: '' } } });
      } else if (this.calls <= limit && event.text !== '') {
        updates.push({ type: 'delta', delta: { toolCall: { index: this.calls - 1, arguments: event.text } } });
      }
    }
  }

  /** `</tool_call>` (or the end of the text inside a call): report a call that only parses whole, or give the text back. */
  private closeCall(updates: ChoiceUpdate[], closing: string): void {
    const call = this.call!;
    this.call = undefined;
    const whole = call.end();
    if (whole === undefined) {
      this.state = 'content';
      this.sectionStart = false;
      this.emitContent(TOOL_CALL_OPEN + call.rawBody + closing, updates);
      return;
    }
    this.callEvents(whole, updates);
    this.countCompleteCall();
    this.state = 'afterToolCalls';
    this.heldSpace = '';
  }

  private countCompleteCall(): void {
    if (this.calls <= (this.options.maxToolCalls ?? Infinity)) this.completeCalls++;
  }

  /** Generation ended: release what the scanner held back and settle an unfinished section. */
  private endOfText(): ChoiceUpdate[] {
    const updates: ChoiceUpdate[] = [];
    const rest = this.scanner.flush();
    if (rest !== '') this.text(rest, updates);
    if (this.state === 'toolCall') {
      // Cut off inside a call (max_tokens): a started call stays as far as it got; an unreadable one is text.
      if (!this.call!.hasStarted) this.closeCall(updates, '');
      else if (this.call!.isComplete) this.countCompleteCall();
    } else if (this.state === 'awaitThink' && this.heldSpace !== '') {
      this.emitContent(this.heldSpace, updates);
    }
    this.heldSpace = '';
    return updates;
  }
}

function newCallId(): string {
  return `call_${randomUUID().replaceAll('-', '').slice(0, 24)}`;
}
