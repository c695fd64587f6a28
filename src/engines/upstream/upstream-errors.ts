/**
 * An upstream's failures as Kiln errors. Before the response began they are DeploymentFailures, which tell a router
 * whether another deployment may be tried and whether the failure counts against this one's health; after it began
 * they are plain KilnErrors, sent in-band.
 *
 * No message built here carries the upstream's URL, host, port or key: transport errors (whose own messages name
 * host:port) are reduced to their error code, and the upstream's own messages are scrubbed of what Kiln knows of its
 * address before being passed on.
 */
import { DeploymentFailure } from '../../core/engine.js';
import type { Log } from '../../core/log.js';
import { KilnError } from '../../errors/catalog.js';
import { MalformedStreamError, UpstreamReportedError } from './upstream-stream.js';

/** What may be said about an upstream, and what must be scrubbed from what it says. */
export interface UpstreamIdentity {
  name: string;
  /** Strings never to repeat: the base URL, its origin, host and host:port, the API key. */
  secrets: readonly string[];
}

export function identitySecrets(baseUrl: string, apiKey: string | undefined): string[] {
  const url = new URL(baseUrl);
  const secrets = [baseUrl, url.origin, url.host, url.hostname];
  if (apiKey !== undefined && apiKey !== '') secrets.push(apiKey);
  // Longest first, so that the origin is replaced whole rather than leaving its scheme and port behind.
  return [...new Set(secrets.filter((secret) => secret !== ''))].sort((a, b) => b.length - a.length);
}

/** Longest upstream message passed on to a client. */
const MAX_MESSAGE_CHARS = 1_000;

export function scrub(text: string, identity: UpstreamIdentity): string {
  let out = text;
  for (const secret of identity.secrets) out = out.split(secret).join('<upstream>');
  return out.length > MAX_MESSAGE_CHARS ? `${out.slice(0, MAX_MESSAGE_CHARS)}…` : out;
}

/** The message of an OpenAI-style (`error.message`), flat (`message`) or FastAPI-style (`detail`) error body. */
export function upstreamMessage(body: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    const text = body.trim();
    return text === '' || text.startsWith('<') ? undefined : text; // an HTML error page says nothing useful
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const record = parsed as Record<string, unknown>;
  const error = record.error;
  if (typeof error === 'string' && error !== '') return error;
  if (typeof error === 'object' && error !== null) {
    const message = (error as Record<string, unknown>).message;
    if (typeof message === 'string' && message !== '') return message;
  }
  if (typeof record.message === 'string' && record.message !== '') return record.message;
  const detail = record.detail;
  if (typeof detail === 'string' && detail !== '') return detail;
  if (Array.isArray(detail)) {
    const messages = detail.map((item) => (typeof item === 'object' && item !== null ? (item as Record<string, unknown>).msg : undefined));
    const text = messages.filter((message): message is string => typeof message === 'string').join('; ');
    if (text !== '') return text;
  }
  return undefined;
}

/** The request field an OpenAI-style error body names, if any. */
function upstreamParam(body: string): string | undefined {
  try {
    const parsed = JSON.parse(body) as { error?: { param?: unknown }; param?: unknown };
    const param = parsed?.error?.param ?? parsed?.param;
    return typeof param === 'string' && param !== '' ? param : undefined;
  } catch {
    return undefined;
  }
}

/** vLLM, SGLang, llama-server, TGI and Ollama each word it differently. */
const CONTEXT_LENGTH = /context length|context_length|context size|context window|maximum context|exceed_context|n_ctx|prompt is too long|too many (input )?tokens|input is too long|max_model_len/i;

export function isContextLengthMessage(message: string): boolean {
  return CONTEXT_LENGTH.test(message);
}

/** Seconds from a Retry-After header (seconds or an HTTP date); undefined when absent or unreadable. */
export function retryAfterSeconds(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined || value.trim() === '') return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/** A non-2xx answer to the chat request. `body` is (the start of) the response body. */
export function statusFailure(status: number, retryAfter: string | string[] | undefined, body: string, identity: UpstreamIdentity): DeploymentFailure {
  const own = upstreamMessage(body);
  const said = own === undefined ? '' : `: ${scrub(own, identity)}`;
  if (status === 429) {
    return new DeploymentFailure(new KilnError('upstreamRateLimited', { retryAfterSeconds: retryAfterSeconds(retryAfter) ?? 1 }), true, false);
  }
  if (status === 401 || status === 403) {
    // Kiln's own key for the upstream is wrong: a configuration problem; another deployment may hold the right key.
    const message = `The model's server refused Kiln's credentials (upstream '${identity.name}' answered ${status}).`;
    return new DeploymentFailure(new KilnError('upstreamUnavailable', { message }), true, true);
  }
  if (status === 404) {
    // The configured path or model does not exist there: also configuration, not the client's request.
    const message = `The model's server does not serve the configured model (upstream '${identity.name}' answered 404${said}).`;
    return new DeploymentFailure(new KilnError('upstreamUnavailable', { message }), true, true);
  }
  if (status === 408) {
    return new DeploymentFailure(new KilnError('upstreamTimeout'), true, true);
  }
  if (status >= 400 && status < 500) {
    // The upstream judged the request itself: every deployment would say the same.
    const message = own === undefined ? `The model's server rejected the request (${status}).` : scrub(own, identity);
    const param = upstreamParam(body);
    const kind = own !== undefined && isContextLengthMessage(own) ? 'contextLengthExceeded' : 'invalidParameter';
    return new DeploymentFailure(new KilnError(kind, { message, ...(param !== undefined ? { param } : {}) }), false, false);
  }
  const seconds = retryAfterSeconds(retryAfter);
  const error = new KilnError('upstreamUnavailable', {
    message: `The model's server failed (upstream '${identity.name}' answered ${status}).`,
    ...(seconds !== undefined ? { retryAfterSeconds: seconds } : {}),
  });
  return new DeploymentFailure(error, true, true);
}

