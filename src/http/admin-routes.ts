/**
 * What operators use: POST /admin/reload and GET /v1/usage (the admin key; to other keys they do not exist: 404),
 * and GET /metrics (open as vLLM's by default; admin-only or off by config).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { KilnError } from '../errors/catalog.js';
import type { Caller } from '../service/caller.js';
import { parseUsageTime, type UsageQuery, type UsageSummaryRow } from '../store/usage.js';

export interface UsageReader {
  summarise(query: UsageQuery): Promise<UsageSummaryRow[]>;
  /** Writes what the ledger holds in memory, so the summary includes the latest requests. */
  flush?(): Promise<void>;
}

export interface MetricsEndpoint {
  render(): Promise<string>;
  readonly contentType: string;
}

export interface AdminRouteOptions {
  callerOf(request: FastifyRequest): Promise<Caller>;
  reload?: () => Promise<unknown>;
  usage?: UsageReader;
  metrics?: MetricsEndpoint;
  metricsAccess: 'open' | 'admin' | 'off';
}

const DAY_MS = 86_400_000;

export function registerAdminRoutes(app: FastifyInstance, options: AdminRouteOptions): void {
  const requireAdmin = async (request: FastifyRequest): Promise<void> => {
    if ((await options.callerOf(request)).admin) return;
    throw new KilnError('notFound', { message: `No route for ${request.method} ${request.url.split('?')[0]}.` });
  };

  // Models on and offline without a restart; a configuration that cannot be applied is a 400 with its reason, and the
  // running one stays.
  app.post('/admin/reload', async (request) => {
    await requireAdmin(request);
    if (options.reload === undefined) return { reloaded: false, reason: 'nothing to reload: the server was started without a config file' };
    try {
      return { reloaded: true, ...((await options.reload()) as object) };
    } catch (error) {
      if (error instanceof KilnError) throw error;
      throw new KilnError('invalidParameter', { message: `The configuration was not applied: ${(error as Error).message}` });
    }
  });

  app.get<{ Querystring: Record<string, string | undefined> }>('/v1/usage', async (request) => {
    await requireAdmin(request);
    const usage = options.usage;
    if (usage === undefined) throw new KilnError('notFound', { message: 'This server keeps no usage ledger.' });
    const to = parseTime(request.query.to, 'to') ?? new Date();
    const from = parseTime(request.query.from, 'from') ?? new Date(to.getTime() - 30 * DAY_MS);
    if (from.getTime() >= to.getTime()) throw new KilnError('invalidParameter', { param: 'from', message: "Invalid 'from': must be before 'to'." });
    const groupBy = request.query.group_by ?? 'key';
    if (groupBy !== 'key' && groupBy !== 'model' && groupBy !== 'day') {
      throw new KilnError('invalidParameter', { param: 'group_by', message: `Invalid 'group_by': must be key, model or day, got '${groupBy}'.` });
    }
    await usage.flush?.();
    const rows = await usage.summarise({ from, to, groupBy });
    return {
      object: 'list',
      from: from.toISOString(),
      to: to.toISOString(),
      group_by: groupBy,
      data: rows.map(({ group, ...counts }) => ({ [groupBy]: group, ...counts })),
    };
  });

  if (options.metricsAccess !== 'off' && options.metrics !== undefined) {
    const metrics = options.metrics;
    app.get('/metrics', async (request, reply) => {
      if (options.metricsAccess === 'admin') await requireAdmin(request);
      reply.header('content-type', metrics.contentType);
      return metrics.render();
    });
  }
}

/** A bound of the usage window: a date, an ISO 8601 time, or Unix seconds. */
function parseTime(value: string | undefined, param: string): Date | undefined {
  if (value === undefined || value === '') return undefined;
  const time = parseUsageTime(value);
  if (time === undefined) {
    throw new KilnError('invalidParameter', { param, message: `Invalid '${param}': give a date (2026-11-30, midnight UTC), an ISO 8601 time (2026-11-30T12:00:00Z) or Unix seconds, got '${value}'.` });
  }
  return time;
}
