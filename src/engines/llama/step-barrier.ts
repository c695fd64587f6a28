/**
 * Lockstep decoding for one context's generating sequences.
 *
 * node-llama-cpp batches whatever decodes are queued when its dispatch runs. Left alone, sequences re-queue at
 * different moments (each one's sampling finishes separately), so a step decodes 7 of 8 sequences while the 8th is
 * still sampling — and that sampling then competes for the cores with the decode's threads. Measured on 2 cores,
 * 8 streams of a Qwen2.5-0.5B-shaped Q8_0 model: 225 ms per 7-token step unsynchronised, 114 ms per 8-token step in
 * lockstep (docs/architecture.md).
 *
 * So a generating sequence asks the barrier before queueing its next one-token step, and the barrier releases the
 * waiting ones together once no other member is still busy with a step of its own (being decoded, or with its
 * consumer); node-llama-cpp then decodes them as one batch, laid out in sequence order by batch-order.ts. Members
 * evaluating a prompt are not waited for: a prefill spans several decodes, and the others keep generating alongside
 * it. A member that is still preparing its prompt, or whose own work between two steps is slow, holds the others for at
 * most `maxWaitMs`; a member never waits on its client, whose reading is decoupled by a bounded buffer (llama-run.ts:
 * a choice whose reader falls behind leaves the lockstep until the reader catches up). Groups that drift apart fall
 * back into step at the next release, because waiting members also
 * wait for members mid-step. Members mid-step are always waited for, however long the decode takes: were they not
 * (as once when the timeout counted from arrival), a step longer than `maxWaitMs` — a bigger model, a slower machine —
 * splits the members into two groups that take turns for ever, each decoding while the other samples (measured on the
 * 2-core VM on a slow day: 165 ms steps of 4 tokens in turn instead of one 8-token step; 0.83× llama-server's tokens/s).
 *
 * A new request's prompt joins the same release, so it is decoded in the same batch as the others' next tokens
 * instead of alone just before them. A request joins as soon as it holds its sequence, and the others wait for it
 * while it prepares (erasing the sequence's stale cache waits for node-llama-cpp's context lock, which the decode
 * loop holds for as long as steps keep coming: released members would keep the lock busy and push the new prompt
 * back step after step). Prompts are not held back for each other: they are prefilled one after another anyway
 * (batch-order.ts), so the first one to arrive starts at once.
 */
type State = 'new' | 'prefill' | 'step' | 'consumer' | 'waiting';

export class StepMember {
  state: State = 'new';
  /** Waiting for its first step: the prompt's evaluation. */
  firstStep = false;
  releasedBy = 0;
  release: (() => void) | undefined;

  constructor(private readonly barrier: StepBarrier) {}

  /** Call before asking the engine for the next token; resolves when this member may queue its step. */
  beforeStep(): Promise<void> {
    return this.barrier.arrive(this);
  }

  /** The next step evaluates a piece of the prompt: it is released like a prompt, which the others do not wait for. */
  expectPrompt(): void {
    this.state = 'new';
  }

  /** Call before evaluating a piece of the prompt without sampling (see expectPrompt). */
  beforePrefill(): Promise<void> {
    this.expectPrompt();
    return this.barrier.arrive(this);
  }

  /** Call when the engine returned the token: the member is now with its consumer. */
  afterStep(): void {
    this.barrier.stepped(this);
  }

  leave(): void {
    this.barrier.leave(this);
  }
}

export class StepBarrier {
  private readonly members = new Set<StepMember>();
  private timer: NodeJS.Timeout | undefined;
  private timerDeadline = 0;
  /** Releases so far; a member remembers the one that let it go. */
  private releases = 0;
  private lastStepped: { release: number; at: number } | undefined;
  /** Typical time between two members of one release getting their tokens: node-llama-cpp samples them one by one. */
  private samplingGapMs: number | undefined;

  constructor(
    private readonly maxWaitMs = 100,
    private readonly minPrefillGraceMs = 4,
  ) {}

  stepped(member: StepMember): void {
    // Only generation steps are timed: those of one release share a decode (a prompt may be left for the next one).
    if (member.state === 'step') {
      const now = performance.now();
      if (this.lastStepped?.release === member.releasedBy) {
        const gap = now - this.lastStepped.at;
        this.samplingGapMs = this.samplingGapMs === undefined ? gap : 0.8 * this.samplingGapMs + 0.2 * gap;
      }
      this.lastStepped = { release: member.releasedBy, at: now };
    }
    member.state = 'consumer';
    // Members waiting for this one now wait for its consumer, which may stall: bounded by maxWaitMs from here.
    this.releaseIfReady();
  }

  join(): StepMember {
    const member = new StepMember(this);
    this.members.add(member);
    return member;
  }

  leave(member: StepMember): void {
    if (!this.members.delete(member)) return;
    member.release?.();
    this.releaseIfReady();
  }

  arrive(member: StepMember): Promise<void> {
    return new Promise((resolve) => {
      member.firstStep = member.state === 'new';
      member.state = 'waiting';
      member.release = resolve;
      this.releaseIfReady();
    });
  }

  private releaseIfReady(): void {
    let waiting = 0;
    let prefilling = false;
    let stepping = false;
    let holding = false;
    for (const member of this.members) {
      if (member.state === 'waiting') waiting++;
      else if (member.state === 'step') stepping = true;
      else if (member.state === 'consumer' || member.state === 'new') holding = true;
      else prefilling = true;
    }
    if (waiting === 0) return;
    if (stepping) {
      // Back when their decode and sampling are done; then this runs again.
      this.cancelTimer();
      return;
    }
    if (holding) {
      this.releaseWithin(this.maxWaitMs);
      return;
    }
    if (prefilling) {
      // A prompt decoded with the last step may still be sampling its first token (after the others' tokens): give it
      // about two samplings' time to join, or the first step after a prefill runs twice (the quicker members alone,
      // then the rest).
      const grace = Math.min(this.maxWaitMs, Math.max(this.minPrefillGraceMs, 2 * (this.samplingGapMs ?? 0)));
      this.releaseWithin(grace);
      return;
    }
    this.release();
  }

  /** Releases the waiting members within `ms` at the latest (an earlier deadline already set stands). */
  private releaseWithin(ms: number): void {
    const deadline = performance.now() + ms;
    if (this.timer !== undefined && this.timerDeadline <= deadline) return;
    clearTimeout(this.timer);
    this.timerDeadline = deadline;
    this.timer = setTimeout(() => this.release(), ms);
  }

  private cancelTimer(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private release(): void {
    this.cancelTimer();
    this.releases++;
    for (const member of this.members) {
      if (member.state !== 'waiting') continue;
      // A prompt's evaluation spans several decodes: the others are not held for it.
      member.state = member.firstStep ? 'prefill' : 'step';
      member.firstStep = false;
      member.releasedBy = this.releases;
      const release = member.release!;
      member.release = undefined;
      release();
    }
  }
}
