/**
 * One served model's deployments (upstream servers, the local engine) behind one ChatEngine: each request goes to the
 * best deployment (balancer.ts), failing over to the next before the response's first byte when a deployment fails in
 * a way worth retrying; deployments that keep failing are ejected for a while (health.ts).
 */
import type { ChatRequest } from '../../core/chat-request.js';
import { DeploymentFailure, type ChatEngine, type EngineDescription, type EngineRun, type EngineStatus } from '../../core/engine.js';
import type { Log } from '../../core/log.js';
import { KilnError } from '../../errors/catalog.js';
import { ActiveChecks } from './active-checks.js';
import { Balancer, type Slot } from './balancer.js';
import { exhaustedError, noRoomError } from './exhausted.js';
import { DeploymentHealth } from './health.js';
import { prefixKey } from './prefix-key.js';
import { RoomWaiters } from './room-waiters.js';
import { RoutedRun } from './routed-run.js';

export interface Deployment {
  /** Safe to log (never a URL). */
  name: string;
  engine: ChatEngine;
  /** Share of the load relative to the others. */
  weight: number;
  /** Choices it runs at once (for a local engine: its capacity). */
  maxConcurrency: number;
}

export interface RoutingPolicy {
  prefixAffinity: boolean;
  /** Deployments tried for one request at most (each at most once). */
  maxAttempts: number;
  /** No further attempt starts once this long has passed since the first began. */
  retryBudgetMs: number;
  failureThreshold: number;
  ejectMs: number;
  maxEjectMs: number;
  /** 0: no active checks. */
  healthCheckIntervalMs: number;
}

export interface RouterHooks {
  log: Log;
  /** Capacity grew (a deployment readmitted, a slot freed): the service's admission lets waiters in. */
  onCapacityChange(): void;
  /** The clock (tests may pass their own); default Date.now. */
  now?(): number;
}

export interface DeploymentStats {
  name: string;
  state: 'healthy' | 'ejected' | 'probing';
  outstanding: number;
  /** Requests started on it (after failover, the deployment that served). */
  served: number;
  /** Failures counted against it since start-up. */
  failures: number;
  /** Failures since its last success (what ejects it). */
  consecutiveFailures: number;
}

export class Router implements ChatEngine {
  readonly description: EngineDescription;
  private readonly slots: Slot[];
  private readonly balancer: Balancer;
  private readonly checks: ActiveChecks | undefined;
  private readonly now: () => number;
  /** Requests failing over onto full deployments, waiting for a slot. */
  private readonly room = new RoomWaiters();

  constructor(
    readonly label: string,
    private readonly deployments: Deployment[],
    readonly policy: RoutingPolicy,
    readonly hooks: RouterHooks,
  ) {
    if (deployments.length === 0) throw new Error(`router '${label}' has no deployment`);
    this.now = hooks.now ?? Date.now;
    const events = { log: hooks.log, onCapacityChange: () => this.capacityChanged(), now: this.now };
    this.slots = deployments.map((deployment) => ({
      deployment,
      name: deployment.name,
      weight: deployment.weight,
      health: new DeploymentHealth(deployment.name, policy, events),
      outstanding: 0,
      served: 0,
      credit: 0,
    }));
    this.balancer = new Balancer(this.slots, policy.prefixAffinity);
    this.checks = policy.healthCheckIntervalMs > 0 ? new ActiveChecks(this.slots, policy.healthCheckIntervalMs) : undefined;
    const limits = deployments.map((deployment) => deployment.engine.description.maxChoices);
    const maxChoices = limits.every((limit) => limit !== undefined) ? Math.max(...limits) : undefined;
    this.description = {
      name: `router:${label}`,
      supportsImages: false,
      ...(maxChoices !== undefined ? { maxChoices, maxChoicesReason: 'the most any of its deployments runs' } : {}),
    };
  }

  /**
   * Choices the deployments in service run at once. A deployment due for a probe counts 1 — the one probe request it
   * may take — so that admission does not let in a crowd that only a readmission could serve; readmission then reports
   * the rest through onCapacityChange. An ejected one counts nothing.
   */
  capacity(): number {
    let total = 0;
    for (const slot of this.slots) {
      const state = slot.health.state;
      if (state === 'healthy') total += slot.deployment.maxConcurrency;
      else if (state === 'probing') total += 1;
    }
    return total;
  }

  /** A local deployment's status when the model has one (its memory and idle time), else `upstream`. */
  status(): EngineStatus {
    for (const { engine } of this.deployments) {
      const status = engine.status?.();
      if (status !== undefined && status.state !== 'upstream') return status;
    }
    return { state: 'upstream' };
  }

