/**
 * `kiln keys create | list | revoke | update`: the API keys in the store. A new key is printed once and never again
 * (only its hash is kept); listings show its prefix.
 */
import { parseArgs } from 'node:util';
import { DuplicateKeyNameError, KEY_TIERS, QUOTA_PERIODS, type ApiKeyPatch, type ApiKeyRecord, type KeyTier, type QuotaPeriod, type Store, type TokenQuota } from '../store/store.js';

export const KEYS_USAGE = `Usage:
  kiln keys create --name <name> [--tier free|pro] [--rpm N] [--tpm N] [--models <glob,...>]
                   [--quota-tokens N --quota-period day|month] [--json]
  kiln keys list   [--all] [--json]          active keys (--all: revoked ones too); never the keys themselves
  kiln keys revoke <name|id>
  kiln keys update <name|id> [--name <new>] [--tier free|pro] [--rpm N|none] [--tpm N|none]
                   [--models <glob,...>|none] [--quota-tokens N|none] [--quota-period day|month]
  Every command takes --config <kiln.yaml> to use that config's store (data_dir / database_url).
  Limits are positive integers; on update, \`none\` removes one (0 is refused: revoke a key to stop it).
  --models: the model ids the key may use, as globs (Qwen/*,deepseek-ai/DeepSeek-V3); default: every model.
  --quota-tokens: prompt + completion tokens per UTC day or month; past it, requests get error 30001.
`;

export interface CliContext {
  store: Store;
  out: NodeJS.WritableStream;
  /** Messages about bad input or unknown keys (default: stderr). */
  err?: NodeJS.WritableStream;
}

/** Bad input: the command exits 2 with this message. */
export class UsageError extends Error {}

