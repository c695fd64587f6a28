/**
 * kiln pull in-process against a local fake hub: sha256-verified downloads, resume with Range after a cut transfer,
 * a server that ignores Range, a wrong published sha256, an unreachable hub, progress lines, URL sources, a file
 * already in place; and the source/cache-path helpers and the config's `source`/`models_dir`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parseConfig } from '../../src/config/config.js';
import { cachedPath, modelFilePath, modelsDirectory, parseSource, SourceError } from '../../src/models/hub-source.js';
import { lineProgress } from '../../src/models/progress.js';
import { partialPath, pullModel, PullError } from '../../src/models/pull.js';
import { sha256Of, startFakeHub, type FakeHub } from '../helpers/fake-hub.js';

/** A GGUF-looking file: the magic, a version, then random bytes. */
function ggufBytes(size: number): Buffer {
  const data = randomBytes(size);
  data.write('GGUF', 0, 'latin1');
  data.writeUInt32LE(3, 4);
  return data;
}

const REPO = 'kiln-test/tiny-GGUF';
const FILE = 'tiny-q8_0.gguf';
let dirs: string[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kiln-pull-'));
  dirs.push(dir);
  return dir;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

after(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
  dirs = [];
});

async function withHub<T>(options: Parameters<typeof startFakeHub>[0], run: (hub: FakeHub) => Promise<T>): Promise<T> {
  const hub = await startFakeHub(options);
  try {
    return await run(hub);
  } finally {
    await hub.close();
  }
}

const quiet = { retryDelayMs: 10 };

