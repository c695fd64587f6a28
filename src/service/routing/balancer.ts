/**
 * Which deployment takes a request: weighted least outstanding choices, or, with prefix affinity, the deployment that
 * the conversation's opening hashes to (hash-ring.ts) as long as that keeps it within its bounded load.
 */
import type { DeploymentHealth } from './health.js';
import { HashRing, loadBound } from './hash-ring.js';
import type { Deployment } from './router.js';

/** A deployment with what the router tracks about it. */
export interface Slot {
  readonly deployment: Deployment;
  readonly name: string;
  readonly weight: number;
  readonly health: DeploymentHealth;
  /** Choices routed here whose generation has not ended (or that were not released by the run's dispose). */
  outstanding: number;
  /** Runs started here. */
  served: number;
  /** Smooth weighted round-robin credit: breaks ties between equally loaded deployments in proportion to weight. */
  credit: number;
}

export class Balancer {
  private readonly ring: HashRing<Slot> | undefined;

  constructor(
    private readonly slots: readonly Slot[],
    affinity: boolean,
  ) {
    this.ring = affinity && slots.length > 1 ? new HashRing(slots) : undefined;
  }

  /**
   * The best deployment for `n` choices that is not in `tried`, or undefined when none may take it. A deployment takes
   * it when its health admits a request and it has room (`outstanding + n ≤ maxConcurrency`, or it is idle: like
   * admission, a request larger than a deployment runs alone there). When none has room for all `n` choices, the least
   * loaded one below its maxConcurrency takes them anyway (the deployment queues the surplus: better than failing a
   * request that admission let in); when every one is full, undefined, and the router waits for a slot.
   */
  pick(n: number, key: number | undefined, tried: ReadonlySet<Slot>): Slot | undefined {
    const open = this.slots.filter((slot) => !tried.has(slot) && slot.health.admits() && fitsChoices(slot, n));
    const roomy = open.filter((slot) => hasRoom(slot, n));
    if (roomy.length > 0) return (key !== undefined ? this.byAffinity(key, n, roomy) : undefined) ?? leastOutstanding(roomy);
    const below = open.filter((slot) => slot.outstanding < slot.deployment.maxConcurrency);
    return below.length > 0 ? leastOutstanding(below) : undefined;
  }

  /** Whether a deployment not in `tried` could take `n` choices once it has room (in service, allows that many). */
  mayTake(n: number, tried: ReadonlySet<Slot>): boolean {
    return this.slots.some((slot) => !tried.has(slot) && slot.health.admits() && fitsChoices(slot, n));
  }

  private byAffinity(key: number, n: number, candidates: readonly Slot[]): Slot | undefined {
    if (this.ring === undefined) return undefined;
    // The fair share is taken over the deployments that may take requests now: ejected ones carry none of it.
    const admitted = this.slots.filter((slot) => slot.health.admits());
    const totalWeight = admitted.reduce((sum, slot) => sum + slot.weight, 0);
    const totalOutstanding = admitted.reduce((sum, slot) => sum + slot.outstanding, 0);
    for (const slot of this.ring.walk(key)) {
      if (!candidates.includes(slot)) continue;
      if (slot.outstanding + n <= loadBound(slot.weight, totalWeight, totalOutstanding, n)) return slot;
    }
    return undefined;
  }
}

function fitsChoices(slot: Slot, n: number): boolean {
  const most = slot.deployment.engine.description.maxChoices;
  return most === undefined || n <= most;
}

function hasRoom(slot: Slot, n: number): boolean {
  return slot.outstanding + n <= slot.deployment.maxConcurrency || slot.outstanding === 0;
}

/** Lowest outstanding/weight; ties by smooth weighted round-robin, so sequential requests follow the weights too. */
function leastOutstanding(candidates: readonly Slot[]): Slot {
  let tied: Slot[] = [];
  for (const slot of candidates) {
    const best = tied[0];
    // a/wa vs b/wb without division.
    const order = best === undefined ? -1 : slot.outstanding * best.weight - best.outstanding * slot.weight;
    if (order < 0) tied = [slot];
    else if (order === 0) tied.push(slot);
  }
  if (tied.length === 1) return tied[0]!;
  let chosen = tied[0]!;
  let totalWeight = 0;
  for (const slot of tied) {
    slot.credit += slot.weight;
    totalWeight += slot.weight;
    if (slot.credit > chosen.credit) chosen = slot;
  }
  chosen.credit -= totalWeight;
  return chosen;
}
