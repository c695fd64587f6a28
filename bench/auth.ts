/**
 * `npm run bench:auth` — what tenancy costs a request. Two Kiln processes (the built CLI) in front of the canned
 * upstream (bench/canned-upstream.ts), measured by the same client in the same run:
 *   off   an open server: no keys anywhere, no admin key, hence no key lookup and no rate limits; the usage ledger
 *         and the metrics still run (they always do);
 *   on    a SQLite store holding --keys keys (10,000), each with RPM and TPM limits too high to refuse anything, so
 *         the counters run on every request; an admin key; the client's requests go round-robin over --spread of
 *         those keys (1,000), so the key cache holds that many entries and each one expires every 5 s (a store read);
 *   redis (--redis) as `on`, with the rate-limit counters in Redis at --redis-url.
 * The client sends the same body to every server — a non-streaming completion with `max_tokens: 1`, whose canned
 * answer is checked — with a key of the same length (off: one key for every request). After a warm-up, rounds alternate the servers'
 * order; each round measures 1 client (latency) then 8 clients (throughput) for --seconds each. Reported: medians of
 * the rounds (lowest–highest), the per-round difference or ratio against `off`, and the CPU time each Kiln process
 * spends per request (from /proc: the steadier figure on a shared machine). Targets (issue 12): tenancy adds
 * < 0.2 ms at p50 with 1 client and costs < 5% of the requests/s with 8 clients. Options:
 *   --rounds <n> (5)  --seconds <s> (6)  --warmup <s> (3)  --keys <n> (10000)  --spread <n> (1000)
 *   --redis  --redis-url <url> (redis://127.0.0.1:6379)  --quick (1 round, 1 s, for a smoke run)
 *   --profile <dir>  instead of measuring: each server under `node --cpu-prof` with 8 clients for --seconds, then
 *                    where its CPU time goes (bench/gateway-profile.ts), to see what tenancy adds
 */
import { execFileSync } from 'node:child_process';
import { readdir, rm } from 'node:fs/promises';
import { cpus, loadavg, release } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import { CANNED_MODEL, startCannedUpstream } from './canned-upstream.js';
import { makeTarget, median, once, percentile, type Target } from './gateway-client.js';
import { cpuMs, KILN_MODEL, type ServerProcess } from './gateway-servers.js';
import { BENCH_RPM, BENCH_TPM, ledgerRequests, seedKeys, startKiln, tempDir } from './auth-servers.js';
import { renderSummary, summariseFile } from './gateway-profile.js';
import { renderReport, type Cell, type Phase } from './auth-report.js';

const REPO_ROOT = resolve(import.meta.dirname, '..');
const { values: flags } = parseArgs({
  options: {
    rounds: { type: 'string' },
    seconds: { type: 'string' },
    warmup: { type: 'string' },
    keys: { type: 'string', default: '10000' },
    spread: { type: 'string', default: '1000' },
    redis: { type: 'boolean', default: false },
    'redis-url': { type: 'string', default: 'redis://127.0.0.1:6379' },
    quick: { type: 'boolean', default: false },
    profile: { type: 'string' },
  },
});
const QUICK = flags.quick!;
const ROUNDS = Number(flags.rounds ?? (QUICK ? 1 : 5));
const SECONDS = Number(flags.seconds ?? (QUICK ? 1 : 6));
const WARMUP = Number(flags.warmup ?? (QUICK ? 1 : 3));
const KEYS = Number(flags.keys);
const SPREAD = Math.min(KEYS, Number(flags.spread));
const PHASES: Phase[] = [1, 8];
const ADMIN_KEY = 'sk-bench-admin-0123456789';

interface Variant {
  name: string;
  server: ServerProcess;
  dataDir: string;
  /** One target per client key, all on one keep-alive pool: the request names the next key in turn. */
  targets: Target[];
  sent: number;
}

/** The client's bodies and keys: one target per key, sharing the pool and the `max_tokens: 1` body. */
function targetsFor(name: string, origin: string, keys: string[]): Target[] {
  const first = makeTarget(name, origin, KILN_MODEL);
  const json = JSON.stringify({ model: KILN_MODEL, messages: [{ role: 'user', content: 'Say one word.' }], max_tokens: 1, stream: false });
  return keys.map((key) => ({ ...first, headers: { ...first.headers, authorization: `Bearer ${key}` }, bodies: { ...first.bodies, json } }));
}

