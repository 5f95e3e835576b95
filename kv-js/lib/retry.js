'use strict';
// The retry policy: how many attempts a call makes at most and how long it
// waits between them (exponential backoff with full jitter), always within
// the call's deadline.

const DEFAULT_RETRY = { maxAttempts: 10, initialBackoffMs: 20, maxBackoffMs: 1000, multiplier: 2 };

/** The policy from the `retry` option: an object of overrides, or false for one attempt. */
function normaliseRetry(retry) {
  if (retry === false) return { ...DEFAULT_RETRY, maxAttempts: 1 };
  const r = { ...DEFAULT_RETRY, ...(retry || {}) };
  for (const k of Object.keys(DEFAULT_RETRY)) {
    if (typeof r[k] !== 'number' || !Number.isFinite(r[k]) || r[k] < 0) {
      throw new TypeError(`retry.${k} must be a non-negative number`);
    }
  }
  r.maxAttempts = Math.max(1, Math.floor(r.maxAttempts));
  r.multiplier = Math.max(1, r.multiplier);
  return r;
}

/** The random wait after attempt `attempt` (1-based) failed. */
function backoffMs(retry, attempt) {
  const bound = Math.min(retry.maxBackoffMs, retry.initialBackoffMs * retry.multiplier ** Math.min(attempt - 1, 64));
  return bound * Math.random();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

module.exports = { DEFAULT_RETRY, normaliseRetry, backoffMs, sleep };
