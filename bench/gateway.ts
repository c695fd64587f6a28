/**
 * `npm run bench:gateway` — what a gateway itself costs. The same client (undici keep-alive pools, closed-loop) sends
 * the same chat completions to
 *   direct   a canned-SSE upstream (bench/canned-upstream.ts: no model, precomputed answers, no delays),
 *   kiln     Kiln (the built CLI) with one model served by that upstream,
 *   portkey  Portkey's open-source gateway (@portkey-ai/gateway, installed on first use outside the repository)
 *            routed to the same upstream as a custom OpenAI host,
 * each in a process of its own, interleaved in rounds (direct, kiln, portkey; then rotated). Reports the latency a
 * gateway adds to the direct path (p50, p99; non-streaming: the whole response, streaming: time to the first content
 * chunk) with 1 and 8 clients, and the most requests per second each sustains (closed loop at rising concurrency, the
 * best level with < 1% errors). Medians over rounds, with the rounds' spread. Options:
 *   --rounds <n>          interleaved rounds (default 3)
 *   --seconds <s>         length of each latency measurement (default 5)
 *   --ramp-seconds <s>    length of each throughput level (default 2.5)
 *   --levels <list>       throughput concurrency levels (default 1,8,32,64,128)
 *   --targets <list>      a subset of direct,kiln,portkey,floor (default direct,kiln,portkey); floor is
 *                         bench/gateway-floor.ts, a bare Fastify + undici pass-through doing the same parsing and
 *                         re-serialising: the reference for what Kiln's own layers cost
 *   --quick               a smoke run: 1 round, 1 s measurements, levels 8,64
 *   --profile <dir>       instead of measuring: run the gateways under `node --cpu-prof` with 8 clients, streaming
 *                         and not, for --seconds each, and print where their CPU time goes
 */
import { execFileSync } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { CANNED_MODEL, CANNED_WORDS, startCannedUpstream } from './canned-upstream.js';
import { closedLoop, makeTarget, median, percentile, verify, type Mode, type Target } from './gateway-client.js';
import { renderSummary, summariseFile } from './gateway-profile.js';
import { KILN_MODEL, PORTKEY_PINS, PORTKEY_VERSION, ensurePortkey, cpuMs, startFloorGateway, startKilnGateway, startPortkey, type ServerProcess } from './gateway-servers.js';

const REPO_ROOT = resolve(import.meta.dirname, '..');
const { values: flags } = parseArgs({
  options: {
    rounds: { type: 'string' },
    seconds: { type: 'string' },
    'ramp-seconds': { type: 'string' },
    levels: { type: 'string' },
    targets: { type: 'string', default: 'direct,kiln,portkey' },
    quick: { type: 'boolean', default: false },
    profile: { type: 'string' },
  },
});
const QUICK = flags.quick!;
const ROUNDS = Number(flags.rounds ?? (QUICK ? 1 : 3));
const SECONDS = Number(flags.seconds ?? (QUICK ? 1 : 5));
const RAMP_SECONDS = Number(flags['ramp-seconds'] ?? (QUICK ? 1 : 2.5));
const LEVELS = (flags.levels ?? (QUICK ? '8,64' : '1,8,32,64,128')).split(',').map(Number);
const NAMES = flags.targets!.split(',');
const LATENCY_PHASES: Array<{ mode: Mode; clients: number }> = [
  { mode: 'json', clients: 1 },
  { mode: 'json', clients: 8 },
  { mode: 'stream', clients: 1 },
  { mode: 'stream', clients: 8 },
];
const MODES: Mode[] = ['json', 'stream'];
const ADDED_P50_TARGET = 1;
const ADDED_P99_TARGET = 3;
const RPS_RATIO_TARGET = 2;
const MAX_ERROR_RATE = 0.01;

const fmtMs = (ms: number) => (Number.isNaN(ms) ? '—' : Math.abs(ms) >= 100 ? ms.toFixed(0) : Math.abs(ms) >= 10 ? ms.toFixed(1) : ms.toFixed(2));
const fmtRate = (rate: number) => (Number.isNaN(rate) ? '—' : rate.toFixed(0));
const spread = (values: number[], fmt: (value: number) => string) => (values.length < 2 ? fmt(values[0] ?? Number.NaN) : `${fmt(median(values))} (${fmt(Math.min(...values))}–${fmt(Math.max(...values))})`);
const modeLabel = (mode: Mode) => (mode === 'json' ? 'non-streaming, whole response' : 'streaming, first content chunk');

