/**
 * Tenancy end to end on the embedded store: the real server (bin/kiln.cjs) on a tiny model, the real `kiln keys` and
 * `kiln usage` commands on the same SQLite file, and the `openai` client. Keys created by the CLI work at once and a
 * revoked one is refused within the key cache's delay; after 200 concurrent requests (50 of them streams the client
 * aborts), every row of the ledger is what its client received (or, aborted, at least what it saw); /metrics counts
 * the same traffic; and no key ever reaches the server's logs, though key names do.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { runKiln, startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';
import { sqliteUsageRows } from '../helpers/stores.js';

const ADMIN = `sk-admin-${randomBytes(16).toString('hex')}`;
const LEDGER_MODEL = 'tiny/ledger';
const LIFECYCLE_MODEL = 'tiny/lifecycle';
const LEDGER_KEYS = ['ledger-a', 'ledger-b', 'ledger-c'] as const;
/** The server's key cache (src/tenancy/key-resolver.ts KEY_CACHE_MS): a revocation applies within it. */
const KEY_CACHE_MS = 5_000;
const REQUESTS = 200;
/** Every 4th request is a stream the client aborts after ABORT_AFTER content chunks. */
const ABORT_AFTER = 3;

let kiln: KilnProcess;
let configFile: string;
let dataDir: string;
/** Every key the CLI printed, by name: none may appear in the server's output. */
const created = new Map<string, string>();

before(async () => {
  // neverEnd: every request runs to max_tokens, so an aborted stream is still generating when its client goes.
  const file = await ensureTinyModel({ neverEnd: true });
  dataDir = await mkdtemp(join(tmpdir(), 'kiln-tenancy-e2e-'));
  configFile = await writeConfig({
    data_dir: dataDir,
    server: { admin_key: ADMIN, usage_flush_ms: 200 },
    models: [
      // Room for all 200 requests at once: queued ones wait, none is refused (a refusal never reaches the ledger).
      // One thread: the prebuilt llama.cpp starts its threads on every decode, which costs more than a tiny model's
      // decode; with two on a busy 2-core machine this traffic took 17 s instead of under 2.
      { id: LEDGER_MODEL, file, parallel: 8, threads: 1, context_size: 1280, queue_depth: REQUESTS, queue_wait_ms: 120_000 },
      // Another id for the same engine, so that the lifecycle test's requests are apart in the ledger and metrics.
      { id: LIFECYCLE_MODEL, file },
    ],
  });
  kiln = await startKiln(['--config', configFile, '--log-level', 'debug']);
});

after(async () => {
  await kiln?.stop();
});

/** `kiln <args> --config <the server's config>`: the same store as the running server. */
async function cli(...args: string[]): Promise<string> {
  const { code, output } = await runKiln([...args, '--config', configFile]);
  assert.equal(code, 0, `kiln ${args.join(' ')} exited with ${code}:\n${output}`);
  return output;
}

async function createKey(name: string): Promise<string> {
  const output = await cli('keys', 'create', '--name', name);
  const match = /\b(sk-kiln-[0-9A-Za-z]{43})\b/.exec(output);
  assert.ok(match, `no key in the output of kiln keys create:\n${output}`);
  created.set(name, match[1]!);
  return match[1]!;
}

function clientFor(apiKey: string): OpenAI {
  return new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey, maxRetries: 0 });
}