describe('pullModel against a fake hub', () => {
  let data: Buffer;
  before(() => {
    data = ggufBytes(1_500_000);
  });

  test('downloads an hf: source through the redirect, checks the sha256 and sends HF_TOKEN', async () => {
    await withHub({ redirect: true }, async (hub) => {
      const source = hub.add({ repo: REPO, path: `sub/${FILE}`, data });
      const modelsDir = await tempDir();
      const result = await pullModel(source, { modelsDir, env: { HF_ENDPOINT: hub.url, HF_TOKEN: 'hf_test' }, ...quiet });
      assert.equal(result.path, join(modelsDir, 'hf', 'kiln-test', 'tiny-GGUF', 'sub', FILE));
      assert.equal(result.alreadyPresent, false);
      assert.equal(result.verified, true);
      assert.equal(result.sha256, sha256Of(data));
      assert.ok((await readFile(result.path)).equals(data));
      assert.equal(await exists(partialPath(result.path)), false);
      assert.ok(hub.requests.some((request) => request.url.startsWith('/api/models/kiln-test/tiny-GGUF/paths-info/main')));
      assert.ok(hub.requests.some((request) => request.url.startsWith('/cdn/')), 'followed the redirect');
      assert.ok(hub.requests.every((request) => request.authorization === 'Bearer hf_test'));
    });
  });

  test('an interrupted transfer keeps the partial; the next pull resumes it with Range', async () => {
    await withHub({ failOnceAfter: 600_000 }, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const modelsDir = await tempDir();
      const env = { HF_ENDPOINT: hub.url };
      const dest = cachedPath(parseSource(source), modelsDir);
      await assert.rejects(pullModel(source, { modelsDir, env, retries: 0, ...quiet }), (error: Error) => {
        assert.ok(error instanceof PullError);
        assert.match(error.message, /interrupted/);
        assert.match(error.message, /run the pull again to resume/);
        return true;
      });
      assert.equal(await exists(dest), false, 'no file where the complete one belongs');
      const kept = (await stat(partialPath(dest))).size;
      assert.ok(kept > 0 && kept < data.length, `partial of ${kept} bytes`);

      const result = await pullModel(source, { modelsDir, env, retries: 0, ...quiet });
      assert.equal(result.resumedFrom, kept);
      assert.equal(result.bytesReceived, data.length - kept);
      assert.ok(hub.requests.some((request) => request.method === 'GET' && request.range === `bytes=${kept}-` && request.status === 206));
      assert.ok((await readFile(dest)).equals(data), 'byte-identical');
      assert.equal(await exists(partialPath(dest)), false);
    });
  });

  test('within one pull, a cut transfer is retried from where it stopped', async () => {
    await withHub({ failOnceAfter: 400_000 }, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const modelsDir = await tempDir();
      const result = await pullModel(source, { modelsDir, env: { HF_ENDPOINT: hub.url }, retries: 1, ...quiet });
      assert.ok((await readFile(result.path)).equals(data));
      assert.ok(hub.requests.some((request) => request.range !== undefined && /^bytes=[1-9]\d*-$/.test(request.range)));
    });
  });

  test('a server that ignores Range: the partial is discarded and the download starts from zero', async () => {
    await withHub({ range: false }, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const modelsDir = await tempDir();
      const dest = cachedPath(parseSource(source), modelsDir);
      await mkdir(dirname(dest), { recursive: true });
      // A stale partial whose bytes do not even match: appending to it would corrupt the file.
      await writeFile(partialPath(dest), randomBytes(300_000));
      const notes: string[] = [];
      const progress = lineProgress((text) => notes.push(text));
      const result = await pullModel(source, { modelsDir, env: { HF_ENDPOINT: hub.url }, progress, ...quiet });
      assert.equal(result.restarted, true);
      assert.equal(result.bytesReceived, data.length);
      assert.ok((await readFile(dest)).equals(data));
      assert.match(notes.join(''), /does not support resuming/);
      assert.ok(hub.requests.some((request) => request.range === 'bytes=300000-' && request.status === 200));
    });
  });

  test('a wrong published sha256: an error naming both hashes, and neither the file nor a partial is left', async () => {
    await withHub({ wrongSha256: true }, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const modelsDir = await tempDir();
      const dest = cachedPath(parseSource(source), modelsDir);
      await assert.rejects(pullModel(source, { modelsDir, env: { HF_ENDPOINT: hub.url }, ...quiet }), (error: Error) => {
        assert.ok(error instanceof PullError);
        assert.match(error.message, /sha256 is [0-9a-f]{64}, expected [0-9a-f]{64}/);
        assert.match(error.message, new RegExp(sha256Of(data)));
        return true;
      });
      assert.equal(await exists(dest), false);
      assert.equal(await exists(partialPath(dest)), false);
    });
  });

  test('an unreachable hub: the error says so and names the path to place the file at', async () => {
    const port = await freePort();
    const modelsDir = await tempDir();
    const source = `hf:${REPO}/${FILE}`;
    const dest = cachedPath(parseSource(source), modelsDir);
    await assert.rejects(pullModel(source, { modelsDir, env: { HF_ENDPOINT: `http://127.0.0.1:${port}` }, ...quiet }), (error: Error) => {
      assert.ok(error instanceof PullError);
      assert.match(error.message, /could not reach the Hugging Face hub at http:\/\/127\.0\.0\.1/);
      assert.match(error.message, /ECONNREFUSED/);
      assert.ok(error.message.includes(dest), error.message);
      assert.ok(error.message.includes(`http://127.0.0.1:${port}/${REPO}/resolve/main/${FILE}`), error.message);
      return true;
    });
  });

  test('progress without a terminal: plain lines with bytes, percent, speed and ETA', async () => {
    await withHub({}, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const lines: string[] = [];
      const progress = lineProgress((text) => lines.push(text));
      await pullModel(source, { modelsDir: await tempDir(), env: { HF_ENDPOINT: hub.url }, progress, ...quiet });
      const text = lines.join('');
      assert.match(text, new RegExp(`${source}: downloading 1\\.5 MB`));
      assert.match(text, /: \d+\.\d (kB|MB) \/ 1\.5 MB \(\d+%\), \d+(\.\d)? (B|kB|MB|GB)\/s, ETA \d+s/);
      assert.match(text, /1\.5 MB \/ 1\.5 MB \(100%\)/);
      assert.match(text, /verifying sha256/);
      assert.ok(lines.length < 30, `a few lines, not one per chunk (${lines.length})`);
      assert.ok(!text.includes('\r') && !text.includes('\u001b'), 'no terminal control characters');
    });
  });

  test('an http URL source: downloaded to url/<host>/<name>, size checked', async () => {
    await withHub({}, async (hub) => {
      const url = hub.addPlain('plain.gguf', data);
      const modelsDir = await tempDir();
      const result = await pullModel(url, { modelsDir, env: {}, ...quiet });
      assert.equal(result.path, join(modelsDir, 'url', new URL(hub.url).host.replace(':', '_'), 'plain.gguf'));
      assert.ok((await readFile(result.path)).equals(data));
      assert.equal(result.verified, false, 'no sha256 published for a plain URL');
    });
  });

  test('a file already present and matching: nothing is downloaded', async () => {
    await withHub({}, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const modelsDir = await tempDir();
      const env = { HF_ENDPOINT: hub.url };
      await pullModel(source, { modelsDir, env, ...quiet });
      hub.requests.length = 0;
      const result = await pullModel(source, { modelsDir, env, ...quiet });
      assert.equal(result.alreadyPresent, true);
      assert.equal(result.verified, true);
      assert.equal(result.bytesReceived, 0);
      const bodies = hub.requests.filter((request) => request.method === 'GET' && request.range !== 'bytes=0-0');
      assert.deepEqual(bodies, [], 'only metadata requests');
    });
  });

  test('a file present but different is replaced only once the new download is verified', async () => {
    await withHub({}, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const modelsDir = await tempDir();
      const dest = cachedPath(parseSource(source), modelsDir);
      await mkdir(dirname(dest), { recursive: true });
      await writeFile(dest, 'stale');
      const result = await pullModel(source, { modelsDir, env: { HF_ENDPOINT: hub.url }, ...quiet });
      assert.equal(result.alreadyPresent, false);
      assert.ok((await readFile(dest)).equals(data));
    });
  });

  test('one download of a file at a time: a live lock is refused, a stale one taken over', async () => {
    await withHub({}, async (hub) => {
      const source = hub.add({ repo: REPO, path: FILE, data });
      const modelsDir = await tempDir();
      const env = { HF_ENDPOINT: hub.url };
      const dest = cachedPath(parseSource(source), modelsDir);
      await mkdir(dirname(dest), { recursive: true });
      await writeFile(`${dest}.lock`, String(process.pid));
      await assert.rejects(pullModel(source, { modelsDir, env, ...quiet }), new RegExp(`another pull \\(process ${process.pid}\\) is downloading`));
      assert.equal(await exists(dest), false);
      const gone = spawnSync(process.execPath, ['-e', '']).pid!;
      await writeFile(`${dest}.lock`, String(gone));
      const result = await pullModel(source, { modelsDir, env, ...quiet });
      assert.ok((await readFile(result.path)).equals(data));
      assert.equal(await exists(`${dest}.lock`), false, 'the lock is released');
    });
  });

  test('a file missing from the repository is a clear error', async () => {
    await withHub({}, async (hub) => {
      hub.add({ repo: REPO, path: FILE, data });
      await assert.rejects(pullModel(`hf:${REPO}/missing.gguf`, { modelsDir: await tempDir(), env: { HF_ENDPOINT: hub.url }, ...quiet }), /missing\.gguf/);
      await assert.rejects(pullModel(`hf:nobody/nothing/${FILE}`, { modelsDir: await tempDir(), env: { HF_ENDPOINT: hub.url }, ...quiet }), /nobody\/nothing/);
    });
  });
});

