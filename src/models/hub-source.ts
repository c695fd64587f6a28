/**
 * Where a model's GGUF comes from and where it lives in the model cache: `hf:owner/repo/path/file.gguf` sources on the
 * Hugging Face hub (or the endpoint in HF_ENDPOINT), plain http(s) URLs, and the cache directory itself.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export const DEFAULT_HF_ENDPOINT = 'https://huggingface.co';

export type ModelSource =
  | {
      kind: 'hf';
      /** `owner/repo`. */
      repo: string;
      /** Branch, tag or commit (default `main`). */
      revision: string;
      /** The file's path inside the repository. */
      path: string;
      text: string;
    }
  | { kind: 'url'; url: URL; text: string };

export class SourceError extends Error {
  override name = 'SourceError';
}

const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Parses `hf:owner/repo/path/to/file.gguf`, `hf:owner/repo@revision/path/to/file.gguf` or an http(s) URL.
 * Refuses anything that could escape the cache directory (`..`, empty segments).
 */
export function parseSource(text: string): ModelSource {
  if (text.startsWith('hf:')) {
    const parts = text.slice('hf:'.length).split('/');
    if (parts.length < 3) throw new SourceError(`'${text}' is not a hub source: expected hf:owner/repo/path/file.gguf`);
    const owner = parts[0]!;
    const [name, revision = 'main', ...extra] = parts[1]!.split('@');
    const path = parts.slice(2);
    if (!SEGMENT.test(owner) || name === undefined || !SEGMENT.test(name) || extra.length > 0 || revision === '' || /[\s/]/.test(revision)) {
      throw new SourceError(`'${text}' is not a hub source: expected hf:owner/repo/path/file.gguf (or hf:owner/repo@revision/path)`);
    }
    if (path.some((segment) => segment === '' || segment === '.' || segment === '..' || /[\s\\]/.test(segment))) {
      throw new SourceError(`'${text}': the file path inside the repository must be plain segments (no '..', no empty parts)`);
    }
    return { kind: 'hf', repo: `${owner}/${name}`, revision, path: path.join('/'), text };
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new SourceError(`'${text}' is neither hf:owner/repo/path/file.gguf nor an http(s) URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new SourceError(`'${text}': only http(s) URLs can be pulled`);
  if (url.username !== '' || url.password !== '') throw new SourceError(`'${text}': credentials do not belong in the URL (HF_TOKEN is sent to the hub)`);
  if (fileName(url) === '') throw new SourceError(`'${text}': the URL does not end with a file name`);
  return { kind: 'url', url, text };
}

function fileName(url: URL): string {
  const last = url.pathname.split('/').pop() ?? '';
  try {
    return decodeURIComponent(last).replace(/[/\\]/g, '_').replace(/^\.+$/, '');
  } catch {
    return '';
  }
}

/** The model cache: the config's models_dir, else $KILN_MODELS_DIR, else $XDG_CACHE_HOME/kiln/models or ~/.cache/kiln/models. */
export function modelsDirectory(configured?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (configured !== undefined && configured !== '') return resolve(configured);
  if (env.KILN_MODELS_DIR !== undefined && env.KILN_MODELS_DIR !== '') return resolve(env.KILN_MODELS_DIR);
  const cacheHome = env.XDG_CACHE_HOME !== undefined && env.XDG_CACHE_HOME !== '' ? env.XDG_CACHE_HOME : join(homedir(), '.cache');
  return resolve(cacheHome, 'kiln', 'models');
}

/**
 * Where a source's file lives in the cache: `<dir>/hf/<owner>/<repo>/<path>` (`<repo>@<revision>` for a revision
 * other than main), `<dir>/url/<host>/<file name>` for a URL.
 */
export function cachedPath(source: ModelSource, modelsDir: string): string {
  if (source.kind === 'hf') {
    const [owner, name] = source.repo.split('/') as [string, string];
    const repoDir = source.revision === 'main' ? name : `${name}@${source.revision.replace(/[/\\]/g, '_')}`;
    return join(modelsDir, 'hf', owner, repoDir, ...source.path.split('/'));
  }
  const host = source.url.host.replace(/[^A-Za-z0-9.-]/g, '_');
  return join(modelsDir, 'url', host, fileName(source.url));
}

/** A configured model's GGUF: its `file`, else its `source`'s path in the cache; undefined for upstream-only models. */
export function modelFilePath(model: { file?: string | undefined; source?: string | undefined }, modelsDir: string): string | undefined {
  if (model.file !== undefined) return model.file;
  if (model.source === undefined) return undefined;
  return cachedPath(parseSource(model.source), modelsDir);
}

/** The hub endpoint: HF_ENDPOINT as the Hugging Face tools read it, without a trailing slash. */
export function hubEndpoint(env: NodeJS.ProcessEnv = process.env): string {
  const endpoint = env.HF_ENDPOINT !== undefined && env.HF_ENDPOINT !== '' ? env.HF_ENDPOINT : DEFAULT_HF_ENDPOINT;
  return endpoint.replace(/\/+$/, '');
}

/** A token for the hub (HF_TOKEN, or the older HUGGING_FACE_HUB_TOKEN). */
export function hubToken(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const token = env.HF_TOKEN ?? env.HUGGING_FACE_HUB_TOKEN;
  return token !== undefined && token !== '' ? token : undefined;
}
