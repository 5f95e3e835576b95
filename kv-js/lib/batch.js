'use strict';
// Batch: checks (a key at a version, or absent) and then writes on one
// project, applied all or nothing.

const { toValue, fromValue, checkKey, checkTtl, checkVersion } = require('./values');

function ttlOf(options, what) {
  const opts = typeof options === 'number' ? { ttlMs: options } : options || {};
  return [checkTtl(opts.ttlMs, what), opts];
}

function number(delta) {
  if (typeof delta !== 'number' || !Number.isFinite(delta)) {
    throw new TypeError(`delta must be a finite number, got ${String(delta)}`);
  }
  return delta;
}

/**
 * Built with checkVersion/checkAbsent and set/delete/incr/merge (each
 * returns the batch, so calls chain), then commit().
 */
class Batch {
  constructor(kv) {
    this._kv = kv;
    this._checks = [];
    this._ops = [];
    this._kinds = [];
  }

  /** The batch applies only if `key` is at exactly `version`. */
  checkVersion(key, version) {
    this._checks.push({ key: checkKey(key), version: checkVersion(version) });
    return this;
  }

  /** The batch applies only if `key` is absent (or expired). */
  checkAbsent(key) {
    this._checks.push({ key: checkKey(key), absent: true });
    return this;
  }

  /** Sets `key` (options: a TTL in ms, or { ttlMs, keepTtl }). */
  set(key, value, options) {
    const [ttlMs, opts] = ttlOf(options);
    const op = { key: checkKey(key), value: toValue(value)[0] };
    if (ttlMs !== undefined) op.ttlMs = ttlMs;
    if (opts.keepTtl) op.keepTtl = true;
    this._ops.push({ set: op });
    this._kinds.push('set');
    return this;
  }

  /** Deletes `key`. */
  delete(key) {
    this._ops.push({ delete: { key: checkKey(key) } });
    this._kinds.push('delete');
    return this;
  }

  /** Adds `delta` to the number at `key` (options: a TTL for a created key). */
  incr(key, delta = 1, options) {
    const [ttlMs] = ttlOf(options);
    const op = { key: checkKey(key), delta: number(delta) };
    if (ttlMs !== undefined) op.ttlMs = ttlMs;
    this._ops.push({ incr: op });
    this._kinds.push('incr');
    return this;
  }

  /** Applies a merge patch to `key`. */
  merge(key, patch, options) {
    const [ttlMs] = ttlOf(options);
    const op = { key: checkKey(key), patch: toValue(patch)[0] };
    if (ttlMs !== undefined) op.ttlMs = ttlMs;
    this._ops.push({ merge: op });
    this._kinds.push('merge');
    return this;
  }

  /**
   * Sends the batch. Resolves with { applied: true, results } (one per op:
   * { version } for a set, { version, deleted } for a delete, { version,
   * value } for an incr or merge), or { applied: false, failedCheck,
   * currentVersion } when a check did not hold (nothing was written).
   */
  async commit(options = {}) {
    const request = { checks: this._checks, ops: this._ops };
    const requestId = this._kv._write(request, options.requestId);
    const r = await this._kv._unary('Batch', request, { safe: !!requestId, requestId });
    if (!r.applied) {
      return {
        applied: false,
        failedCheck: r.failedCheck === undefined || r.failedCheck === null ? null : Number(r.failedCheck),
        currentVersion: Number(r.currentVersion),
      };
    }
    return {
      applied: true,
      results: r.results.map((res, i) => {
        const out = { version: Number(res.version) };
        const kind = this._kinds[i];
        if (kind === 'delete') out.deleted = !!res.deleted;
        else if (kind === 'incr') out.value = res.number;
        else if (kind === 'merge') out.value = fromValue(res.value);
        return out;
      }),
    };
  }
}

module.exports = { Batch };
