/**
 * Interleaves async iterators, yielding each value as soon as it is ready, tagged with its source's index.
 * Ending early (break/throw) returns every source, so their generators run their cleanup.
 */
export async function* mergeIterators<T>(sources: AsyncIterator<T>[]): AsyncGenerator<{ index: number; value: T }> {
  const pending = new Map<number, Promise<{ index: number; result: IteratorResult<T> }>>();
  const pull = (index: number) => {
    pending.set(index, sources[index]!.next().then((result) => ({ index, result })));
  };
  sources.forEach((_, index) => pull(index));
  try {
    while (pending.size > 0) {
      const { index, result } = await Promise.race(pending.values());
      if (result.done) {
        pending.delete(index);
        continue;
      }
      pull(index);
      yield { index, value: result.value };
    }
  } finally {
    // A pull still in flight when the consumer stops (or another source threw) may yet reject — a request aborted
    // mid-stream rejects its reads with the abort reason — and nobody awaits it any more: unhandled, that rejection
    // would end the process.
    for (const promise of pending.values()) promise.catch(() => undefined);
    await Promise.allSettled(sources.map((source) => source.return?.()));
  }
}
