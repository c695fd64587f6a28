/**
 * A resumable, verified download: bytes go to `<dest>.partial`, an interrupted transfer resumes with an HTTP Range
 * request (or restarts from zero when the server ignores Range), the result is checked against the published size and
 * sha256, and only then renamed to `dest` — a complete file is never replaced by, or confused with, a partial one.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { formatBytes, silentProgress, type ProgressReporter } from './progress.js';
import { processAlive } from '../core/process-alive.js';

export interface RemoteFile {
  url: string;
  /** Expected size in bytes, when published. */
  size?: number | undefined;
  /** Expected sha256 (hex), when published. */
  sha256?: string | undefined;
  /** Headers for the GET (Authorization for the hub). */
  headers?: Record<string, string>;
  /** How messages name the file. */
  label: string;
}

export interface DownloadOptions {
  fetch?: typeof fetch;
  progress?: ProgressReporter;
  /** Attempts after an interrupted transfer, each resuming where the last stopped (default 0). */
  retries?: number;
  retryDelayMs?: number;
}

export interface DownloadResult {
  path: string;
  size: number;
  sha256: string;
  /** Bytes received over the network in this call. */
  bytesReceived: number;
  /** Bytes a resumed partial already held when this call began. */
  resumedFrom: number;
  /** The server ignored a Range request and the download began again from zero. */
  restarted: boolean;
  seconds: number;
}

/** A download that failed; `kept` says whether the partial file was kept for a resume. */
export class DownloadError extends Error {
  override name = 'DownloadError';
  constructor(
    message: string,
    readonly kept: boolean,
  ) {
    super(message);
  }
}

export function partialPath(dest: string): string {
  return `${dest}.partial`;
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    const info = await stat(path);
    return info.isFile() ? info.size : undefined;
  } catch {
    return undefined;
  }
}

/** sha256 of a file's first `length` bytes (all of it by default), fed into `hash` when given. */
export async function hashFile(path: string, hash: Hash = createHash('sha256'), length?: number): Promise<Hash> {
  if (length === 0) return hash;
  const stream = createReadStream(path, { highWaterMark: 1 << 20, ...(length !== undefined ? { end: length - 1 } : {}) });
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash;
}

/** Checks a file on disk against the published size and sha256; the reason when it does not match. */
export async function verifyFile(path: string, expected: { size?: number | undefined; sha256?: string | undefined }): Promise<{ ok: boolean; size: number; sha256?: string; reason?: string }> {
  const size = await sizeOf(path);
  if (size === undefined) return { ok: false, size: 0, reason: 'missing' };
  if (expected.size !== undefined && size !== expected.size) return { ok: false, size, reason: `size is ${size} bytes, expected ${expected.size}` };
  if (expected.sha256 === undefined) return { ok: true, size };
  const sha256 = (await hashFile(path)).digest('hex');
  if (sha256 !== expected.sha256.toLowerCase()) return { ok: false, size, sha256, reason: `sha256 is ${sha256}, expected ${expected.sha256}` };
  return { ok: true, size, sha256 };
}

/** verifyFile for a file whose sha256 was computed as it was written. */
async function verifyHashed(path: string, sha256: string, expected: { size?: number | undefined; sha256?: string | undefined }): Promise<{ ok: boolean; size: number; sha256?: string; reason?: string }> {
  const size = (await sizeOf(path)) ?? 0;
  if (expected.size !== undefined && size !== expected.size) return { ok: false, size, sha256, reason: `size is ${size} bytes, expected ${expected.size}` };
  if (expected.sha256 !== undefined && sha256 !== expected.sha256.toLowerCase()) return { ok: false, size, sha256, reason: `sha256 is ${sha256}, expected ${expected.sha256}` };
  return { ok: true, size, sha256 };
}

function parseContentRange(value: string | null): { start: number; total: number | undefined } | undefined {
  const match = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(value ?? '');
  if (!match) return undefined;
  return { start: Number(match[1]), total: match[2] === '*' ? undefined : Number(match[2]) };
}

const sleep = (ms: number) => new Promise((resolvePromise) => setTimeout(resolvePromise, ms));

/**
 * Downloads `remote` to `dest` through `<dest>.partial`, resuming a partial left by an earlier run. On a transfer
 * error the partial stays (DownloadError with kept: true) unless retries remain; on a size or sha256 mismatch it is
 * removed and nothing is left at `dest`.
 */
export async function downloadVerified(remote: RemoteFile, dest: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  await mkdir(dirname(dest), { recursive: true });
  const release = await lockDownload(dest);
  try {
    return await downloadLocked(remote, dest, options);
  } finally {
    await release();
  }
}

/**
 * One download of a file at a time (two writers on one .partial would interleave their bytes): `<dest>.lock` holds
 * the pid of the process downloading it; a lock whose process is gone is taken over.
 */
async function lockDownload(dest: string): Promise<() => Promise<void>> {
  const lock = `${dest}.lock`;
  for (let attempt = 0; ; attempt += 1) {
    try {
      const handle = await open(lock, 'wx');
      try {
        await handle.writeFile(String(process.pid));
      } finally {
        await handle.close();
      }
      return () => rm(lock, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new DownloadError(`another pull is downloading ${dest} (${lock} is held)`, true);
        throw error;
      }
      const pid = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) {
        throw new DownloadError(`another pull (process ${pid}) is downloading ${dest}: wait for it to finish, or remove ${lock} if that process is not kiln`, true);
      }
      await rm(lock, { force: true });
    }
  }
}

