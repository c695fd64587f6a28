/**
 * The disk tier of the prompt cache: every state the RAM tier keeps is also copied here in the background
 * (write-through), so that it survives a restart. Each entry is a directory `<identity key>-<uuid>` holding `state`
 * (the file llama.cpp wrote, loaded from here as is) and `meta.json` (the identity it is valid for, its tokens, its
 * exact length, and the state's length and crc32; disk-entry.ts). The directory is written under a temporary name and
 * renamed, so an entry is complete or absent.
 *
 * Writes go one at a time, in order. The RAM tier's file is the source: a state evicted from RAM while its write is
 * queued stays on tmpfs until written. Such files are bounded in bytes: past the bound a write not yet begun is
 * dropped at the eviction rather than waited for, so a slow disk cannot make them pile up. A queued write is also
 * dropped when a longer state of the same conversation is queued after it (at least as exact): that one covers it.
 *
 * At open the tier hashes the model file (remembered across restarts; state-identity.ts) and indexes the entries made
 * for this identity; others are left alone (another model may share the directory) and temporaries of processes that
 * are gone are removed. Both run in the background: until they finish, the tier finds nothing and writes wait.
 *
 * llama.cpp checks neither length nor content (a short file aborts the process, a damaged one loads silently), so an
 * entry's length and crc32 are checked before every load.
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, rm, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { LlamaContext } from 'node-llama-cpp';
import type { Log } from '../../../core/log.js';
import { processAlive } from '../../../core/process-alive.js';
import { PrefixIndex, type CachedPrefix, type PrefixMatch } from './prefix-index.js';
import { copyWithCrc, encodeTokens, fileCrc, META_FILE, readEntry, STATE_FILE, type DiskState, type StateMeta } from './disk-entry.js';
import { identityKey, stateIdentity, type StateIdentity } from './state-identity.js';

export type { DiskState } from './disk-entry.js';

export interface DiskTierOptions {
  dir: string;
  budgetBytes: number;
  /** The model file and the context whose states are kept: what an entry is tied to. */
  modelFile: string;
  context: LlamaContext;
}



/**
 * A state queued for writing while the RAM tier holds its source file. The RAM tier calls `release` when its entry
 * goes: the file is deleted once no write reads it; with `cancel` (a stale or broken state), or when the files
 * released before being written already hold the bound, a write not yet begun is dropped.
 */
export interface DiskWrite {
  release(cancel: boolean): void;
}

interface Job {
  readonly source: string;
  readonly tokens: Uint32Array;
  readonly exact: number;
  /** The source file's length as saved: a copy of another length is refused. */
  readonly bytes: number;
  status: 'queued' | 'writing' | 'ended';
  /** Whether the source is deleted when the job ends: the RAM tier let go of it. */
  ownsSource: boolean;
  /** Bytes of sources released by the RAM tier before being written that `release` may leave behind. */
  readonly releasedLimit: number;
  /** Set to stop a job: it is not begun, its copy stops, or what it wrote is removed. */
  cancelled: boolean;
}

/** How many of the newest queued jobs a new one is compared with, to drop those it covers. */
const SUPERSEDE_SCAN = 64;
/** `<name>.<pid>-<8 hex>.tmp`: anything being written, by the process named. */
const TEMPORARY = /\.(\d+)-[0-9a-f]{8}\.tmp$/;

export class DiskTier {
  readonly index: PrefixIndex<DiskState>;
  private readonly ready: Promise<StateIdentity | undefined>;
  private readonly queue: Job[] = [];
  private current: Job | undefined;
  /** The loop writing the queue, while it runs. */
  private worker: Promise<void> | undefined;
  /** Bytes of the source files the RAM tier let go of whose jobs have not ended: files outside its budget. */
  private releasedBytes = 0;
  private closed = false;

  constructor(
    private readonly options: DiskTierOptions,
    private readonly log: Log,
  ) {
    this.index = new PrefixIndex<DiskState>({
      budgetBytes: options.budgetBytes,
      onEvict: (entry) => void rm(entry.value.dir, { recursive: true, force: true }).catch(() => undefined),
    });
    this.ready = this.start().catch((error: unknown) => {
      log.warn({ dir: options.dir, err: (error as Error).message }, 'prompt cache: the disk tier could not open; states are kept in RAM only');
      return undefined;
    });
  }

  get dir(): string {
    return this.options.dir;
  }

  /** Resolves once the tier has opened (or failed to): its entries are indexed and it can be searched. */
  async opened(): Promise<void> {
    await this.ready;
  }

