/**
 * `kiln models`: the configured ids with where each comes from (its file, its `source:`, its upstreams' names — never
 * their URLs), its GGUF's size on disk and whether it is there; and, when a server answers at the config's address
 * (or `--url`), whether each is loaded, the memory it holds and how long it has been idle (`GET /v1/models`, whose
 * entries carry a `kiln` object: protocol/response.ts, ModelStatusWire).
 */
import { stat } from 'node:fs/promises';
import type { FileConfig, ModelConfig } from '../config/config.js';
import { modelFilePath, modelsDirectory } from '../models/hub-source.js';
import { formatBytes } from '../models/progress.js';
import type { ModelListWire, ModelStatusWire } from '../protocol/response.js';

/** How long the running server may take to answer before the listing goes on without it. */
const LIVE_TIMEOUT_MS = 3_000;

export interface CatalogRow {
  id: string;
  /** The file's path, the `source:` to pull it from, and/or `upstreams: name, …`. */
  source: string;
  /** Undefined: no local file (upstreams only). */
  file?: string;
  sizeBytes?: number;
  present?: boolean;
  /** Set when the running server listed the id. */
  live?: ModelStatusWire;
}

/** What the config says and the disk holds. */
export async function staticCatalog(config: FileConfig, env: NodeJS.ProcessEnv = process.env): Promise<CatalogRow[]> {
  const modelsDir = modelsDirectory(config.models_dir, env);
  return Promise.all(
    config.models.map(async (model) => {
      const file = modelFilePath(model, modelsDir);
      const row: CatalogRow = { id: model.id, source: sourceOf(model, file) };
      if (file !== undefined) {
        row.file = file;
        const size = await stat(file).then(
          (info) => (info.isFile() ? info.size : undefined),
          () => undefined,
        );
        row.present = size !== undefined;
        if (size !== undefined) row.sizeBytes = size;
      }
      return row;
    }),
  );
}

function sourceOf(model: ModelConfig, file: string | undefined): string {
  const parts: string[] = [];
  if (model.source !== undefined) parts.push(model.source);
  else if (file !== undefined) parts.push(file);
  if (model.upstreams !== undefined) {
    parts.push(`upstreams: ${model.upstreams.map((upstream, index) => upstream.name ?? `${model.id}#${index}`).join(', ')}`);
  }
  return parts.join(' + ');
}

/** The server's address from the config: a wildcard host is reached on loopback. */
export function defaultServerUrl(config: FileConfig | undefined): string {
  let host = config?.server?.host ?? '127.0.0.1';
  if (host === '0.0.0.0') host = '127.0.0.1';
  if (host === '::') host = '::1';
  if (host.includes(':')) host = `[${host}]`;
  return `http://${host}:${config?.server?.port ?? 8000}`;
}

/** `GET <url>/v1/models`; throws with a short reason when no Kiln answers there. */
export async function fetchLiveCatalog(url: string, apiKey: string | undefined): Promise<Map<string, ModelStatusWire | undefined>> {
  const headers: Record<string, string> = {};
  if (apiKey !== undefined) headers.authorization = `Bearer ${apiKey}`;
  let response: Response;
  try {
    response = await fetch(`${url.replace(/\/+$/, '')}/v1/models`, { headers, signal: AbortSignal.timeout(LIVE_TIMEOUT_MS) });
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code;
    throw new Error(cause ?? (error instanceof Error ? error.name === 'TimeoutError' ? `no answer within ${LIVE_TIMEOUT_MS / 1000} s` : error.message : String(error)));
  }
  if (!response.ok) throw new Error(`GET /v1/models answered ${response.status}${response.status === 401 ? ' (give --api-key)' : ''}`);
  const body = (await response.json()) as ModelListWire;
  if (!Array.isArray(body.data)) throw new Error('GET /v1/models did not answer a model list');
  return new Map(body.data.map((entry) => [entry.id, entry.kiln]));
}

export interface ModelsCommandOptions {
  config?: FileConfig;
  url: string;
  apiKey?: string;
  out: NodeJS.WritableStream;
}

/** Prints the table; the live columns when a server answers, a note saying why not otherwise. */
export async function modelsCommand(options: ModelsCommandOptions): Promise<void> {
  const rows = options.config !== undefined ? await staticCatalog(options.config) : [];
  let live: Map<string, ModelStatusWire | undefined> | undefined;
  let note: string;
  try {
    live = await fetchLiveCatalog(options.url, options.apiKey);
    note = `server at ${options.url}: ${live.size} model${live.size === 1 ? '' : 's'} served`;
  } catch (error) {
    note = `no Kiln server answering at ${options.url} (${(error as Error).message}): showing what is on disk only`;
  }
  if (live !== undefined) {
    const byId = new Map(rows.map((row) => [row.id, row]));
    for (const [id, status] of live) {
      const row = byId.get(id);
      if (row !== undefined) {
        if (status !== undefined) row.live = status;
        continue;
      }
      // Served but not in this config (the server runs another one).
      const extra: CatalogRow = { id, source: '(served; not in this config)' };
      if (status !== undefined) {
        extra.live = status;
        if (status.present !== null) extra.present = status.present;
        if (status.size_bytes !== null) extra.sizeBytes = status.size_bytes;
      }
      rows.push(extra);
    }
  }
  options.out.write(renderTable(rows, live !== undefined));
  options.out.write(`\n${note}\n`);
}

export function renderTable(rows: CatalogRow[], withLive: boolean): string {
  const gpu = withLive && rows.some((row) => (row.live?.gpu_layers ?? 0) > 0);
  const header = ['ID', 'SOURCE', 'SIZE', 'PRESENT'];
  if (withLive) header.push('STATE', 'MEMORY', 'IDLE');
  if (gpu) header.push('GPU LAYERS');
  const lines = rows.map((row) => {
    const cells = [
      row.id,
      row.source,
      row.sizeBytes !== undefined ? formatBytes(row.sizeBytes) : '-',
      row.present === undefined ? '-' : row.present ? 'yes' : 'no',
    ];
    if (withLive) {
      const status = row.live;
      cells.push(
        status?.state ?? 'not served',
        status?.memory_mb != null ? `${status.memory_mb} MiB` : '-',
        status?.idle_ms != null ? formatIdle(status.idle_ms) : '-',
      );
    }
    if (gpu) cells.push(row.live?.gpu_layers != null ? String(row.live.gpu_layers) : '-');
    return cells;
  });
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((cells) => cells[column]!.length)));
  const format = (cells: string[]) => cells.map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column]!))).join('  ').trimEnd();
  return [format(header), ...lines.map(format)].join('\n') + '\n';
}

/** `0s` while busy, then the largest two units: `42s`, `3m 20s`, `2h 5m`. */
export function formatIdle(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${seconds % 60}s`;
  const hours = Math.floor(minutes / 60);
  return `${hours}h ${minutes % 60}m`;
}
