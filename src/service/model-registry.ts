/**
 * Model ids → what serves them. Several ids may share one served model (one loaded GGUF, or the same list of
 * upstreams, e.g. `X` and `Pro/X`): they share its engine and its admission queue, where `Pro/` requests go first.
 */
import { stat } from 'node:fs/promises';
import type { ChatEngine } from '../core/engine.js';
import { KilnError } from '../errors/catalog.js';
import type { ModelListWire, ModelStatusWire } from '../protocol/response.js';
import type { Admission } from './admission.js';

export interface ServedModel {
  /** A local engine, or a router over the model's deployments. */
  engine: ChatEngine;
  admission: Admission;
}

export interface ModelEntry {
  id: string;
  served: ServedModel;
  ownedBy: string;
  created: number;
  /** The GGUF its local deployment loads, if it has one (for the catalog's size and presence; never sent). */
  file?: string;
}

const MIB = 2 ** 20;

export class ModelRegistry {
  private entries = new Map<string, ModelEntry>();
  /** Ids taken offline (removed from the config or `enabled: false`): "model disabled", not "does not exist". */
  private disabled = new Set<string>();

  add(entry: ModelEntry): void {
    if (this.entries.has(entry.id)) throw new Error(`model id '${entry.id}' is configured twice`);
    this.entries.set(entry.id, entry);
  }

  resolve(id: string): ModelEntry {
    const entry = this.entries.get(id);
    if (entry !== undefined) return entry;
    if (this.disabled.has(id)) throw new KilnError('modelDisabled', { param: 'model', message: `Model '${id}' has been taken offline on this server.` });
    throw new KilnError('modelNotFound', { param: 'model' });
  }

  /** The entry of `id`, if served. */
  entry(id: string): ModelEntry | undefined {
    return this.entries.get(id);
  }

  /** Every served entry, in configuration order (read at each metrics scrape). */
  all(): IterableIterator<ModelEntry> {
    return this.entries.values();
  }

  /** Swaps in a whole new set of entries at once (a reload); `disabled` ids answer "model disabled". */
  replace(entries: readonly ModelEntry[], disabled: readonly string[]): void {
    this.entries = new Map(entries.map((entry) => [entry.id, entry]));
    this.disabled = new Set(disabled.filter((id) => !this.entries.has(id)));
  }

  /** OpenAI's model list, each entry with a `kiln` object saying where the model stands (ModelStatusWire). */
  async list(): Promise<ModelListWire> {
    const entries = [...this.entries.values()];
    const files = new Map<string, Promise<number | null>>();
    for (const { file } of entries) {
      if (file !== undefined && !files.has(file)) files.set(file, sizeOnDisk(file));
    }
    const data = await Promise.all(
      entries.map(async (entry) => {
        const size = entry.file === undefined ? null : await files.get(entry.file)!;
        return {
          id: entry.id,
          object: 'model' as const,
          created: entry.created,
          owned_by: entry.ownedBy,
          kiln: statusOf(entry, size),
        };
      }),
    );
    return { object: 'list', data };
  }
}

function statusOf(entry: ModelEntry, size: number | null): ModelStatusWire {
  const status = entry.served.engine.status?.() ?? { state: 'ready' };
  return {
    state: status.state,
    idle_ms: status.idleMs ?? null,
    memory_mb: status.memoryBytes !== undefined ? Math.ceil(status.memoryBytes / MIB) : null,
    gpu_layers: status.gpuLayers ?? null,
    size_bytes: size,
    present: entry.file === undefined ? null : size !== null,
  };
}

/** A regular file's size; null when it is missing or unreadable. */
async function sizeOnDisk(file: string): Promise<number | null> {
  try {
    const info = await stat(file);
    return info.isFile() ? info.size : null;
  } catch {
    return null;
  }
}
