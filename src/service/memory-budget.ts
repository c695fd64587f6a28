/**
 * The memory local models may take together — host RAM, and VRAM when layers are offloaded to a GPU. A load reserves
 * its estimate first; when a budget would be exceeded, idle models are unloaded, least recently used first; when even that is not enough (models in use hold
 * the rest, or the model is larger than the whole budget) the request gets 503 naming the model and what it needs —
 * never a crash, never a machine swapping itself to death.
 */
import { KilnError } from '../errors/catalog.js';
import type { Log } from '../core/log.js';

/** What the budget needs from a loadable model. */
export interface BudgetMember {
  readonly name: string;
  /** Loaded, with no request holding it: may be unloaded to make room. */
  readonly evictable: boolean;
  /** When it last finished a request (for least-recently-used order). */
  readonly lastUsed: number;
  /** Unloads it now; resolves once its memory is released. */
  unloadNow(reason: string): Promise<void>;
}

const MIB = 1024 * 1024;

/** Memory a load takes: host RAM, and VRAM for the layers and caches offloaded to a GPU. */
export interface MemoryNeed {
  ram: number;
  vram: number;
}

/** Bytes each pool may hold; Infinity: no limit. */
export interface MemoryLimits {
  ram: number;
  /** Asked at the first reservation: the GPU's free memory is known once llama.cpp's runtime is up. */
  vram: () => Promise<number>;
}

const POOLS = ['ram', 'vram'] as const;
const POOL_NAMES = { ram: 'memory', vram: 'GPU memory' } as const;

export class MemoryBudget {
  private readonly reserved = new Map<BudgetMember, MemoryNeed>();
  private vramLimit: number | undefined;

  constructor(
    private readonly limits: MemoryLimits,
    private readonly log: Log,
  ) {}

  get limitBytes(): number {
    return this.limits.ram;
  }

  get usedBytes(): number {
    return this.used('ram');
  }

  private used(pool: keyof MemoryNeed): number {
    let used = 0;
    for (const need of this.reserved.values()) used += need[pool];
    return used;
  }

  /** Reserves `need` for `member`'s load, unloading idle models when needed; throws the 503 when it cannot fit. */
  async reserve(member: BudgetMember, need: MemoryNeed): Promise<void> {
    this.reserved.delete(member);
    const limit = { ram: this.limits.ram, vram: need.vram > 0 ? (this.vramLimit ??= await this.limits.vram()) : Infinity };
    for (const pool of POOLS) {
      if (need[pool] > limit[pool]) throw this.tooLarge(member, need, pool, limit[pool], `larger than the whole ${POOL_NAMES[pool]} budget`);
    }
    for (;;) {
      const short = POOLS.find((pool) => this.used(pool) + need[pool] > limit[pool]);
      if (short === undefined) break;
      // The least recently used idle model that holds some of what is short.
      const victim = [...this.reserved.entries()]
        .filter(([other, held]) => other.evictable && held[short] > 0)
        .sort(([a], [b]) => a.lastUsed - b.lastUsed)[0]?.[0];
      if (victim === undefined) throw this.tooLarge(member, need, short, limit[short], 'more than is free while the other models are in use', 5);
      this.log.info({ model: victim.name, for: member.name, needMiB: mib(need[short]), pool: short }, 'unloading an idle model to make room');
      await victim.unloadNow(`memory for '${member.name}'`);
      this.reserved.delete(victim);
    }
    this.reserved.set(member, need);
  }

  release(member: BudgetMember): void {
    this.reserved.delete(member);
  }

  private tooLarge(member: BudgetMember, need: MemoryNeed, pool: keyof MemoryNeed, limit: number, why: string, retryAfterSeconds?: number): KilnError {
    const budget = `${mib(limit)} MiB budget, ${mib(limit - this.used(pool))} MiB free`;
    return new KilnError('modelUnavailable', {
      message: `Model '${member.name}' needs about ${mib(need[pool])} MiB of ${POOL_NAMES[pool]}, ${why} (${budget}).${retryAfterSeconds !== undefined ? ' Please retry later.' : ''}`,
      retryAfterSeconds: retryAfterSeconds ?? 60,
    });
  }
}

function mib(bytes: number): number {
  return Math.ceil(bytes / MIB);
}
