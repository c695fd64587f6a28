/**
 * Consistent hashing with bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
 * 2018): each deployment owns points on a ring in proportion to its weight; a key walks clockwise to the first
 * deployment that can take the request without exceeding `c` times its fair share of the load in flight. A hot key
 * (one popular conversation opening) thus spills to the next deployments on the ring instead of overloading one, and
 * adding or ejecting a deployment moves only the keys that were on it.
 */
import { ringPoint } from './prefix-key.js';

/** Points per deployment of average weight: enough for an even split of keys among a handful of deployments. */
const POINTS_PER_MEAN_WEIGHT = 100;
/** How far above its fair share of the load in flight a deployment may go to keep its keys (the paper's c). */
export const LOAD_BOUND = 1.25;

export interface RingMember {
  name: string;
  weight: number;
}

export class HashRing<T extends RingMember> {
  private readonly points: number[] = [];
  private readonly owners: T[] = [];

  constructor(private readonly members: readonly T[]) {
    const mean = members.reduce((sum, member) => sum + member.weight, 0) / Math.max(1, members.length);
    const placed: Array<{ point: number; owner: T }> = [];
    members.forEach((member, index) => {
      const count = Math.max(1, Math.round((POINTS_PER_MEAN_WEIGHT * member.weight) / mean));
      // Named points keep a deployment's keys where they were when others are added or reordered.
      const seen = members.slice(0, index).filter((other) => other.name === member.name).length;
      const id = seen === 0 ? member.name : `${member.name}\u0000${seen}`;
      for (let i = 0; i < count; i++) placed.push({ point: ringPoint(`${id}#${i}`), owner: member });
    });
    placed.sort((a, b) => a.point - b.point);
    for (const { point, owner } of placed) {
      this.points.push(point);
      this.owners.push(owner);
    }
  }

  /** Members in the order a key meets them walking clockwise, each once. */
  *walk(key: number): Generator<T, void, undefined> {
    const seen = new Set<T>();
    const start = this.lowerBound(key);
    for (let i = 0; i < this.points.length && seen.size < this.members.length; i++) {
      const owner = this.owners[(start + i) % this.points.length]!;
      if (seen.has(owner)) continue;
      seen.add(owner);
      yield owner;
    }
  }

  private lowerBound(key: number): number {
    let low = 0;
    let high = this.points.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.points[middle]! < key) low = middle + 1;
      else high = middle;
    }
    return low === this.points.length ? 0 : low;
  }
}

/**
 * The most choices a deployment may hold to keep a key: `ceil(c · (total + n) · weight / totalWeight)`, where total is
 * the load in flight on the deployments that may take requests and n the request's choices.
 */
export function loadBound(weight: number, totalWeight: number, totalOutstanding: number, n: number): number {
  return Math.ceil((LOAD_BOUND * (totalOutstanding + n) * weight) / totalWeight);
}
