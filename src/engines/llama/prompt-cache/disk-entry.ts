/**
 * One entry of the prompt cache's disk tier on disk: a directory holding `state` (the file llama.cpp wrote) and
 * `meta.json` (what it is valid for and how to check it).
 *
 * Nothing is fsynced. A cache entry is worth less than the time four syncs take per state (the disk tier fell behind
 * the states kept when it synced), and a sync buys nothing here: every load checks the state's length and crc32
 * against meta.json first, so an entry that a crash left half-written is dropped, never loaded.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { fileChunks, newFileWriter } from './file-chunks.js';
import { sameIdentity, type StateIdentity } from './state-identity.js';

export const STATE_FILE = 'state';
export const META_FILE = 'meta.json';

export interface DiskState {
  /** The entry's directory. */
  readonly dir: string;
  readonly exact: number;
  readonly length: number;
  readonly crc32: number;
}

export interface StateMeta {
  format: 1;
  identity: StateIdentity;
  /** Token ids as little-endian uint32, base64. */
  tokens: string;
  exact: number;
  length: number;
  crc32: number;
}

/**
 * An entry of this tier's identity key: undefined when its identity differs after all (left alone), an Error when it
 * is damaged.
 */
export async function readEntry(path: string, identity: StateIdentity) {
  const text = await readFile(join(path, META_FILE), 'utf8');
  const meta = JSON.parse(text) as Partial<StateMeta>;
  if (!sameIdentity(identity, meta.identity)) return undefined;
  const { exact, length, crc32: crc } = meta;
  if (meta.format !== 1 || typeof meta.tokens !== 'string' || !isCount(exact) || !isCount(length) || !isCount(crc)) {
    throw new Error('its meta.json is not one this version writes');
  }
  const tokens = decodeTokens(meta.tokens);
  if (tokens.length === 0) throw new Error('its meta.json lists no tokens');
  const { size } = await stat(join(path, STATE_FILE));
  if (size !== length) throw new Error(`the state file has ${size} bytes, not the ${length} written`);
  const { mtimeMs } = await stat(join(path, META_FILE));
  return { tokens, state: { dir: path, exact, length, crc32: crc }, bytes: length + Buffer.byteLength(text), lastUsed: mtimeMs };
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

export function encodeTokens(tokens: Uint32Array): string {
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

/** Copies `source` to a new file `target` in chunks (a state may be hundreds of MB); returns length and crc32. */
export async function copyWithCrc(source: string, target: string, cancelled: () => boolean): Promise<{ length: number; crc: number }> {
  const writer = newFileWriter(target);
  try {
    let length = 0;
    let crc = 0;
    for await (const chunk of fileChunks(source)) {
      if (cancelled()) throw new Error('cancelled');
      crc = crc32(chunk, crc);
      length += chunk.length;
      writer.write(chunk);
    }
    return { length, crc };
  } finally {
    writer.close();
  }
}

/** The crc32 of a file, read in chunks. */
export async function fileCrc(path: string): Promise<number> {
  let crc = 0;
  for await (const chunk of fileChunks(path)) crc = crc32(chunk, crc);
  return crc;
}
