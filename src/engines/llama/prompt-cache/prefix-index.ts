/**
 * Cached prompt states found by token prefix, kept under a byte budget.
 *
 * A request starts from the longest cached state whose tokens begin its prompt. The cached token sequences form a
 * radix tree (a trie whose edges carry runs of token ids, children keyed by the run's first token), as in SGLang's
 * RadixAttention and llama-server's prompt cache, so a lookup walks the prompt once: its cost grows with the prompt's
 * length, not with the number of entries. A state covers all of its tokens (restoring it brings them all back),
 * so an entry matches only as a whole; entries may be prefixes of each other (a conversation's first and second turn).
 *
 * Eviction is least recently used (Set insertion order: a touch moves an entry to the end) and prunes the tree, so
 * memory does not grow with entries that are gone: every node besides the root holds an entry or forks, which bounds
 * the nodes by twice the entries. Entries being restored are pinned by a lease and never evicted under their reader;
 * one removed while leased leaves the lookup at once but is reported to `onEvict`, and stops counting in `bytes`, only
 * when its last lease is released, so `onEvict` is the single place where a value may be freed or spilled.
 *
 * The index knows nothing of engines: the value is whatever holds a state (a buffer, a file, a checkpoint).
 */

export interface CachedPrefix<T> {
  /** The tokens the state covers. Owned by the index: do not modify. */
  readonly tokens: Uint32Array;
  readonly value: T;
  /** What the value costs in memory, as the caller counts it; the tree's own few bytes per token are not counted. */
  readonly bytes: number;
  /** When the entry was inserted or last matched, by the index's clock. */
  readonly lastUsed: number;
}

/** Why an entry left the index: to make room, superseded by a new state for the same tokens, or deleted by the caller. */
export type RemovalReason = 'budget' | 'replaced' | 'deleted';

export interface PrefixIndexOptions<T> {
  budgetBytes: number;
  /** Called once per entry that left the index, after the index is consistent again; must not modify the index. */
  onEvict?: (entry: CachedPrefix<T>, reason: RemovalReason) => void;
  now?: () => number;
}

export interface PrefixMatch<T> {
  entry: CachedPrefix<T>;
  /** How many tokens of the prompt the entry covers: its whole length. */
  length: number;
}

/** Keeps an entry out of eviction while its state is being read; `release` is idempotent. */
export interface PrefixLease {
  release(): void;
}

class Node<T> {
  readonly children = new Map<number, Node<T>>();
  entry: Entry<T> | undefined;
  constructor(
    /** The tokens on the edge from the parent; never empty except at the root. */
    public label: Uint32Array,
    public parent: Node<T> | undefined,
  ) {}
}

class Entry<T> implements CachedPrefix<T> {
  leases = 0;
  /** Set once the entry has left the index (it may still be leased). */
  removedAs: RemovalReason | undefined;
  constructor(
    readonly tokens: Uint32Array,
    readonly value: T,
    readonly bytes: number,
    public lastUsed: number,
    public node: Node<T> | undefined,
  ) {}
}

export class PrefixIndex<T> {
  readonly budgetBytes: number;
  private readonly onEvict: PrefixIndexOptions<T>['onEvict'];
  private readonly now: () => number;
  private readonly root = new Node<T>(new Uint32Array(0), undefined);
  /** Entries in the index, least recently used first. */
  private readonly recency = new Set<Entry<T>>();
  private heldBytes = 0;
  private pinnedBytes = 0;
  private nodes = 0;

  constructor(options: PrefixIndexOptions<T>) {
    if (!(options.budgetBytes >= 0)) throw new RangeError(`budgetBytes must be a number ≥ 0, not ${options.budgetBytes}`);
    this.budgetBytes = options.budgetBytes;
    this.onEvict = options.onEvict;
    this.now = options.now ?? Date.now;
  }

  /** Entries that a lookup can find. */
  get size(): number {
    return this.recency.size;
  }

  /** Bytes held: the entries in the index and those removed but still leased. At most `budgetBytes`. */
  get bytes(): number {
    return this.heldBytes;
  }

  /** Tree nodes besides the root (at most twice `size`): for tests and metrics. */
  get nodeCount(): number {
    return this.nodes;
  }

  /** The entries, least recently used first, as a copy (so the index may change while it is walked); touches none. */
  entries(): CachedPrefix<T>[] {
    return [...this.recency];
  }

