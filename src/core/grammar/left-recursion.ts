/**
 * Left recursion through `$ref`s: a cycle of refs with nothing written in between, which llama.cpp rejects.
 */
import { UnsupportedSchemaError } from './schema-keywords.js';

export interface LeftEdge {
  from: string;
  to: string;
  refAt: string;
}

/**
 * A `$ref` cycle with nothing written in between would be left recursion, which llama.cpp rejects. Most are caught
 * as they are entered; one first entered from inside an object or array only shows in the graph of left edges.
 */
export function checkLeftRecursion(leftEdges: readonly LeftEdge[]): void {
  const edges = new Map<string, Array<{ to: string; refAt: string }>>();
  for (const { from, to, refAt } of leftEdges) {
    const list = edges.get(from);
    if (list) list.push({ to, refAt });
    else edges.set(from, [{ to, refAt }]);
  }
  // Depth-first search with an explicit stack (a chain of refs can be thousands long): an edge to a node still open
  // closes a cycle.
  const state = new Map<string, 'open' | 'done'>();
  for (const start of edges.keys()) {
    if (state.has(start)) continue;
    state.set(start, 'open');
    const stack: Array<{ node: string; next: number }> = [{ node: start, next: 0 }];
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const edge = edges.get(top.node)?.[top.next++];
      if (edge === undefined) {
        state.set(top.node, 'done');
        stack.pop();
      } else if (state.get(edge.to) === 'open') {
        throw leftRecursion(edge.refAt, edge.to);
      } else if (!state.has(edge.to)) {
        state.set(edge.to, 'open');
        stack.push({ node: edge.to, next: 0 });
      }
    }
  }
}

export function leftRecursion(refAt: string, target: string): UnsupportedSchemaError {
  return new UnsupportedSchemaError(refAt, `'$ref' "#${target}" refers back to itself before any value is written`);
}
