/**
 * The host memory local models may take together. A load reserves its estimate first; when the budget would be
 * exceeded, idle models are unloaded, least recently used first; when even that is not enough (models in use hold
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

export class MemoryBudget {
  private readonly reserved = new Map<BudgetMember, number>();

  constructor(
    /** Bytes; Infinity: no budget. */
    readonly limitBytes: number,
    private readonly log: Log,
  ) {}

  get usedBytes(): number {
    let used = 0;
    for (const bytes of this.reserved.values()) used += bytes;
    return used;
  }

  /** Reserves `bytes` for `member`'s load, unloading idle models when needed; throws the 503 when it cannot fit. */
  async reserve(member: BudgetMember, bytes: number): Promise<void> {
    this.reserved.delete(member);
    if (bytes > this.limitBytes) throw this.tooLarge(member, bytes, 'larger than the whole memory budget');
    while (this.usedBytes + bytes > this.limitBytes) {
      const victim = [...this.reserved.keys()].filter((other) => other.evictable).sort((a, b) => a.lastUsed - b.lastUsed)[0];
      if (victim === undefined) throw this.tooLarge(member, bytes, 'more than is free while the other models are in use', 5);
      this.log.info({ model: victim.name, for: member.name, needMiB: mib(bytes) }, 'unloading an idle model to make room');
      await victim.unloadNow(`memory for '${member.name}'`);
      this.reserved.delete(victim);
    }
    this.reserved.set(member, bytes);
  }

  release(member: BudgetMember): void {
    this.reserved.delete(member);
  }

  private tooLarge(member: BudgetMember, bytes: number, why: string, retryAfterSeconds?: number): KilnError {
    const budget = `${mib(this.limitBytes)} MiB budget, ${mib(this.limitBytes - this.usedBytes)} MiB free`;
    return new KilnError('modelUnavailable', {
      message: `Model '${member.name}' needs about ${mib(bytes)} MiB of memory, ${why} (${budget}).${retryAfterSeconds !== undefined ? ' Please retry later.' : ''}`,
      retryAfterSeconds: retryAfterSeconds ?? 60,
    });
  }
}

function mib(bytes: number): number {
  return Math.ceil(bytes / MIB);
}