  /**
   * The longest entry whose tokens begin `tokens`, if it covers at least `minLength` of them; the match becomes the
   * most recently used entry.
   */
  longestPrefix(tokens: ArrayLike<number>, minLength = 1): PrefixMatch<T> | undefined {
    let node = this.root;
    let depth = 0;
    let best: Entry<T> | undefined;
    while (depth < tokens.length) {
      const child = node.children.get(tokens[depth]!);
      if (child === undefined || sharedLength(child.label, tokens, depth) < child.label.length) break;
      node = child;
      depth += child.label.length;
      if (node.entry !== undefined) best = node.entry;
    }
    if (best === undefined || best.tokens.length < minLength) return undefined;
    this.touch(best);
    return { entry: best, length: best.tokens.length };
  }

  /**
   * The entry sharing the most leading tokens with `tokens`, even when it goes on past where they part (a cached
   * turn ends with the answer as generated, which the next prompt renders a little differently): restoring it and
   * cutting it back to `length` tokens is still cheaper than prefilling them. Among entries sharing equally, the
   * shortest (the least to load). At least `minLength` shared; the match becomes the most recently used entry.
   */
  longestShared(tokens: ArrayLike<number>, minLength = 1): PrefixMatch<T> | undefined {
    let node = this.root;
    let depth = 0;
    let below: Node<T> = this.root;
    while (depth < tokens.length) {
      const child = node.children.get(tokens[depth]!);
      if (child === undefined) break;
      const shared = sharedLength(child.label, tokens, depth);
      depth += shared;
      below = child;
      if (shared < child.label.length) break;
      node = child;
    }
    if (depth < minLength || below === this.root) return undefined;
    // Every entry under the node where the walk stopped shares exactly `depth` tokens with the prompt (or covers it).
    const entry = shortestEntry(below);
    if (entry === undefined) return undefined;
    this.touch(entry);
    return { entry, length: Math.min(depth, entry.tokens.length) };
  }

  /**
   * Adds a state for `tokens` (replacing one for exactly these tokens), then evicts the least recently used unpinned
   * entries until `bytes` is within budget. Returns the new entry, or undefined when it cannot fit beside the pinned
   * entries; then nothing changed, and the value is still the caller's.
   */
  insert(tokens: ArrayLike<number>, value: T, bytes: number): CachedPrefix<T> | undefined {
    if (tokens.length === 0) throw new RangeError('a cached prefix needs at least one token');
    if (!(bytes >= 0 && bytes < Infinity)) throw new RangeError(`bytes must be a finite number ≥ 0, not ${bytes}`);
    if (bytes + this.pinnedBytes > this.budgetBytes) return undefined;
    const copy = tokenArray(tokens);
    const node = this.nodeFor(copy);
    const removed: Entry<T>[] = [];
    if (node.entry !== undefined && this.retire(node.entry, 'replaced')) removed.push(node.entry);
    const entry = new Entry(copy, value, bytes, this.now(), node);
    node.entry = entry;
    this.recency.add(entry);
    this.heldBytes += bytes;
    // The new entry is the last in recency order and fits beside the pinned ones, so the loop ends before reaching it.
    for (const old of this.recency) {
      if (this.heldBytes <= this.budgetBytes) break;
      if (old.leases > 0) continue;
      if (this.remove(old, 'budget')) removed.push(old);
    }
    this.notify(removed);
    return entry;
  }

  /** Removes an entry; false when it is not in the index. A leased entry is reported once its last lease ends. */
  delete(entry: CachedPrefix<T>): boolean {
    const own = this.owned(entry);
    if (own === undefined) return false;
    if (this.remove(own, 'deleted')) this.notify([own]);
    return true;
  }

  /** Keeps an entry from eviction until the lease is released (while its state is restored, say). */
  pin(entry: CachedPrefix<T>): PrefixLease {
    const own = this.owned(entry);
    if (own === undefined) throw new Error('only an entry in this index can be pinned');
    if (own.leases++ === 0) this.pinnedBytes += own.bytes;
    let held = true;
    return {
      release: () => {
        if (!held) return;
        held = false;
        if (--own.leases > 0) return;
        this.pinnedBytes -= own.bytes;
        if (own.removedAs === undefined) return;
        this.heldBytes -= own.bytes;
        this.notify([own]);
      },
    };
  }