/** `clients` closed-loop clients for `seconds`, taking the keys in turn; gateway-client's `once` checks each answer. */
async function closedLoop(variant: Variant, clients: number, seconds: number) {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let next = 0;
  const started = performance.now();
  const deadline = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (performance.now() < deadline) {
        const sample = await once(variant.targets[next++ % variant.targets.length]!, 'json');
        if (sample.ok) latencies.push(sample.ms);
        else {
          errors++;
          firstError ??= sample.error;
        }
      }
    }),
  );
  variant.sent += latencies.length + errors;
  return { latencies, errors, firstError, rps: latencies.length / ((performance.now() - started) / 1000) };
}

/** Tenancy really is on (limits in the headers, strangers refused) or really off (nothing refused, no headers). */
async function check(variant: Variant, tenancy: boolean): Promise<void> {
  const post = async (authorization?: string) => {
    const response = await request(`${variant.server.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(authorization !== undefined ? { authorization } : {}) },
      body: variant.targets[0]!.bodies.json,
    });
    await response.body.text();
    if (response.statusCode === 200) variant.sent++;
    return { status: response.statusCode, limit: response.headers['x-ratelimit-limit-requests'] };
  };
  const keyed = await post(variant.targets[0]!.headers.authorization);
  const stranger = await post('Bearer sk-kiln-not-a-key');
  const expected = tenancy ? { keyed: 200, limit: String(BENCH_RPM), stranger: 401 } : { keyed: 200, limit: undefined, stranger: 200 };
  if (keyed.status !== expected.keyed || keyed.limit !== expected.limit || stranger.status !== expected.stranger) {
    throw new Error(`${variant.name}: a keyed request answered ${keyed.status} with x-ratelimit-limit-requests ${keyed.limit}, an unknown key ${stranger.status}; expected ${JSON.stringify(expected)}`);
  }
}

function machine(): string {
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    if (execFileSync('git', ['status', '--porcelain', 'src'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim() !== '') commit += ' + uncommitted src/ changes';
  } catch {}
  const cpu = cpus();
  return `${cpu.length} × ${cpu[0]?.model.trim() ?? 'unknown CPU'}, Linux ${release()}, Node ${process.version}, load average ${loadavg().map((value) => value.toFixed(2)).join(' ')} at start; Kiln ${commit}`;
}

/** 8 clients on each server under the profiler; the profiles are written when the servers exit. */
async function profile(variants: Variant[], dir: string): Promise<void> {
  for (const variant of variants) await closedLoop(variant, 8, WARMUP);
  for (const variant of variants) {
    const result = await closedLoop(variant, 8, SECONDS);
    console.error(`${variant.name} under the profiler: ${result.rps.toFixed(0)} req/s, p50 ${median(result.latencies).toFixed(3)} ms, ${result.errors} errors`);
  }
  const requests = variants.map((variant) => `${variant.name} ${variant.sent}`).join(', ');
  await Promise.all(variants.map((variant) => variant.server.stop()));
  for (const variant of variants) {
    const files = (await readdir(join(dir, variant.name))).filter((file) => file.endsWith('.cpuprofile'));
    if (files.length === 0) throw new Error(`${variant.name}: no .cpuprofile in ${join(dir, variant.name)} (did it exit cleanly?)`);
    for (const file of files) console.log(`${renderSummary(`${variant.name} (${file}; requests served in its life: ${requests})`, await summariseFile(join(dir, variant.name, file)), 40)}\n`);
  }
}

async function main(): Promise<void> {
  const notes = machine();
  console.error(notes);
  const started = performance.now();
  const dirs = { off: await tempDir('off'), on: await tempDir('on'), redis: flags.redis ? await tempDir('redis') : undefined };
  const seeded = await seedKeys(dirs.on, KEYS, SPREAD);
  console.error(`on: ${KEYS} keys (RPM ${BENCH_RPM}, TPM ${BENCH_TPM}) created through the store API in ${seeded.seconds.toFixed(1)} s`);
  let redisKeys = seeded.keys;
  if (dirs.redis !== undefined) redisKeys = (await seedKeys(dirs.redis, KEYS, SPREAD)).keys;

  const upstream = await startCannedUpstream();
  const variants: Variant[] = [];
  try {
    const add = async (name: string, dataDir: string, keys: string[], tenancy: { adminKey: string; redisUrl?: string } | undefined) => {
      const nodeFlags = flags.profile === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${join(resolve(flags.profile), name)}`];
      const server = await startKiln(upstream.url, CANNED_MODEL, { dataDir, nodeFlags, ...tenancy });
      const variant: Variant = { name, server, dataDir, targets: targetsFor(name, server.url, keys), sent: 0 };
      variants.push(variant);
      await check(variant, tenancy !== undefined);
    };
    // The off server gets one key of the same length in every request, as a client of an open server sends (SDKs
    // insist on one): the same bytes on the wire, and the one cache entry an open server keeps for an unknown key.
    // Sending it the thousand stored keys would make it look each one up too, and hide that cost from the comparison.
    await add('off', dirs.off, ['sk-kiln-'.padEnd(seeded.keys[0]!.length, 'o')], undefined);
    await add('on', dirs.on, seeded.keys, { adminKey: ADMIN_KEY });
    if (dirs.redis !== undefined) await add('redis', dirs.redis, redisKeys, { adminKey: ADMIN_KEY, redisUrl: flags['redis-url']! });
    console.error(`checked: ${variants.map((variant) => variant.name).join(', ')} (on: limits in the headers, an unknown key refused; off: open)`);

    if (flags.profile !== undefined) {
      await profile(variants, resolve(flags.profile));
      return;
    }
    const cells = new Map<string, Cell>();
    const cell = (key: string) => cells.get(key) ?? cells.set(key, { p50: [], p99: [], rps: [], cpu: [], errors: 0, requests: 0 }).get(key)!;
    for (const variant of variants) await closedLoop(variant, 8, WARMUP); // JIT, pools, every client key in the cache
    for (let round = 0; round < ROUNDS; round++) {
      const order = variants.map((_, i) => variants[(i + round) % variants.length]!);
      for (const clients of PHASES) {
        for (const variant of order) {
          const pid = variant.server.child.pid;
          const before = cpuMs(pid);
          const result = await closedLoop(variant, clients, SECONDS);
          const requests = result.latencies.length + result.errors;
          const c = cell(`${variant.name}|${clients}`);
          c.cpu.push((1000 * (cpuMs(pid) - before)) / requests);
          c.p50.push(percentile(result.latencies, 50));
          c.p99.push(percentile(result.latencies, 99));
          c.rps.push(result.rps);
          c.errors += result.errors;
          c.requests += requests;
          console.error(
            `round ${round} ${variant.name} ${clients} client(s): p50 ${median(result.latencies).toFixed(3)} ms, p99 ${percentile(result.latencies, 99).toFixed(2)} ms, ${result.rps.toFixed(0)} req/s, ${c.cpu.at(-1)!.toFixed(0)} µs CPU/request${result.errors > 0 ? `, ${result.errors} errors (${result.firstError})` : ''}`,
          );
        }
      }
    }
    await Promise.all(variants.map((variant) => variant.server.stop()));
    // Every request that reached the engine is in the ledger (flushed at shutdown), with tenancy on or off.
    const ledger = await Promise.all(
      variants.map(async (variant) => {
        const rows = await ledgerRequests(variant.dataDir);
        return `${variant.name} ${rows} of ${variant.sent} sent${rows === variant.sent ? '' : ' (**MISMATCH**)'}`;
      }),
    );
    const minutes = (performance.now() - started) / 60_000;
    console.log(
      renderReport({
        title: `Tenancy cost — ${new Date().toISOString()} — ${ROUNDS} interleaved rounds, ${SECONDS} s per figure after a ${WARMUP} s warm-up, ${minutes.toFixed(1)} min`,
        notes,
        setup: `on: ${KEYS} keys in SQLite (created in ${seeded.seconds.toFixed(1)} s), requests spread round-robin over ${SPREAD} of them; usage rows in each server's ledger after the run: ${ledger.join(', ')}`,
        names: variants.map((variant) => variant.name),
        cells,
        phases: PHASES,
      }),
    );
  } catch (error) {
    for (const variant of variants) console.error(`${variant.name}:\n${variant.server.output().slice(-3000)}`);
    throw error;
  } finally {
    await Promise.all(variants.map((variant) => variant.server.stop()));
    await Promise.all(variants.map((variant) => variant.targets[0]!.pool.close()));
    await upstream.stop();
    for (const dir of Object.values(dirs)) if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }
}

await main();
