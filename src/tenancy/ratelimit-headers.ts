/**
 * OpenAI's x-ratelimit-* response headers, built from the counters one reservation touched. Clients (the openai SDKs,
 * LiteLLM, gateways) read these names and this duration format, so both are kept exactly.
 */

/** One counter's state as the headers report it. */
export interface LimitState {
  limit: number;
  remaining: number;
  /** Until the counter's window ends. */
  resetMs: number;
}

/**
 * The headers for the request and token dimensions; each reports the tighter of the counters that apply (the one with
 * less remaining: a key's own limit or its limit on this model). A dimension without a limit is left out.
 */
export function rateLimitHeaders(requests: LimitState | undefined, tokens: LimitState | undefined): Record<string, string> {
  const headers: Record<string, string> = {};
  if (requests !== undefined) {
    headers['x-ratelimit-limit-requests'] = String(requests.limit);
    headers['x-ratelimit-remaining-requests'] = String(requests.remaining);
    headers['x-ratelimit-reset-requests'] = formatResetDuration(requests.resetMs);
  }
  if (tokens !== undefined) {
    headers['x-ratelimit-limit-tokens'] = String(tokens.limit);
    headers['x-ratelimit-remaining-tokens'] = String(tokens.remaining);
    headers['x-ratelimit-reset-tokens'] = formatResetDuration(tokens.resetMs);
  }
  return headers;
}

/** The tighter of two states: less remaining wins, then the later reset. */
export function tighter(a: LimitState | undefined, b: LimitState): LimitState {
  if (a === undefined) return b;
  if (b.remaining !== a.remaining) return b.remaining < a.remaining ? b : a;
  return b.resetMs > a.resetMs ? b : a;
}

/**
 * OpenAI's reset format, Go's time.Duration notation at millisecond precision: "59ms", "1s", "8.64s", "6m0s",
 * "1h2m3s". A negative or fractional input is rounded up to whole milliseconds (a reset is never early).
 */
export function formatResetDuration(ms: number): string {
  const total = Math.max(0, Math.ceil(ms));
  if (total === 0) return '0s';
  if (total < 1_000) return `${total}ms`;
  const hours = Math.floor(total / 3_600_000);
  const minutes = Math.floor((total % 3_600_000) / 60_000);
  // Whole milliseconds over 1000 print with at most three decimals and no trailing zeros: 8640 → "8.64".
  const secondsText = `${(total % 60_000) / 1_000}s`;
  if (hours > 0) return `${hours}h${minutes}m${secondsText}`;
  if (minutes > 0) return `${minutes}m${secondsText}`;
  return secondsText;
}