  private owned(entry: CachedPrefix<T>): Entry<T> | undefined {
    return this.recency.has(entry as Entry<T>) ? (entry as Entry<T>) : undefined;
  }

  private touch(entry: Entry<T>): void {
    entry.lastUsed = this.now();
    this.recency.delete(entry);
    this.recency.add(entry);
  }

  private notify(removed: Entry<T>[]): void {
    if (this.onEvict === undefined) return;
    for (const entry of removed) this.onEvict(entry, entry.removedAs!);
  }

  /** The node at the end of `tokens`, created (splitting an edge where the path leaves it) when missing. */
  private nodeFor(tokens: Uint32Array): Node<T> {
    let node = this.root;
    let depth = 0;
    while (depth < tokens.length) {
      const child = node.children.get(tokens[depth]!);
      if (child === undefined) {
        const leaf = new Node<T>(tokens.slice(depth), node);
        node.children.set(tokens[depth]!, leaf);
        this.nodes++;
        return leaf;
      }
      const shared = sharedLength(child.label, tokens, depth);
      node = shared < child.label.length ? this.split(child, shared) : child;
      depth += shared;
    }
    return node;
  }

  /** Cuts `node`'s edge after `at` tokens; returns the new node in between. */
  private split(node: Node<T>, at: number): Node<T> {
    const parent = node.parent!;
    const middle = new Node<T>(node.label.slice(0, at), parent);
    node.label = node.label.slice(at);
    node.parent = middle;
    middle.children.set(node.label[0]!, node);
    parent.children.set(middle.label[0]!, middle);
    this.nodes++;
    return middle;
  }

  /** Takes the entry out of the tree and prunes what no longer leads to an entry; true when it can be reported now. */
  private remove(entry: Entry<T>, reason: RemovalReason): boolean {
    let node = entry.node!;
    node.entry = undefined;
    while (node !== this.root && node.entry === undefined && node.children.size < 2) {
      const parent = node.parent!;
      const only = node.children.values().next().value;
      this.nodes--;
      if (only === undefined) {
        parent.children.delete(node.label[0]!);
        node = parent;
        continue;
      }
      // A node without an entry and with a single child is only a bend in one edge: fold it into the child.
      only.label = concat(node.label, only.label);
      only.parent = parent;
      parent.children.set(node.label[0]!, only);
      break;
    }
    return this.retire(entry, reason);
  }

  /** Drops the entry from lookup and accounting (deferred while it is leased); true when it can be reported now. */
  private retire(entry: Entry<T>, reason: RemovalReason): boolean {
    this.recency.delete(entry);
    entry.node = undefined;
    entry.removedAs = reason;
    if (entry.leases > 0) return false;
    this.heldBytes -= entry.bytes;
    return true;
  }
}

/** The entry with the fewest tokens at or below `node` (every node below any point leads to an entry). */
function shortestEntry<T>(node: Node<T>): Entry<T> | undefined {
  let best: Entry<T> | undefined;
  let bestDepth = Infinity;
  // Depth first, counting tokens below `node`; a branch already as deep as the best found cannot beat it.
  const visit = (current: Node<T>, depth: number): void => {
    if (depth >= bestDepth) return;
    if (current.entry !== undefined) {
      best = current.entry;
      bestDepth = depth;
      return;
    }
    for (const child of current.children.values()) visit(child, depth + child.label.length);
  };
  visit(node, 0);
  return best;
}

/** How many tokens from `tokens[from]` on agree with the start of `label`. */
function sharedLength(label: Uint32Array, tokens: ArrayLike<number>, from: number): number {
  const limit = Math.min(label.length, tokens.length - from);
  let shared = 0;
  while (shared < limit && label[shared] === tokens[from + shared]) shared++;
  return shared;
}

/** A private copy; token ids are unsigned 32-bit integers, and anything else is refused rather than wrapped. */
function tokenArray(tokens: ArrayLike<number>): Uint32Array {
  const copy = new Uint32Array(tokens.length);
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!;
    if (!Number.isInteger(token) || token < 0 || token > 0xffff_ffff) throw new RangeError(`not a token id: ${token}`);
    copy[i] = token;
  }
  return copy;
}

function concat(head: Uint32Array, tail: Uint32Array): Uint32Array {
  const joined = new Uint32Array(head.length + tail.length);
  joined.set(head);
  joined.set(tail, head.length);
  return joined;
}
