/**
 * Models on and offline without a restart (issue 11, point 6): POST /admin/reload (admin key) and SIGHUP re-read the
 * config; added ids appear, removed and `enabled: false` ids answer "model disabled" while their streams in flight
 * finish, unchanged ids keep their loaded engine; a bad config is refused with its reason and the running one stays.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';
import { readEventStream, startKiln, writeConfig, type KilnProcess } from '../helpers/kiln-process.js';

let kiln: KilnProcess;
let configPath: string;
let file: string;
let endless: string;
const configWith = (models: unknown[]) => ({ server: { api_keys: [{ key: 'sk-user', tier: 'pro' }], admin_key: 'sk-admin' }, models });

before(async () => {
  file = await ensureTinyModel();
  endless = await ensureTinyModel({ neverEnd: true });
  configPath = await writeConfig(configWith([{ id: 'keep', file }, { id: 'gone', file: endless }]));
  kiln = await startKiln(['--config', configPath]);
});

after(async () => kiln?.stop());

const logged = (message: string) =>
  kiln
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line.msg === message);

function post(path: string, body: unknown, key = 'sk-user'): Promise<Response> {
  return fetch(`${kiln.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(body) });
}

async function chat(model: string): Promise<{ status: number; json: any }> {
  const response = await post('/v1/chat/completions', { model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 });
  return { status: response.status, json: await response.json() };
}

test('a reload adds and removes ids while a stream on a removed id finishes; unchanged ids keep their engine', async () => {
  assert.equal((await chat('keep')).status, 200);
  const loadsBefore = logged('model loaded').length;
  // A long stream on the id about to go.
  const streaming = post('/v1/chat/completions', { model: 'gone', messages: [{ role: 'user', content: 'hi' }], max_tokens: 1500, stream: true });
  const response = await streaming;
  assert.equal(response.status, 200);
  await writeFile(configPath, stringify(configWith([{ id: 'keep', file }, { id: 'new', file }, { id: 'off', file, enabled: false }])));

  const refused = await post('/admin/reload', {});
  assert.equal(refused.status, 404, 'to a key that is not the admin key the route does not exist');
  assert.equal(((await refused.json()) as any).error.code, 'not_found');
  const reloaded = await post('/admin/reload', {}, 'sk-admin');
  const summary = (await reloaded.json()) as any;
  assert.equal(reloaded.status, 200, JSON.stringify(summary));
  assert.deepEqual({ added: summary.added, removed: summary.removed, changed: summary.changed }, { added: ['new'], removed: ['gone'], changed: [] });

  // The stream admitted before the reload runs to its end.
  const events = await readEventStream(response);
  assert.equal(events.at(-1), '[DONE]');
  const finish = events.slice(0, -1).map((event) => JSON.parse(event)).find((chunk) => chunk.choices?.[0]?.finish_reason != null);
  assert.equal(finish.choices[0].finish_reason, 'length');

  // It was still generating when the reload was applied: its completion is logged after the reload.
  const lines = kiln.output().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, any>);
  const reloadAt = lines.findIndex((line) => line.msg === 'configuration reloaded');
  const goneDoneAt = lines.findIndex((line) => line.msg === 'completion' && line.completion?.model === 'gone');
  assert.ok(reloadAt !== -1 && goneDoneAt > reloadAt, `the stream ended after the reload (log lines ${reloadAt}, ${goneDoneAt})`);

  const gone = await chat('gone');
  assert.equal(gone.status, 400);
  assert.equal(gone.json.code, 30003);
  assert.equal(gone.json.error.code, 'model_disabled');
  assert.match(gone.json.error.message, /'gone' has been taken offline/);
  assert.equal((await chat('off')).json.error.code, 'model_disabled');
  assert.equal((await chat('new')).status, 200);
  assert.equal((await chat('keep')).status, 200);
  // 'keep' and 'new' share the unchanged engine of `file`: nothing loaded again.
  assert.equal(logged('model loaded').length, loadsBefore + 1, "only 'gone' loaded meanwhile (for its stream)");
  const models = (await (await fetch(`${kiln.url}/v1/models`, { headers: { authorization: 'Bearer sk-user' } })).json()) as any;
  assert.deepEqual(models.data.map((model: any) => model.id).sort(), ['keep', 'new']);
  const began = Date.now();
  while (logged('retired model closed').length === 0 && Date.now() - began < 5_000) await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(logged('retired model closed').length, 1, "the removed model's engine closes once its stream ended");
});

test('a bad config is refused with its reason and the running one stays', async () => {
  await writeFile(configPath, stringify(configWith([{ id: 'keep', file, parallel: 0 }])));
  const response = await post('/admin/reload', {}, 'sk-admin');
  const body = (await response.json()) as any;
  assert.equal(response.status, 400);
  assert.match(body.error.message, /not applied: .*models\[0\]\.parallel/);
  assert.equal((await chat('new')).status, 200);
});

test('SIGHUP reloads too', async () => {
  await writeFile(configPath, stringify(configWith([{ id: 'keep', file }, { id: 'hup', file }])));
  kiln.child.kill('SIGHUP');
  const began = Date.now();
  let status = 0;
  while (status !== 200 && Date.now() - began < 10_000) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    status = (await chat('hup')).status;
  }
  assert.equal(status, 200);
  assert.equal((await chat('new')).json.error.code, 'model_disabled');
});
