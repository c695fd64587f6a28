/**
 * The usage ledger's writer: batches off the request path, one write at a time, rows kept (bounded) while the store
 * fails and written with the next batch, what is queued counted for quotas until written, and close() writes the rest.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CompletionRecord } from '../../src/service/completion-record.js';
import type { UsageRow } from '../../src/store/usage.js';
import { UsageLedger, type UsageSink } from '../../src/tenancy/usage-ledger.js';
import { collectingLog } from '../helpers/fake-engines.js';

function record(keyId: string, completionTokens: number, extra: Partial<CompletionRecord> = {}): CompletionRecord {
  return {
    keyId,
    keyName: `name-${keyId}`,
    model: 'm',
    promptTokens: 10,
    cachedTokens: 0,
    completionTokens,
    reasoningTokens: 0,
    status: 'completed',
    finishReasons: ['stop'],
    durationMs: 5,
    queueMs: 0,
    ...extra,
  };
}

class Sink implements UsageSink {
  readonly batches: UsageRow[][] = [];
  failing = false;
  inFlight = 0;
  maxInFlight = 0;
  async insert(rows: UsageRow[]): Promise<void> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    await new Promise((resolve) => setTimeout(resolve, 5));
    this.inFlight--;
    if (this.failing) throw new Error('store down');
    this.batches.push(rows);
  }
}

test('rows are written in batches, one write at a time, with what the record says', async () => {
  const sink = new Sink();
  const ledger = new UsageLedger(sink, { flushMs: 60_000, log: collectingLog() });
  ledger.record(record('a', 5, { requestId: 'r1', user: 'u1', deployment: 'd#0', firstTokenMs: 3, finishReasons: ['stop', null] }));
  ledger.record(record('b', 7));
  await Promise.all([ledger.flush(), ledger.flush(), ledger.flush()]);
  assert.equal(sink.maxInFlight, 1);
  assert.equal(sink.batches.length, 1);
  const [first, second] = sink.batches[0]!;
  assert.deepEqual({ ...first, ts: 0 }, {
    ts: 0, requestId: 'r1', keyId: 'a', keyName: 'name-a', model: 'm', deployment: 'd#0', promptTokens: 10, cachedTokens: 0,
    completionTokens: 5, reasoningTokens: 0, ttftMs: 3, durationMs: 5, status: 'completed', finishReason: 'stop,', user: 'u1',
  });
  assert.equal(second!.finishReason, 'stop');
  await ledger.close();
});

test('a full batch is written before the interval', async () => {
  const sink = new Sink();
  const ledger = new UsageLedger(sink, { flushMs: 60_000, batchRows: 3, log: collectingLog() });
  for (let index = 0; index < 3; index++) ledger.record(record('a', 1));
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(sink.batches.flat().length, 3);
  await ledger.close();
});

test('while the store fails rows are kept (oldest dropped past the bound) and counted for quotas; then written', async () => {
  const sink = new Sink();
  const log = collectingLog();
  const ledger = new UsageLedger(sink, { flushMs: 60_000, maxPendingRows: 3, log });
  sink.failing = true;
  for (let index = 1; index <= 4; index++) ledger.record(record('a', index));
  assert.equal(ledger.unwrittenTokens('a'), 4 * 10 + 1 + 2 + 3 + 4);
  await ledger.flush();
  assert.ok(log.entries.some((entry) => entry.level === 'error' && /write failed/.test(entry.message)));
  // The oldest row went; the three newest wait.
  assert.equal(ledger.unwrittenTokens('a'), 3 * 10 + 2 + 3 + 4);
  sink.failing = false;
  ledger.record(record('b', 1));
  await ledger.close();
  assert.deepEqual(sink.batches.flat().map((row) => `${row.keyId}${row.completionTokens}`), ['a2', 'a3', 'a4', 'b1']);
  assert.equal(ledger.unwrittenTokens('a'), 0);
});

test('the interval writes without being asked', async () => {
  const sink = new Sink();
  const ledger = new UsageLedger(sink, { flushMs: 20, log: collectingLog() });
  ledger.record(record('a', 1));
  await new Promise((resolve) => setTimeout(resolve, 120));
  assert.equal(sink.batches.flat().length, 1);
  await ledger.close();
});
