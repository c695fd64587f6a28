/**
 * Generated models are cached by a hash of their normalized options. Writes go to a unique temporary name that is
 * renamed into place (see writer.ts), so processes racing on the same file each produce a complete one and the last
 * rename wins; within one process, concurrent requests for the same file share one generation.
 */
import { createHash } from 'node:crypto';
import { access, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';

/** `<repo>/.cache/models`, resolved from this source file (src/gguf or dist/gguf). */
export const DEFAULT_MODEL_CACHE = resolve(import.meta.dirname, '../../.cache/models');

const pending = new Map<string, Promise<string>>();

/** Short stable hash of a JSON-able value (object keys in insertion order, so normalize before hashing). */
export function optionsHash(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 12);
}

/** `<cacheDir>/<name>`, written by `generate(path)` when absent. */
export function cachedFile(cacheDir: string, name: string, generate: (path: string) => Promise<void>): Promise<string> {
  const filePath = join(cacheDir, name);
  let result = pending.get(filePath);
  if (result === undefined) {
    result = (async () => {
      try {
        await access(filePath);
      } catch {
        await mkdir(cacheDir, { recursive: true });
        await generate(filePath);
      }
      return filePath;
    })().finally(() => pending.delete(filePath));
    pending.set(filePath, result);
  }
  return result;
}
