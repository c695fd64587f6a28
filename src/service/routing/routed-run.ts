/**
 * A deployment's run as the router hands it out: events pass through unchanged, while the router learns when each
 * choice's generation ends (its slot is free again) and how (the deployment's health).
 */
import { RunWrapper, type EngineEvent, type EngineRun } from '../../core/engine.js';

export type RunOutcome = 'success' | 'failure' | 'neutral';

export interface RunListener {
  /** One choice's slot is free again. */
  released(): void;
  /** A choice threw while the request was live: the deployment's fault (reported once per run). */
  failed(error: unknown): void;
  /** Every choice has ended and none failed; `clean` when at least one finished or gave the reader what it wanted. */
  settled(clean: boolean): void;
}

type ChoiceState = 'pending' | 'running' | 'ended';

export class RoutedRun extends RunWrapper {
  private readonly states: ChoiceState[];
  private unsettled: number;
  private failure = false;
  private clean = false;

  constructor(
    inner: EngineRun,
    /** The deployment that serves this run (its name: safe to log). */
    private readonly served: string,
    choices: number,
    private readonly signal: AbortSignal,
    private readonly listener: RunListener,
  ) {
    super(inner);
    this.states = Array.from({ length: choices }, () => 'pending');
    this.unsettled = choices;
  }

  override get deployment(): string {
    return this.served;
  }

  choice(index: number): AsyncGenerator<EngineEvent, void, undefined> {
    return this.generate(index);
  }

  dispose(): void {
    this.inner.dispose();
    this.states.forEach((state, index) => {
      if (state === 'pending') this.end(index, 'neutral');
    });
  }

  private async *generate(index: number): AsyncGenerator<EngineEvent, void, undefined> {
    // Counted from the first pull: a generator that is never pulled never runs, and dispose releases its choice.
    const owned = this.states[index] === 'pending';
    if (owned) this.states[index] = 'running';
    let events = 0;
    let outcome: RunOutcome = 'neutral';
    let threw = false;
    try {
      for await (const event of this.inner.choice(index)) {
        events++;
        yield event;
      }
      outcome = 'success';
    } catch (error) {
      threw = true;
      // A client that went away (or the request's own deadline) is not the deployment's fault.
      if (!this.signal.aborted) {
        outcome = 'failure';
        if (owned && !this.failure) {
          this.failure = true;
          this.listener.failed(error);
        }
      }
      throw error;
    } finally {
      // The reader stopped early (a stop string matched): the deployment delivered what was asked.
      if (!threw && outcome === 'neutral' && events > 0 && !this.signal.aborted) outcome = 'success';
      if (owned) this.end(index, outcome);
    }
  }

  private end(index: number, outcome: RunOutcome): void {
    if (this.states[index] === 'ended') return;
    this.states[index] = 'ended';
    if (outcome === 'success') this.clean = true;
    this.unsettled--;
    this.listener.released();
    if (this.unsettled === 0 && !this.failure) this.listener.settled(this.clean);
  }
}
