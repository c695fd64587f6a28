/**
 * Property-based fuzzing of request bodies, in-process against the real HTTP layer, service and llama engine on tiny
 * models: whatever JSON arrives in whatever field (and whole random bodies, random content types, cut-off JSON), the
 * answer is a 2xx or a 4xx with the contract's error body — never a 5xx, never a hang. The context is small so that
 * no accepted request generates for long. Seeded: KILN_FUZZ_SEED, KILN_FUZZ_RUNS and KILN_FUZZ_SCALE (suite or soak)
 * reproduce or widen a run.
 *
 * Every case runs (no stop at the first failure) and failures are grouped by message, so one run lists every kind
 * of failure with an example case.
 */
import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { after, before, test } from 'node:test';
import { buildHttpServer } from '../../src/http/server.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { assembleKiln, type Kiln } from '../../src/service/assemble.js';
import { checkResponse, failureSignature } from '../helpers/contract-check.js';
import { FUZZ_MODEL, FUZZ_REASONING_MODEL, SOAK_SCALE, SUITE_SCALE, sampleFuzzCases, type FuzzCase } from '../helpers/fuzz-bodies.js';

const SEED = Number(process.env.KILN_FUZZ_SEED ?? 20261130);
const RUNS = Number(process.env.KILN_FUZZ_RUNS ?? 300);
/** `soak`: the soak's bigger values (slower). */
const SCALE = process.env.KILN_FUZZ_SCALE === 'soak' ? SOAK_SCALE : SUITE_SCALE;
/** A request still unanswered after this long is a hang. */
const HANG_MS = 20_000;

let kiln: Kiln;
let app: ReturnType<typeof buildHttpServer>;

before(async () => {
  const [chat, reasoning] = await Promise.all([ensureTinyModel({ flavor: 'qwen2.5' }), ensureTinyModel({ flavor: 'r1-distill' })]);
  // One thread: the prebuilt llama.cpp spawns its threads per decode, which costs more than a tiny model's decode.
  const common = { parallel: 4, context_size: 256, threads: 1, queue_wait_ms: HANG_MS };
  kiln = await assembleKiln([
    { id: FUZZ_MODEL, file: chat, ...common },
    { id: FUZZ_REASONING_MODEL, file: reasoning, ...common },
  ]);
  app = buildHttpServer({ service: kiln.service, apiKeys: [], logLevel: 'silent' });
  await app.ready();
});

after(async () => {
  await app?.close();
  await kiln?.close();
});

interface Result {
  failure: string | undefined;
  status: number;
  ms: number;
  body: string;
}

async function send(fuzzCase: FuzzCase): Promise<Result> {
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<'hang'>((resolve) => (timer = setTimeout(() => resolve('hang'), HANG_MS)));
  const response = await Promise.race([
    app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      payload: fuzzCase.payload,
      headers: fuzzCase.contentType === undefined ? {} : { 'content-type': fuzzCase.contentType },
    }),
    hang,
  ]);
  clearTimeout(timer);
  const ms = performance.now() - started;
  if (response === 'hang') return { failure: `no answer within ${HANG_MS} ms`, status: 0, ms, body: '' };
  const contentType = response.headers['content-type'];
  return { failure: checkResponse(response.statusCode, typeof contentType === 'string' ? contentType : undefined, response.body), status: response.statusCode, ms, body: response.body };
}