  /** Every deployment ejected and none due for a probe yet: answer at once instead of queueing. */
  unavailable(): KilnError | undefined {
    let soonest = Infinity;
    for (const slot of this.slots) {
      const due = slot.health.dueAt;
      if (due === undefined || slot.health.state !== 'ejected') return undefined;
      soonest = Math.min(soonest, due);
    }
    const seconds = Math.max(1, Math.ceil((soonest - this.now()) / 1000));
    return new KilnError('modelUnavailable', {
      message: `No healthy deployment serves '${this.label}' right now; it is being retried. Please retry in ${seconds} s.`,
      retryAfterSeconds: seconds,
    });
  }

  async start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    signal.throwIfAborted();
    const key = this.policy.prefixAffinity && this.slots.length > 1 ? prefixKey(request) : undefined;
    const tried = new Set<Slot>();
    const failures: DeploymentFailure[] = [];
    const began = this.now();
    const attempts = Math.max(1, this.policy.maxAttempts);
    while (tried.size < attempts && (tried.size === 0 || this.now() - began < this.policy.retryBudgetMs)) {
      const slot = this.balancer.pick(request.n, key, tried);
      if (slot === undefined) {
        // Every deployment left is full. Admission counts the whole model's capacity, not a failover's second slot,
        // so a request failing over may find the others full: it waits for room within the retry budget.
        const left = this.policy.retryBudgetMs - (this.now() - began);
        if (left <= 0 || !this.balancer.mayTake(request.n, tried)) break;
        await this.room.wait(left, signal);
        continue;
      }
      tried.add(slot);
      const run = await this.attempt(slot, request, signal, failures);
      if (run !== undefined) return run;
    }
    if (failures.length > 0) throw exhaustedError(this.label, failures);
    throw this.unavailable() ?? noRoomError(this.label);
  }

  stats(): DeploymentStats[] {
    return this.slots.map((slot) => ({
      name: slot.name,
      state: slot.health.state,
      outstanding: slot.outstanding,
      served: slot.served,
      failures: slot.health.failures,
      consecutiveFailures: slot.health.consecutiveFailures,
    }));
  }

  /** Stops the router's timers. The engines are not the router's to close: local ones are shared between routers. */
  async close(): Promise<void> {
    this.checks?.close();
    for (const slot of this.slots) slot.health.close();
    this.room.wake();
  }

  /**
   * One deployment's try: the run, or undefined after a retryable failure (recorded in `failures`). Anything else is
   * thrown: a non-retryable failure's error, the abort's reason, or the request's own fault (e.g. a local engine's
   * 400), which says nothing about the deployment's health.
   */
  private async attempt(slot: Slot, request: ChatRequest, signal: AbortSignal, failures: DeploymentFailure[]): Promise<EngineRun | undefined> {
    const n = request.n;
    const probe = slot.health.routed();
    slot.outstanding += n;
    let run: EngineRun;
    try {
      run = await slot.deployment.engine.start(request, signal);
    } catch (error) {
      this.release(slot, n);
      if (signal.aborted) {
        if (probe) slot.health.probeAbandoned();
        throw signal.reason;
      }
      if (!(error instanceof DeploymentFailure)) {
        if (probe) slot.health.probeAbandoned();
        throw error;
      }
      const fields = { deployment: slot.name, code: error.error.entry.code, status: error.error.status, retryable: error.retryable };
      // A rate limit or a refusal of the request is the deployment working as it should: not worth a warning each.
      if (error.unhealthy) this.hooks.log.warn(fields, 'deployment attempt failed');
      else this.hooks.log.debug(fields, 'deployment attempt refused');
      // The server answered (a 429, a 400 of its own): alive, if busy or picky.
      if (error.unhealthy) slot.health.failed(error.error.entry.code);
      else if (probe) slot.health.readmit('probe');
      if (!error.retryable) throw error.error;
      failures.push(error);
      return undefined;
    }
    slot.served++;
    if (probe) slot.health.readmit('probe');
    return new RoutedRun(run, slot.name, n, signal, {
      released: () => this.release(slot, 1),
      failed: (error) => {
        this.hooks.log.warn({ deployment: slot.name, error: error instanceof KilnError ? error.entry.code : 'stream_error' }, 'deployment failed mid-stream');
        slot.health.failed('mid-stream');
      },
      settled: (clean) => {
        if (clean) slot.health.succeeded();
      },
    });
  }

  private release(slot: Slot, choices: number): void {
    slot.outstanding -= choices;
    this.capacityChanged();
  }

  private capacityChanged(): void {
    this.room.wake();
    this.hooks.onCapacityChange();
  }
}
