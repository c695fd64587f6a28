import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SILENT_LOG } from '../../src/core/log.js';
import { KilnError } from '../../src/errors/catalog.js';
import { MemoryBudget, type BudgetMember } from '../../src/service/memory-budget.js';

const MIB = 2 ** 20;

function member(name: string, lastUsed: number, evictable = true): BudgetMember & { unloads: string[] } {
  const unloads: string[] = [];
  return { name, lastUsed, evictable, unloads, unloadNow: async (reason) => void unloads.push(reason) };
}

test('idle models are unloaded least recently used first to make room, and only as many as needed', async () => {
  const budget = new MemoryBudget(100 * MIB, SILENT_LOG);
  const old = member('old', 1);
  const recent = member('recent', 2);
  await budget.reserve(old, 40 * MIB);
  await budget.reserve(recent, 40 * MIB);
  const next = member('next', 3, false);
  await budget.reserve(next, 50 * MIB);
  assert.deepEqual(old.unloads, ["memory for 'next'"]);
  assert.deepEqual(recent.unloads, []);
  assert.equal(budget.usedBytes, 90 * MIB);
});

test('no room while the others are in use: 503 naming the model and its need, with Retry-After; nothing unloaded', async () => {
  const budget = new MemoryBudget(100 * MIB, SILENT_LOG);
  const busy = member('busy', 1, false);
  await budget.reserve(busy, 80 * MIB);
  await assert.rejects(budget.reserve(member('big', 2), 30 * MIB), (error: KilnError) => error.status === 503 && /'big' needs about 30 MiB/.test(error.message) && /in use/.test(error.message) && error.retryAfterSeconds === 5);
  assert.deepEqual(busy.unloads, []);
  budget.release(busy);
  await budget.reserve(member('big', 2), 30 * MIB);
});

test('a model larger than the whole budget is refused without unloading anything', async () => {
  const budget = new MemoryBudget(100 * MIB, SILENT_LOG);
  const idle = member('idle', 1);
  await budget.reserve(idle, 10 * MIB);
  await assert.rejects(budget.reserve(member('huge', 2), 200 * MIB), (error: KilnError) => /'huge' needs about 200 MiB/.test(error.message) && /larger than the whole memory budget/.test(error.message));
  assert.deepEqual(idle.unloads, []);
});
