/**
 * What a response to any request body must look like: a 2xx answer (JSON completion, or an SSE stream that ends in
 * `[DONE]` without an error event), or a 4xx carrying the contract's error body. Under load 429 and 503 are
 * allowed too, with the same body. Returns a failure description, or undefined when the response is acceptable.
 */

export interface CheckOptions {
  /** Queue full (429) and overloaded (503) are acceptable answers. */
  allowOverload?: boolean;
}

export function checkResponse(status: number, contentType: string | undefined, body: string, options: CheckOptions = {}): string | undefined {
  if (status >= 200 && status < 300) {
    return contentType?.startsWith('text/event-stream') ? checkStream(body) : checkCompletion(body);
  }
  const overload = status === 429 || status === 503;
  if (status >= 500 && !(overload && options.allowOverload)) return `${status}: ${errorMessage(body)}`;
  if (status === 429 && !options.allowOverload) return `429: ${errorMessage(body)}`;
  if (status < 400 || status >= 600) return `unexpected status ${status}`;
  const shape = errorShape(body);
  return shape === undefined ? undefined : `${status} without the contract's error body (${shape}): ${body.slice(0, 200)}`;
}

/** Why `body` is not `{code, message, data: null, error: {message, type, param, code}}`, or undefined if it is. */
export function errorShape(body: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return 'not JSON';
  }
  if (!isObject(parsed)) return 'not an object';
  const keys = Object.keys(parsed).sort().join(',');
  if (keys !== 'code,data,error,message') return `keys ${keys}`;
  if (typeof parsed.code !== 'number' || typeof parsed.message !== 'string' || parsed.data !== null) return 'code/message/data types';
  const error = parsed.error;
  if (!isObject(error)) return 'error is not an object';
  if (Object.keys(error).sort().join(',') !== 'code,message,param,type') return `error keys ${Object.keys(error).join(',')}`;
  if (typeof error.message !== 'string' || typeof error.type !== 'string' || typeof error.code !== 'string') return 'error field types';
  if (error.param !== null && typeof error.param !== 'string') return 'error.param type';
  return undefined;
}

function checkCompletion(body: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return `2xx body is not JSON: ${body.slice(0, 120)}`;
  }
  if (!isObject(parsed) || parsed.object !== 'chat.completion' || !Array.isArray(parsed.choices)) return `2xx body is not a chat.completion: ${body.slice(0, 120)}`;
  return undefined;
}

function checkStream(body: string): string | undefined {
  const events = body.split('\n\n');
  if (events.pop() !== '') return `stream does not end with a blank line: ${JSON.stringify(body.slice(-80))}`;
  const last = events.at(-1);
  for (const event of events) {
    if (!event.startsWith('data: ')) return `bad SSE event ${JSON.stringify(event.slice(0, 80))}`;
    const data = event.slice(6);
    if (data === '[DONE]') continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch {
      return `SSE event is not JSON: ${data.slice(0, 80)}`;
    }
    if (isObject(parsed) && 'error' in parsed) return `in-band error event: ${data.slice(0, 200)}`;
  }
  return last === 'data: [DONE]' ? undefined : `stream ends without [DONE]: ${JSON.stringify(last?.slice(0, 80))}`;
}

function errorMessage(body: string): string {
  try {
    const parsed = JSON.parse(body) as { message?: unknown };
    if (typeof parsed.message === 'string') return parsed.message.slice(0, 160);
  } catch {
    // Not JSON: show the start of it.
  }
  return body.slice(0, 160);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Groups failures by what they say, numbers elided, so a report lists each kind once with an example. */
export function failureSignature(failure: string): string {
  return failure.replace(/\d+/g, '#').replace(/"[^"]{24,}"/g, '"…"').slice(0, 140);
}
