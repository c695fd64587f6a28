/**
 * Kiln's configuration: a YAML file validated at start (errors name the bad field), overridden by CLI flags.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { formatPath } from '../core/normalize-request.js';

/** How a model's weights are loaded: `memory` reads them into Kiln's own memory, `mmap` maps the file. */
export const LOAD_MODES = ['memory', 'mmap'] as const;

const modelSchema = z.strictObject({
  id: z.string().min(1),
  file: z.string().min(1),
  /** Concurrent sequences for this model's file. */
  parallel: z.int().min(1).max(256).optional(),
  /** Tokens per sequence. */
  context_size: z.int().min(64).optional(),
  threads: z.int().min(1).optional(),
  batch_size: z.int().min(1).optional(),
  queue_depth: z.int().min(0).optional(),
  queue_wait_ms: z.int().min(1).optional(),
  /** llama.cpp flash attention (default auto: llama.cpp decides for the model and hardware). */
  flash_attention: z.enum(['auto', 'on', 'off']).optional(),
  /** See LOAD_MODES; default `memory`. */
  load: z.enum(LOAD_MODES).optional(),
  /** Whether the model reasons in <think> … </think>; `auto`: detected from its chat template. */
  reasoning: z.enum(['auto', 'on', 'off']).optional(),
  owned_by: z.string().optional(),
});

const configSchema = z.strictObject({
  server: z
    .strictObject({
      host: z.string().min(1).optional(),
      port: z.int().min(0).max(65535).optional(),
      /** A plain key may use every model; `{key, tier: free}` may not use `Pro/` ids (403). */
      api_keys: z.array(z.union([z.string().min(1), z.strictObject({ key: z.string().min(1), tier: z.enum(['free', 'pro']) })])).optional(),
      /** A request still generating after this long ends with 504 (in-band when streaming). */
      request_timeout_ms: z.int().min(1).optional(),
      max_choices: z.int().min(1).max(64).optional(),
      body_limit_bytes: z.int().min(1024).optional(),
      /** A stream whose client takes nothing for this long is ended and its connection closed (default 30 s). */
      stall_timeout_ms: z.int().min(1).optional(),
      /** The request line and headers must arrive within this long, else 408 (default 20 s). */
      headers_timeout_ms: z.int().min(1).optional(),
      /** The whole request, body included, must arrive within this long, else 408 (default 60 s). */
      body_timeout_ms: z.int().min(1).optional(),
      /** On SIGTERM/SIGINT, how long requests in flight may take to finish before they are ended (default 30 s). */
      drain_timeout_ms: z.int().min(0).optional(),
      /** Bounds on one request's size, checked before any work on it; each excess is a 400 naming the field. */
      limits: z
        .strictObject({
          max_messages: z.int().min(1).optional(),
          /** Content parts over all messages together. */
          max_content_parts: z.int().min(1).optional(),
          max_tools: z.int().min(1).optional(),
          /** UTF-8 bytes of all client text together (contents, tool call arguments, tool descriptions). */
          max_text_bytes: z.int().min(1).optional(),
          /** JSON nesting of a tool's parameters or a json_schema. */
          max_schema_depth: z.int().min(1).optional(),
          /** JSON values in one such schema. */
          max_schema_nodes: z.int().min(1).optional(),
        })
        .optional(),
    })
    .optional(),
  models: z.array(modelSchema).min(1, 'at least one model is required'),
});

export type ModelConfig = z.infer<typeof modelSchema>;
export type LimitsConfig = NonNullable<NonNullable<z.infer<typeof configSchema>['server']>['limits']>;
export type FileConfig = z.infer<typeof configSchema>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Parses and validates a config document; relative model paths resolve against `baseDir`. */
export function parseConfig(text: string, baseDir: string, source = 'config'): FileConfig {
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (error) {
    throw new ConfigError(`${source}: not valid YAML: ${(error as Error).message}`);
  }
  const parsed = configSchema.safeParse(document ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = formatPath(issue.path) || '(root)';
    throw new ConfigError(`${source}: invalid field '${field}': ${issue.message}`);
  }
  const config = parsed.data;
  const ids = new Set<string>();
  config.models.forEach((model, index) => {
    if (ids.has(model.id)) throw new ConfigError(`${source}: invalid field 'models[${index}].id': '${model.id}' is listed twice`);
    ids.add(model.id);
    model.file = resolve(baseDir, model.file);
  });
  return config;
}

export async function loadConfigFile(path: string): Promise<FileConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read config file '${path}': ${(error as Error).message}`);
  }
  return parseConfig(text, dirname(resolve(path)), path);
}
