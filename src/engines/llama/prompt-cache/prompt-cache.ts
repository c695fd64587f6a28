/**
 * The host-memory tier of the prompt cache: sequence states (tokens + KV) kept as files in a RAM-backed directory —
 * node-llama-cpp saves and loads a sequence's state only through a file — and found by the longest token prefix of
 * a new prompt (prefix-index.ts), least recently used first out under a byte budget.
 *
 * With a disk tier (disk-tier.ts), every state kept here is also written there in the background (write-through),
 * and a lookup searches both; closing keeps what the engine's sequences hold and waits a while for the writes, so a
 * restart finds them. The engine (llama-run.ts) looks up a prompt next to what its leased sequence holds, and keeps a
 * sequence whose tokens are about to be erased for an unrelated prompt.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdir, readdir, rm, statfs, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { LlamaContextSequence, Token } from 'node-llama-cpp';
import type { Log } from '../../../core/log.js';
import { processAlive } from '../../../core/process-alive.js';
import { DiskTier, type DiskState, type DiskTierOptions, type DiskWrite } from './disk-tier.js';
import { PrefixIndex, type CachedPrefix } from './prefix-index.js';

export interface PromptCacheOptions {
  /** Where the cache makes its own directory of state files: default /dev/shm (RAM), else the temporary directory. */
  dir?: string;
  /** Unset: llama-server's default (8 GiB), or half the free space where the files go when that is less. */
  budgetBytes?: number;
  /** Shorter prefixes are not worth a save and a restore: prefilling them costs less (measured, docs). */
  minTokens: number;
  /** Where states evicted from RAM go, to survive a restart; none when unset. */
  disk?: DiskTierOptions;
  log: Log;
}

/** llama-server's `--cache-ram` default. */
const DEFAULT_RAM_BUDGET = 8 * 2 ** 30;

/** How long closing waits for the disk tier's writes; what is left then is dropped and logged. */
const CLOSE_WRITE_LIMIT_MS = 10_000;

const DIR_PREFIX = 'kiln-prompt-cache-';
/** How long a model's load waits for its disk tier to open. */
const DISK_OPEN_WAIT_MS = 5_000;
const orphanSweeps = new Map<string, Promise<void>>();

/**
 * Directories a killed Kiln left behind: on /dev/shm they hold memory until the machine restarts. A directory is an
 * orphan when the process named in it is gone.
 */
async function removeOrphans(base: string, log: Log): Promise<void> {
  const names = await readdir(base).catch(() => [] as string[]);
  for (const name of names) {
    const pid = Number(/^kiln-prompt-cache-(\d+)-/.exec(name)?.[1]);
    if (!Number.isInteger(pid) || pid === process.pid || processAlive(pid)) continue;
    await rm(join(base, name), { recursive: true, force: true });
    log.info({ dir: name }, 'prompt cache: removed the states of a Kiln process that is gone');
  }
}

/** A cached prefix found for a prompt, held (not evictable) until restored or released. */
export interface CacheHit {
  readonly tokens: number;
  /** The entry's leading tokens computed in whole aligned prefill chunks, as given to keep. */
  readonly exact: number;
  release(): void;
}

interface StoredState {
  readonly path: string;
  readonly exact: number;
  /** Its write to the disk tier, queued or done; unset without one. */
  write?: DiskWrite | undefined;
}

/** A sequence whose state closing keeps, with its exact length (see keep). */
export interface HeldSequence {
  readonly sequence: LlamaContextSequence;
  readonly exact: number;
}

type HeldHit = CacheHit & ({ tier: 'ram'; entry: CachedPrefix<StoredState> } | { tier: 'disk'; entry: CachedPrefix<DiskState> });

export interface PromptCacheStats {
  ramBytes: number;
  ramEntries: number;
  ramBudgetBytes: number;
  diskBytes: number;
  diskEntries: number;
  diskBudgetBytes: number;
}

export class PromptCache {
  private readonly index: PrefixIndex<StoredState>;

