/**
 * One deployment's circuit breaker: `failureThreshold` consecutive failures eject it for a while; once that while is
 * over it is due for a probe (one request at most in flight there); the probe's answer readmits it, a failed probe
 * ejects it again for twice as long (up to `maxEjectMs`).
 *
 * What counts:
 * - failure: a start that failed with `DeploymentFailure.unhealthy`, a choice that threw mid-stream while the request
 *   was not aborted, a failed active check.
 * - readmission (leaving `ejected`/`probing`): a probe request whose start resolved — the server answered, so a
 *   recovered replica takes its full share after one first token instead of after one whole generation — or a passed
 *   active check.
 * - success (resets the consecutive failures and the backoff): a run whose choices ended without a deployment fault.
 *   A mere start does not reset the count: a server that answers and then breaks every stream must still be ejected.
 */
import type { Log } from '../../core/log.js';

export type HealthState = 'healthy' | 'ejected' | 'probing';

export interface HealthSettings {
  failureThreshold: number;
  ejectMs: number;
  maxEjectMs: number;
}

export interface HealthEvents {
  log: Log;
  /** The deployment may take requests again (due for a probe, or readmitted). */
  onCapacityChange(): void;
  now(): number;
}

export class DeploymentHealth {
  private ejected = false;
  private ejectedUntil = 0;
  /** Ejections since the last success: the next ejection lasts ejectMs · 2^level. */
  private level = 0;
  private consecutive = 0;
  private total = 0;
  private probeInFlight = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly name: string,
    private readonly settings: HealthSettings,
    private readonly events: HealthEvents,
  ) {}

  get state(): HealthState {
    if (!this.ejected) return 'healthy';
    return this.events.now() >= this.ejectedUntil ? 'probing' : 'ejected';
  }

  get failures(): number {
    return this.total;
  }

  get consecutiveFailures(): number {
    return this.consecutive;
  }

  /** When an ejected deployment becomes due for a probe (ms since the epoch); undefined when not ejected. */
  get dueAt(): number | undefined {
    return this.ejected ? this.ejectedUntil : undefined;
  }

  /** Whether a request may be routed here now (healthy, or due for a probe that nobody is running yet). */
  admits(): boolean {
    const state = this.state;
    return state === 'healthy' || (state === 'probing' && !this.probeInFlight);
  }

  /** A request was routed here: when the deployment is due for a probe, this request is the probe. */
  routed(): boolean {
    if (this.state !== 'probing') return false;
    this.probeInFlight = true;
    return true;
  }

  /** The probe request ended without a verdict (the client went away, the request itself was at fault). */
  probeAbandoned(): void {
    this.probeInFlight = false;
  }

  /** The deployment answered a probe request (its start resolved), or passed an active check. */
  readmit(why: 'probe' | 'check'): void {
    this.probeInFlight = false;
    if (!this.ejected) return;
    this.ejected = false;
    this.consecutive = 0;
    this.clearTimer();
    this.events.log.info({ deployment: this.name, by: why }, 'deployment readmitted');
    this.events.onCapacityChange();
  }

  /** A run ended without the deployment's fault. */
  succeeded(): void {
    if (this.ejected) return; // other requests' failures ejected it meanwhile: its probe decides
    this.consecutive = 0;
    this.level = 0;
  }

  /**
   * A request failed here. `check`: an active check failed, which only counts while the deployment is in service (an
   * ejected one keeps its deadline rather than having it pushed back by every check).
   */
  failed(reason: string, check = false): void {
    this.total++;
    this.consecutive++;
    const state = this.state;
    if (state === 'ejected') return;
    if (state === 'probing') {
      if (check && this.probeInFlight) return; // the probe request in flight decides
      this.eject(reason);
      return;
    }
    if (this.consecutive >= this.settings.failureThreshold) this.eject(reason);
  }

  close(): void {
    this.clearTimer();
  }

  private eject(reason: string): void {
    const ms = Math.min(this.settings.ejectMs * 2 ** this.level, this.settings.maxEjectMs);
    this.level++;
    this.ejected = true;
    this.probeInFlight = false;
    this.ejectedUntil = this.events.now() + ms;
    this.clearTimer();
    this.arm(ms);
    this.events.log.warn({ deployment: this.name, consecutiveFailures: this.consecutive, ejectMs: ms, reason }, 'deployment ejected');
  }

  /**
   * Capacity grows again when the probe becomes due: admission's waiters must hear of it. A timer may fire a little
   * before the clock says the time is up; it then waits the rest, so that the state has changed when they ask.
   */
  private arm(ms: number): void {
    this.timer = setTimeout(() => {
      const left = this.ejectedUntil - this.events.now();
      if (left > 0) return this.arm(left);
      this.timer = undefined;
      this.events.onCapacityChange();
    }, ms);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