describe('sources and the model cache', () => {
  test('hf: sources, with and without a revision, and URLs', () => {
    assert.deepEqual(parseSource('hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf'), {
      kind: 'hf',
      repo: 'Qwen/Qwen2.5-0.5B-Instruct-GGUF',
      revision: 'main',
      path: 'qwen2.5-0.5b-instruct-q4_k_m.gguf',
      text: 'hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf',
    });
    const pinned = parseSource('hf:owner/repo@v1.0/dir/model.gguf');
    assert.equal(pinned.kind === 'hf' && `${pinned.repo} ${pinned.revision} ${pinned.path}`, 'owner/repo v1.0 dir/model.gguf');
    assert.equal(cachedPath(pinned, '/cache'), resolve('/cache/hf/owner/repo@v1.0/dir/model.gguf'));
    const url = parseSource('https://example.com/models/a%20b.gguf?download=1');
    assert.equal(cachedPath(url, '/cache'), resolve('/cache/url/example.com/a b.gguf'));
    for (const bad of ['hf:owner/repo', 'hf:owner/repo/../x.gguf', 'hf:owner//x.gguf', 'ftp://x/y.gguf', 'https://example.com/', 'https://u:p@example.com/a.gguf', 'model']) {
      assert.throws(() => parseSource(bad), SourceError, bad);
    }
  });

  test('the cache directory: config, then KILN_MODELS_DIR, then XDG_CACHE_HOME, then ~/.cache', () => {
    assert.equal(modelsDirectory('/from/config', { KILN_MODELS_DIR: '/from/env' }), resolve('/from/config'));
    assert.equal(modelsDirectory(undefined, { KILN_MODELS_DIR: '/from/env', XDG_CACHE_HOME: '/xdg' }), resolve('/from/env'));
    assert.equal(modelsDirectory(undefined, { XDG_CACHE_HOME: '/xdg' }), resolve('/xdg/kiln/models'));
    assert.match(modelsDirectory(undefined, {}), /[/\\]\.cache[/\\]kiln[/\\]models$/);
  });

  test('config: a model may name a source instead of a file; models_dir resolves against the config', () => {
    const config = parseConfig('models_dir: ./models\nmodels:\n  - {id: a, source: "hf:owner/repo/a.gguf"}\n  - {id: b, file: b.gguf, source: "https://example.com/b.gguf"}\n', '/srv/kiln', 'kiln.yaml');
    assert.equal(config.models_dir, resolve('/srv/kiln/models'));
    assert.equal(config.models[0]!.file, undefined);
    assert.equal(modelFilePath(config.models[0]!, config.models_dir!), resolve('/srv/kiln/models/hf/owner/repo/a.gguf'));
    assert.equal(modelFilePath(config.models[1]!, config.models_dir!), resolve('/srv/kiln/b.gguf'));
    assert.equal(modelFilePath({}, '/x'), undefined);
    assert.throws(() => parseConfig('models:\n  - {id: a, source: "owner/repo/a.gguf"}\n', '/srv', 'kiln.yaml'), /models\[0\]\.source/);
    assert.throws(() => parseConfig('models:\n  - {id: a}\n', '/srv', 'kiln.yaml'), /'models\[0\]\.file'.*source.*upstreams/);
  });
});

function freePort(): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePromise(port));
    });
    server.on('error', reject);
  });
}