test(`${RUNS} fuzzed request bodies (seed ${SEED}): every answer is a 2xx or a 4xx with the contract's error body`, async (t) => {
  const cases = sampleFuzzCases(RUNS, SEED, SCALE);
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const tally = new Map<number, number>();
  const groups = new Map<string, { count: number; example: string; index: number }>();
  let slowest = { ms: 0, label: '' };
  const blockers: Array<{ ms: number; label: string }> = [];
  for (const [index, fuzzCase] of cases.entries()) {
    loop.reset();
    const result = await send(fuzzCase);
    blockers.push({ ms: loop.max / 1e6, label: fuzzCase.label });
    tally.set(result.status, (tally.get(result.status) ?? 0) + 1);
    if (result.ms > slowest.ms) slowest = { ms: result.ms, label: fuzzCase.label };
    if (result.failure === undefined) continue;
    const signature = failureSignature(result.failure);
    const group = groups.get(signature);
    if (group) group.count++;
    else groups.set(signature, { count: 1, example: `${fuzzCase.label.slice(0, 300)} → ${result.failure.slice(0, 300)}`, index });
  }
  loop.disable();
  t.diagnostic(`statuses ${JSON.stringify(Object.fromEntries(tally))}; slowest request ${slowest.ms.toFixed(0)} ms (${slowest.label.slice(0, 160)})`);
  // In-process the server and this test share one event loop, so the delay during a request is that request's.
  for (const { ms, label } of blockers.sort((a, b) => b.ms - a.ms).slice(0, 3)) t.diagnostic(`event loop blocked ${ms.toFixed(0)} ms during: ${label.slice(0, 200)}`);
  const report = [...groups.values()].map((g) => `  ${g.count}× e.g. case #${g.index}: ${g.example}`).join('\n');
  assert.equal(groups.size, 0, `${[...groups.values()].reduce((sum, g) => sum + g.count, 0)} of ${RUNS} cases failed (seed ${SEED}):\n${report}`);
});

/**
 * Depth is where recursion breaks, and whether it breaks depends on how much stack is left at that point, so random
 * depths can miss it: every place that takes nested JSON gets the same ladder of depths, on both templates (the
 * R1-distill one has no tool syntax, so Kiln writes tool calls into the prompt itself).
 */
test('nested 100 to 20,000 deep in every nested field: a 2xx or a 4xx with the contract body, no stack overflow', async () => {
  const deepObject = (depth: number) => '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
  const deepArray = (depth: number) => '['.repeat(depth) + ']'.repeat(depth);
  const base = (model: string, extra: string) => `{"model":${JSON.stringify(model)},"max_tokens":2,${extra}}`;
  const user = '"messages":[{"role":"user","content":"hi"}]';
  const places: Record<string, (depth: number) => string> = {
    'tool_calls[0].function.arguments': (d) =>
      `"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":${JSON.stringify(deepObject(d))}}}]},{"role":"user","content":"hi"}]`,
    'tools[0].function.parameters (properties)': (d) =>
      `${user},"tools":[{"type":"function","function":{"name":"f","parameters":${'{"type":"object","properties":{"p":'.repeat(d)}{"type":"string"}${'}}'.repeat(d)}}}]`,
    'tools[0].function.parameters (default)': (d) => `${user},"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","default":${deepArray(d)}}}}]`,
    'response_format.json_schema.schema (items)': (d) =>
      `${user},"response_format":{"type":"json_schema","json_schema":{"name":"out","schema":${'{"type":"array","items":'.repeat(d)}{"type":"string"}${'}'.repeat(d)}}}`,
    'response_format.json_schema.schema (const)': (d) => `${user},"response_format":{"type":"json_schema","json_schema":{"name":"out","schema":{"const":${deepObject(d)}}}}`,
    'messages[0].content': (d) => `"messages":[{"role":"user","content":${deepArray(d)}}]`,
    'an unknown field': (d) => `${user},"extra":${deepObject(d)}`,
  };
  const failures: string[] = [];
  for (const model of [FUZZ_MODEL, FUZZ_REASONING_MODEL]) {
    for (const [place, make] of Object.entries(places)) {
      for (const depth of [100, 1_000, 2_000, 2_200, 2_400, 2_700, 3_000, 5_000, 20_000]) {
        const { failure, body } = await send({ label: `${place} ${depth} deep`, payload: base(model, make(depth)), contentType: 'application/json' });
        // A 400 that reports a stack overflow is recursion without a bound that happened to be caught.
        const overflow = /call stack/i.test(body) ? `stack overflow reported: ${body.slice(0, 160)}` : undefined;
        if ((failure ?? overflow) !== undefined) failures.push(`${model}: ${place} nested ${depth} deep → ${(failure ?? overflow)!.slice(0, 160)}`);
      }
    }
  }
  assert.deepEqual(failures, []);
});
