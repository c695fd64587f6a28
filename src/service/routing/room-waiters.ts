/** Requests waiting for a deployment's slot to free up: woken all at once to pick again, or given up after a while. */
export class RoomWaiters {
  private readonly waiting = new Set<() => void>();

  /** Resolves at the next wake or after `ms`; rejects with the signal's reason when the request is aborted. */
  wait(ms: number, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    return new Promise<void>((resolve, reject) => {
      const settle = (error?: { reason: unknown }) => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        this.waiting.delete(wake);
        if (error === undefined) resolve();
        else reject(error.reason);
      };
      const wake = () => settle();
      const onAbort = () => settle({ reason: signal.reason });
      const timer = setTimeout(wake, ms);
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.add(wake);
    });
  }

  get size(): number {
    return this.waiting.size;
  }

  wake(): void {
    for (const wake of [...this.waiting]) wake();
  }
}
