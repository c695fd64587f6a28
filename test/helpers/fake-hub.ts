/**
 * A local stand-in for the Hugging Face hub (node:http): files under `/<owner>/<repo>/resolve/<rev>/<path>` with the
 * headers the hub sends (X-Linked-Size, X-Linked-ETag and ETag with the sha256, X-Repo-Commit), optionally through a
 * same-origin redirect to a "CDN" path; `POST /api/models/<owner>/<repo>/paths-info/<rev>` as @huggingface/hub calls
 * it; plain files under `/files/<name>` for URL sources. Faults are switchable per test: no Range support, one
 * transfer cut mid-way, a wrong published sha256.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HubFile {
  repo: string;
  path: string;
  revision?: string;
  data: Buffer;
}

export interface FakeHubOptions {
  /** Honour Range requests (default true). */
  range?: boolean;
  /** Cut the next GET of each file's body once after this many bytes (then serve normally). */
  failOnceAfter?: number;
  /** Publish a sha256 that does not match the bytes. */
  wrongSha256?: boolean;
  /** Answer resolve requests with a 302 to /cdn/… like the hub does (default false). */
  redirect?: boolean;
  /** Pause this long between 64 KiB chunks of a body (default 0). */
  chunkDelayMs?: number;
}

export interface HubRequest {
  method: string;
  url: string;
  range: string | undefined;
  authorization: string | undefined;
  status: number;
}

export interface FakeHub {
  url: string;
  options: FakeHubOptions;
  requests: HubRequest[];
  add(file: HubFile): string;
  /** Serve `data` at `/files/<name>` (no hub headers beyond Content-Length/ETag). */
  addPlain(name: string, data: Buffer): string;
  close(): Promise<void>;
}

interface Entry {
  data: Buffer;
  sha256: string;
  failed: boolean;
  hubHeaders: boolean;
}