function machine(): string {
  const cpu = cpus();
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    if (execFileSync('git', ['status', '--porcelain', '--untracked-files=no', 'src'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim() !== '') commit += ' + uncommitted src/ changes';
  } catch {}
  return `${cpu.length} × ${cpu[0]?.model.trim() ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${release()}, Node ${process.version}, load average ${loadavg().map((value) => value.toFixed(2)).join(' ')} at start; Kiln ${commit}; Portkey ${PORTKEY_VERSION} (@hono/node-server ${PORTKEY_PINS['@hono/node-server']})`;
}

interface Started {
  targets: Target[];
  servers: ServerProcess[];
  /** The process that does a target's work: the upstream for direct, else the gateway. */
  pids: Map<string, number | undefined>;
  upstreamPid: number | undefined;
  served: () => Promise<number>;
  stopUpstream: () => Promise<void>;
}

async function startTargets(profileDir?: string): Promise<Started> {
  const upstream = await startCannedUpstream();
  const targets: Target[] = [];
  const servers: ServerProcess[] = [];
  const pids = new Map<string, number | undefined>([['direct', upstream.child.pid]]);
  const profileFlags = (name: string) => (profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, name)}`]);
  try {
    for (const name of NAMES) {
      if (name === 'direct') targets.push(makeTarget('direct', upstream.url, CANNED_MODEL));
      else if (name === 'kiln') {
        const kiln = await startKilnGateway(upstream.url, CANNED_MODEL, { nodeFlags: profileFlags('kiln') });
        servers.push(kiln);
        pids.set('kiln', kiln.child.pid);
        targets.push(makeTarget('kiln', kiln.url, KILN_MODEL));
      } else if (name === 'portkey') {
        await ensurePortkey();
        const portkey = await startPortkey(profileFlags('portkey'));
        servers.push(portkey);
        pids.set('portkey', portkey.child.pid);
        targets.push(makeTarget('portkey', portkey.url, CANNED_MODEL, { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `${upstream.url}/v1` }));
      } else if (name === 'floor') {
        const floor = await startFloorGateway(upstream.url, profileFlags('floor'));
        servers.push(floor);
        pids.set('floor', floor.child.pid);
        targets.push(makeTarget('floor', floor.url, KILN_MODEL));
      } else throw new Error(`--targets: unknown target '${name}' (direct, kiln, portkey, floor)`);
    }
    // Each gateway must answer the canned completion, and get it from the upstream: two requests, two served.
    for (const target of targets) {
      const before = await upstream.served();
      await verify(target);
      const forwarded = (await upstream.served()) - before;
      if (forwarded !== 2) throw new Error(`${target.name}: 2 requests reached the canned upstream ${forwarded} times`);
      console.error(`${target.name}: answers the canned completion (${CANNED_WORDS.length} chunks, usage) from the upstream, streaming and not`);
    }
  } catch (error) {
    for (const server of servers) console.error(server.output().slice(-3000));
    await Promise.all(servers.map((server) => server.stop()));
    await upstream.stop();
    throw error;
  }
  return { targets, servers, pids, upstreamPid: upstream.child.pid, served: upstream.served, stopUpstream: upstream.stop };
}

async function profile(dir: string): Promise<void> {
  const root = resolve(dir);
  await mkdir(root, { recursive: true });
  const { targets, servers, stopUpstream } = await startTargets(root);
  try {
    for (const target of targets) {
      if (target.name === 'direct') continue;
      for (const mode of MODES) {
        const result = await closedLoop(target, mode, 8, SECONDS);
        console.error(`${target.name} ${mode} 8 clients under the profiler: ${result.rps.toFixed(0)} req/s, p50 ${fmtMs(median(result.latencies))} ms, errors ${result.errors}`);
      }
    }
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
    await stopUpstream();
  }
  for (const target of targets) {
    if (target.name === 'direct') continue;
    const files = (await readdir(join(root, target.name))).filter((file) => file.endsWith('.cpuprofile'));
    if (files.length === 0) throw new Error(`${target.name}: no .cpuprofile in ${join(root, target.name)} (did it exit cleanly?)`);
    for (const file of files) console.log(`${renderSummary(`${target.name} (${file})`, await summariseFile(join(root, target.name, file)))}\n`);
  }
}

interface Cell {
  p50: number[];
  p99: number[];
  rps: number[];
  /** CPU µs per request of the target's own process (the upstream's, for direct) and of the upstream behind it. */
  cpu: number[];
  upstreamCpu: number[];
  errors: number;
  requests: number;
}

async function measure(): Promise<void> {
  const notes = machine();
  console.error(notes);
  const { targets, servers, stopUpstream, pids, upstreamPid } = await startTargets();
  const latency = new Map<string, Cell>();
  const throughput = new Map<string, { rps: number[]; level: number[]; errors: number; requests: number }>();
  const cell = (key: string) => latency.get(key) ?? latency.set(key, { p50: [], p99: [], rps: [], cpu: [], upstreamCpu: [], errors: 0, requests: 0 }).get(key)!;
  const started = performance.now();
  try {
    for (const target of targets) for (const mode of MODES) await closedLoop(target, mode, 8, QUICK ? 0.5 : 1.5); // warm-up (JIT, pools)
    for (let round = 0; round < ROUNDS; round++) {
      const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
      for (const phase of LATENCY_PHASES) {
        for (const target of order) {
          const before = { own: cpuMs(pids.get(target.name)), upstream: cpuMs(upstreamPid) };
          const result = await closedLoop(target, phase.mode, phase.clients, SECONDS);
          const requests = result.ok + result.errors;
          const c = cell(`${target.name}|${phase.mode}|${phase.clients}`);
          c.cpu.push((1000 * (cpuMs(pids.get(target.name)) - before.own)) / requests);
          c.upstreamCpu.push((1000 * (cpuMs(upstreamPid) - before.upstream)) / requests);
          c.p50.push(percentile(result.latencies, 50));
          c.p99.push(percentile(result.latencies, 99));
          c.rps.push(result.rps);
          c.errors += result.errors;
          c.requests += requests;
          console.error(
            `round ${round} ${target.name} ${phase.mode} ${phase.clients} client(s): p50 ${fmtMs(percentile(result.latencies, 50))} ms, p99 ${fmtMs(percentile(result.latencies, 99))} ms, ${result.rps.toFixed(0)} req/s, ${c.cpu.at(-1)!.toFixed(0)} µs CPU/request${result.errors > 0 ? `, ${result.errors} errors (${result.firstError})` : ''}`,
          );
        }
      }
      for (const mode of MODES) {
        for (const target of order) {
          const key = `${target.name}|${mode}`;
          const t = throughput.get(key) ?? throughput.set(key, { rps: [], level: [], errors: 0, requests: 0 }).get(key)!;
          let best = { rps: Number.NaN, level: Number.NaN };
          const seen: string[] = [];
          for (const level of LEVELS) {
            const result = await closedLoop(target, mode, level, RAMP_SECONDS);
            t.errors += result.errors;
            t.requests += result.ok + result.errors;
            const errorRate = result.errors / Math.max(1, result.ok + result.errors);
            seen.push(`${level}: ${result.rps.toFixed(0)}${result.errors > 0 ? ` (${(100 * errorRate).toFixed(1)}% errors: ${result.firstError})` : ''}`);
            if (errorRate < MAX_ERROR_RATE && !(result.rps <= best.rps)) best = { rps: result.rps, level };
          }
          t.rps.push(best.rps);
          t.level.push(best.level);
          console.error(`round ${round} ${target.name} ${mode} max req/s by concurrency: ${seen.join(', ')}`);
        }
      }
    }
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
    await stopUpstream();
    await Promise.all(targets.map((target) => target.pool.close()));
  }
  const minutes = (performance.now() - started) / 60_000;

  const names = targets.map((target) => target.name);
  const gateways = names.filter((name) => name !== 'direct');
  const lines = [
    `Gateway overhead — ${new Date().toISOString()} — ${ROUNDS} interleaved round(s), ${SECONDS} s per latency figure, ${RAMP_SECONDS} s per throughput level (${LEVELS.join(', ')} clients), ${minutes.toFixed(1)} min`,
    '',
    `Upstream: bench/canned-upstream.ts — a canned-SSE server, no model: ${CANNED_WORDS.length} content chunks, a finish chunk, a usage chunk and [DONE] in one write, or the same completion as JSON; every gateway and the client in processes of their own on the same machine. Machine: ${notes}.`,
    '',
    'Latency in ms: median of the rounds (lowest–highest round). "added" is the gateway\'s figure minus the direct figure of the same round.',
    '',
    `| request | clients | pct | ${names.join(' | ')} | ${gateways.map((name) => `${name} added`).join(' | ')} | target (added) | ${gateways.map((name) => `${name} met`).join(' | ')} |`,
    `| --- | ---: | --- | ${names.map(() => '---:').join(' | ')} | ${gateways.map(() => '---:').join(' | ')} | --- | ${gateways.map(() => '---').join(' | ')} |`,
  ];
  for (const phase of LATENCY_PHASES) {
    for (const pct of ['p50', 'p99'] as const) {
      const values = (name: string) => latency.get(`${name}|${phase.mode}|${phase.clients}`)?.[pct] ?? [];
      const direct = values('direct');
      const added = (name: string) => values(name).map((value, round) => value - (direct[round] ?? Number.NaN));
      const limit = pct === 'p50' ? ADDED_P50_TARGET : ADDED_P99_TARGET;
      lines.push(
        `| ${modeLabel(phase.mode)} | ${phase.clients} | ${pct} | ${names.map((name) => spread(values(name), fmtMs)).join(' | ')} | ${gateways.map((name) => spread(added(name), fmtMs)).join(' | ')} | < ${limit} ms | ${gateways.map((name) => (direct.length === 0 ? '—' : median(added(name)) < limit ? 'yes' : 'NO')).join(' | ')} |`,
      );
    }
  }
  lines.push(
    '',
    `Most requests/s with < ${100 * MAX_ERROR_RATE}% errors over ${LEVELS.join(', ')} closed-loop clients: median of the rounds (lowest–highest), and the concurrency of the best level per round.`,
    '',
    `| request | ${names.join(' | ')} | best clients (${names.join(' / ')}) | ${names.includes('kiln') && names.includes('portkey') ? `kiln/portkey: median of rounds (spread); of medians | target | met |` : ''}`,
    `| --- | ${names.map(() => '---:').join(' | ')} | --- | ${names.includes('kiln') && names.includes('portkey') ? '---: | --- | --- |' : ''}`,
  );
  for (const mode of MODES) {
    const of = (name: string) => throughput.get(`${name}|${mode}`)!;
    let ratioCells = '';
    if (names.includes('kiln') && names.includes('portkey')) {
      const ratios = of('kiln').rps.map((rps, round) => rps / of('portkey').rps[round]!);
      const ofMedians = median(of('kiln').rps) / median(of('portkey').rps);
      ratioCells = `${spread(ratios, (value) => value.toFixed(2))}; ${ofMedians.toFixed(2)} | ≥ ${RPS_RATIO_TARGET} | ${median(ratios) >= RPS_RATIO_TARGET ? 'yes' : 'NO'} |`;
    }
    lines.push(`| ${mode === 'json' ? 'non-streaming' : 'streaming'} | ${names.map((name) => spread(of(name).rps, fmtRate)).join(' | ')} | ${names.map((name) => of(name).level.join(',')).join(' / ')} | ${ratioCells}`);
  }
  const cpuRatios = ([['portkey', 'kiln'], ['kiln', 'floor']] as const).filter(([a, b]) => names.includes(a) && names.includes(b));
  lines.push(
    '',
    `CPU time per request in µs (user + system, from /proc), median of the rounds (lowest–highest): the target's own process (for direct, the upstream), and the upstream's share behind each gateway.`,
    '',
    `| request | clients | ${names.map((name) => (name === 'direct' ? 'upstream alone' : name)).join(' | ')} | ${gateways.map((name) => `upstream behind ${name}`).join(' | ')} |${cpuRatios.map(([a, b]) => ` ${a}/${b} |`).join('')}`,
    `| --- | ---: | ${names.map(() => '---:').join(' | ')} | ${gateways.map(() => '---:').join(' | ')} |${cpuRatios.map(() => ' ---: |').join('')}`,
  );
  for (const phase of LATENCY_PHASES) {
    const of = (name: string) => latency.get(`${name}|${phase.mode}|${phase.clients}`)!;
    const ratios = cpuRatios.map(([a, b]) => ` ${(median(of(a).cpu) / median(of(b).cpu)).toFixed(2)} |`).join('');
    lines.push(`| ${modeLabel(phase.mode)} | ${phase.clients} | ${names.map((name) => spread(of(name).cpu, fmtRate)).join(' | ')} | ${gateways.map((name) => spread(of(name).upstreamCpu, fmtRate)).join(' | ')} |${ratios}`);
  }
  const failures = names.map((name) => {
    const errors = [...latency].filter(([key]) => key.startsWith(`${name}|`)).reduce((sum, [, c]) => sum + c.errors, 0) + MODES.reduce((sum, mode) => sum + (throughput.get(`${name}|${mode}`)?.errors ?? 0), 0);
    const requests = [...latency].filter(([key]) => key.startsWith(`${name}|`)).reduce((sum, [, c]) => sum + c.requests, 0) + MODES.reduce((sum, mode) => sum + (throughput.get(`${name}|${mode}`)?.requests ?? 0), 0);
    return `${name} ${errors} of ${requests}`;
  });
  lines.push('', `Failed requests (wrong status or body, or a transport error): ${failures.join(', ')}.`);
  const table = lines.join('\n');
  console.log(table);
  const dir = join(REPO_ROOT, 'bench-results');
  await mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replaceAll(':', '-').slice(0, 19);
  await writeFile(join(dir, `gateway-${stamp}.md`), `${table}\n`);
  await writeFile(join(dir, `gateway-${stamp}.json`), JSON.stringify({ notes, latency: Object.fromEntries(latency), throughput: Object.fromEntries(throughput) }, null, 2));
  console.error(`written to bench-results/gateway-${stamp}.{md,json}`);
}

if (flags.profile !== undefined) await profile(flags.profile);
else await measure();