/** The code of a transport error (node's own or undici's), looked for along its causes. */
export function transportCode(error: unknown): string | undefined {
  for (let at: unknown = error, depth = 0; at !== undefined && at !== null && depth < 5; depth++) {
    const code = (at as { code?: unknown }).code;
    if (typeof code === 'string' && code !== '') return code;
    at = (at as { cause?: unknown }).cause;
  }
  return undefined;
}

const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

/** A transport error before the response began: the upstream could not be reached or dropped the connection. */
export function transportFailure(error: unknown, identity: UpstreamIdentity): DeploymentFailure {
  const code = transportCode(error) ?? 'unknown error';
  if (TIMEOUT_CODES.has(code)) {
    const message = `The model's server did not answer in time (upstream '${identity.name}': ${code}).`;
    return new DeploymentFailure(new KilnError('upstreamTimeout', { message }), true, true);
  }
  const message = `The model's server could not be reached (upstream '${identity.name}': ${code}).`;
  return new DeploymentFailure(new KilnError('upstreamUnavailable', { message }), true, true);
}

export function firstTokenTimeout(identity: UpstreamIdentity, ms: number): DeploymentFailure {
  const message = `The model's server did not start answering in time (upstream '${identity.name}', ${ms} ms).`;
  return new DeploymentFailure(new KilnError('upstreamTimeout', { message }), true, true);
}

/** A stream that began but did not end well: sent in-band, so the message is for the client. */
export function midStreamFailure(): KilnError {
  return new KilnError('upstreamUnavailable', { message: "The model's server failed mid-response." });
}

export function midStreamTimeout(what: 'idle' | 'total'): KilnError {
  return new KilnError('upstreamTimeout', {
    message: what === 'idle' ? "The model's server stopped sending mid-response." : "The model's server did not finish in time.",
  });
}

/** Why an exchange aborted its request; decides what a failed read means. */
export type StopReason = 'client' | 'firstToken' | 'idle' | 'total' | 'released';

interface FailureContext {
  identity: UpstreamIdentity;
  log: Log;
  timeouts: { firstTokenMs: number };
}

/** Why opening an exchange failed, as the router needs it (the client's own abort is handled by the caller). */
export function openFailure(error: unknown, stop: StopReason | undefined, context: FailureContext): DeploymentFailure {
  const { identity, log } = context;
  if (stop === 'firstToken' || stop === 'total') return firstTokenTimeout(identity, context.timeouts.firstTokenMs);
  if (error instanceof DeploymentFailure) return error;
  if (error instanceof UpstreamReportedError) {
    const message = scrub(error.message, identity);
    if (isContextLengthMessage(error.message)) return new DeploymentFailure(new KilnError('contextLengthExceeded', { message }), false, false);
    log.warn({ deployment: identity.name, upstreamError: message }, 'upstream reported an error before answering');
    return new DeploymentFailure(new KilnError('upstreamUnavailable', { message: `The model's server failed (upstream '${identity.name}').` }), true, true);
  }
  if (error instanceof MalformedStreamError) {
    log.warn({ deployment: identity.name, problem: error.message }, 'upstream answered malformed data');
    return new DeploymentFailure(new KilnError('upstreamUnavailable', { message: `The model's server answered malformed data (upstream '${identity.name}').` }), true, true);
  }
  return transportFailure(error, identity);
}

/** Why a stream that had begun failed, as the in-band error for the client; the details go to the log. */
export function streamFailure(error: unknown, stop: StopReason | undefined, context: FailureContext): KilnError {
  if (stop === 'idle' || stop === 'total') return midStreamTimeout(stop);
  if (error instanceof KilnError) return error;
  const problem =
    error instanceof UpstreamReportedError || error instanceof MalformedStreamError ? scrub(error.message, context.identity) : (transportCode(error) ?? 'unknown error');
  context.log.warn({ deployment: context.identity.name, problem }, 'upstream failed mid-response');
  return midStreamFailure();
}
