/**
 * The one error catalog. Every error Kiln returns is a KilnError built from an entry here; only the HTTP layer renders
 * it (see http/errors.ts), in SiliconFlow's flat shape plus OpenAI's nested `error` object.
 */

export type OpenAiErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'service_unavailable'
  | 'timeout_error'
  | 'server_error';

export interface CatalogEntry {
  status: number;
  type: OpenAiErrorType;
  /** SiliconFlow's numeric code. */
  siliconflowCode: number;
  /** OpenAI's string code. */
  code: string;
  /** Default message; most call sites pass a more specific one. */
  message: string;
}

export const ErrorCatalog = {
  invalidJson: { status: 400, type: 'invalid_request_error', siliconflowCode: 20015, code: 'invalid_json', message: 'Request body is not valid JSON.' },
  invalidParameter: { status: 400, type: 'invalid_request_error', siliconflowCode: 20015, code: 'invalid_parameter', message: 'Invalid parameter.' },
  modelNotFound: { status: 400, type: 'invalid_request_error', siliconflowCode: 20012, code: 'model_not_found', message: 'Model does not exist. Please check it carefully.' },
  modelDisabled: { status: 400, type: 'invalid_request_error', siliconflowCode: 30003, code: 'model_disabled', message: 'Model disabled.' },
  contextLengthExceeded: { status: 400, type: 'invalid_request_error', siliconflowCode: 20015, code: 'context_length_exceeded', message: 'The prompt is too long for the model.' },
  notSupported: { status: 400, type: 'invalid_request_error', siliconflowCode: 20015, code: 'unsupported_parameter', message: 'This parameter is not supported yet.' },
  missingApiKey: { status: 401, type: 'authentication_error', siliconflowCode: 20001, code: 'missing_api_key', message: 'Missing API key. Send it as "Authorization: Bearer <key>".' },
  invalidApiKey: { status: 401, type: 'authentication_error', siliconflowCode: 20001, code: 'invalid_api_key', message: 'Invalid API key.' },
  modelNotAllowed: { status: 403, type: 'permission_error', siliconflowCode: 30003, code: 'model_not_allowed', message: 'This API key may not use this model.' },
  notFound: { status: 404, type: 'not_found_error', siliconflowCode: 20404, code: 'not_found', message: 'Not found.' },
  badRequest: { status: 400, type: 'invalid_request_error', siliconflowCode: 20015, code: 'bad_request', message: 'Malformed HTTP request.' },
  methodNotAllowed: { status: 405, type: 'invalid_request_error', siliconflowCode: 20015, code: 'method_not_allowed', message: 'Method not allowed.' },
  requestReceiptTimeout: { status: 408, type: 'invalid_request_error', siliconflowCode: 20015, code: 'request_timeout', message: 'The request was not received in time.' },
  bodyTooLarge: { status: 413, type: 'invalid_request_error', siliconflowCode: 20015, code: 'request_too_large', message: 'Request body is too large.' },
  unsupportedMediaType: { status: 415, type: 'invalid_request_error', siliconflowCode: 20015, code: 'unsupported_media_type', message: 'Unsupported content type.' },
  expectationFailed: { status: 417, type: 'invalid_request_error', siliconflowCode: 20015, code: 'expectation_failed', message: 'Only "Expect: 100-continue" is supported.' },
  headersTooLarge: { status: 431, type: 'invalid_request_error', siliconflowCode: 20015, code: 'headers_too_large', message: 'The request line or headers are too large.' },
  // SiliconFlow answers an exhausted balance with 403 and code 30001 (the contract's 403 type); OpenAI's code for it
  // is insufficient_quota. Not a 429: SDKs retry those, and waiting does not help until the period turns.
  quotaExceeded: { status: 403, type: 'permission_error', siliconflowCode: 30001, code: 'insufficient_quota', message: 'This API key has used its token quota.' },
  rateLimited: { status: 429, type: 'rate_limit_error', siliconflowCode: 50505, code: 'rate_limit_exceeded', message: 'Rate limit reached for this API key. Please retry later.' },
  keysUnavailable: { status: 503, type: 'service_unavailable', siliconflowCode: 50505, code: 'keys_unavailable', message: 'API keys cannot be checked right now. Please retry.' },
  rateLimitsUnavailable: { status: 503, type: 'service_unavailable', siliconflowCode: 50505, code: 'rate_limits_unavailable', message: 'Rate limits cannot be checked right now. Please retry.' },
  queueFull: { status: 429, type: 'rate_limit_error', siliconflowCode: 50505, code: 'queue_full', message: 'Too many requests are waiting for this model. Please retry later.' },
  modelOverloaded: { status: 503, type: 'service_unavailable', siliconflowCode: 50505, code: 'model_overloaded', message: 'Model service overloaded. Please try again later.' },
  modelUnavailable: { status: 503, type: 'service_unavailable', siliconflowCode: 30003, code: 'model_unavailable', message: 'The model is not available right now.' },
  upstreamRateLimited: { status: 429, type: 'rate_limit_error', siliconflowCode: 50505, code: 'upstream_rate_limited', message: "The model's servers are busy (rate limited). Please retry later." },
  upstreamUnavailable: { status: 503, type: 'service_unavailable', siliconflowCode: 50505, code: 'upstream_unavailable', message: "The model's servers could not serve the request. Please retry later." },
  upstreamTimeout: { status: 504, type: 'timeout_error', siliconflowCode: 50507, code: 'upstream_timeout', message: "The model's server did not answer in time." },
  shuttingDown: { status: 503, type: 'service_unavailable', siliconflowCode: 50505, code: 'shutting_down', message: 'The server is shutting down. Please retry.' },
  timeout: { status: 504, type: 'timeout_error', siliconflowCode: 50507, code: 'timeout', message: 'Generation timed out.' },
  internal: { status: 500, type: 'server_error', siliconflowCode: 50507, code: 'internal_error', message: 'Unknown error. Please retry later.' },
} as const satisfies Record<string, CatalogEntry>;

