/**
 * Whole-file reads and writes for the prompt cache's disk tier that stay off libuv's thread pool. bin/kiln.cjs sizes
 * that pool at one thread per model, which runs the model's decodes, so every asynchronous fs call waits behind a
 * decode step: hashing a 700 MB model file that way took 47 s on a busy 2-core machine, and disk writes fell behind
 * the states kept. Here each 1 MiB chunk is read or written synchronously — a fraction of a millisecond from the page
 * cache — and the event loop gets a turn between chunks.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { setImmediate as nextTurn } from 'node:timers/promises';

const CHUNK = 1 << 20;

/** The file's bytes in chunks; each chunk is valid only until the next is asked for. */
export async function* fileChunks(path: string): AsyncGenerator<Buffer, void, undefined> {
  const fd = openSync(path, 'r');
  try {
    const buffer = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      const read = readSync(fd, buffer, 0, CHUNK, null);
      if (read === 0) return;
      yield buffer.subarray(0, read);
      await nextTurn();
    }
  } finally {
    closeSync(fd);
  }
}

/** A new file `path` (it must not exist) that chunks are written to, synchronously. */
export function newFileWriter(path: string): { write(chunk: Buffer): void; close(): void } {
  const fd = openSync(path, 'wx');
  return {
    write(chunk) {
      for (let written = 0; written < chunk.length; ) written += writeSync(fd, chunk, written);
    },
    close: () => closeSync(fd),
  };
}
