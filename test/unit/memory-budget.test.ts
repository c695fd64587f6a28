import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SILENT_LOG } from '../../src/core/log.js';
import { KilnError } from '../../src/errors/catalog.js';
import { MemoryBudget, type BudgetMember } from '../../src/service/memory-budget.js';

const MIB = 2 ** 20;
const ram = (mib: number) => ({ ram: mib * MIB, vram: 0 });
const budgetOf = (ramMib: number, vramMib = Infinity) => new MemoryBudget({ ram: ramMib * MIB, vram: async () => vramMib * MIB }, SILENT_LOG);

function member(name: string, lastUsed: number, evictable = true): BudgetMember & { unloads: string[] } {
  const unloads: string[] = [];
  return { name, lastUsed, evictable, unloads, unloadNow: async (reason) => void unloads.push(reason) };
}

test('idle models are unloaded least recently used first to make room, and only as many as needed', async () => {
  const budget = budgetOf(100);
  const old = member('old', 1);
  const recent = member('recent', 2);
  await budget.reserve(old, ram(40));
  await budget.reserve(recent, ram(40));
  const next = member('next', 3, false);
  await budget.reserve(next, ram(50));
  assert.deepEqual(old.unloads, ["memory for 'next'"]);
  assert.deepEqual(recent.unloads, []);
  assert.equal(budget.usedBytes, 90 * MIB);
});

test('no room while the others are in use: 503 naming the model and its need, with Retry-After; nothing unloaded', async () => {
  const budget = budgetOf(100);
  const busy = member('busy', 1, false);
  await budget.reserve(busy, ram(80));
  await assert.rejects(budget.reserve(member('big', 2), ram(30)), (error: KilnError) => error.status === 503 && /'big' needs about 30 MiB of memory/.test(error.message) && /in use/.test(error.message) && error.retryAfterSeconds === 5);
  assert.deepEqual(busy.unloads, []);
  budget.release(busy);
  await budget.reserve(member('big', 2), ram(30));
});

test('a model larger than the whole budget is refused without unloading anything', async () => {
  const budget = budgetOf(100);
  const idle = member('idle', 1);
  await budget.reserve(idle, ram(10));
  await assert.rejects(budget.reserve(member('huge', 2), ram(200)), (error: KilnError) => /'huge' needs about 200 MiB of memory/.test(error.message) && /larger than the whole memory budget/.test(error.message));
  assert.deepEqual(idle.unloads, []);
});

test('VRAM is budgeted too: an offloaded model makes room by unloading the idle model holding VRAM, not one holding only RAM', async () => {
  const budget = budgetOf(1000, 100);
  const cpuOnly = member('cpu-only', 1);
  const onGpu = member('on-gpu', 2);
  await budget.reserve(cpuOnly, ram(100));
  await budget.reserve(onGpu, { ram: 50, vram: 80 * MIB });
  await budget.reserve(member('next-gpu', 3), { ram: 50, vram: 60 * MIB });
  assert.deepEqual(cpuOnly.unloads, [], 'it holds no VRAM');
  assert.deepEqual(onGpu.unloads, ["memory for 'next-gpu'"]);
  await assert.rejects(budget.reserve(member('giant', 4), { ram: 0, vram: 500 * MIB }), (error: KilnError) => /500 MiB of GPU memory, larger than the whole GPU memory budget/.test(error.message));
});
