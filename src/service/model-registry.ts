/** Model ids → the engine serving them. Several ids may share one engine (one loaded GGUF). */
import type { ChatEngine } from '../core/engine.js';
import { KilnError } from '../errors/catalog.js';
import type { ModelListWire } from '../protocol/response.js';

export interface ModelEntry {
  id: string;
  engine: ChatEngine;
  ownedBy: string;
  created: number;
}

export class ModelRegistry {
  private readonly entries = new Map<string, ModelEntry>();

  add(entry: ModelEntry): void {
    if (this.entries.has(entry.id)) throw new Error(`model id '${entry.id}' is configured twice`);
    this.entries.set(entry.id, entry);
  }

  resolve(id: string): ModelEntry {
    const entry = this.entries.get(id);
    if (entry === undefined) throw new KilnError('modelNotFound', { param: 'model' });
    return entry;
  }

  list(): ModelListWire {
    return {
      object: 'list',
      data: [...this.entries.values()].map((entry) => ({
        id: entry.id,
        object: 'model',
        created: entry.created,
        owned_by: entry.ownedBy,
      })),
    };
  }

  /** Closes each distinct engine once. */
  async close(): Promise<void> {
    const engines = new Set([...this.entries.values()].map((entry) => entry.engine));
    await Promise.allSettled([...engines].map((engine) => engine.close()));
  }
}
