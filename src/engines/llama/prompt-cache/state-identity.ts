/**
 * What a saved sequence state is only valid for. llama.cpp rejects a state of another shape or KV layout cleanly, but
 * loads one saved by a same-shape model with other weights without complaint (docs/prompt-cache.md, "What makes a
 * state stale or broken"), so a state on disk is tied to the model file's content, the build that computed it and the
 * context's KV settings.
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFile, realpath, rename, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LlamaContext } from 'node-llama-cpp';
import { fileChunks } from './file-chunks.js';

export interface StateIdentity {
  /** sha256 of the GGUF file: size and mtime cannot tell two same-shape files apart. */
  readonly modelSha256: string;
  readonly nodeLlamaCpp: string;
  readonly llamaCppRelease: string;
  readonly buildType: string;
  /** The backend: its kernels compute the KV, so another backend's states would not match a prefill here. */
  readonly gpu: string;
  /**
   * As set on the context. `auto` is resolved inside llama.cpp (not visible here) from the build and devices, both
   * recorded; a mismatch would change the V layout, which llama.cpp rejects cleanly rather than misreading.
   */
  readonly flashAttention: string;
  readonly kvKeyType: number;
  readonly kvValueType: number;
}

/** The file in a disk tier's directory that remembers model hashes by path, size and mtime across restarts. */
const HASHES_FILE = 'model-hashes.json';

interface KnownHash {
  size: number;
  mtimeMs: number;
  sha256: string;
}

let packageVersion: Promise<string> | undefined;

/** node-llama-cpp's version, from its package.json (the package's exports do not include it). */
function nodeLlamaCppVersion(): Promise<string> {
  packageVersion ??= (async () => {
    const entry = fileURLToPath(import.meta.resolve('node-llama-cpp'));
    const manifest = JSON.parse(await readFile(join(dirname(entry), '..', 'package.json'), 'utf8')) as { version?: unknown };
    return String(manifest.version);
  })();
  return packageVersion;
}

export async function stateIdentity(context: LlamaContext, modelFile: string, hashDir: string): Promise<StateIdentity> {
  const llama = context.model.llama;
  return {
    modelSha256: await modelHash(modelFile, hashDir),
    nodeLlamaCpp: await nodeLlamaCppVersion(),
    llamaCppRelease: `${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release}`,
    buildType: llama.buildType,
    gpu: String(llama.gpu),
    flashAttention: String(context.flashAttention),
    kvKeyType: context.kvCacheKeyType,
    kvValueType: context.kvCacheValueType,
  };
}

/** A short key for the identity: entry names start with it, so other models' entries are skipped by name. */
export function identityKey(identity: StateIdentity): string {
  return createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 16);
}

export function sameIdentity(a: StateIdentity, b: unknown): boolean {
  if (typeof b !== 'object' || b === null) return false;
  const other = b as Record<string, unknown>;
  return (Object.keys(a) as Array<keyof StateIdentity>).every((key) => a[key] === other[key]);
}

/**
 * The file's sha256, remembered in `hashDir` by real path, size and mtime: hashing reads the whole file (about 0.4 s
 * for 700 MB from the page cache, file-chunks.ts), which a restart should not repeat. Processes sharing the directory may overwrite each other's record;
 * the loser hashes again next time.
 */
async function modelHash(file: string, hashDir: string): Promise<string> {
  const path = await realpath(file);
  const { size, mtimeMs } = await stat(path);
  const known = await readHashes(hashDir);
  const record = known[path];
  if (record !== undefined && record.size === size && record.mtimeMs === mtimeMs) return record.sha256;
  const hash = createHash('sha256');
  for await (const chunk of fileChunks(path)) hash.update(chunk);
  const sha256 = hash.digest('hex');
  const latest = await readHashes(hashDir);
  latest[path] = { size, mtimeMs, sha256 };
  const temporary = join(hashDir, `${HASHES_FILE}.${process.pid}-${randomUUID().slice(0, 8)}.tmp`);
  await writeFile(temporary, JSON.stringify(latest, null, 1));
  await rename(temporary, join(hashDir, HASHES_FILE));
  return sha256;
}

async function readHashes(hashDir: string): Promise<Record<string, KnownHash>> {
  try {
    const parsed = JSON.parse(await readFile(join(hashDir, HASHES_FILE), 'utf8')) as unknown;
    return typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, KnownHash>) : {};
  } catch {
    return {};
  }
}
