/**
 * The disk tier of the prompt cache: states evicted from the RAM tier for its budget are copied here and survive a
 * restart. Each entry is a directory `<identity key>-<uuid>` holding `state` (the file llama.cpp wrote, loaded from
 * here as is) and `meta.json` (the identity it is valid for, its tokens, its exact length, and the state's length and
 * crc32). The directory is written under a temporary name, synced and renamed, so an entry is complete or absent.
 *
 * At open the tier hashes the model file (remembered across restarts; state-identity.ts) and indexes the entries made
 * for this identity; others are left alone (another model may share the directory) and temporaries of processes that
 * are gone are removed. Both run in the background: until they finish, the tier finds nothing and spills wait.
 *
 * llama.cpp checks neither length nor content (a short file aborts the process, a damaged one loads silently), so an
 * entry's length and crc32 are checked before every load.
 */
import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { LlamaContext } from 'node-llama-cpp';
import type { Log } from '../../../core/log.js';
import { processAlive } from '../../../core/process-alive.js';
import { PrefixIndex, type CachedPrefix, type PrefixMatch } from './prefix-index.js';
import { identityKey, sameIdentity, stateIdentity, type StateIdentity } from './state-identity.js';

export interface DiskTierOptions {
  dir: string;
  budgetBytes: number;
  /** The model file and the context whose states are kept: what an entry is tied to. */
  modelFile: string;
  context: LlamaContext;
}

export interface DiskState {
  /** The entry's directory. */
  readonly dir: string;
  readonly exact: number;
  readonly length: number;
  readonly crc32: number;
}

interface StateMeta {
  format: 1;
  identity: StateIdentity;
  /** Token ids as little-endian uint32, base64. */
  tokens: string;
  exact: number;
  length: number;
  crc32: number;
}

const STATE = 'state';
const META = 'meta.json';
/** `<name>.<pid>-<8 hex>.tmp`: anything being written, by the process named. */
const TEMPORARY = /\.(\d+)-[0-9a-f]{8}\.tmp$/;

export class DiskTier {
  readonly index: PrefixIndex<DiskState>;
  private readonly ready: Promise<StateIdentity | undefined>;
  private writes: Promise<void> = Promise.resolve();
  private pendingBytes = 0;
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
      log.warn({ dir: options.dir, err: (error as Error).message }, 'prompt cache: the disk tier could not open; states evicted from RAM are dropped');
      return undefined;
    });
  }

  get dir(): string {
    return this.options.dir;
  }

  /** Resolves once the tier has opened and every spill queued so far is written (or dropped). */
  async settled(): Promise<void> {
    await this.ready;
    let writes: Promise<void>;
    do {
      writes = this.writes;
      await writes;
    } while (writes !== this.writes);
  }

  lookup(prompt: ArrayLike<number>, minLength: number): PrefixMatch<DiskState> | undefined {
    return this.index.longestShared(prompt, minLength);
  }

  /**
   * The entry's state file, once its length and crc32 are what was written; throws otherwise. Reading it also warms
   * the page cache for the load that follows.
   */
  async verified(entry: CachedPrefix<DiskState>): Promise<string> {
    const path = join(entry.value.dir, STATE);
    const { size } = await stat(path);
    if (size !== entry.value.length) throw new Error(`the state file has ${size} bytes, not the ${entry.value.length} written`);
    let crc = 0;
    for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) crc = crc32(chunk as Buffer, crc);
    if (crc !== entry.value.crc32) throw new Error('the state file does not match its checksum: its bytes changed');
    // The meta file's mtime orders entries by last use when a restart rebuilds the index.
    const now = new Date();
    void utimes(join(entry.value.dir, META), now, now).catch(() => undefined);
    return path;
  }

  /**
   * Copies a state file evicted from the RAM tier into this tier in the background, then deletes the source. Dropped
   * instead (the source deleted at once) when the writes already queued hold `pendingLimit` bytes: a disk slower than
   * the evictions must not let the RAM tier's files pile up.
   */
  spill(source: string, tokens: Uint32Array, exact: number, bytes: number, pendingLimit: number): void {
    if (this.closed || this.pendingBytes + bytes > pendingLimit) {
      void unlink(source).catch(() => undefined);
      if (!this.closed) this.log.debug({ tokens: tokens.length }, 'prompt cache: a state evicted from RAM was dropped: the disk tier is behind');
      return;
    }
    this.pendingBytes += bytes;
    this.writes = this.writes
      .then(() => this.write(source, tokens, exact))
      .catch((error: unknown) => {
        this.log.warn({ err: (error as Error).message, tokens: tokens.length }, 'prompt cache: a state could not be written to disk');
      })
      .finally(() => {
        this.pendingBytes -= bytes;
        return unlink(source).catch(() => undefined);
      });
  }

  /** Finishes the write under way; queued ones are dropped. */
  async close(): Promise<void> {
    this.closed = true;
    await this.settled();
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

  private async write(source: string, tokens: Uint32Array, exact: number): Promise<void> {
    const identity = await this.ready;
    if (identity === undefined || this.closed) return;
    const name = `${identityKey(identity)}-${randomUUID()}`;
    const temporary = join(this.options.dir, `${name}.${process.pid}-${randomUUID().slice(0, 8)}.tmp`);
    const final = join(this.options.dir, name);
    let bytes: number;
    let state: DiskState;
    try {
      await mkdir(temporary);
      const { length, crc } = await copyWithCrc(source, join(temporary, STATE));
      const meta: StateMeta = { format: 1, identity, tokens: encodeTokens(tokens), exact, length, crc32: crc };
      const text = JSON.stringify(meta);
      await writeSynced(join(temporary, META), text);
      await syncDirectory(temporary);
      await rename(temporary, final);
      await syncDirectory(this.options.dir);
      bytes = length + Buffer.byteLength(text);
      state = { dir: final, exact, length, crc32: crc };
    } catch (error) {
      await rm(temporary, { recursive: true, force: true });
      throw error;
    }
    if (this.index.insert(tokens, state, bytes) === undefined) await rm(final, { recursive: true, force: true });
  }
}

