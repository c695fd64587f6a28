/**
 * Finds marker strings (`</think>`, `<tool_call>`, …) in text that arrives in arbitrary pieces. Plain text is released
 * as soon as it cannot be the start of a marker; only a suffix that could still grow into one is held back. Which
 * markers count can change after every hit (the caller's state machine decides), so the scanner asks for them anew.
 */
export type Scanned = { type: 'text'; text: string } | { type: 'marker'; marker: string };

export class MarkerScanner {
  private held = '';

  /**
   * Feeds `text`: `visit` gets the pieces in order — text between markers, and the markers — and may change which
   * markers count from there on (`markers` is asked again after every piece).
   */
  push(text: string, markers: () => readonly string[], visit: (piece: Scanned) => void): void {
    let pending = this.held + text;
    for (;;) {
      const active = markers();
      const hit = earliest(pending, active);
      if (hit === undefined) {
        const keep = longestPartial(pending, active);
        this.held = pending.slice(pending.length - keep);
        if (pending.length > keep) visit({ type: 'text', text: pending.slice(0, pending.length - keep) });
        return;
      }
      if (hit.at > 0) {
        // The text before the marker may change the state, and with it whether the marker counts: look again.
        visit({ type: 'text', text: pending.slice(0, hit.at) });
        pending = pending.slice(hit.at);
        continue;
      }
      pending = pending.slice(hit.marker.length);
      visit({ type: 'marker', marker: hit.marker });
    }
  }

  /** The end of the text: whatever was held back is plain text after all. */
  flush(): string {
    const rest = this.held;
    this.held = '';
    return rest;
  }
}

function earliest(text: string, markers: readonly string[]): { at: number; marker: string } | undefined {
  let best: { at: number; marker: string } | undefined;
  for (const marker of markers) {
    const at = text.indexOf(marker);
    if (at === -1) continue;
    if (best === undefined || at < best.at || (at === best.at && marker.length > best.marker.length)) best = { at, marker };
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper prefix of one of the markers. */
function longestPartial(text: string, markers: readonly string[]): number {
  let best = 0;
  for (const marker of markers) {
    for (let length = Math.min(marker.length - 1, text.length); length > best; length--) {
      if (text.endsWith(marker.slice(0, length))) {
        best = length;
        break;
      }
    }
  }
  return best;
}
