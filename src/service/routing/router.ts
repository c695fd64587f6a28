/**
 * CONTRACT STUB — to be implemented (balancing, health, retries/failover before the first byte).
 * One served model's deployments behind one ChatEngine.
 */
import type { ChatRequest } from '../../core/chat-request.js';
import type { ChatEngine, EngineDescription, EngineRun } from '../../core/engine.js';
import type { Log } from '../../core/log.js';

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
  maxAttempts: number;
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
}

export interface DeploymentStats {
  name: string;
  state: 'healthy' | 'ejected' | 'probing';
  outstanding: number;
  /** Requests started on it (after failover, the deployment that served). */
  served: number;
  failures: number;
}

export class Router implements ChatEngine {
  readonly description: EngineDescription;

  constructor(
    readonly label: string,
    private readonly deployments: Deployment[],
    readonly policy: RoutingPolicy,
    readonly hooks: RouterHooks,
  ) {
    this.description = { name: `router:${label}`, supportsImages: false };
  }

  capacity(): number {
    return this.deployments.reduce((sum, deployment) => sum + deployment.maxConcurrency, 0);
  }

  start(request: ChatRequest, signal: AbortSignal): Promise<EngineRun> {
    return this.deployments[0]!.engine.start(request, signal);
  }

  stats(): DeploymentStats[] {
    return [];
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.deployments.map((deployment) => deployment.engine.close()));
  }
}
