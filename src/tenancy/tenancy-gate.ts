/**
 * The service's request gate: a caller's token quota, then its per-minute limits — its own and, where the config sets
 * them, its limits on the requested model.
 */
import type { RateLimitsConfig } from '../config/config.js';
import type { GatePass, GateRequest, RequestGate } from '../service/request-gate.js';
import type { Quotas } from './quotas.js';
import { UNLIMITED, type RateLimits } from './rate-limits.js';

export interface TenancyGateOptions {
  rateLimits: RateLimits;
  quotas?: Quotas;
  /** Per-key limits on one model id (config `models[].rate_limits`). */
  modelLimits?: (model: string) => RateLimitsConfig | undefined;
}

export class TenancyGate implements RequestGate {
  constructor(private readonly options: TenancyGateOptions) {}

  async admit({ caller, model, reserveTokens }: GateRequest): Promise<GatePass> {
    if (caller.quota !== undefined) await this.options.quotas?.check(caller);
    const onModel = this.options.modelLimits?.(model);
    if (caller.rpm === undefined && caller.tpm === undefined && onModel === undefined) return UNLIMITED;
    return this.options.rateLimits.reserve(
      {
        id: caller.id,
        name: caller.name,
        ...(caller.rpm !== undefined ? { rpm: caller.rpm } : {}),
        ...(caller.tpm !== undefined ? { tpm: caller.tpm } : {}),
        ...(onModel !== undefined ? { model: { id: model, ...onModel } } : {}),
      },
      reserveTokens,
    );
  }
}
