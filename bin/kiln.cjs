#!/usr/bin/env node
// CommonJS on purpose: libuv sizes its thread pool when it is first used, and an ES-module entry point has used it
// already (the module loader reads files through it). Kiln runs each model's llama.cpp work on one pool thread:
// with node-llama-cpp's OpenMP build, decodes that hop between pool threads run one OpenMP team per thread, and on a
// 2-core VM one pool thread per model was 10–20% faster per token (docs/architecture.md). UV_THREADPOOL_SIZE, when
// set, wins.
'use strict';

const argv = process.argv.slice(2);
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = String(modelFiles(argv));

import('../dist/cli/main.js')
  .then(({ main }) => main(argv))
  .catch((error) => {
    console.error(error);
    process.exit(1);
  });

/** Distinct model files the command will load (1 unless a config lists more); errors are reported later by the CLI. */
function modelFiles(args) {
  const at = args.findIndex((arg) => arg === '--config' || arg.startsWith('--config='));
  if (at === -1) return 1;
  const path = args[at].startsWith('--config=') ? args[at].slice('--config='.length) : args[at + 1];
  try {
    const config = require('yaml').parse(require('node:fs').readFileSync(path, 'utf8'));
    return Math.max(1, new Set(config.models.map((model) => model.file)).size);
  } catch {
    return 1;
  }
}
