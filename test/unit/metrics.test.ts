/**
 * Metrics: what is rendered parses as Prometheus text, counters and histograms add up to exactly the records fed,
 * gauges follow their sources at each scrape (and a real registry: shared queues once, router health by deployment),
 * rejections never carry a model id that is not served, and instances do not share a registry.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { Metrics, metricsSourcesFromRegistry, type CompletionObservation, type MetricsSources, type ServedSnapshot } from '../../src/metrics/metrics.js';
import { Admission } from '../../src/service/admission.js';
import { ModelRegistry } from '../../src/service/model-registry.js';
import { chatRequest, drain, failure, FakeEngine, testRouter } from '../helpers/fake-engines.js';

interface Sample {
  value?: string;
  labels?: Record<string, string>;
  buckets?: Record<string, string>;
  count?: string;
  sum?: string;
}
interface Family {
  name: string;
  help: string;
  type: string;
  metrics: Sample[];
}

interface Scrape {
  text: string;
  families: Map<string, Family>;
  /** Every sample line by its own name (`x_bucket`, `x_sum`, `x_count` apart): see `scrape`. */
  lines: Map<string, Family>;
}

/**
 * The rendered text parsed twice: as it is (which checks the format and gives the families), and with histograms
 * retyped `untyped`, because the parser folds a histogram's labelled series into one and drops their labels, sums
 * and counts; untyped, each `_bucket`/`_sum`/`_count` line keeps its labels.
 */