  /** Resolves once the tier has opened and every write queued so far is done (or dropped). */
  async settled(): Promise<void> {
    await this.ready;
    while (this.worker !== undefined) await this.worker;
  }

  lookup(prompt: ArrayLike<number>, minLength: number): PrefixMatch<DiskState> | undefined {
    return this.index.longestShared(prompt, minLength);
  }

  /**
   * Marks the entry for exactly these tokens, if any, as just used: the RAM tier serves a state it holds too, and the
   * copy here should age with it, not with its write.
   */
  touch(tokens: ArrayLike<number>): void {
    const match = this.index.longestPrefix(tokens, tokens.length);
    if (match === undefined) return;
    const now = new Date();
    void utimes(join(match.entry.value.dir, META_FILE), now, now).catch(() => undefined);
  }

  /**
   * The entry's state file, once its length and crc32 are what was written; throws otherwise. Reading it also warms
   * the page cache for the load that follows.
   */
  async verified(entry: CachedPrefix<DiskState>): Promise<string> {
    const path = join(entry.value.dir, STATE_FILE);
    const { size } = statSync(path); // on the request's path: not queued behind a decode (file-chunks.ts)
    if (size !== entry.value.length) throw new Error(`the state file has ${size} bytes, not the ${entry.value.length} written`);
    const crc = await fileCrc(path);
    if (crc !== entry.value.crc32) throw new Error('the state file does not match its checksum: its bytes changed');
    // The meta file's mtime orders entries by last use when a restart rebuilds the index.
    const now = new Date();
    void utimes(join(entry.value.dir, META_FILE), now, now).catch(() => undefined);
    return path;
  }

  /**
   * Queues a copy of a state file the RAM tier keeps (write-through); the RAM tier keeps the file and calls `release`
   * when its entry goes. `releasedLimit`: how many bytes of files released before being written may wait for their
   * write; past it, `release` drops the write. Undefined once closed.
   */
  writeThrough(source: string, tokens: Uint32Array, exact: number, bytes: number, releasedLimit: number): DiskWrite | undefined {
    if (this.closed) return undefined;
    // The newest few only: a conversation's next state comes soon after its last, and a long queue stays cheap to scan.
    for (const queued of this.queue.slice(-SUPERSEDE_SCAN)) if (queued.exact <= exact && startsWith(tokens, queued.tokens)) this.cancel(queued);
    const job: Job = { source, tokens, exact, bytes, status: 'queued', ownsSource: false, releasedLimit, cancelled: false };
    this.queue.push(job);
    this.pump();
    return { release: (cancel) => this.release(job, cancel) };
  }

