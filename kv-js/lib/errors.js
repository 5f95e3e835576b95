'use strict';

/** The gRPC status code names, indexed by code. */
const CODE_NAMES = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];

const RETRY_AFTER_HEADER = 'retry-after-ms';

/**
 * An error from the server or the transport: `code` is the gRPC code name
 * ("INVALID_ARGUMENT", "NOT_FOUND"...), `message` the server's message.
 */
class KvError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'KvError';
    /** The gRPC code name. */
    this.code = typeof code === 'number' ? CODE_NAMES[code] || 'UNKNOWN' : code;
    /** The numeric gRPC code. */
    this.grpcCode = typeof code === 'number' ? code : Math.max(0, CODE_NAMES.indexOf(code));
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
    if (extra.requestId !== undefined) this.requestId = extra.requestId;
    if (extra.attempts !== undefined) this.attempts = extra.attempts;
    if (extra.mayHaveApplied !== undefined) this.mayHaveApplied = extra.mayHaveApplied;
    if (extra.metadata !== undefined) {
      Object.defineProperty(this, 'metadata', { value: extra.metadata, enumerable: false });
    }
  }
}

function numberHeader(metadata, name) {
  if (!metadata || typeof metadata.get !== 'function') return undefined;
  const [raw] = metadata.get(name);
  if (raw === undefined) return undefined;
  const n = Number(String(raw));
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** A KvError from a grpc-js error (a ServiceError with code, details, metadata). */
function fromGrpc(error) {
  if (error instanceof KvError) return error;
  const code = typeof error.code === 'number' ? error.code : 2;
  const message = typeof error.details === 'string' && error.details !== '' ? error.details : error.message;
  return new KvError(code, message, {
    retryAfterMs: code === 8 ? numberHeader(error.metadata, RETRY_AFTER_HEADER) : undefined,
    metadata: error.metadata,
  });
}

/** A KvError from a Pipeline reply's CallError. */
function fromCallError(e) {
  return new KvError(e.code, e.message, {
    retryAfterMs: e.retryAfterMs === undefined || e.retryAfterMs === null ? undefined : Number(e.retryAfterMs),
  });
}

function formatMs(ms) {
  return ms >= 1000 && ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

/** The DEADLINE_EXCEEDED of a call whose deadline passed, saying what is known. */
function deadlineError(timeoutMs, attempts, mayHaveApplied, requestId) {
  const tries = `${attempts} attempt${attempts === 1 ? '' : 's'}`;
  let outcome;
  if (mayHaveApplied) {
    outcome = 'the outcome is unknown: an attempt may have been applied';
    if (requestId) outcome += ` (retrying with the same request id ${JSON.stringify(requestId)} is safe)`;
  } else {
    outcome = 'the outcome is known: nothing was applied';
  }
  return new KvError('DEADLINE_EXCEEDED', `deadline of ${formatMs(timeoutMs)} passed after ${tries}; ${outcome}`, {
    attempts,
    mayHaveApplied,
    requestId,
  });
}

module.exports = {
  KvError,
  CODE_NAMES,
  RETRY_AFTER_HEADER,
  fromGrpc,
  fromCallError,
  deadlineError,
  numberHeader,
};
