/**
 * Lockstep decoding for one context's generating sequences.
 *
 * node-llama-cpp batches whatever decodes are queued when its dispatch runs. Left alone, sequences re-queue at
 * different moments (each one's sampling finishes separately), so a step decodes 7 of 8 sequences while the 8th is
 * still sampling — and that sampling then competes for the cores with the decode's threads. Measured on 2 cores,
 * 8 streams of a Qwen2.5-0.5B-shaped Q8_0 model: 225 ms per 7-token step unsynchronised, 114 ms per 8-token step in
 * lockstep (docs/architecture.md).
 *
 * So every generating sequence asks the barrier before queueing its next decode; the barrier lets them all go in
 * the same tick once each has arrived, and node-llama-cpp then decodes them as one batch (laid out in sequence order
 * by batch-order.ts). A sequence whose consumer stalls (a slow client) cannot hold the others for more than
 * `maxWaitMs`.
 */
export class StepBarrier {
  private members = 0;
  private waiting: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly maxWaitMs = 50) {}

  join(): void {
    this.members++;
  }

  leave(): void {
    this.members--;
    if (this.waiting.length > 0 && this.waiting.length >= this.members) this.release();
  }

  /** Resolves when every member has arrived (or the wait ran out). */
  arrive(): Promise<void> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      if (this.waiting.length >= this.members) this.release();
      else this.timer ??= setTimeout(() => this.release(), this.maxWaitMs);
    });
  }

  private release(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const released = this.waiting;
    this.waiting = [];
    for (const resolve of released) resolve();
  }
}
