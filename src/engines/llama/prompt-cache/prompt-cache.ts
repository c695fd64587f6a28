/**
 * The host-memory tier of the prompt cache: sequence states (tokens + KV) kept as files in a RAM-backed directory —
 * node-llama-cpp saves and loads a sequence's state only through a file — and found by the longest token prefix of
 * a new prompt (prefix-index.ts), least recently used first out under a byte budget.
 *
 * The engine (llama-run.ts) looks up a prompt next to what its leased sequence holds, and keeps a sequence whose
 * tokens are about to be erased for an unrelated prompt.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LlamaContextSequence, Token } from 'node-llama-cpp';
import type { Log } from '../../../core/log.js';
import { processAlive } from '../../../core/process-alive.js';
import { PrefixIndex, type CachedPrefix } from './prefix-index.js';

export interface PromptCacheOptions {
  /** Where the cache makes its own directory of state files: default /dev/shm (RAM), else the temporary directory. */
  dir?: string;
  budgetBytes: number;
  /** Shorter prefixes are not worth a save and a restore: prefilling them costs less (measured, docs). */
  minTokens: number;
  log: Log;
}

const DIR_PREFIX = 'kiln-prompt-cache-';
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
  path: string;
  exact: number;
}

interface HeldHit extends CacheHit {
  entry: CachedPrefix<StoredState>;
}

export class PromptCache {
  private readonly index: PrefixIndex<StoredState>;

  private constructor(
    private readonly dir: string,
    private readonly options: PromptCacheOptions,
  ) {
    this.index = new PrefixIndex<StoredState>({
      budgetBytes: options.budgetBytes,
      onEvict: (entry) => void unlink(entry.value.path).catch(() => undefined),
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
    return new PromptCache(dir, options);
  }

  get minTokens(): number {
    return this.options.minTokens;
  }

  get bytes(): number {
    return this.index.bytes;
  }

  get entries(): number {
    return this.index.size;
  }

  /**
   * Keeps `sequence`'s current state unless it is too short or an entry already covers exactly its tokens. Holds the
   * context while the state is written (node-llama-cpp locks it), so callers choose when.
   */
  async keep(sequence: LlamaContextSequence, exact = 0): Promise<boolean> {
    const tokens = sequence.contextTokens;
    if (tokens.length < this.options.minTokens) return false;
    if (this.index.longestPrefix(tokens, tokens.length) !== undefined) return false;
    const path = join(this.dir, `${randomUUID()}.state`);
    try {
      const { fileSize } = await sequence.saveStateToFile(path);
      if (this.index.insert(tokens, { path, exact }, fileSize) !== undefined) return true;
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
    const match = this.index.longestShared(prompt, alreadyShared + this.options.minTokens);
    if (match === undefined) return undefined;
    const lease = this.index.pin(match.entry);
    const hit: HeldHit = { tokens: match.length, exact: match.entry.value.exact, entry: match.entry, release: () => lease.release() };
    return hit;
  }

  /**
   * Loads a hit into `sequence` (whatever it held goes) and releases the hit. Returns the tokens now in the sequence's
   * KV cache: the hit's length, or 0 when the state could not be loaded (the entry is dropped and logged; the caller
   * then prefills as if nothing was cached).
   */
  async restore(sequence: LlamaContextSequence, hit: CacheHit): Promise<number> {
    const { entry } = hit as HeldHit;
    try {
      // llama.cpp aborts the process on a state file cut short inside its data, so the size is checked first.
      const { size } = await stat(entry.value.path);
      if (size !== entry.bytes) throw new Error(`the state file has ${size} bytes, not the ${entry.bytes} written`);
      await sequence.loadStateFromFile(entry.value.path, { acceptRisk: true });
      const loaded = sequence.nextTokenIndex;
      if (loaded < hit.tokens) throw new Error(`the state holds ${loaded} tokens, fewer than the ${hit.tokens} matched`);
      if (loaded > hit.tokens) await sequence.eraseContextTokenRanges([{ start: hit.tokens, end: loaded }]);
      return hit.tokens;
    } catch (error) {
      this.options.log.warn({ err: (error as Error).message, tokens: hit.tokens }, 'prompt cache: a state could not be loaded; dropped');
      this.index.delete(entry);
      await sequence.clearHistory().catch(() => undefined);
      return 0;
    } finally {
      hit.release();
    }
  }

  async close(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}
