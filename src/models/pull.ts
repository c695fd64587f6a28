/**
 * `kiln pull`: find what the hub (or a URL) publishes about a GGUF — its download URL, size and sha256 — and bring it
 * into the model cache with downloadVerified. A file already in place that matches is left alone.
 *
 * Hub metadata comes from @huggingface/hub: `pathsInfo` (POST <endpoint>/api/models/<repo>/paths-info/<rev>) gives the
 * LFS size and sha256, `fileDownloadInfo` (a 1-byte ranged GET on <endpoint>/<repo>/resolve/<rev>/<path>) the URL to
 * download and the X-Linked-Size/X-Linked-ETag the resolve endpoint publishes. fileDownloadInfo needs the server to
 * honour Range (it reads the size from Content-Range): where it does not, the size and sha256 from pathsInfo are
 * enough and the resolve URL is the one pathsInfo's hub documents (`<endpoint>/<repo>/resolve/<rev>/<path>`).
 */
import { fileDownloadInfo, HubApiError, InvalidApiResponseFormatError, pathsInfo } from '@huggingface/hub';
import { stat } from 'node:fs/promises';
import { describeNetworkError, downloadVerified, DownloadError, partialPath, verifyFile, type RemoteFile } from './download.js';
import { cachedPath, hubEndpoint, hubToken, parseSource, type ModelSource } from './hub-source.js';
import { formatBytes, silentProgress, type ProgressReporter } from './progress.js';

export class PullError extends Error {
  override name = 'PullError';
}

export interface PullOptions {
  /** The model cache (see modelsDirectory). */
  modelsDir: string;
  /** Where the file goes instead of its cache path (a configured model's `file`). */
  dest?: string | undefined;
  env?: NodeJS.ProcessEnv;
  fetch?: typeof fetch;
  progress?: ProgressReporter;
  /** Resumed attempts after an interrupted transfer within this pull (default 2). */
  retries?: number;
  retryDelayMs?: number;
}

export interface PullResult {
  path: string;
  size: number;
  sha256: string | undefined;
  /** Whether the file was already there and matched: nothing was downloaded. */
  alreadyPresent: boolean;
  /** Whether the published sha256 was checked (false when the server publishes none, or could not be reached). */
  verified: boolean;
  bytesReceived: number;
  resumedFrom: number;
  restarted: boolean;
  seconds: number;
}

const SHA256 = /^[0-9a-f]{64}$/i;