const options = {
  name: { type: 'string' },
  tier: { type: 'string' },
  rpm: { type: 'string' },
  tpm: { type: 'string' },
  models: { type: 'string' },
  'quota-tokens': { type: 'string' },
  'quota-period': { type: 'string' },
  all: { type: 'boolean' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>['values'];

/** Runs one `kiln keys` subcommand; answers the exit code (0 done, 1 unknown key or name taken, 2 bad input). */
export async function keysCommand(args: string[], context: CliContext): Promise<number> {
  const err = context.err ?? process.stderr;
  try {
    const { values: flags, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true });
    const [subcommand, target, ...extra] = positionals;
    if (flags.help) {
      context.out.write(KEYS_USAGE);
      return 0;
    }
    if (extra.length > 0) throw new UsageError(`unexpected argument '${extra[0]}'`);
    switch (subcommand) {
      case 'create':
        if (target !== undefined) throw new UsageError(`unexpected argument '${target}' (give the name with --name)`);
        return await create(flags, context);
      case 'list':
        if (target !== undefined) throw new UsageError(`unexpected argument '${target}'`);
        return await list(flags, context);
      case 'revoke':
        return await revoke(requireTarget(subcommand, target), flags, context, err);
      case 'update':
        return await update(requireTarget(subcommand, target), flags, context, err);
      case undefined:
        throw new UsageError('give a subcommand: create, list, revoke or update');
      default:
        throw new UsageError(`unknown subcommand '${subcommand}'`);
    }
  } catch (error) {
    if (error instanceof DuplicateKeyNameError) {
      err.write(`kiln keys: ${error.message}\n`);
      return 1;
    }
    if (error instanceof UsageError || error instanceof RangeError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      err.write(`kiln keys: ${(error as Error).message}\n\n${KEYS_USAGE}`);
      return 2;
    }
    throw error;
  }
}

function requireTarget(subcommand: string, target: string | undefined): string {
  if (target === undefined) throw new UsageError(`${subcommand} needs the key's name or id`);
  return target;
}

function onlyFlags(flags: Flags, allowed: (keyof Flags)[], subcommand: string): void {
  for (const flag of Object.keys(flags) as (keyof Flags)[]) {
    if (!allowed.includes(flag)) throw new UsageError(`--${flag} does not apply to ${subcommand}`);
  }
}

const LIMIT_FLAGS: (keyof Flags)[] = ['tier', 'rpm', 'tpm', 'models', 'quota-tokens', 'quota-period'];

async function create(flags: Flags, { store, out }: CliContext): Promise<number> {
  onlyFlags(flags, ['name', 'json', ...LIMIT_FLAGS], 'create');
  if (flags.name === undefined) throw new UsageError('create needs --name <name>');
  const tokens = positiveInteger('quota-tokens', flags['quota-tokens']);
  const period = quotaPeriod(flags['quota-period']);
  if ((tokens === undefined) !== (period === undefined)) throw new UsageError('give --quota-tokens and --quota-period together');
  const { key, record } = await store.keys.create({
    name: flags.name,
    ...(flags.tier !== undefined ? { tier: tier(flags.tier) } : {}),
    ...optional('rpm', positiveInteger('rpm', flags.rpm)),
    ...optional('tpm', positiveInteger('tpm', flags.tpm)),
    ...optional('models', modelGlobs(flags.models)),
    ...(tokens !== undefined && period !== undefined ? { quota: { tokens, period } } : {}),
  });
  if (flags.json) {
    out.write(`${JSON.stringify({ key, ...record }, null, 2)}\n`);
    return 0;
  }
  out.write(`Created key '${record.name}' (id ${record.id}, tier ${record.tier}):\n\n  ${key}\n\n`);
  out.write('This key will not be shown again: store it now. Kiln keeps only its SHA-256 hash.\n');
  return 0;
}

async function list(flags: Flags, { store, out }: CliContext): Promise<number> {
  onlyFlags(flags, ['all', 'json'], 'list');
  const records = await store.keys.list({ includeRevoked: flags.all === true });
  if (flags.json) out.write(`${JSON.stringify(records, null, 2)}\n`);
  else if (records.length === 0) out.write(flags.all ? 'No keys in the store.\n' : 'No active keys (--all shows revoked ones).\n');
  else out.write(renderKeys(records));
  return 0;
}

async function revoke(target: string, flags: Flags, { store, out }: CliContext, err: NodeJS.WritableStream): Promise<number> {
  onlyFlags(flags, [], 'revoke');
  const before = await store.keys.get(target);
  const record = before?.revokedAt === undefined ? await store.keys.revoke(target) : before;
  if (record === undefined) return unknownKey(target, err);
  if (before?.revokedAt !== undefined) out.write(`Key '${record.name}' (${record.id}) was already revoked at ${formatTime(before.revokedAt)}.\n`);
  else out.write(`Revoked key '${record.name}' (${record.id}): requests with it are refused from now on.\n`);
  return 0;
}

async function update(target: string, flags: Flags, { store, out }: CliContext, err: NodeJS.WritableStream): Promise<number> {
  onlyFlags(flags, ['name', ...LIMIT_FLAGS], 'update');
  const patch: ApiKeyPatch = {};
  if (flags.name !== undefined) patch.name = flags.name;
  if (flags.tier !== undefined) patch.tier = tier(flags.tier);
  if (flags.rpm !== undefined) patch.rpm = clearableInteger('rpm', flags.rpm);
  if (flags.tpm !== undefined) patch.tpm = clearableInteger('tpm', flags.tpm);
  if (flags.models !== undefined) patch.models = flags.models === 'none' ? null : modelGlobs(flags.models)!;
  const existing = await store.keys.get(target);
  if (existing === undefined) return unknownKey(target, err);
  const quota = quotaPatch(flags, existing.quota);
  if (quota !== undefined) patch.quota = quota;
  if (Object.keys(patch).length === 0) throw new UsageError('update needs something to change: --name, --tier, --rpm, --tpm, --models, --quota-tokens or --quota-period');
  const record = await store.keys.update(existing.id, patch);
  if (record === undefined) return unknownKey(target, err);
  out.write(`Updated key '${record.name}' (${record.id}):\n${renderKeys([record])}`);
  return 0;
}

/** --quota-tokens alone keeps the key's period, --quota-period alone its tokens; `--quota-tokens none` removes it. */
function quotaPatch(flags: Flags, current: TokenQuota | undefined): TokenQuota | null | undefined {
  const rawTokens = flags['quota-tokens'];
  const period = quotaPeriod(flags['quota-period']);
  if (rawTokens === 'none') {
    if (period !== undefined) throw new UsageError('--quota-tokens none removes the quota: give no --quota-period with it');
    return null;
  }
  const tokens = positiveInteger('quota-tokens', rawTokens) ?? current?.tokens;
  if (rawTokens === undefined && period === undefined) return undefined;
  const newPeriod = period ?? current?.period;
  if (tokens === undefined || newPeriod === undefined) throw new UsageError('the key has no quota yet: give --quota-tokens and --quota-period together');
  return { tokens, period: newPeriod };
}

function unknownKey(target: string, err: NodeJS.WritableStream): number {
  err.write(`kiln keys: no key with the name or id '${target}'\n`);
  return 1;
}

function optional<Field extends string, Value>(field: Field, value: Value | undefined): { [K in Field]?: Value } {
  return (value === undefined ? {} : { [field]: value }) as { [K in Field]?: Value };
}

function positiveInteger(flag: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value <= 0) throw new UsageError(`--${flag} must be a positive integer, got '${raw}'`);
  return value;
}

