/** The command line's options, shared by the commands that read them. */
import { parseArgs } from 'node:util';
import { ConfigError } from '../config/config.js';

export const options = {
  config: { type: 'string' },
  model: { type: 'string' },
  'model-id': { type: 'string' },
  upstream: { type: 'string', multiple: true },
  'upstream-model': { type: 'string' },
  'upstream-key-env': { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  'api-key': { type: 'string', multiple: true },
  'insecure-no-auth': { type: 'boolean' },
  parallel: { type: 'string' },
  'context-size': { type: 'string' },
  threads: { type: 'string' },
  load: { type: 'string' },
  gpu: { type: 'string' },
  url: { type: 'string' },
  'drain-timeout-ms': { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export type Flags = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>['values'];

export function integerFlag(flags: Flags, name: 'port' | 'parallel' | 'context-size' | 'threads' | 'drain-timeout-ms'): number | undefined {
  const raw = flags[name];
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new ConfigError(`--${name} must be a non-negative integer, got '${raw}'`);
  return value;
}