interface UsageRow {
  key?: string;
  model?: string;
  key_id?: string;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

async function usageBy(groupBy: 'key' | 'model'): Promise<UsageRow[]> {
  const response = await fetch(`${kiln.url}/v1/usage?group_by=${groupBy}`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(response.status, 200);
  return ((await response.json()) as { data: UsageRow[] }).data;
}

test('a key created by the CLI works at once, is listed by name only, and is refused within 5 s of its revocation', async (t) => {
  const key = await createKey('lifecycle');
  const client = clientFor(key);
  const completion = await client.chat.completions.create({ model: LIFECYCLE_MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 });
  assert.equal(completion.usage?.completion_tokens, 4);

  for (const listing of await Promise.all([cli('keys', 'list'), cli('keys', 'list', '--json')])) {
    assert.match(listing, /lifecycle/);
    assert.ok(!listing.includes(key), 'kiln keys list shows the key');
    // The listing's prefix is the key's first 12 characters; nothing of the secret after it.
    assert.ok(!listing.includes(key.slice(12, 24)), 'kiln keys list shows part of the secret');
  }

  await cli('keys', 'revoke', 'lifecycle');
  const revokedAt = Date.now();
  let refusedAfterMs: number | undefined;
  while (refusedAfterMs === undefined) {
    try {
      await client.chat.completions.create({ model: LIFECYCLE_MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1 });
    } catch (error) {
      assert.ok(error instanceof OpenAI.AuthenticationError, `expected 401, got ${error}`);
      refusedAfterMs = Date.now() - revokedAt;
      break;
    }
    assert.ok(Date.now() - revokedAt < KEY_CACHE_MS + 5_000, 'the revoked key is still accepted');
    await sleep(100);
  }
  assert.ok(refusedAfterMs <= KEY_CACHE_MS + 1_000, `refused ${refusedAfterMs} ms after the revocation`);
  t.diagnostic(`the revoked key was refused ${refusedAfterMs} ms after kiln keys revoke returned`);
  const [all, active] = await Promise.all([cli('keys', 'list', '--all'), cli('keys', 'list')]);
  assert.match(all, /lifecycle/);
  assert.doesNotMatch(active, /lifecycle/);
});

interface Sent {
  id: string;
  key: string;
  kind: 'whole' | 'stream' | 'aborted';
  /** What the client received (whole and stream). */
  usage?: { prompt: number; completion: number };
  /** Content chunks the client saw before aborting. */
  seen?: number;
}

/** One of the 200: `i % 4 === 3` an aborted stream, `=== 1` a stream with usage, else a whole response. */
async function send(i: number, keys: ReadonlyMap<string, string>): Promise<Sent> {
  const keyName = LEDGER_KEYS[i % LEDGER_KEYS.length]!;
  const client = clientFor(keys.get(keyName)!);
  const id = `ledger-${i}`;
  // Prompts of different lengths, so that a row matched to the wrong request shows.
  const messages = [{ role: 'user' as const, content: `R${i} ${'more '.repeat(i % 7)}` }];
  const headers = { 'x-request-id': id };
  if (i % 4 === 3) {
    const controller = new AbortController();
    const stream = await client.chat.completions.create({ model: LEDGER_MODEL, messages, max_tokens: 1000, stream: true }, { signal: controller.signal, headers });
    let seen = 0;
    try {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta.content) seen++;
        if (seen === ABORT_AFTER) controller.abort();
      }
      assert.fail(`request ${id} ended before its client aborted it`);
    } catch (error) {
      assert.ok(controller.signal.aborted, `request ${id}: ${error}`);
    }
    return { id, key: keyName, kind: 'aborted', seen };
  }
  const maxTokens = 2 + (i % 6);
  if (i % 4 === 1) {
    const stream = await client.chat.completions.create(
      { model: LEDGER_MODEL, messages, max_tokens: maxTokens, stream: true, stream_options: { include_usage: true } },
      { headers },
    );
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) usage = chunk.usage ?? usage;
    assert.ok(usage, `request ${id}: no usage chunk`);
    return { id, key: keyName, kind: 'stream', usage: { prompt: usage.prompt_tokens, completion: usage.completion_tokens } };
  }
  const completion = await client.chat.completions.create({ model: LEDGER_MODEL, messages, max_tokens: maxTokens }, { headers });
  return { id, key: keyName, kind: 'whole', usage: { prompt: completion.usage!.prompt_tokens, completion: completion.usage!.completion_tokens } };
}

let sent: Sent[] = [];

