/**
 * Active health checks: every interval, each deployment's `probe` (an upstream's `GET /models`), bounded by a timeout.
 * A failed check counts as a failure; a passed one readmits an ejected deployment, so that a recovered replica comes
 * back without waiting for a request to be risked on it.
 */
import type { Slot } from './balancer.js';

/** A check that has not answered by then failed; never longer than the interval, so checks of one deployment never overlap. */
const CHECK_TIMEOUT_MS = 10_000;

export class ActiveChecks {
  private readonly timer: NodeJS.Timeout;
  private readonly running = new Map<Slot, AbortController>();

  constructor(
    private readonly slots: readonly Slot[],
    intervalMs: number,
  ) {
    const timeoutMs = Math.min(intervalMs, CHECK_TIMEOUT_MS);
    this.timer = setInterval(() => this.checkAll(timeoutMs), intervalMs);
    this.timer.unref();
  }

  close(): void {
    clearInterval(this.timer);
    for (const controller of this.running.values()) controller.abort();
    this.running.clear();
  }

  private checkAll(timeoutMs: number): void {
    for (const slot of this.slots) {
      if (slot.deployment.engine.probe === undefined || this.running.has(slot)) continue;
      void this.check(slot, timeoutMs);
    }
  }

  private async check(slot: Slot, timeoutMs: number): Promise<void> {
    const controller = new AbortController();
    this.running.set(slot, controller);
    const timer = setTimeout(() => controller.abort(new Error('health check timed out')), timeoutMs);
    let passed: boolean;
    try {
      await slot.deployment.engine.probe!(controller.signal);
      passed = !controller.signal.aborted;
    } catch {
      passed = false;
    } finally {
      clearTimeout(timer);
    }
    // Closed meanwhile: the verdict no longer matters.
    if (this.running.get(slot) !== controller) return;
    this.running.delete(slot);
    if (passed) slot.health.readmit('check');
    else slot.health.failed('health check', true);
  }
}