/**
 * An entry of this tier's identity key: undefined when its identity differs after all (left alone), an Error when it
 * is damaged.
 */
async function readEntry(path: string, identity: StateIdentity) {
  const text = await readFile(join(path, META), 'utf8');
  const meta = JSON.parse(text) as Partial<StateMeta>;
  if (!sameIdentity(identity, meta.identity)) return undefined;
  const { exact, length, crc32: crc } = meta;
  if (meta.format !== 1 || typeof meta.tokens !== 'string' || !isCount(exact) || !isCount(length) || !isCount(crc)) {
    throw new Error('its meta.json is not one this version writes');
  }
  const tokens = decodeTokens(meta.tokens);
  if (tokens.length === 0) throw new Error('its meta.json lists no tokens');
  const { size } = await stat(join(path, STATE));
  if (size !== length) throw new Error(`the state file has ${size} bytes, not the ${length} written`);
  const { mtimeMs } = await stat(join(path, META));
  return { tokens, state: { dir: path, exact, length, crc32: crc }, bytes: length + Buffer.byteLength(text), lastUsed: mtimeMs };
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function encodeTokens(tokens: Uint32Array): string {
  const bytes = Buffer.alloc(tokens.length * 4);
  tokens.forEach((token, at) => bytes.writeUInt32LE(token, at * 4));
  return bytes.toString('base64');
}

function decodeTokens(text: string): Uint32Array {
  const bytes = Buffer.from(text, 'base64');
  if (bytes.length % 4 !== 0) throw new Error('its token list is not whole uint32s');
  const tokens = new Uint32Array(bytes.length / 4);
  for (let at = 0; at < tokens.length; at++) tokens[at] = bytes.readUInt32LE(at * 4);
  return tokens;
}

/** Copies `source` to a new file `target`, synced, in chunks (a state may be hundreds of MB); returns length and crc32. */
async function copyWithCrc(source: string, target: string): Promise<{ length: number; crc: number }> {
  const handle = await open(target, 'wx');
  try {
    let length = 0;
    let crc = 0;
    for await (const chunk of createReadStream(source, { highWaterMark: 1 << 20 })) {
      const data = chunk as Buffer;
      crc = crc32(data, crc);
      length += data.length;
      for (let written = 0; written < data.length; ) written += (await handle.write(data, written)).bytesWritten;
    }
    await handle.sync();
    return { length, crc };
  } finally {
    await handle.close();
  }
}

async function writeSynced(path: string, text: string): Promise<void> {
  const handle = await open(path, 'wx');
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes a rename or a new file in the directory durable. */
async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