test('after 200 concurrent requests, 50 aborted mid-stream, the ledger holds what each client received', async (t) => {
  const keys = new Map<string, string>(await Promise.all(LEDGER_KEYS.map(async (name) => [name, await createKey(name)] as const)));

  const started = Date.now();
  const settled = await Promise.allSettled(Array.from({ length: REQUESTS }, (_, i) => send(i, keys)));
  const failures = settled.flatMap((outcome, i) => (outcome.status === 'rejected' ? [`request ${i}: ${outcome.reason}`] : []));
  assert.deepEqual(failures, [], 'every request is admitted and completes (the queue has room for all)');
  sent = settled.map((outcome) => (outcome as PromiseFulfilledResult<Sent>).value);
  const trafficMs = Date.now() - started;

  // The cancelled requests are recorded when the server notices the disconnect: wait until all 200 are written
  // (GET /v1/usage writes the server's pending rows first).
  const deadline = Date.now() + 15_000;
  let recorded = 0;
  while ((recorded = (await usageBy('model')).find((row) => row.model === LEDGER_MODEL)?.requests ?? 0) < REQUESTS) {
    assert.ok(Date.now() < deadline, `the ledger holds ${recorded} of ${REQUESTS} requests`);
    await sleep(100);
  }
  assert.equal(recorded, REQUESTS);

  const rows = sqliteUsageRows(dataDir, LEDGER_MODEL);
  const byId = new Map(rows.map((row) => [row.request_id, row]));
  assert.equal(rows.length, REQUESTS);
  assert.equal(byId.size, REQUESTS, 'one row per request');
  const clientSums = new Map<string, { prompt: number; completion: number }>();
  const cancelledSums = new Map<string, { prompt: number; completion: number }>();
  const add = (sums: typeof clientSums, key: string, prompt: number, completion: number) => {
    const sum = sums.get(key) ?? { prompt: 0, completion: 0 };
    sums.set(key, { prompt: sum.prompt + prompt, completion: sum.completion + completion });
  };
  for (const request of sent) {
    const row = byId.get(request.id);
    assert.ok(row, `no ledger row for ${request.id}`);
    assert.equal(row.key_name, request.key, request.id);
    if (request.kind === 'aborted') {
      assert.equal(row.status, 'cancelled', request.id);
      assert.equal(row.finish_reason, null, request.id);
      assert.ok(row.prompt_tokens > 0, `${request.id}: prompt tokens ${row.prompt_tokens}`);
      assert.ok(row.completion_tokens >= request.seen!, `${request.id}: ${row.completion_tokens} tokens recorded, the client saw ${request.seen} chunks`);
      add(cancelledSums, request.key, row.prompt_tokens, row.completion_tokens);
    } else {
      assert.equal(row.status, 'completed', request.id);
      assert.equal(row.finish_reason, 'length', request.id);
      assert.deepEqual({ prompt: row.prompt_tokens, completion: row.completion_tokens }, request.usage, request.id);
      add(clientSums, request.key, request.usage!.prompt, request.usage!.completion);
    }
  }
  assert.equal(sent.filter((request) => request.kind === 'aborted').length, 50);

  // The summary by key: the completed requests' tokens are exactly the clients' sums, the rest is the aborted ones'.
  const summary = await usageBy('key');
  for (const name of LEDGER_KEYS) {
    const row = summary.find((each) => each.key === name);
    assert.ok(row, `no usage row for ${name}`);
    const received = clientSums.get(name)!;
    const cancelled = cancelledSums.get(name)!;
    assert.equal(row.requests, sent.filter((request) => request.key === name).length, name);
    assert.equal(row.prompt_tokens - cancelled.prompt, received.prompt, `${name}: prompt tokens`);
    assert.equal(row.completion_tokens - cancelled.completion, received.completion, `${name}: completion tokens`);
    assert.equal(row.total_tokens, row.prompt_tokens + row.completion_tokens);
  }
  t.diagnostic(`${REQUESTS} requests in ${trafficMs} ms`);
});

interface Sample {
  value?: string;
  labels?: Record<string, string>;
}