function unquote(etag: string | null | undefined): string | undefined {
  if (etag === null || etag === undefined) return undefined;
  const value = etag.replace(/^W\//, '').replace(/^"|"$/g, '');
  return SHA256.test(value) ? value.toLowerCase() : undefined;
}

function isNetworkError(error: unknown): boolean {
  // fetch rejects with a TypeError ('fetch failed', the reason in `cause`) when the server cannot be reached.
  return error instanceof TypeError;
}

/** Reads what the hub publishes about an hf: source; network failures surface as the caught error. */
async function hubRemote(source: Extract<ModelSource, { kind: 'hf' }>, endpoint: string, token: string | undefined, doFetch: typeof fetch): Promise<RemoteFile> {
  const credentials = token !== undefined ? { accessToken: token } : {};
  // The ranged GET's one byte (or, from a server that ignores Range, the whole file) is never read: drop the body.
  const headOnlyFetch: typeof fetch = async (input, init) => {
    const response = await doFetch(input, init);
    void response.body?.cancel().catch(() => {});
    return response;
  };
  let size: number | undefined;
  let sha256: string | undefined;
  let url: string | undefined;
  try {
    const [entry] = await pathsInfo({ repo: source.repo, paths: [source.path], revision: source.revision, hubUrl: endpoint, fetch: doFetch, ...credentials });
    if (entry === undefined || entry.type !== 'file') throw new PullError(`${source.text}: ${source.path} is not a file in ${source.repo} at revision ${source.revision}`);
    size = entry.lfs?.size ?? entry.size;
    if (entry.lfs !== undefined && SHA256.test(entry.lfs.oid)) sha256 = entry.lfs.oid.toLowerCase();
  } catch (error) {
    if (!(error instanceof HubApiError)) throw error;
    if (error.statusCode === 401 || error.statusCode === 403) throw new PullError(`${source.text}: the hub refused access (HTTP ${error.statusCode}): a gated or private repository needs HF_TOKEN`);
    if (error.statusCode === 404) throw new PullError(`${source.text}: no repository ${source.repo} (or revision ${source.revision}) on ${endpoint}`);
    // Other API errors: the resolve endpoint below may still answer.
  }
  try {
    const info = await fileDownloadInfo({ repo: source.repo, path: source.path, revision: source.revision, hubUrl: endpoint, fetch: headOnlyFetch, ...credentials });
    if (info === null) throw new PullError(`${source.text}: no file ${source.path} in ${source.repo} at revision ${source.revision}`);
    url = info.url;
    size ??= info.size;
    sha256 ??= unquote(info.etag);
    if (info.size !== size) throw new PullError(`${source.text}: the hub publishes two sizes for the file (${size} and ${info.size} bytes)`);
  } catch (error) {
    if (error instanceof HubApiError && (error.statusCode === 401 || error.statusCode === 403)) {
      throw new PullError(`${source.text}: the hub refused access (HTTP ${error.statusCode}): a gated or private repository needs HF_TOKEN`);
    }
    if (error instanceof HubApiError && error.statusCode === 404) throw new PullError(`${source.text}: no file ${source.path} in ${source.repo} at revision ${source.revision}`);
    if (!(error instanceof InvalidApiResponseFormatError) || size === undefined) throw error;
    // A server that ignores Range: fileDownloadInfo cannot read the size, pathsInfo already gave it.
  }
  url ??= resolveUrl(source, endpoint);
  return { url, size, sha256, headers: token !== undefined ? { authorization: `Bearer ${token}` } : {}, label: source.text };
}

/** The hub's documented download URL for a file (what fileDownloadInfo requests). */
export function resolveUrl(source: Extract<ModelSource, { kind: 'hf' }>, endpoint: string): string {
  return `${endpoint}/${source.repo}/resolve/${encodeURIComponent(source.revision)}/${source.path.split('/').map(encodeURIComponent).join('/')}`;
}

/** A plain URL: a HEAD for its size (Content-Length, or X-Linked-Size) and sha256 (X-Linked-ETag, as the hub sends). */
async function urlRemote(source: Extract<ModelSource, { kind: 'url' }>, doFetch: typeof fetch): Promise<RemoteFile> {
  const response = await doFetch(source.url, { method: 'HEAD', redirect: 'follow', headers: { 'accept-encoding': 'identity' } });
  if (response.status === 404) throw new PullError(`${source.text}: not found (HTTP 404)`);
  if (!response.ok) throw new PullError(`${source.text}: HTTP ${response.status}`);
  const linked = Number(response.headers.get('x-linked-size') ?? Number.NaN);
  const length = Number(response.headers.get('content-length') ?? Number.NaN);
  const size = Number.isFinite(linked) ? linked : Number.isFinite(length) ? length : undefined;
  const sha256 = unquote(response.headers.get('x-linked-etag'));
  return { url: source.url.href, size, sha256, label: source.text };
}

function unreachable(source: ModelSource, endpoint: string, dest: string, error: unknown): PullError {
  const where = source.kind === 'hf' ? `the Hugging Face hub at ${endpoint}` : source.url.origin;
  const download = source.kind === 'hf' ? resolveUrl(source, endpoint) : source.url.href;
  return new PullError(
    `could not reach ${where} (${describeNetworkError(error)}).\n` +
      `Check the network (and HF_ENDPOINT for a mirror), or place the file by hand: download\n  ${download}\nand save it as\n  ${dest}`,
  );
}

/** Pulls `sourceText` (hf:… or an http(s) URL) into the cache, or to `options.dest`. */
export async function pullModel(sourceText: string, options: PullOptions): Promise<PullResult> {
  const env = options.env ?? process.env;
  const doFetch = options.fetch ?? fetch;
  const progress = options.progress ?? silentProgress;
  let source: ModelSource;
  try {
    source = parseSource(sourceText);
  } catch (error) {
    throw new PullError((error as Error).message);
  }
  const dest = options.dest ?? cachedPath(source, options.modelsDir);
  const endpoint = hubEndpoint(env);
  const token = hubToken(env);
  const began = performance.now();

  let remote: RemoteFile;
  try {
    remote = source.kind === 'hf' ? await hubRemote(source, endpoint, token, doFetch) : await urlRemote(source, doFetch);
  } catch (error) {
    if (error instanceof PullError) throw error;
    if (error instanceof HubApiError) throw new PullError(`${source.text}: the hub answered HTTP ${error.statusCode}: ${error.message}`);
    if (isNetworkError(error)) {
      // Offline with the file already in place: keep it (it cannot be checked against the hub now).
      const present = await stat(dest).then((info) => info.isFile() ? info.size : undefined, () => undefined);
      if (present !== undefined) {
        progress.note(`${source.text}: the hub could not be reached; ${dest} is present (${formatBytes(present)}) but not verified`);
        return { path: dest, size: present, sha256: undefined, alreadyPresent: true, verified: false, bytesReceived: 0, resumedFrom: 0, restarted: false, seconds: (performance.now() - began) / 1000 };
      }
      throw unreachable(source, endpoint, dest, error);
    }
    throw error;
  }

  const existing = await verifyFile(dest, remote);
  if (existing.ok) {
    progress.note(`${source.text}: already present at ${dest} (${formatBytes(existing.size)}${existing.sha256 !== undefined ? ', sha256 verified' : ''})`);
    return { path: dest, size: existing.size, sha256: existing.sha256, alreadyPresent: true, verified: existing.sha256 !== undefined, bytesReceived: 0, resumedFrom: 0, restarted: false, seconds: (performance.now() - began) / 1000 };
  }
  if (existing.reason !== 'missing') progress.note(`${source.text}: ${dest} does not match the published file (${existing.reason}): downloading it again`);

  try {
    const result = await downloadVerified(remote, dest, { fetch: doFetch, progress, retries: options.retries ?? 2, retryDelayMs: options.retryDelayMs ?? 1000 });
    return { ...result, alreadyPresent: false, verified: remote.sha256 !== undefined, seconds: (performance.now() - began) / 1000 };
  } catch (error) {
    if (error instanceof DownloadError) {
      if (!error.kept && error.message.includes('cannot reach')) throw unreachable(source, endpoint, dest, error);
      throw new PullError(error.message);
    }
    throw error;
  }
}

export { partialPath };