export type ErrorKind = keyof typeof ErrorCatalog;

export interface KilnErrorOptions {
  message?: string;
  /** The request field at fault, e.g. `messages[1].content` or `temperature`. */
  param?: string | null;
  /** Seconds, sent as `Retry-After` (429/503). */
  retryAfterSeconds?: number;
  /** Response headers that come with the error (x-ratelimit-* on a 429). */
  headers?: Readonly<Record<string, string>>;
  cause?: unknown;
}

export class KilnError extends Error {
  readonly kind: ErrorKind;
  readonly entry: CatalogEntry;
  readonly param: string | null;
  readonly retryAfterSeconds: number | undefined;
  readonly headers: Readonly<Record<string, string>> | undefined;

  constructor(kind: ErrorKind, options: KilnErrorOptions = {}) {
    const entry = ErrorCatalog[kind];
    super(options.message ?? entry.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KilnError';
    this.kind = kind;
    this.entry = entry;
    this.param = options.param ?? null;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.headers = options.headers;
  }

  get status(): number {
    return this.entry.status;
  }
}

export function isKilnError(error: unknown): error is KilnError {
  return error instanceof KilnError;
}

/** Wire body for an error: SiliconFlow's flat fields and OpenAI's `error` object in one. */
export interface ErrorBody {
  code: number;
  message: string;
  data: null;
  error: { message: string; type: OpenAiErrorType; param: string | null; code: string };
}

export function errorBody(error: KilnError): ErrorBody {
  return {
    code: error.entry.siliconflowCode,
    message: error.message,
    data: null,
    error: { message: error.message, type: error.entry.type, param: error.param, code: error.entry.code },
  };
}

/** Anything thrown that is not a KilnError is a bug: it becomes a 500 without internals. */
export function toKilnError(error: unknown): KilnError {
  return isKilnError(error) ? error : new KilnError('internal', { cause: error });
}
