/**
 * Structured-output pass rates: a varied set of JSON schemas (response_format json_schema) and forced tool calls
 * against Kiln on a generated random-weight model with the real Qwen2.5 template, many seeds each. Every output that
 * finishes with "stop" / "tool_calls" must parse and validate (ajv); outputs cut by max_tokens are counted apart.
 *
 *   npm run bench:structured [-- --seeds 20 --max-tokens 400]
 */
import { parseArgs } from 'node:util';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import OpenAI from 'openai';
import { ensureTinyModel } from '../src/gguf/tiny-model.js';
import { startKiln, writeConfig } from '../test/helpers/kiln-process.js';

const addFormats = addFormatsModule as unknown as (ajv: Ajv2020) => Ajv2020;
const { values } = parseArgs({ options: { seeds: { type: 'string', default: '20' }, 'max-tokens': { type: 'string', default: '400' } } });
const seeds = Number(values.seeds);
const maxTokens = Number(values['max-tokens']);

const SCHEMAS: Record<string, Record<string, unknown>> = {
  'required + optional': { type: 'object', properties: { name: { type: 'string', maxLength: 10 }, age: { type: 'integer', minimum: 0, maximum: 120 }, email: { type: 'string', maxLength: 20 } }, required: ['name'] },
  'nested objects': { type: 'object', properties: { user: { type: 'object', properties: { id: { type: 'integer' }, admin: { type: 'boolean' } }, required: ['id', 'admin'] } }, required: ['user'] },
  'array bounds + enum': { type: 'object', properties: { tags: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, minItems: 2, maxItems: 4 } }, required: ['tags'] },
  'anyOf + $defs/definitions': {
    type: 'object',
    properties: { shape: { anyOf: [{ $ref: '#/$defs/circle' }, { $ref: '#/definitions/square' }] } },
    required: ['shape'],
    $defs: { circle: { type: 'object', properties: { r: { type: 'number' } }, required: ['r'] } },
    definitions: { square: { type: 'object', properties: { side: { type: 'integer', minimum: 1 } }, required: ['side'] } },
  },
  'const, formats, nullable': {
    type: 'object',
    properties: { kind: { const: 'event' }, day: { type: 'string', format: 'date' }, at: { type: 'string', format: 'date-time' }, id: { type: 'string', format: 'uuid' }, note: { type: ['string', 'null'], maxLength: 6 } },
    required: ['kind', 'day', 'at', 'id', 'note'],
  },
  'recursive tree': {
    $ref: '#/$defs/node',
    $defs: { node: { type: 'object', properties: { v: { type: 'integer', minimum: 0, maximum: 9 }, kids: { type: 'array', items: { $ref: '#/$defs/node' }, maxItems: 2 } }, required: ['v'] } },
  },
  'string lengths': { type: 'object', properties: { code: { type: 'string', minLength: 3, maxLength: 3 }, words: { type: 'array', items: { type: 'string', maxLength: 4 }, maxItems: 3 } }, required: ['code', 'words'] },
  'top-level array': { type: 'array', items: { type: 'integer', minimum: -50, maximum: 50 }, minItems: 1, maxItems: 5 },
};

const TOOLS = [
  { type: 'function' as const, function: { name: 'get_weather', parameters: SCHEMAS['required + optional']! } },
  { type: 'function' as const, function: { name: 'create_event', parameters: SCHEMAS['const, formats, nullable']! } },
  { type: 'function' as const, function: { name: 'draw', parameters: SCHEMAS['anyOf + $defs/definitions']! } },
];

const ajv = addFormats(new Ajv2020({ strict: false }));
const file = await ensureTinyModel({ flavor: 'qwen2.5' });
const config = await writeConfig({ models: [{ id: 'tiny-qwen2.5', file, parallel: 4, context_size: 4096 }] });
const kiln = await startKiln(['--config', config, '--insecure-no-auth']);
const client = new OpenAI({ baseURL: `${kiln.url}/v1`, apiKey: 'unused', maxRetries: 0 });
const prompts = ['Give me JSON.', 'Describe it.', 'Any example will do.', 'What do you know?'];

interface Row {
  name: string;
  total: number;
  finished: number;
  valid: number;
  padded: number;
}
const rows: Row[] = [];

try {
  for (const [name, schema] of Object.entries(SCHEMAS)) {
    const validate = ajv.compile(schema);
    const row: Row = { name: `json_schema: ${name}`, total: 0, finished: 0, valid: 0, padded: 0 };
    await Promise.all(
      Array.from({ length: seeds }, async (_, seed) => {
        const completion = await client.chat.completions.create({
          model: 'tiny-qwen2.5',
          messages: [{ role: 'user', content: prompts[seed % prompts.length]! }],
          response_format: { type: 'json_schema', json_schema: { name: 'out', schema, strict: true } },
          seed,
          temperature: 1,
          max_tokens: maxTokens,
        });
        const choice = completion.choices[0]!;
        row.total++;
        if (choice.finish_reason !== 'stop') return;
        row.finished++;
        if (/^\s|\s$|\n/.test(choice.message.content!)) row.padded++;
        try {
          if (validate(JSON.parse(choice.message.content!))) row.valid++;
        } catch {
          // not JSON: counted as invalid
        }
      }),
    );
    rows.push(row);
  }
  for (const toolChoice of ['required', 'named'] as const) {
    const row: Row = { name: `tool_choice ${toolChoice} (calls)`, total: 0, finished: 0, valid: 0, padded: 0 };
    await Promise.all(
      Array.from({ length: seeds }, async (_, seed) => {
        const completion = await client.chat.completions.create({
          model: 'tiny-qwen2.5',
          messages: [{ role: 'user', content: prompts[seed % prompts.length]! }],
          tools: TOOLS,
          tool_choice: toolChoice === 'required' ? 'required' : { type: 'function', function: { name: TOOLS[seed % TOOLS.length]!.function.name } },
          seed,
          temperature: 1,
          max_tokens: maxTokens,
        });
        const choice = completion.choices[0]!;
        if (choice.finish_reason !== 'tool_calls') {
          row.total++;
          return;
        }
        for (const call of choice.message.tool_calls ?? []) {
          if (call.type !== 'function') continue;
          row.total++;
          row.finished++;
          const tool = TOOLS.find((candidate) => candidate.function.name === call.function.name);
          try {
            if (tool !== undefined && ajv.validate(tool.function.parameters, JSON.parse(call.function.arguments))) row.valid++;
          } catch {
            // not JSON: counted as invalid
          }
        }
      }),
    );
    rows.push(row);
  }
} finally {
  await kiln.stop();
}

console.log(`\nStructured output on a random-weight model (${seeds} seeds per row, max_tokens ${maxTokens}, temperature 1)\n`);
console.log('| case | outputs | finished | valid of finished | padded |');
console.log('| --- | --- | --- | --- | --- |');
for (const row of rows) {
  const rate = row.finished === 0 ? '-' : `${((100 * row.valid) / row.finished).toFixed(0)}%`;
  console.log(`| ${row.name} | ${row.total} | ${row.finished} | ${row.valid} (${rate}) | ${row.padded} |`);
}
const invalid = rows.reduce((sum, row) => sum + row.finished - row.valid, 0);
console.log(invalid === 0 ? '\nEvery finished output parsed and validated.' : `\n${invalid} finished outputs did NOT validate.`);
process.exitCode = invalid === 0 ? 0 : 1;
