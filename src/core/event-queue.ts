/**
 * A bounded buffer between an engine's generation and the client that reads it. Generation must never wait on a
 * socket: sequences decode in lockstep, so one stalled reader would otherwise hold every other stream's next step.
 * The producer pushes without waiting; once the buffer is full it stops producing (an engine then takes its sequences
 * out of the lockstep) and waits until the consumer has taken the buffer down to half, closed it, or the request was
 * aborted. What bounds the wait itself is the transport's stall timeout and the request timeout (both abort).
 */
export class EventQueue<T> {
  private readonly items: T[] = [];
  private ended = false;
  private failure: { error: unknown } | undefined;
  private closedByConsumer = false;
  private wakeConsumer: (() => void) | undefined;
  private wakeProducer: (() => void) | undefined;

  constructor(
    readonly capacity: number,
    private readonly resumeBelow = Math.max(1, Math.floor(capacity / 2)),
  ) {}

  /** The producer should stop producing until `room()` resolves. */
  get full(): boolean {
    return this.items.length >= this.capacity;
  }

  /** The consumer stopped reading for good: producing more is pointless. */
  get closed(): boolean {
    return this.closedByConsumer;
  }

  push(item: T): void {
    if (this.ended || this.closedByConsumer) return;
    this.items.push(item);
    this.wake('consumer');
  }

  /** No more items; the consumer sees `error` (if any) after the items already pushed. */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    if (error !== undefined) this.failure = { error };
    this.wake('consumer');
  }

  /** Resolves once the consumer has made room (or closed), or when `signal` aborts; never rejects. */
  room(signal: AbortSignal): Promise<void> {
    if (this.items.length < this.resumeBelow || this.closedByConsumer || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        this.wakeProducer = undefined;
        resolve();
      };
      signal.addEventListener('abort', done, { once: true });
      this.wakeProducer = done;
    });
  }

  /** The items as they come; ending the iteration early closes the queue. */
  async *drain(): AsyncGenerator<T, void, undefined> {
    try {
      for (;;) {
        if (this.items.length > 0) {
          const item = this.items.shift()!;
          if (this.items.length < this.resumeBelow) this.wake('producer');
          yield item;
          continue;
        }
        if (this.ended) {
          if (this.failure !== undefined) throw this.failure.error;
          return;
        }
        await new Promise<void>((resolve) => (this.wakeConsumer = resolve));
      }
    } finally {
      this.closedByConsumer = true;
      this.items.length = 0;
      this.wake('producer');
    }
  }

  private wake(side: 'consumer' | 'producer'): void {
    const wake = side === 'consumer' ? this.wakeConsumer : this.wakeProducer;
    if (side === 'consumer') this.wakeConsumer = undefined;
    wake?.();
  }
}
