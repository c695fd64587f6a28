/**
 * The error catalog: the combined SiliconFlow + OpenAI body, the status ↔ type table of the spec, and that
 * unexpected errors become a 500 without internals.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCatalog, KilnError, errorBody, isKilnError, toKilnError, type ErrorKind } from '../../src/errors/catalog.js';

/** The spec's table (shared/spec/chat-completions.md, "Errors"): status → OpenAI type. */
const SPEC_STATUS_TYPE: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  // Transport-level statuses (issue 9): every response carries the contract's body.
  405: 'invalid_request_error',
  408: 'invalid_request_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  417: 'invalid_request_error',
  431: 'invalid_request_error',
  429: 'rate_limit_error',
  503: 'service_unavailable',
  504: 'timeout_error',
  500: 'server_error',
};

const kinds = Object.keys(ErrorCatalog) as ErrorKind[];

describe('errorBody', () => {
  test('unknown model renders exactly the spec example', () => {
    const body = errorBody(new KilnError('modelNotFound', { param: 'model' }));
    assert.deepEqual(body, {
      code: 20012,
      message: 'Model does not exist. Please check it carefully.',
      data: null,
      error: {
        message: 'Model does not exist. Please check it carefully.',
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
      },
    });
  });

  test('the body survives JSON round-tripping with data and param as null', () => {
    const body = JSON.parse(JSON.stringify(errorBody(new KilnError('invalidApiKey'))));
    assert.deepEqual(body, {
      code: 20001,
      message: 'Invalid API key.',
      data: null,
      error: { message: 'Invalid API key.', type: 'authentication_error', param: null, code: 'invalid_api_key' },
    });
  });

  test('a custom message replaces the default in both places, param is carried', () => {
    const error = new KilnError('invalidParameter', { param: 'temperature', message: "Invalid 'temperature': must be ≤ 2." });
    const body = errorBody(error);
    assert.equal(body.code, 20015);
    assert.equal(body.message, "Invalid 'temperature': must be ≤ 2.");
    assert.equal(body.error.message, body.message);
    assert.equal(body.error.param, 'temperature');
    assert.equal(body.error.code, 'invalid_parameter');
    assert.equal(body.error.type, 'invalid_request_error');
  });

  for (const kind of kinds) {
    test(`${kind}: body mirrors the catalog entry`, () => {
      const entry = ErrorCatalog[kind];
      const body = errorBody(new KilnError(kind));
      assert.deepEqual(body, {
        code: entry.siliconflowCode,
        message: entry.message,
        data: null,
        error: { message: entry.message, type: entry.type, param: null, code: entry.code },
      });
    });
  }
});

describe('catalog entries', () => {
  for (const kind of kinds) {
    const entry = ErrorCatalog[kind];
    test(`${kind}: status ${entry.status} is in the spec's table with type ${entry.type}`, () => {
      assert.equal(SPEC_STATUS_TYPE[entry.status], entry.type);
    });
  }

  test('every entry has a non-empty message, a snake_case code and a 5-digit SiliconFlow code', () => {
    for (const kind of kinds) {
      const entry = ErrorCatalog[kind];
      assert.ok(entry.message.length > 0, kind);
      assert.match(entry.code, /^[a-z][a-z0-9_]*$/, kind);
      assert.ok(Number.isInteger(entry.siliconflowCode) && entry.siliconflowCode >= 10000 && entry.siliconflowCode <= 99999, kind);
    }
  });

  test('OpenAI string codes are unique', () => {
    const codes = kinds.map((kind) => ErrorCatalog[kind].code);
    assert.equal(new Set(codes).size, codes.length);
  });

  test('SiliconFlow codes seen in the spec are used where the spec says', () => {
    assert.equal(ErrorCatalog.modelNotFound.siliconflowCode, 20012);
    assert.equal(ErrorCatalog.invalidParameter.siliconflowCode, 20015);
    assert.equal(ErrorCatalog.contextLengthExceeded.siliconflowCode, 20015);
    assert.equal(ErrorCatalog.modelOverloaded.siliconflowCode, 50505);
    assert.equal(ErrorCatalog.internal.siliconflowCode, 50507);
  });

  test('the spec scenarios map to the right statuses', () => {
    assert.equal(new KilnError('invalidJson').status, 400);
    assert.equal(new KilnError('contextLengthExceeded').status, 400);
    assert.equal(new KilnError('missingApiKey').status, 401);
    assert.equal(new KilnError('invalidApiKey').status, 401);
    assert.equal(new KilnError('modelNotAllowed').status, 403);
    assert.equal(new KilnError('notFound').status, 404);
    assert.equal(new KilnError('bodyTooLarge').status, 413);
    assert.equal(new KilnError('queueFull').status, 429);
    assert.equal(new KilnError('modelOverloaded').status, 503);
    assert.equal(new KilnError('modelUnavailable').status, 503);
    assert.equal(new KilnError('timeout').status, 504);
    assert.equal(new KilnError('internal').status, 500);
  });
});

describe('KilnError', () => {
  test('carries kind, entry, param, retryAfterSeconds and cause', () => {
    const cause = new Error('root');
    const error = new KilnError('queueFull', { param: 'model', retryAfterSeconds: 3, cause });
    assert.ok(error instanceof Error);
    assert.equal(error.name, 'KilnError');
    assert.equal(error.kind, 'queueFull');
    assert.equal(error.entry, ErrorCatalog.queueFull);
    assert.equal(error.status, 429);
    assert.equal(error.param, 'model');
    assert.equal(error.retryAfterSeconds, 3);
    assert.equal(error.cause, cause);
    assert.equal(error.message, ErrorCatalog.queueFull.message);
  });

  test('defaults: param null, no retry-after, no cause', () => {
    const error = new KilnError('notFound');
    assert.equal(error.param, null);
    assert.equal(error.retryAfterSeconds, undefined);
    assert.equal('cause' in error, false);
  });

  test('isKilnError tells KilnErrors from others', () => {
    assert.equal(isKilnError(new KilnError('internal')), true);
    assert.equal(isKilnError(new Error('x')), false);
    assert.equal(isKilnError({ kind: 'internal', status: 500 }), false);
    assert.equal(isKilnError(null), false);
  });
});

describe('toKilnError', () => {
  test('a plain Error becomes a 500 whose message and body hide the internals', () => {
    const original = new Error('secret internals');
    const error = toKilnError(original);
    assert.ok(error instanceof KilnError);
    assert.equal(error.status, 500);
    assert.equal(error.kind, 'internal');
    assert.doesNotMatch(error.message, /secret|internals/);
    const body = JSON.stringify(errorBody(error));
    assert.doesNotMatch(body, /secret|internals/);
    assert.equal(errorBody(error).error.type, 'server_error');
    assert.equal(errorBody(error).code, 50507);
    assert.equal(error.cause, original, 'the original is kept as cause for logging');
  });

  test('non-Error throwables become a 500 too', () => {
    for (const thrown of ['secret string', 42, null, undefined, { message: 'secret object' }]) {
      const error = toKilnError(thrown);
      assert.equal(error.status, 500);
      assert.doesNotMatch(JSON.stringify(errorBody(error)), /secret/);
    }
  });

  test('a KilnError passes through unchanged', () => {
    const original = new KilnError('modelNotFound', { param: 'model' });
    assert.equal(toKilnError(original), original);
  });
});
