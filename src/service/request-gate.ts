/**
 * What the service asks of tenancy before a request may use an engine, and tells it afterwards: the caller's quota
 * and rate limits (src/tenancy/ implements it). The service stays free of stores and counters.
 */
import type { Caller } from './caller.js';

export interface GateRequest {
  caller: Caller;
  model: string;
  /** Tokens to hold against the caller's per-minute limit until the real count is known: prompt estimate + max_tokens × n. */
  reserveTokens: number;
}

export interface GatePass {
  /** Response headers (x-ratelimit-*), on success as on refusal. */
  readonly headers: Readonly<Record<string, string>>;
  /** The request's real token use replaces the reservation; 0 when it never reached an engine. Called once. */
  settle(usedTokens: number): void;
}

export interface RequestGate {
  /** Throws the KilnError that refuses the request (quota 403, rate limit 429, limits unreachable 503). */
  admit(request: GateRequest): Promise<GatePass>;
}

/** A rough prompt size before tokenizing: about 4 bytes of text per token, plus each message's template overhead. */
export function estimatePromptTokens(textBytes: number, messages: number): number {
  return Math.ceil(textBytes / 4) + 4 * messages;
}
