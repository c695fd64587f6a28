/**
 * The answer when every attempt failed: the most telling error for the client, without any upstream's URL. All rate
 * limited → 429 with the longest Retry-After any deployment asked for (retrying sooner is pointless); all timed out →
 * 504; anything else (or a mix) → 503, retry in a second.
 */
import type { DeploymentFailure } from '../../core/engine.js';
import { KilnError } from '../../errors/catalog.js';

export function exhaustedError(label: string, failures: readonly DeploymentFailure[]): KilnError {
  const tried = failures.length;
  const deployments = `${tried} deployment${tried === 1 ? '' : 's'}`;
  const last = failures[failures.length - 1]?.error;
  const cause = last === undefined ? {} : { cause: last };
  if (tried > 0 && failures.every((failure) => failure.error.status === 429)) {
    const asked = failures.map((failure) => failure.error.retryAfterSeconds ?? 1);
    return new KilnError('upstreamRateLimited', {
      message: `The servers of '${label}' are busy (rate limited; tried ${deployments}). Please retry later.`,
      retryAfterSeconds: Math.max(1, ...asked),
      ...cause,
    });
  }
  if (tried > 0 && failures.every((failure) => failure.error.status === 504)) {
    return new KilnError('upstreamTimeout', {
      message: `The servers of '${label}' did not answer in time (tried ${deployments}).`,
      ...cause,
    });
  }
  return new KilnError('upstreamUnavailable', {
    message: `The servers of '${label}' could not serve the request (tried ${deployments}). Please retry later.`,
    retryAfterSeconds: 1,
    ...cause,
  });
}

/** No deployment had room for the request (admission normally prevents it: it can only happen in a race). */
export function noRoomError(label: string): KilnError {
  return new KilnError('upstreamUnavailable', {
    message: `Every server of '${label}' is at its concurrency limit. Please retry.`,
    retryAfterSeconds: 1,
  });
}