function clearableInteger(flag: string, raw: string): number | null {
  return raw === 'none' ? null : positiveInteger(flag, raw)!;
}

function tier(raw: string): KeyTier {
  const found = KEY_TIERS.find((known) => known === raw);
  if (found === undefined) throw new UsageError(`--tier must be ${KEY_TIERS.join(' or ')}, got '${raw}'`);
  return found;
}

function quotaPeriod(raw: string | undefined): QuotaPeriod | undefined {
  if (raw === undefined) return undefined;
  const found = QUOTA_PERIODS.find((known) => known === raw);
  if (found === undefined) throw new UsageError(`--quota-period must be ${QUOTA_PERIODS.join(' or ')}, got '${raw}'`);
  return found;
}

function modelGlobs(raw: string | undefined): string[] | undefined {
  if (raw === undefined) return undefined;
  const globs = raw.split(',').map((glob) => glob.trim()).filter((glob) => glob !== '');
  if (globs.length === 0) throw new UsageError('--models needs at least one model id or glob');
  return globs;
}

export function renderKeys(records: ApiKeyRecord[]): string {
  const header = ['NAME', 'ID', 'PREFIX', 'TIER', 'RPM', 'TPM', 'MODELS', 'QUOTA', 'CREATED (UTC)', 'REVOKED (UTC)'];
  const rows = records.map((record) => [
    record.name,
    record.id,
    `${record.prefix}…`,
    record.tier,
    record.rpm?.toString() ?? '-',
    record.tpm?.toString() ?? '-',
    record.models?.join(',') ?? '*',
    record.quota !== undefined ? `${record.quota.tokens}/${record.quota.period}` : '-',
    formatTime(record.createdAt),
    record.revokedAt !== undefined ? formatTime(record.revokedAt) : '-',
  ]);
  return formatTable(header, rows);
}

/** `2026-11-30 23:34` (UTC). */
export function formatTime(date: Date): string {
  return date.toISOString().slice(0, 16).replace('T', ' ');
}

/** Columns padded to their widest cell, two spaces apart; the columns in `rightAligned` (numbers) aligned right. */
export function formatTable(header: string[], rows: string[][], rightAligned: ReadonlySet<number> = new Set()): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, column) => (rightAligned.has(column) ? cell.padStart(widths[column]!) : cell.padEnd(widths[column]!)))
      .join('  ')
      .trimEnd();
  return `${[header, ...rows].map(line).join('\n')}\n`;
}