test('/metrics parses and its counters match the traffic and the ledger', async () => {
  assert.equal(sent.length, REQUESTS, 'runs after the ledger test');
  const response = await fetch(`${kiln.url}/metrics`);
  assert.equal(response.status, 200);
  const text = await response.text();
  const parse = parsePrometheusTextFormat as (text: string) => Array<{ name: string; metrics: Sample[] }>;
  const families = new Map(parse(text).map((family) => [family.name, family.metrics]));
  // Histograms are parsed without their labels (see test/unit/metrics.test.ts): counters are what is compared here.
  const sum = (name: string, labels: Record<string, string>) =>
    (families.get(name) ?? [])
      .filter((sample) => Object.entries(labels).every(([label, value]) => sample.labels?.[label] === value))
      .reduce((total, sample) => total + Number(sample.value), 0);

  assert.equal(sum('kiln:requests_total', { model_name: LEDGER_MODEL }), REQUESTS);
  assert.equal(sum('kiln:requests_total', { model_name: LEDGER_MODEL, status: 'completed' }), 150);
  assert.equal(sum('kiln:requests_total', { model_name: LEDGER_MODEL, status: 'cancelled' }), 50);
  assert.equal(sum('kiln:requests_total', { model_name: LEDGER_MODEL, status: 'failed' }), 0);
  assert.equal(sum('kiln:request_success_total', { model_name: LEDGER_MODEL, finished_reason: 'length' }), 150);
  assert.equal(sum('kiln:request_success_total', { model_name: LEDGER_MODEL, finished_reason: 'abort' }), 50);
  assert.equal(sum('kiln:requests_rejected_total', { model_name: LEDGER_MODEL }), 0);

  // Every model's token counters equal the ledger's totals for it (the lifecycle test's requests included).
  const byModel = await usageBy('model');
  for (const model of [LEDGER_MODEL, LIFECYCLE_MODEL]) {
    const row = byModel.find((each) => each.model === model);
    assert.ok(row, `no usage row for ${model}`);
    assert.equal(sum('kiln:requests_total', { model_name: model }), row.requests, `${model}: requests`);
    assert.equal(sum('kiln:prompt_tokens_total', { model_name: model }), row.prompt_tokens, `${model}: prompt tokens`);
    assert.equal(sum('kiln:generation_tokens_total', { model_name: model }), row.completion_tokens, `${model}: generation tokens`);
  }
  // The revoked key's refusals are counted as rejections, not as requests.
  assert.ok(sum('kiln:requests_rejected_total', { code: '401' }) >= 1);
});

test('no key appears in the server output, key names do; after SIGTERM, kiln usage reads the same ledger', async () => {
  assert.equal(sent.length, REQUESTS, 'runs after the ledger test');
  const before = await usageBy('key');
  const stopping = Date.now();
  await kiln.stop();
  const output = kiln.output();
  const stoppedMs = Date.now() - stopping;
  assert.equal(kiln.child.exitCode, 0, `no clean shutdown (${kiln.child.signalCode}, ${stoppedMs} ms):\n${output.slice(-4000)}`);
  // Nothing is in flight: the drain must not wait for its deadline (the spare connections aborted fetches leave).
  assert.ok(stoppedMs < 5_000, `the shutdown took ${stoppedMs} ms`);
  assert.equal(created.size, LEDGER_KEYS.length + 1);
  for (const [name, key] of [...created, ['admin', ADMIN] as const]) {
    assert.ok(!output.includes(key), `the key of '${name}' appears in the server's output`);
    // Nor a part long enough to matter (the display prefix is 12 characters).
    assert.ok(!output.includes(key.slice(12, 28)), `part of the key of '${name}' appears in the server's output`);
  }
  for (const name of [...LEDGER_KEYS, 'lifecycle']) assert.ok(output.includes(`"${name}"`), `the key name '${name}' is not in the logs`);

  // The shutdown wrote whatever was left; the CLI reads the same rows the server summarised.
  const report = JSON.parse(await cli('usage', '--json', '--group-by', 'key')) as { data: Array<{ group: string; requests: number; prompt_tokens: number; completion_tokens: number }> };
  for (const name of [...LEDGER_KEYS, 'lifecycle']) {
    const server = before.find((row) => row.key === name);
    const stored = report.data.find((row) => row.group === name);
    assert.ok(server && stored, `${name} in both summaries`);
    assert.deepEqual(
      { requests: stored.requests, prompt: stored.prompt_tokens, completion: stored.completion_tokens },
      { requests: server.requests, prompt: server.prompt_tokens, completion: server.completion_tokens },
      name,
    );
  }
});