export function sha256Of(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function startFakeHub(options: FakeHubOptions = {}): Promise<FakeHub> {
  const files = new Map<string, Entry>();
  const requests: HubRequest[] = [];
  const published = (entry: Entry) => (options.wrongSha256 ? sha256Of(Buffer.concat([entry.data, Buffer.from('x')])) : entry.sha256);

  const server: Server = createServer((request, response) => {
    const record: HubRequest = {
      method: request.method ?? 'GET',
      url: request.url ?? '/',
      range: request.headers.range,
      authorization: request.headers.authorization,
      status: 0,
    };
    requests.push(record);
    response.on('finish', () => (record.status = response.statusCode));
    response.on('close', () => (record.status ||= response.statusCode));
    handle(request, response).catch((error) => {
      if (!response.headersSent) response.writeHead(500).end(String(error));
      else response.destroy();
    });
  });

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://hub');
    const pathname = decodeURIComponent(url.pathname);
    const pathsInfo = /^\/api\/models\/([^/]+\/[^/]+)\/paths-info\/([^/]+)$/.exec(pathname);
    if (pathsInfo && request.method === 'POST') {
      const body = JSON.parse(await readBody(request)) as { paths: string[] };
      const [, repo, revision] = pathsInfo;
      if (![...files.keys()].some((key) => key.startsWith(`${repo}@${revision}:`))) {
        response.writeHead(404, { 'content-type': 'application/json', 'x-error-code': 'RepoNotFound' }).end(JSON.stringify({ error: 'Repository not found' }));
        return;
      }
      const result = body.paths.flatMap((path) => {
        const entry = files.get(`${repo}@${revision}:${path}`);
        if (entry === undefined) return [];
        return [{ type: 'file', path, size: entry.data.length, oid: sha256Of(Buffer.from(`blob ${path}`)).slice(0, 40), lfs: { oid: published(entry), size: entry.data.length, pointerSize: 134 } }];
      });
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(result));
      return;
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(pathname);
    const cdn = /^\/cdn\/([^/]+\/[^/]+)\/([^/]+)\/(.+)$/.exec(pathname);
    const plain = /^\/files\/(.+)$/.exec(pathname);
    const match = resolve ?? cdn;
    const key = match ? `${match[1]}@${match[2]}:${match[3]}` : plain ? `plain:${plain[1]}` : undefined;
    const entry = key !== undefined ? files.get(key) : undefined;
    if (entry === undefined) {
      response.writeHead(404, { 'x-error-code': 'EntryNotFound', 'content-type': 'text/plain' }).end('Entry not found');
      return;
    }
    const sha = published(entry);
    const linked: Record<string, string> = entry.hubHeaders
      ? { 'x-linked-size': String(entry.data.length), 'x-linked-etag': `"${sha}"`, 'x-repo-commit': '0123456789abcdef0123456789abcdef01234567' }
      : {};
    if (resolve && options.redirect) {
      response.writeHead(302, { ...linked, location: `/cdn/${match![1]}/${match![2]}/${match![3]}`, 'content-length': '0' }).end();
      return;
    }
    const headers: Record<string, string> = { ...linked, etag: `"${sha}"`, 'content-type': 'application/octet-stream' };
    if (options.range !== false) headers['accept-ranges'] = 'bytes';
    const size = entry.data.length;
    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = /^bytes=(\d+)-(\d*)$/.exec(request.headers.range ?? '');
    if (options.range !== false && range) {
      start = Number(range[1]);
      end = range[2] === '' ? size - 1 : Math.min(Number(range[2]), size - 1);
      if (start >= size) {
        response.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        return;
      }
      status = 206;
      headers['content-range'] = `bytes ${start}-${end}/${size}`;
    }
    headers['content-length'] = String(end - start + 1);
    response.writeHead(status, headers);
    if (request.method === 'HEAD') {
      response.end();
      return;
    }
    const cutAt = options.failOnceAfter !== undefined && !entry.failed && end - start + 1 > options.failOnceAfter ? options.failOnceAfter : undefined;
    if (cutAt !== undefined) entry.failed = true;
    let offset = start;
    const chunk = 64 * 1024;
    while (offset <= end) {
      const next = Math.min(offset + chunk, end + 1);
      if (cutAt !== undefined && next - start > cutAt) {
        const upTo = start + cutAt;
        if (upTo > offset) await write(response, entry.data.subarray(offset, upTo));
        // Let the bytes leave, then cut the connection mid-body.
        await new Promise((resolvePromise) => setTimeout(resolvePromise, 20));
        response.socket?.destroy();
        return;
      }
      await write(response, entry.data.subarray(offset, next));
      if (options.chunkDelayMs) await new Promise((resolvePromise) => setTimeout(resolvePromise, options.chunkDelayMs));
      offset = next;
    }
    response.end();
  }

  await new Promise<void>((resolvePromise) => server.listen(0, '127.0.0.1', resolvePromise));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: base,
    options,
    requests,
    add(file) {
      const revision = file.revision ?? 'main';
      files.set(`${file.repo}@${revision}:${file.path}`, { data: file.data, sha256: sha256Of(file.data), failed: false, hubHeaders: true });
      return `hf:${file.repo}${revision === 'main' ? '' : `@${revision}`}/${file.path}`;
    },
    addPlain(name, data) {
      files.set(`plain:${name}`, { data, sha256: sha256Of(data), failed: false, hubHeaders: false });
      return `${base}/files/${name}`;
    },
    close: () =>
      new Promise<void>((resolvePromise) => {
        server.closeAllConnections();
        server.close(() => resolvePromise());
      }),
  };
}

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    let body = '';
    request.setEncoding('utf8');
    request.on('data', (chunk: string) => (body += chunk));
    request.on('end', () => resolvePromise(body));
    request.on('error', reject);
  });
}

function write(response: ServerResponse, data: Buffer): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    if (response.destroyed) {
      reject(new Error('connection closed'));
      return;
    }
    if (response.write(data)) resolvePromise();
    else {
      const onDrain = () => {
        response.off('close', onClose);
        resolvePromise();
      };
      const onClose = () => {
        response.off('drain', onDrain);
        reject(new Error('connection closed'));
      };
      response.once('drain', onDrain);
      response.once('close', onClose);
    }
  });
}
