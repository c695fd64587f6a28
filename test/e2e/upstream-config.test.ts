/** Start-up refusals of upstream configurations: keys never sit in the config file, and a named key must exist. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runKiln, writeConfig } from '../helpers/kiln-process.js';

const PLAIN_KEY = 'sk-plain-text-key-9d8e7f';

test('an api_key written in the YAML is refused at start, naming the entry and the field, without echoing the key', async () => {
  const config = await writeConfig({ models: [{ id: 'm', upstreams: [{ url: 'http://127.0.0.1:9/v1', model: 'x', api_key: PLAIN_KEY }] }] });
  const { code, output } = await runKiln(['serve', '--config', config, '--port', '0']);
  assert.notEqual(code, 0);
  assert.doesNotMatch(output, /Kiln listening/);
  assert.match(output, /models\[0\]\.upstreams\[0\]/, output);
  assert.match(output, /api_key/, output);
  assert.ok(!output.includes(PLAIN_KEY), `the key is echoed: ${output}`);
});

test('credentials in an upstream URL are refused without echoing them', async () => {
  const config = await writeConfig({ models: [{ id: 'm', upstreams: [{ url: `http://user:${PLAIN_KEY}@127.0.0.1:9/v1`, model: 'x' }] }] });
  const { code, output } = await runKiln(['serve', '--config', config, '--port', '0']);
  assert.notEqual(code, 0);
  assert.match(output, /models\[0\]\.upstreams\[0\]\.url/, output);
  assert.match(output, /api_key_env/, output);
  assert.ok(!output.includes(PLAIN_KEY), `the credentials are echoed: ${output}`);
});

test('an api_key_env naming an unset variable is refused at start, naming the variable and the upstream', async () => {
  const variable = 'KILN_TEST_SURELY_UNSET_KEY_VAR';
  const config = await writeConfig({ models: [{ id: 'm', upstreams: [{ url: 'http://127.0.0.1:9/v1', model: 'x', name: 'replica-z', api_key_env: variable }] }] });
  for (const value of [undefined, '']) {
    const { code, output } = await runKiln(['serve', '--config', config, '--port', '0'], { [variable]: value });
    assert.notEqual(code, 0, output);
    assert.doesNotMatch(output, /Kiln listening/);
    assert.match(output, new RegExp(variable), output);
    assert.match(output, /replica-z/, output);
    assert.match(output, /not set/, output);
  }
});
