/** Start-up refusals of upstream configurations: keys never sit in the config file, and a named key must exist. */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { runKiln, writeConfig } from '../helpers/kiln-process.js';

const PLAIN_KEY = 'sk-plain-text-key-9d8e7f';
const UNSET = 'KILN_TEST_SURELY_UNSET_KEY_VAR';

type Run = { code: number | null; output: string };
let plainKey: Run;
let keyInUrl: Run;
let unsetVariable: Run;
let emptyVariable: Run;

// The refusals run at once: each is a whole CLI start.
before(async () => {
  const serve = async (config: unknown, env: NodeJS.ProcessEnv = {}) => runKiln(['serve', '--config', await writeConfig(config), '--port', '0'], env);
  const upstream = (fields: Record<string, unknown>) => ({ models: [{ id: 'm', upstreams: [{ url: 'http://127.0.0.1:9/v1', model: 'x', ...fields }] }] });
  [plainKey, keyInUrl, unsetVariable, emptyVariable] = await Promise.all([
    serve(upstream({ api_key: PLAIN_KEY })),
    serve(upstream({ url: `http://user:${PLAIN_KEY}@127.0.0.1:9/v1` })),
    serve(upstream({ name: 'replica-z', api_key_env: UNSET }), { [UNSET]: undefined }),
    serve(upstream({ name: 'replica-z', api_key_env: UNSET }), { [UNSET]: '' }),
  ]);
});

test('an api_key written in the YAML is refused at start, naming the entry and the field, without echoing the key', () => {
  const { code, output } = plainKey;
  assert.notEqual(code, 0);
  assert.doesNotMatch(output, /Kiln listening/);
  assert.match(output, /models\[0\]\.upstreams\[0\]/, output);
  assert.match(output, /api_key/, output);
  assert.ok(!output.includes(PLAIN_KEY), `the key is echoed: ${output}`);
});

test('credentials in an upstream URL are refused without echoing them', () => {
  const { code, output } = keyInUrl;
  assert.notEqual(code, 0);
  assert.match(output, /models\[0\]\.upstreams\[0\]\.url/, output);
  assert.match(output, /api_key_env/, output);
  assert.ok(!output.includes(PLAIN_KEY), `the credentials are echoed: ${output}`);
});

test('an api_key_env naming an unset (or empty) variable is refused at start, naming the variable and the upstream', () => {
  for (const { code, output } of [unsetVariable, emptyVariable]) {
    assert.notEqual(code, 0, output);
    assert.doesNotMatch(output, /Kiln listening/);
    assert.match(output, new RegExp(UNSET), output);
    assert.match(output, /replica-z/, output);
    assert.match(output, /not set/, output);
  }
});