async function scrape(metrics: Metrics): Promise<Scrape> {
  const text = await metrics.render();
  const parse = parsePrometheusTextFormat as (text: string) => Family[];
  const families = new Map<string, Family>();
  for (const family of parse(text)) {
    assert.ok(!families.has(family.name), `${family.name} appears once`);
    families.set(family.name, family);
  }
  // Untyped, a histogram's lines of each series form families of their own: merged by name.
  const lines = new Map<string, Family>();
  for (const family of parse(text.replace(/^# TYPE (\S+) histogram$/gm, '# TYPE $1 untyped'))) {
    const known = lines.get(family.name);
    if (known === undefined) lines.set(family.name, family);
    else known.metrics.push(...family.metrics);
  }
  return { text, families, lines };
}

/** The value of the series of `name` whose labels include `labels`; undefined when there is none. */
function valueOf(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  const family = families.get(name);
  assert.ok(family !== undefined, `${name} is exposed`);
  const matches = family.metrics.filter((sample) => Object.entries(labels).every(([key, value]) => sample.labels?.[key] === value));
  assert.ok(matches.length <= 1, `one ${name} series for ${JSON.stringify(labels)}`);
  return matches[0] === undefined ? undefined : Number(matches[0].value);
}

/** One labelled histogram series: its count, sum and cumulative buckets in the order rendered. */
function histogramOf(scraped: Scrape, name: string, labels: Record<string, string>): { count: number; sum: number; buckets: Array<[string, number]> } {
  const buckets = scraped.lines
    .get(`${name}_bucket`)!
    .metrics.filter((sample) => Object.entries(labels).every(([key, value]) => sample.labels?.[key] === value))
    .map((sample): [string, number] => [sample.labels!.le!, Number(sample.value)]);
  return { count: valueOf(scraped.lines, `${name}_count`, labels) ?? 0, sum: valueOf(scraped.lines, `${name}_sum`, labels) ?? 0, buckets };
}

const base = { promptTokens: 0, cachedTokens: 0, completionTokens: 0, reasoningTokens: 0 };
const RECORDS: CompletionObservation[] = [
  { ...base, model: 'a', status: 'completed', finishReasons: ['stop'], promptTokens: 100, cachedTokens: 64, completionTokens: 21, reasoningTokens: 5, durationMs: 1_200, firstTokenMs: 200, queueMs: 10 },
  { ...base, model: 'a', status: 'completed', finishReasons: ['length', 'stop'], promptTokens: 50, completionTokens: 40, durationMs: 3_000, firstTokenMs: 1_000, queueMs: 0 },
  { ...base, model: 'a', status: 'cancelled', finishReasons: [null], promptTokens: 30, completionTokens: 1, durationMs: 400, firstTokenMs: 390, queueMs: 300 },
  { ...base, model: 'a', status: 'failed', finishReasons: ['tool_calls', null], promptTokens: 20, completionTokens: 9, durationMs: 90_000, firstTokenMs: 50 },
  { ...base, model: 'Pro/b', status: 'cancelled', finishReasons: [null], promptTokens: 7, durationMs: 5, queueMs: 5 },
  { ...base, model: 'Pro/b', status: 'completed', finishReasons: ['stop'], promptTokens: 7, cachedTokens: 7, completionTokens: 2, durationMs: 30, firstTokenMs: 10, queueMs: 2 },
];

test('counters and histograms add up to exactly the records fed; finish reasons per choice, vLLM style', async () => {
  const metrics = new Metrics(undefined, { processMetrics: false });
  for (const record of RECORDS) metrics.observeCompletion(record);
  const scraped = await scrape(metrics);
  const { families } = scraped;

  for (const model of ['a', 'Pro/b']) {
    const mine = RECORDS.filter((record) => record.model === model);
    const sum = (pick: (record: CompletionObservation) => number) => mine.reduce((total, record) => total + pick(record), 0);
    for (const status of ['completed', 'cancelled', 'failed'] as const) {
      assert.equal(valueOf(families, 'kiln:requests_total', { model_name: model, status }), mine.filter((record) => record.status === status).length);
    }
    assert.equal(valueOf(families, 'kiln:prompt_tokens_total', { model_name: model }), sum((record) => record.promptTokens));
    assert.equal(valueOf(families, 'kiln:prompt_tokens_cached_total', { model_name: model }), sum((record) => record.cachedTokens));
    assert.equal(valueOf(families, 'kiln:generation_tokens_total', { model_name: model }), sum((record) => record.completionTokens));
    assert.equal(valueOf(families, 'kiln:reasoning_tokens_total', { model_name: model }), sum((record) => record.reasoningTokens));

    const e2e = histogramOf(scraped, 'kiln:e2e_request_latency_seconds', { model_name: model });
    assert.equal(e2e.count, mine.length);
    assert.ok(Math.abs(e2e.sum - sum((record) => record.durationMs) / 1000) < 1e-9);
    const queue = histogramOf(scraped, 'kiln:request_queue_time_seconds', { model_name: model });
    assert.equal(queue.count, mine.filter((record) => record.queueMs !== undefined).length);
    assert.ok(Math.abs(queue.sum - sum((record) => record.queueMs ?? 0) / 1000) < 1e-9);
    const ttft = histogramOf(scraped, 'kiln:time_to_first_token_seconds', { model_name: model });
    assert.equal(ttft.count, mine.filter((record) => record.firstTokenMs !== undefined).length);
    assert.ok(Math.abs(ttft.sum - sum((record) => record.firstTokenMs ?? 0) / 1000) < 1e-9);
    assert.equal((histogramOf(scraped, 'kiln:request_prompt_tokens', { model_name: model }).sum), sum((record) => record.promptTokens));
    assert.equal((histogramOf(scraped, 'kiln:request_generation_tokens', { model_name: model }).sum), sum((record) => record.completionTokens));
  }

  // TPOT per request: (duration − ttft) / (one choice's tokens − 1), only with two tokens or more per choice.
  const tpot = histogramOf(scraped, 'kiln:time_per_output_token_seconds', { model_name: 'a' });
  // 20 tokens; 40 over 2 choices (20 each); 9 over 2 choices (4.5 each). The 1-token request has no TPOT.
  const expected = [(1.2 - 0.2) / 20, (3 - 1) / 19, (90 - 0.05) / 3.5];
  assert.equal(tpot.count, expected.length);
  assert.ok(Math.abs(tpot.sum - expected.reduce((a, b) => a + b, 0)) < 1e-9);
  assert.equal((histogramOf(scraped, 'kiln:time_per_output_token_seconds', { model_name: 'Pro/b' }).sum), 0.02, '(30 − 10) ms over 1 token');

  const reasons = (model: string, reason: string) => valueOf(families, 'kiln:request_success_total', { model_name: model, finished_reason: reason });
  assert.equal(reasons('a', 'stop'), 2);
  assert.equal(reasons('a', 'length'), 1);
  assert.equal(reasons('a', 'tool_calls'), 1);
  assert.equal(reasons('a', 'abort'), 1, 'a cancelled choice');
  assert.equal(reasons('a', 'error'), 1, "a failed request's unfinished choice");
  assert.equal(reasons('Pro/b', 'abort'), 1);

  // Cumulative buckets, +Inf equal to the count, vLLM's bounds.
  const ttftA = histogramOf(scraped, 'kiln:time_to_first_token_seconds', { model_name: 'a' });
  assert.equal(ttftA.buckets[0]![0], '0.001');
  assert.deepEqual(ttftA.buckets.at(-1), ['+Inf', 4]);
  assert.equal(ttftA.buckets.at(-2)![0], '2560');
  const counts = ttftA.buckets.map(([, count]) => count);
  assert.deepEqual(counts, [...counts].sort((x, y) => x - y), 'cumulative');
  assert.deepEqual(ttftA.buckets.find(([le]) => le === '0.25'), ['0.25', 2], '0.05 s and 0.2 s');
});

test('the text is valid exposition: each family once, with HELP and TYPE, names Prometheus allows, finite values', async () => {
  const metrics = new Metrics(fakeSources({ models: [{ id: 'a', state: 'ready' }], served: [{ id: 'a', running: 1, waiting: 0 }] }));
  for (const record of RECORDS) metrics.observeCompletion(record);
  metrics.observeRejection('a', 429);
  const { text, families } = await scrape(metrics);
  assert.equal(metrics.contentType.split(';')[0], 'text/plain');
  assert.ok(families.has('process_cpu_user_seconds_total') && families.has('nodejs_eventloop_lag_seconds'), 'process metrics on by default');
  for (const family of families.values()) {
    assert.match(family.name, /^[a-zA-Z_:][a-zA-Z0-9_:]*$/);
    assert.notEqual(family.type, 'UNTYPED', `${family.name} has a TYPE`);
    if (family.name.startsWith('kiln:')) assert.ok(family.help.length > 0, `${family.name} has a HELP`);
  }
  const typeLines = text.split('\n').filter((line) => line.startsWith('# TYPE '));
  assert.equal(new Set(typeLines.map((line) => line.split(' ')[2])).size, typeLines.length, 'no duplicate TYPE line');
  for (const line of text.split('\n').filter((line) => line.startsWith('kiln:'))) {
    assert.ok(Number.isFinite(Number(line.slice(line.lastIndexOf(' ') + 1))), line);
  }
  const kiln = [...families.keys()].filter((name) => name.startsWith('kiln:')).sort();
  assert.deepEqual(kiln, [
    'kiln:deployment_healthy',
    'kiln:e2e_request_latency_seconds',
    'kiln:generation_tokens_total',
    'kiln:model_state',
    'kiln:num_requests_running',
    'kiln:num_requests_waiting',
    'kiln:prompt_cache_bytes',
    'kiln:prompt_cache_entries',
    'kiln:prompt_tokens_cached_total',
    'kiln:prompt_tokens_total',
    'kiln:reasoning_tokens_total',
    'kiln:request_generation_tokens',
    'kiln:request_prompt_tokens',
    'kiln:request_queue_time_seconds',
    'kiln:request_success_total',
    'kiln:requests_rejected_total',
    'kiln:requests_total',
    'kiln:time_per_output_token_seconds',
    'kiln:time_to_first_token_seconds',
  ]);
});

function fakeSources(state: { models: Array<{ id: string; state?: string }>; served: ServedSnapshot[] }): MetricsSources {
  return {
    models: () => state.models,
    served: () => state.served,
    serves: (id) => state.models.some((model) => model.id === id),
  };
}

test('gauges are read from their sources at each scrape: a model gone is gone, states one-hot, health 1/0', async () => {
  const state = {
    models: [{ id: 'local', state: 'loading' }, { id: 'Pro/local', state: 'loading' }, { id: 'remote', state: 'upstream' }, { id: 'plain' }],
    served: [
      { id: 'local', running: 3, waiting: 2, promptCache: { ramBytes: 4096, ramEntries: 2, diskBytes: 0, diskEntries: 0 } },
      { id: 'remote', running: 1, waiting: 0, deployments: [{ name: 'east', healthy: true }, { name: 'west', healthy: false }] },
    ] as ServedSnapshot[],
  };
  const metrics = new Metrics(fakeSources(state), { processMetrics: false });
  let { families } = await scrape(metrics);
  assert.equal(valueOf(families, 'kiln:num_requests_running', { model_name: 'local' }), 3);
  assert.equal(valueOf(families, 'kiln:num_requests_waiting', { model_name: 'local' }), 2);
  assert.equal(valueOf(families, 'kiln:num_requests_running', { model_name: 'Pro/local' }), undefined, 'a shared queue is reported once');
  assert.equal(valueOf(families, 'kiln:num_requests_running', { model_name: 'remote' }), 1);
  assert.equal(valueOf(families, 'kiln:prompt_cache_bytes', { model_name: 'local', tier: 'ram' }), 4096);
  assert.equal(valueOf(families, 'kiln:prompt_cache_entries', { model_name: 'local', tier: 'ram' }), 2);
  assert.equal(valueOf(families, 'kiln:prompt_cache_bytes', { model_name: 'local', tier: 'disk' }), 0);
  assert.equal(valueOf(families, 'kiln:prompt_cache_bytes', { model_name: 'remote', tier: 'ram' }), undefined, 'no cache, no series');
  assert.equal(valueOf(families, 'kiln:deployment_healthy', { model_name: 'remote', deployment: 'east' }), 1);
  assert.equal(valueOf(families, 'kiln:deployment_healthy', { model_name: 'remote', deployment: 'west' }), 0);
  assert.equal(families.get('kiln:model_state')!.metrics.length, 4 * 5, 'every state of every id');
  const states = (id: string) =>
    families.get('kiln:model_state')!.metrics.filter((sample) => sample.labels!.model_name === id && sample.value === '1').map((sample) => sample.labels!.state);
  assert.deepEqual(states('Pro/local'), ['loading']);
  assert.deepEqual(states('remote'), ['upstream']);
  assert.deepEqual(states('plain'), ['ready'], 'an engine without a status is ready');

  state.models = [{ id: 'remote', state: 'upstream' }];
  state.served = [{ id: 'remote', running: 0, waiting: 4, deployments: [{ name: 'east', healthy: false }] }];
  ({ families } = await scrape(metrics));
  assert.equal(valueOf(families, 'kiln:num_requests_running', { model_name: 'local' }), undefined);
  assert.equal(valueOf(families, 'kiln:prompt_cache_bytes', { model_name: 'local', tier: 'ram' }), undefined, 'unloaded: gone');
  assert.equal(valueOf(families, 'kiln:num_requests_waiting', { model_name: 'remote' }), 4);
  assert.equal(valueOf(families, 'kiln:deployment_healthy', { model_name: 'remote', deployment: 'east' }), 0);
  assert.equal(valueOf(families, 'kiln:deployment_healthy', { model_name: 'remote', deployment: 'west' }), undefined);
  assert.equal(families.get('kiln:model_state')!.metrics.length, 5);
});

test('rejections count by HTTP status; only a served model id becomes a label', async () => {
  const metrics = new Metrics(fakeSources({ models: [{ id: 'a' }], served: [] }), { processMetrics: false });
  metrics.observeRejection('a', 429);
  metrics.observeRejection('a', 429);
  metrics.observeRejection('a', 400);
  metrics.observeRejection('made-up-1', 404);
  metrics.observeRejection('made-up-2', 404);
  metrics.observeRejection(undefined, 401);
  const { families } = await scrape(metrics);
  assert.equal(valueOf(families, 'kiln:requests_rejected_total', { model_name: 'a', code: '429' }), 2);
  assert.equal(valueOf(families, 'kiln:requests_rejected_total', { model_name: 'a', code: '400' }), 1);
  assert.equal(valueOf(families, 'kiln:requests_rejected_total', { model_name: '', code: '404' }), 2);
  assert.equal(valueOf(families, 'kiln:requests_rejected_total', { model_name: '', code: '401' }), 1);
  assert.equal(families.get('kiln:requests_rejected_total')!.metrics.length, 4);
  // Without sources nothing is known to be served.
  const bare = new Metrics(undefined, { processMetrics: false });
  bare.observeRejection('a', 503);
  assert.equal(valueOf((await scrape(bare)).families, 'kiln:requests_rejected_total', { model_name: '', code: '503' }), 1);
});

test('instances keep their own registries (several servers in one process)', async () => {
  const one = new Metrics();
  const two = new Metrics();
  one.observeCompletion(RECORDS[0]!);
  one.observeCompletion(RECORDS[0]!);
  two.observeCompletion(RECORDS[0]!);
  assert.equal(valueOf((await scrape(one)).families, 'kiln:requests_total', { model_name: 'a', status: 'completed' }), 2);
  assert.equal(valueOf((await scrape(two)).families, 'kiln:requests_total', { model_name: 'a', status: 'completed' }), 1);
});

test('from a live registry: ids sharing a queue are reported once under the first, router deployments by name', async () => {
  const local = new FakeEngine('local', {}, 3);
  const { router } = testRouter([{ engine: new FakeEngine('bad', { failStart: failure('upstreamUnavailable') }) }, { engine: new FakeEngine('good') }], { failureThreshold: 1 });
  const sharedQueue = new Admission(() => local.capacity(), { depth: 4, waitMs: 10_000 });
  const routerQueue = new Admission(() => router.capacity(), { depth: 4, waitMs: 10_000 });
  const registry = new ModelRegistry();
  registry.add({ id: 'x', served: { engine: local, admission: sharedQueue }, ownedBy: 'kiln', created: 0 });
  registry.add({ id: 'Pro/x', served: { engine: local, admission: sharedQueue }, ownedBy: 'kiln', created: 0 });
  registry.add({ id: 'up', served: { engine: router, admission: routerQueue }, ownedBy: 'kiln', created: 0 });
  const metrics = new Metrics(metricsSourcesFromRegistry(registry), { processMetrics: false });

  const never = new AbortController().signal;
  const permits = [await sharedQueue.acquire(2, never), await sharedQueue.acquire(1, never, 1)];
  const queued = new AbortController();
  const waiter = sharedQueue.acquire(1, queued.signal).catch(() => undefined);
  // The router's failing deployment is ejected after one failure (the request fails over to the other).
  for (let i = 0; i < 4 && router.stats()[0]!.state === 'healthy'; i++) await drain(await router.start(chatRequest(), never));
  assert.equal(router.stats()[0]!.state, 'ejected');

  const { families } = await scrape(metrics);
  assert.equal(valueOf(families, 'kiln:num_requests_running', { model_name: 'x' }), 3, 'choices: 2 + 1');
  assert.equal(valueOf(families, 'kiln:num_requests_running', { model_name: 'Pro/x' }), undefined);
  assert.equal(valueOf(families, 'kiln:num_requests_waiting', { model_name: 'x' }), 1);
  assert.equal(valueOf(families, 'kiln:num_requests_running', { model_name: 'up' }), 0);
  assert.equal(valueOf(families, 'kiln:deployment_healthy', { model_name: 'up', deployment: 'd0' }), 0);
  assert.equal(valueOf(families, 'kiln:deployment_healthy', { model_name: 'up', deployment: 'd1' }), 1);
  assert.equal(valueOf(families, 'kiln:model_state', { model_name: 'up', state: 'upstream' }), 1);
  assert.equal(valueOf(families, 'kiln:model_state', { model_name: 'Pro/x', state: 'ready' }), 1);
  metrics.observeRejection('Pro/x', 429);
  metrics.observeRejection('nope', 404);
  const after = (await scrape(metrics)).families;
  assert.equal(valueOf(after, 'kiln:requests_rejected_total', { model_name: 'Pro/x', code: '429' }), 1);
  assert.equal(valueOf(after, 'kiln:requests_rejected_total', { model_name: '', code: '404' }), 1);

  queued.abort();
  await waiter;
  for (const permit of permits) permit.release();
  await router.close();
});
