/**
 * Model ids → what serves them. Several ids may share one served model (one loaded GGUF, or the same list of
 * upstreams, e.g. `X` and `Pro/X`): they share its engine and its admission queue, where `Pro/` requests go first.
 */
import type { ChatEngine } from '../core/engine.js';
import { KilnError } from '../errors/catalog.js';
import type { ModelListWire } from '../protocol/response.js';
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

}
