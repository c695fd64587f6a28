/**
 * Sums a V8 .cpuprofile (node --cpu-prof) by function: self time (samples whose top frame is the function) and total
 * time (samples with the function anywhere on the stack, counted once per sample), as shares of the busy samples
 * (those other than `(idle)`), plus self time by package (node internals, fastify, undici, Kiln's dist/, ...).
 *   node --import tsx bench/gateway-profile.ts <file.cpuprofile> [--top 25]
 */
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionCost {
  name: string;
  where: string;
  selfMs: number;
  totalMs: number;
}

export interface ProfileSummary {
  busyMs: number;
  idleMs: number;
  functions: FunctionCost[];
  packages: Array<{ name: string; selfMs: number }>;
}

/** node_modules/<pkg> (scoped too), node:internal, Kiln's dist/<dir>, or the V8 pseudo-frames. */
function packageOf(url: string, functionName: string): string {
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)';
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (modules) return modules[1]!;
  if (url.startsWith('node:')) return 'node:internal';
  const dist = /\/dist\/([^/]+)\//.exec(url);
  if (dist) return `kiln dist/${dist[1]}`;
  return url.replace(/^file:\/\//, '');
}

function shortUrl(url: string): string {
  const modules = url.lastIndexOf('node_modules/');
  if (modules !== -1) return url.slice(modules + 'node_modules/'.length);
  const dist = url.lastIndexOf('/dist/');
  if (dist !== -1) return url.slice(dist + 1);
  return url.replace(/^file:\/\//, '');
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

export function summarise(profile: CpuProfile): ProfileSummary {
  const byId = new Map<number, ProfileNode>(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const keyOf = (node: ProfileNode) => `${node.callFrame.functionName || '(anonymous)'}\u0000${shortUrl(node.callFrame.url)}:${node.callFrame.lineNumber + 1}`;
  const functions = new Map<string, FunctionCost>();
  const packages = new Map<string, number>();
  let busy = 0;
  let idle = 0;
  // Every sample counts as one sampling interval (the median gap between samples). Charging each sample the gap
  // before it instead (timeDeltas) books the time the process waited for a CPU to whatever it was doing when it was
  // preempted, which on a busy 2-core machine is mostly a writev to a loopback socket (it wakes the reader, which
  // takes the CPU): 20-25% "writev" that strace puts at ~10 µs per call. Counting samples follows CPU time closer.
  const interval = median(profile.timeDeltas.filter((delta) => delta > 0)) / 1000;
  profile.samples.forEach((id) => {
    const ms = interval;
    const top = byId.get(id)!;
    if (top.callFrame.functionName === '(idle)') {
      idle += ms;
      return;
    }
    busy += ms;
    const pkg = packageOf(top.callFrame.url, top.callFrame.functionName);
    packages.set(pkg, (packages.get(pkg) ?? 0) + ms);
    const seen = new Set<string>();
    for (let node: ProfileNode | undefined = top; node !== undefined; node = byId.get(parent.get(node.id) ?? -1)) {
      if (node.callFrame.functionName === '(root)') break;
      const key = keyOf(node);
      let cost = functions.get(key);
      if (cost === undefined) {
        const [name, where] = key.split('\u0000') as [string, string];
        cost = { name, where, selfMs: 0, totalMs: 0 };
        functions.set(key, cost);
      }
      if (node === top) cost.selfMs += ms;
      if (!seen.has(key)) {
        seen.add(key);
        cost.totalMs += ms;
      }
    }
  });
  return {
    busyMs: busy,
    idleMs: idle,
    functions: [...functions.values()],
    packages: [...packages].map(([name, selfMs]) => ({ name, selfMs })).sort((a, b) => b.selfMs - a.selfMs),
  };
}

export async function summariseFile(path: string): Promise<ProfileSummary> {
  return summarise(JSON.parse(await readFile(path, 'utf8')) as CpuProfile);
}

/** Markdown: the top functions by self time, by total time (Kiln's and its libraries' own frames), and packages. */
export function renderSummary(title: string, summary: ProfileSummary, top = 25): string {
  const pct = (ms: number) => `${((100 * ms) / summary.busyMs).toFixed(1)}%`;
  const lines = [
    `### ${title}: busy ${(summary.busyMs / 1000).toFixed(1)} s, idle ${(summary.idleMs / 1000).toFixed(1)} s`,
    '',
    '| self | total | function | where |',
    '| ---: | ---: | --- | --- |',
    ...[...summary.functions]
      .sort((a, b) => b.selfMs - a.selfMs)
      .slice(0, top)
      .map((f) => `| ${pct(f.selfMs)} | ${pct(f.totalMs)} | ${f.name} | ${f.where} |`),
    '',
    "By total time, the gateway's own code (Kiln's dist/, Portkey's build/, the floor), above 2%:",
    '',
    '| total | self | function | where |',
    '| ---: | ---: | --- | --- |',
    ...[...summary.functions]
      .filter((f) => /^dist\/|@portkey-ai\/|gateway-floor/.test(f.where) && f.totalMs / summary.busyMs > 0.02)
      .sort((a, b) => b.totalMs - a.totalMs)
      .slice(0, top)
      .map((f) => `| ${pct(f.totalMs)} | ${pct(f.selfMs)} | ${f.name} | ${f.where} |`),
    '',
    'Self time by package:',
    '',
    '| self | package |',
    '| ---: | --- |',
    ...summary.packages.slice(0, 15).map((p) => `| ${pct(p.selfMs)} | ${p.name} |`),
  ];
  return lines.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
  for (const path of positionals) console.log(`${renderSummary(path, await summariseFile(path), Number(values.top))}\n`);
}