  /**
   * Takes no more writes and waits up to `limitMs` for the queued ones; what is left then is dropped (the write under
   * way stops at its next chunk) and logged.
   */
  async close(limitMs = 0): Promise<void> {
    this.closed = true;
    const began = performance.now();
    let timer: NodeJS.Timeout | undefined;
    const finished = await Promise.race([
      this.settled().then(() => true),
      new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), limitMs))),
    ]);
    clearTimeout(timer);
    if (finished) return;
    const left = [...(this.current !== undefined ? [this.current] : []), ...this.queue];
    for (const job of left) this.cancel(job);
    this.log.warn(
      { notWritten: left.length, bytes: left.reduce((sum, job) => sum + job.bytes, 0), limitMs, waitedMs: Math.round(performance.now() - began) },
      'prompt cache: states not written to disk before the time limit at close; dropped',
    );
  }

  private release(job: Job, cancel: boolean): void {
    if (job.ownsSource) return;
    job.ownsSource = true;
    if (job.status === 'ended') {
      void unlink(job.source).catch(() => undefined);
      return;
    }
    this.releasedBytes += job.bytes;
    if (cancel) this.cancel(job);
    else if (job.status === 'queued' && this.releasedBytes > job.releasedLimit) {
      this.cancel(job);
      this.log.debug({ tokens: job.tokens.length }, 'prompt cache: a state evicted from RAM was not written: the disk tier is behind');
    }
  }

  /** Stops a job: one queued ends now, one being written stops at its next step (`write` checks `cancelled`). */
  private cancel(job: Job): void {
    job.cancelled = true;
    if (job.status !== 'queued') return;
    this.queue.splice(this.queue.indexOf(job), 1);
    this.end(job);
  }

  private end(job: Job): void {
    job.status = 'ended';
    if (!job.ownsSource) return;
    this.releasedBytes -= job.bytes;
    void unlink(job.source).catch(() => undefined);
  }

  private pump(): void {
    if (this.worker !== undefined) return;
    this.worker = (async () => {
      for (let job = this.queue.shift(); job !== undefined; job = this.queue.shift()) {
        job.status = 'writing';
        this.current = job;
        try {
          await this.write(job);
        } catch (error) {
          if (!job.cancelled) {
            this.log.warn({ err: (error as Error).message, tokens: job.tokens.length }, 'prompt cache: a state could not be written to disk');
          }
        } finally {
          this.current = undefined;
          this.end(job);
        }
      }
    })().finally(() => {
      this.worker = undefined;
      // A job queued between the loop's last look and now.
      if (this.queue.length > 0) this.pump();
    });
  }

  private async start(): Promise<StateIdentity> {
    const { dir } = this.options;
    await mkdir(dir, { recursive: true });
    const identity = await stateIdentity(this.options.context, this.options.modelFile, dir);
    const key = identityKey(identity);
    const found: Array<{ tokens: Uint32Array; state: DiskState; bytes: number; lastUsed: number }> = [];
    for (const name of await readdir(dir)) {
      const path = join(dir, name);
      const temporary = TEMPORARY.exec(name);
      if (temporary !== null) {
        const pid = Number(temporary[1]);
        if (pid !== process.pid && !processAlive(pid)) await rm(path, { recursive: true, force: true });
        continue;
      }
      if (!name.startsWith(`${key}-`)) continue;
      const entry = await readEntry(path, identity).catch((error: unknown) => error as Error);
      if (entry === undefined) continue;
      if (entry instanceof Error) {
        this.log.warn({ entry: name, err: entry.message }, 'prompt cache: a damaged disk entry was removed');
        await rm(path, { recursive: true, force: true });
        continue;
      }
      found.push(entry);
    }
    // Least recently used first, so that the index's own order (and so its eviction) continues from before.
    found.sort((a, b) => a.lastUsed - b.lastUsed);
    for (const entry of found) this.index.insert(entry.tokens, entry.state, entry.bytes);
    this.log.info({ dir, entries: this.index.size, bytes: this.index.bytes }, 'prompt cache: disk tier ready');
    return identity;
  }

  private async write(job: Job): Promise<void> {
    const identity = await this.ready;
    if (identity === undefined || job.cancelled) return;
    // Already here, as exact (a state kept again after a restore, say): only its use is refreshed.
    const existing = this.index.longestPrefix(job.tokens, job.tokens.length);
    if (existing !== undefined && existing.entry.tokens.length === job.tokens.length && existing.entry.value.exact >= job.exact) return;
    const name = `${identityKey(identity)}-${randomUUID()}`;
    const temporary = join(this.options.dir, `${name}.${process.pid}-${randomUUID().slice(0, 8)}.tmp`);
    const final = join(this.options.dir, name);
    let bytes: number;
    let state: DiskState;
    try {
      // Synchronous, as the copy is (file-chunks.ts): metadata calls that take microseconds, not a decode step's wait.
      mkdirSync(temporary);
      const { length, crc } = await copyWithCrc(job.source, join(temporary, STATE_FILE), () => job.cancelled);
      // A state file of another length than saved is damaged, and a copy would pass the checks before a load.
      if (length !== job.bytes) throw new Error(`the state file has ${length} bytes, not the ${job.bytes} saved`);
      const meta: StateMeta = { format: 1, identity, tokens: encodeTokens(job.tokens), exact: job.exact, length, crc32: crc };
      const text = JSON.stringify(meta);
      writeFileSync(join(temporary, META_FILE), text, { flag: 'wx' });
      if (job.cancelled) throw new Error('cancelled');
      renameSync(temporary, final);
      bytes = length + Buffer.byteLength(text);
      state = { dir: final, exact: job.exact, length, crc32: crc };
    } catch (error) {
      await rm(temporary, { recursive: true, force: true });
      throw error;
    }
    if (job.cancelled || this.index.insert(job.tokens, state, bytes) === undefined) await rm(final, { recursive: true, force: true });
  }
}

/** Whether `tokens` begins with all of `prefix`. */
function startsWith(tokens: Uint32Array, prefix: Uint32Array): boolean {
  if (prefix.length > tokens.length) return false;
  for (let at = 0; at < prefix.length; at++) if (tokens[at] !== prefix[at]) return false;
  return true;
}

