/**
 * Incremental stop-string matching. Text is released as soon as it cannot be the start of a stop string; only a
 * suffix that could still grow into one is held back, so a stop string split across tokens or chunks never leaks.
 */
export class StopMatcher {
  private readonly stops: readonly string[];
  private held = '';
  private stopped = false;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((stop) => stop.length > 0);
  }

  get hasStopped(): boolean {
    return this.stopped;
  }

  /** Feeds new text; returns the text that is now safe to emit. After a match, returns the text before it and stops. */
  push(text: string): string {
    if (this.stopped) return '';
    if (this.stops.length === 0) return text;
    const pending = this.held + text;
    // The match that completes first wins: that is where streaming generation would have stopped.
    let matchAt = -1;
    let matchEnd = Infinity;
    for (const stop of this.stops) {
      const at = pending.indexOf(stop);
      if (at === -1) continue;
      const end = at + stop.length;
      if (end < matchEnd || (end === matchEnd && at < matchAt)) {
        matchAt = at;
        matchEnd = end;
      }
    }
    if (matchAt !== -1) {
      this.stopped = true;
      this.held = '';
      return pending.slice(0, matchAt);
    }
    const keep = this.longestPartialMatch(pending);
    this.held = pending.slice(pending.length - keep);
    return pending.slice(0, pending.length - keep);
  }

  /** The end of generation: whatever was held back is plain text after all. */
  flush(): string {
    const rest = this.stopped ? '' : this.held;
    this.held = '';
    return rest;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  private longestPartialMatch(text: string): number {
    let best = 0;
    for (const stop of this.stops) {
      for (let length = Math.min(stop.length - 1, text.length); length > best; length--) {
        if (text.endsWith(stop.slice(0, length))) {
          best = length;
          break;
        }
      }
    }
    return best;
  }
}