  private constructor(
    private readonly dir: string,
    budgetBytes: number,
    private readonly options: PromptCacheOptions,
    private readonly disk: DiskTier | undefined,
  ) {
    this.index = new PrefixIndex<StoredState>({
      budgetBytes,
      onEvict: (entry, reason) => {
        // Written or queued: not written again. A replaced or deleted state is stale or broken: a write of it not
        // yet begun is dropped.
        if (entry.value.write !== undefined) entry.value.write.release(reason !== 'budget');
        else void unlink(entry.value.path).catch(() => undefined);
      },
    });
  }

  static async open(options: PromptCacheOptions): Promise<PromptCache> {
    const base = options.dir ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir());
    // Once per directory and process: every model load opens a cache.
    let sweep = orphanSweeps.get(base);
    if (sweep === undefined) orphanSweeps.set(base, (sweep = removeOrphans(base, options.log)));
    await sweep;
    const dir = join(base, `${DIR_PREFIX}${process.pid}-${randomUUID().slice(0, 8)}`);
    await mkdir(dir, { recursive: true });
    let budgetBytes = options.budgetBytes;
    if (budgetBytes === undefined) {
      // On tmpfs the free space is memory (Docker's /dev/shm is 64 MiB by default): leave half of it to others.
      const { bavail, bsize } = await statfs(dir);
      budgetBytes = Math.min(DEFAULT_RAM_BUDGET, Math.floor((bavail * bsize) / 2));
      options.log.info({ dir: base, budgetMb: Math.floor(budgetBytes / 2 ** 20) }, 'prompt cache: RAM tier sized by default');
    }
    const disk = options.disk === undefined ? undefined : new DiskTier(options.disk, options.log);
    // A restart's first requests are the ones the disk tier is for: the load waits for its index a little. Hashing a
    // model file met for the first time may take longer (a large GGUF); that goes on in the background.
    if (disk !== undefined) {
      const waiting = new AbortController();
      await Promise.race([disk.opened(), delay(DISK_OPEN_WAIT_MS, undefined, { signal: waiting.signal }).catch(() => undefined)]);
      waiting.abort();
    }
    return new PromptCache(dir, budgetBytes, options, disk);
  }

  get minTokens(): number {
    return this.options.minTokens;
  }

  /** Bytes in the RAM tier. */
  get bytes(): number {
    return this.index.bytes;
  }

  /** Entries in the RAM tier. */
  get entries(): number {
    return this.index.size;
  }

  stats(): PromptCacheStats {
    const disk = this.disk?.index;
    return {
      ramBytes: this.index.bytes,
      ramEntries: this.index.size,
      ramBudgetBytes: this.index.budgetBytes,
      diskBytes: disk?.bytes ?? 0,
      diskEntries: disk?.size ?? 0,
      diskBudgetBytes: disk?.budgetBytes ?? 0,
    };
  }

  /** Resolves once the disk tier (if any) has opened and the writes queued so far are done. */
  async settled(): Promise<void> {
    await this.disk?.settled();
  }

  /**
   * Keeps `sequence`'s current state unless it is too short or an entry already covers exactly its tokens (with as
   * many exact ones). `exact`: the leading tokens whose KV was computed in full aligned prefill chunks, returned with
   * a hit. Holds the context while the state is written (node-llama-cpp locks it), so callers choose when. With a
   * disk tier the state is also queued for writing there.
   */
  async keep(sequence: LlamaContextSequence, exact = 0): Promise<boolean> {
    const tokens = sequence.contextTokens;
    if (tokens.length < this.options.minTokens) return false;
    const existing = this.index.longestPrefix(tokens, tokens.length);
    if (existing !== undefined && existing.entry.value.exact >= exact) return false;
    const path = join(this.dir, `${randomUUID()}.state`);
    try {
      const { fileSize } = await sequence.saveStateToFile(path);
      const entry = this.index.insert(tokens, { path, exact }, fileSize);
      if (entry !== undefined) {
        // States evicted from RAM before their write may wait for it up to the RAM budget again, no more.
        entry.value.write = this.disk?.writeThrough(path, entry.tokens, exact, fileSize, this.index.budgetBytes);
        return true;
      }
    } catch (error) {
      this.options.log.warn({ err: (error as Error).message, tokens: tokens.length }, 'prompt cache: a state could not be saved');
    }
    await unlink(path).catch(() => undefined);
    return false;
  }

  /**
   * The cached state sharing the most leading tokens with `prompt`, when that beats `alreadyShared` (what the leased
   * sequence holds) by minTokens. It may go on past where the prompt parts from it: a conversation's cached turn ends
   * with the answer as generated, which the next prompt renders a little differently; restore cuts it back.
   */
  lookup(prompt: readonly Token[], alreadyShared = 0): CacheHit | undefined {
    const minLength = alreadyShared + this.options.minTokens;
    const ram = this.index.longestShared(prompt, minLength);
    // The disk tier only when it shares more: a RAM entry loads without a checksum pass over the file.
    const disk = this.disk?.lookup(prompt, Math.max(minLength, (ram?.length ?? 0) + 1));
    if (disk !== undefined) {
      const lease = this.disk!.index.pin(disk.entry);
      const hit: HeldHit = { tier: 'disk', tokens: disk.length, exact: disk.entry.value.exact, entry: disk.entry, release: () => lease.release() };
      return hit;
    }
    if (ram === undefined) return undefined;
    const lease = this.index.pin(ram.entry);
    const hit: HeldHit = { tier: 'ram', tokens: ram.length, exact: ram.entry.value.exact, entry: ram.entry, release: () => lease.release() };
    return hit;
  }

  /**
   * Loads a hit into `sequence` (whatever it held goes) and releases the hit. Returns the tokens now in the sequence's
   * KV cache: the hit's length, or 0 when the state could not be loaded (the entry is dropped and logged; the caller
   * then prefills as if nothing was cached).
   */
  async restore(sequence: LlamaContextSequence, hit: CacheHit): Promise<number> {
    const held = hit as HeldHit;
    try {
      // A disk entry is loaded from the disk tier's file rather than copied back into RAM: the read that checks it
      // leaves it in the page cache, and once the conversation goes on, `keep` puts its longer state in RAM anyway.
      let path: string;
      if (held.tier === 'disk') path = await this.disk!.verified(held.entry);
      else {
        path = this.checkedRamFile(held.entry);
        // Served from RAM: its copy on disk ages with it, not with its write (a lookup alone is no use).
        this.disk?.touch(held.entry.tokens);
      }
      await sequence.loadStateFromFile(path, { acceptRisk: true });
      const loaded = sequence.nextTokenIndex;
      if (loaded < hit.tokens) throw new Error(`the state holds ${loaded} tokens, fewer than the ${hit.tokens} matched`);
      if (loaded > hit.tokens) await sequence.eraseContextTokenRanges([{ start: hit.tokens, end: loaded }]);
      return hit.tokens;
    } catch (error) {
      this.options.log.warn({ err: (error as Error).message, tokens: hit.tokens, tier: held.tier }, 'prompt cache: a state could not be loaded; dropped');
      if (held.tier === 'disk') this.disk!.index.delete(held.entry);
      else this.index.delete(held.entry);
      await sequence.clearHistory().catch(() => undefined);
      return 0;
    } finally {
      hit.release();
    }
  }

  /**
   * With a disk tier: keeps what `sequences` hold (idle by now) and waits up to CLOSE_WRITE_LIMIT_MS for the writes,
   * so that a restart finds them. Then the RAM tier's files go. Without one, only the files go.
   */
  async close(sequences: readonly HeldSequence[] = []): Promise<void> {
    if (this.disk !== undefined) {
      for (const { sequence, exact } of sequences) await this.keep(sequence, exact);
      await this.disk.close(CLOSE_WRITE_LIMIT_MS);
    }
    await rm(this.dir, { recursive: true, force: true });
  }

  /**
   * llama.cpp aborts the process on a state file cut short inside its data, so the size is checked first — at once:
   * an asynchronous stat would queue on libuv's thread pool behind the model's decodes (bin/kiln.cjs sizes the pool
   * one thread per model), adding a decode step to the request's time to first token. On tmpfs it takes microseconds.
   */
  private checkedRamFile(entry: CachedPrefix<StoredState>): string {
    const { size } = statSync(entry.value.path);
    if (size !== entry.bytes) throw new Error(`the state file has ${size} bytes, not the ${entry.bytes} written`);
    return entry.value.path;
  }
}