async function downloadLocked(remote: RemoteFile, dest: string, options: DownloadOptions): Promise<DownloadResult> {
  const doFetch = options.fetch ?? fetch;
  const progress = options.progress ?? silentProgress;
  const partial = partialPath(dest);
  const began = performance.now();
  let bytesReceived = 0;
  let restarted = false;
  const initial = (await sizeOf(partial)) ?? 0;
  let attempt = 0;
  /** sha256 of the partial's bytes so far, kept up to date as they arrive (undefined: read the file to verify). */
  let hash: Hash | undefined;

  for (;;) {
    hash = undefined;
    let offset = (await sizeOf(partial)) ?? 0;
    if (remote.size !== undefined && offset > remote.size) {
      progress.note(`${remote.label}: the partial download is larger than the file (${offset} > ${remote.size} bytes): starting again`);
      await rm(partial, { force: true });
      offset = 0;
    }
    if (remote.size !== undefined && offset === remote.size && offset > 0) break;

    const headers: Record<string, string> = { ...remote.headers, 'accept-encoding': 'identity' };
    if (offset > 0) headers.range = `bytes=${offset}-`;
    let response: Response;
    try {
      response = await doFetch(remote.url, { headers, redirect: 'follow' });
    } catch (error) {
      throw new DownloadError(`${remote.label}: cannot reach ${new URL(remote.url).origin}: ${describeNetworkError(error)}`, offset > 0);
    }

    let append = false;
    if (offset > 0 && response.status === 206) {
      const range = parseContentRange(response.headers.get('content-range'));
      if (range === undefined || range.start !== offset) {
        await response.body?.cancel();
        progress.note(`${remote.label}: the server answered a different range (${response.headers.get('content-range')}): starting again from zero`);
        await rm(partial, { force: true });
        restarted = true;
        continue;
      }
      append = true;
      progress.note(`${remote.label}: resuming at ${formatBytes(offset)}`);
    } else if (offset > 0 && response.status === 416) {
      await response.body?.cancel();
      if (remote.size === undefined) break; // the partial already holds everything the server has: verify it
      progress.note(`${remote.label}: the server refused the resume range: starting again from zero`);
      await rm(partial, { force: true });
      restarted = true;
      continue;
    } else if (response.status === 200) {
      if (offset > 0) {
        progress.note(`${remote.label}: the server does not support resuming (HTTP 200 to a Range request): starting again from zero`);
        restarted = true;
      }
      offset = 0;
    } else {
      await response.body?.cancel();
      throw new DownloadError(`${remote.label}: ${remote.url} answered HTTP ${response.status}${response.status === 401 || response.status === 403 ? ' (a gated or private repository needs HF_TOKEN)' : ''}`, offset > 0);
    }
    if (response.body === null) throw new DownloadError(`${remote.label}: empty response from ${remote.url}`, offset > 0);

    const length = Number(response.headers.get('content-length') ?? Number.NaN);
    const total = remote.size ?? (Number.isFinite(length) ? offset + length : undefined);
    const running = append ? await hashFile(partial, createHash('sha256'), offset) : createHash('sha256');
    progress.start({ label: remote.label, total, offset });
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        running.update(chunk);
        bytesReceived += chunk.length;
        progress.advance(chunk.length);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(
        Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>, { highWaterMark: 1 << 20 }),
        counter,
        createWriteStream(partial, { flags: append ? 'a' : 'w', highWaterMark: 1 << 20 }),
      );
      progress.stop();
    } catch (error) {
      progress.stop();
      const have = (await sizeOf(partial)) ?? 0;
      if (attempt < (options.retries ?? 0)) {
        attempt += 1;
        progress.note(`${remote.label}: transfer interrupted at ${formatBytes(have)} (${describeNetworkError(error)}): retrying (${attempt}/${options.retries})`);
        await sleep(options.retryDelayMs ?? 1000);
        continue;
      }
      throw new DownloadError(
        `${remote.label}: the transfer was interrupted at ${formatBytes(have)}${remote.size !== undefined ? ` of ${formatBytes(remote.size)}` : ''} (${describeNetworkError(error)}); the partial download is kept at ${partial}: run the pull again to resume`,
        true,
      );
    }
    const have = (await sizeOf(partial)) ?? 0;
    if (remote.size !== undefined && have < remote.size) {
      if (attempt < (options.retries ?? 0)) {
        attempt += 1;
        progress.note(`${remote.label}: the response ended early at ${formatBytes(have)}: retrying (${attempt}/${options.retries})`);
        continue;
      }
      throw new DownloadError(`${remote.label}: the response ended early at ${have} of ${remote.size} bytes; the partial download is kept at ${partial}: run the pull again to resume`, true);
    }
    hash = running;
    break;
  }

  progress.note(`${remote.label}: verifying${remote.sha256 !== undefined ? ' sha256' : ' size'}`);
  const check = hash !== undefined ? await verifyHashed(partial, hash.digest('hex'), remote) : await verifyFile(partial, remote);
  if (!check.ok) {
    await rm(partial, { force: true });
    throw new DownloadError(`${remote.label}: the download does not match what the server published: ${check.reason}; the download was removed`, false);
  }
  // Make the bytes durable before the rename publishes them.
  const handle = await open(partial, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(partial, dest);
  const sha256 = check.sha256 ?? (await hashFile(dest)).digest('hex');
  return { path: dest, size: check.size, sha256, bytesReceived, resumedFrom: initial, restarted, seconds: (performance.now() - began) / 1000 };
}

/** `fetch failed` hides the reason in `cause`: ECONNREFUSED, ENOTFOUND, a TLS error... */
export function describeNetworkError(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  const code = cause?.code ?? (error as { code?: string }).code;
  const message = cause?.message ?? (error as Error).message ?? String(error);
  return code !== undefined && !message.includes(code) ? `${code}: ${message}` : message;
}
