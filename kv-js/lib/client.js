'use strict';
// The `kv` object: the five methods functions know, and the race-free
// extras, on one project of a shared connection.

const { toValue, fromValue, checkKey, checkTtl, checkVersion } = require('./values');
const { acquire, release } = require('./connection');
const { UNARY } = require('./pipeline');
const { KvError } = require('./errors');
const { Batch } = require('./batch');
const { Watch } = require('./watch');
const { Admin } = require('./admin');

const PROJECT_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const METHODS = { get: 'Get', set: 'Set', has: 'Has', delete: 'Delete', incr: 'Incr', merge: 'Merge' };

function checkProject(project) {
  if (project === undefined || project === null || project === '') return '';
  if (typeof project !== 'string' || !PROJECT_NAME.test(project)) {
    throw new TypeError(
      `project ${JSON.stringify(project)} is not a project name: names are 1-64 characters of [A-Za-z0-9_.-]`,
    );
  }
  return project;
}

function optionalNumber(message, field) {
  const v = message[field];
  return v === undefined || v === null ? null : Number(v);
}

/** A GetResponse (or ListEntry) as an entry: value, version, expiry, incarnation. */
function entryOf(response) {
  return {
    value: fromValue(response.value),
    version: Number(response.version),
    expiresAtMs: optionalNumber(response, 'expiresAtMs'),
    incarnation: Number(response.incarnation || 0),
  };
}

function checkDelta(delta) {
  if (typeof delta !== 'number' || !Number.isFinite(delta)) {
    throw new TypeError(`delta must be a finite number, got ${String(delta)}`);
  }
  return delta;
}

function checkKeys(keys) {
  if (!Array.isArray(keys)) throw new TypeError('keys must be an array of strings');
  keys.forEach((k, i) => checkKey(k, `keys[${i}]`));
  return keys;
}

class Kv {
  constructor(conn, project, owner) {
    this._conn = conn;
    /** The project this handle's calls act on ('' = the token's, or "default"). */
    this.project = project;
    this._owner = owner;
    this._closed = false;
  }

  /**
   * Another project's keys over the same connection and stream (open mode
   * or the admin token). It lives as long as the kv it came from.
   */
  withProject(name) {
    return new Kv(this._conn, checkProject(name), false);
  }

  _open() {
    if (this._conn.closed) {
      throw new KvError('CANCELLED', 'this kv was closed (kv.close()); call connect() again for a new one');
    }
  }

  async _single(kind, request, { safe, requestId, bytes }) {
    this._open();
    const conn = this._conn;
    if (conn.pipeline) {
      const answer = await conn.pipeline.call(this.project, kind, request, { safe, requestId, bytes });
      if (answer !== UNARY) return answer;
    }
    const r = await conn.unary(conn.kv, METHODS[kind], request, { project: this.project, safe, requestId });
    // The stream's replies come with their value already converted.
    if (kind === 'get' || kind === 'merge') r.json = fromValue(r.value);
    return r;
  }

  async _unary(method, request, { safe, requestId }) {
    this._open();
    return this._conn.unary(this._conn.kv, method, request, { project: this.project, safe, requestId });
  }

  _write(request, given) {
    const id = this._conn.requestId(given);
    if (id) request.requestId = id;
    return id;
  }

  /** The stored value, or null when the key is missing or expired. */
  async get(key) {
    const entry = await this.getEntry(key);
    return entry === null ? null : entry.value;
  }

  /** The entry (value, version, expiresAtMs, incarnation), or null when missing or expired. */
  async getEntry(key) {
    checkKey(key);
    const r = await this._single('get', { key }, { safe: true, bytes: key.length });
    if (!r.found) return null;
    return {
      value: r.json,
      version: Number(r.version),
      expiresAtMs: optionalNumber(r, 'expiresAtMs'),
      incarnation: Number(r.incarnation || 0),
    };
  }

  /** Stores `value` under `key`, expiring after `ttlMs` when given. */
  async set(key, value, ttlMs) {
    await this.setWith(key, value, { ttlMs });
  }

  /**
   * Set with every option: ttlMs, keepTtl, ifAbsent, ifVersion, requestId.
   * Resolves with { applied, version }.
   */
  async setWith(key, value, options = {}) {
    checkKey(key);
    const [message, size] = toValue(value);
    const request = { key, value: message };
    const ttlMs = checkTtl(options.ttlMs);
    if (ttlMs !== undefined) request.ttlMs = ttlMs;
    if (options.keepTtl) request.keepTtl = true;
    if (options.ifAbsent) request.ifAbsent = true;
    if (options.ifVersion !== undefined && options.ifVersion !== null) {
      request.ifVersion = checkVersion(options.ifVersion, 'ifVersion');
    }
    const requestId = this._write(request, options.requestId);
    const r = await this._single('set', request, { safe: !!requestId, requestId, bytes: key.length + size });
    return { applied: r.applied, version: Number(r.version) };
  }

  /** Stores `value` only if `key` is absent (or expired); true when it did. */
  async setIfAbsent(key, value, ttlMs) {
    const r = await this.setWith(key, value, { ttlMs, ifAbsent: true });
    return r.applied;
  }

  /**
   * Stores `value` only if `key` is still at `version` (null: only if
   * absent). Resolves with { applied, version }: the new version, or the
   * key's current one (0 when absent) to retry with.
   */
  async compareAndSwap(key, version, value, options = {}) {
    if (version === null || version === 0) {
      return this.setWith(key, value, { ...options, ifAbsent: true, ifVersion: undefined });
    }
    return this.setWith(key, value, { ...options, ifVersion: checkVersion(version), ifAbsent: false });
  }

  /** True when `key` exists and has not expired. */
  async has(key) {
    checkKey(key);
    const r = await this._single('has', { key }, { safe: true, bytes: key.length });
    return r.exists;
  }

  /** Removes `key`; true when a live key was removed. */
  async delete(key, options = {}) {
    const r = await this.deleteWith(key, options);
    return r.deleted;
  }

  /** Delete with ifVersion and requestId options; resolves with { deleted, version }. */
  async deleteWith(key, options = {}) {
    checkKey(key);
    const request = { key };
    if (options.ifVersion !== undefined && options.ifVersion !== null) {
      request.ifVersion = checkVersion(options.ifVersion, 'ifVersion');
    }
    const requestId = this._write(request, options.requestId);
    const r = await this._single('delete', request, { safe: !!requestId, requestId, bytes: key.length });
    return { deleted: r.deleted, version: Number(r.version) };
  }

  /** Removes `key` only if it is still at `version`; resolves with { deleted, version }. */
  deleteIfVersion(key, version, options = {}) {
    return this.deleteWith(key, { ...options, ifVersion: checkVersion(version) });
  }

  /** Removes every key of the project; resolves when done. */
  async clear(options = {}) {
    await this.clearCount(options);
  }

  /** Like clear(), resolving with how many live keys were removed. */
  async clearCount(options = {}) {
    const request = {};
    const requestId = this._write(request, options.requestId);
    const r = await this._unary('Clear', request, { safe: !!requestId, requestId });
    return Number(r.deleted);
  }

  /**
   * Adds `delta` (default 1) to the number at `key` atomically (absent
   * counts as 0) and resolves with the result. `ttlMs` applies to a key this
   * call creates (a fixed window); `requestId` makes a retry safe.
   */
  async incr(key, delta = 1, options = {}) {
    checkKey(key);
    const request = { key, delta: checkDelta(delta) };
    const ttlMs = checkTtl(options.ttlMs);
    if (ttlMs !== undefined) request.ttlMs = ttlMs;
    const requestId = this._write(request, options.requestId);
    const r = await this._single('incr', request, { safe: !!requestId, requestId, bytes: key.length + 9 });
    return r.value;
  }

  /**
   * Applies an RFC 7386 merge patch to `key` atomically (members replace,
   * null removes, objects merge) and resolves with the merged value.
   */
  async merge(key, patch, options = {}) {
    checkKey(key);
    const [message, size] = toValue(patch);
    const request = { key, patch: message };
    const ttlMs = checkTtl(options.ttlMs);
    if (ttlMs !== undefined) request.ttlMs = ttlMs;
    const requestId = this._write(request, options.requestId);
    const r = await this._single('merge', request, { safe: !!requestId, requestId, bytes: key.length + size });
    return r.json;
  }

  /** Values of many keys as of one moment (null for missing ones), in order. */
  async getMany(keys) {
    const entries = await this.getManyEntries(keys);
    return entries.map((e) => (e === null ? null : e.value));
  }

  /** Entries of many keys as of one moment (null for missing ones), in order. */
  async getManyEntries(keys) {
    checkKeys(keys);
    const r = await this._unary('GetMany', { keys }, { safe: true });
    return r.results.map((g) => (g.found ? entryOf(g) : null));
  }

  /**
   * Writes many keys atomically: an object of key → value, or an array of
   * { key, value, ttlMs?, keepTtl? }. Resolves with the new versions.
   */
  async setMany(entries, options = {}) {
    const list = Array.isArray(entries)
      ? entries
      : entries && typeof entries === 'object'
        ? Object.keys(entries)
            .filter((key) => entries[key] !== undefined)
            .map((key) => ({ key, value: entries[key], ttlMs: options.ttlMs }))
        : null;
    if (list === null) throw new TypeError('setMany takes an object of key → value or an array of { key, value, ttlMs }');
    const request = {
      entries: list.map((e, i) => {
        if (e === null || typeof e !== 'object') throw new TypeError(`entries[${i}] must be { key, value, ttlMs? }`);
        checkKey(e.key, `entries[${i}].key`);
        const op = { key: e.key, value: toValue(e.value)[0] };
        const ttlMs = checkTtl(e.ttlMs, `entries[${i}].ttlMs`);
        if (ttlMs !== undefined) op.ttlMs = ttlMs;
        if (e.keepTtl) op.keepTtl = true;
        return op;
      }),
    };
    const requestId = this._write(request, options.requestId);
    const r = await this._unary('SetMany', request, { safe: !!requestId, requestId });
    return r.versions.map(Number);
  }

  /** Removes many keys atomically; resolves with how many live keys were removed. */
  async deleteMany(keys, options = {}) {
    const request = { keys: checkKeys(keys) };
    const requestId = this._write(request, options.requestId);
    const r = await this._unary('DeleteMany', request, { safe: !!requestId, requestId });
    return Number(r.deleted);
  }

  /**
   * One page of live keys in byte order: { entries, nextStartAfter,
   * version, incarnation }; nextStartAfter is null on the last page.
   */
  async listPage(options = {}) {
    const request = {
      prefix: options.prefix === undefined ? '' : checkKey(options.prefix, 'prefix'),
      startAfter: options.startAfter === undefined || options.startAfter === null ? '' : checkKey(options.startAfter, 'startAfter'),
      limit: options.limit === undefined ? 0 : options.limit,
      keysOnly: !!options.keysOnly,
    };
    if (!Number.isSafeInteger(request.limit) || request.limit < 0) {
      throw new TypeError('limit must be a whole number (1 to 1000; 0 means 100)');
    }
    const r = await this._unary('List', request, { safe: true });
    return {
      entries: r.entries.map((e) => {
        const entry = entryOf(e);
        const out = { key: e.key, version: entry.version, expiresAtMs: entry.expiresAtMs };
        if (!request.keysOnly) out.value = entry.value;
        return out;
      }),
      nextStartAfter: r.nextStartAfter === '' ? null : r.nextStartAfter,
      version: Number(r.version),
      incarnation: Number(r.incarnation || 0),
    };
  }

  /** Every page of a listing, as an async iterator (same options as listPage). */
  async *list(options = {}) {
    let startAfter = options.startAfter;
    for (;;) {
      const page = await this.listPage({ ...options, startAfter });
      yield page;
      if (page.nextStartAfter === null) return;
      startAfter = page.nextStartAfter;
    }
  }

  /**
   * The changes to a key, a prefix or the project, as an async iterator of
   * events; see Watch.
   */
  watch(options = {}) {
    return new Watch(this, options);
  }

  /** A batch: checks and writes on this project, applied all or nothing. */
  batch() {
    return new Batch(this);
  }

  /** The admin API (projects, quotas, tokens; needs the admin token when the server has one). */
  get admin() {
    if (!this._admin) this._admin = new Admin(this._conn);
    return this._admin;
  }

  /**
   * Lets go of the connection: it closes once every kv object made by
   * connect() with these options has been closed. A script calls it at
   * the end; a function keeps its kv for the next invocation.
   */
  close() {
    if (this._closed || !this._owner) return;
    this._closed = true;
    release(this._conn);
  }
}

/**
 * Connects to a kv server (or reuses this process's connection made with
 * the same options) and returns the kv object of `options.project`.
 */
function connect(options = {}) {
  if (options === null || typeof options !== 'object') throw new TypeError('connect takes an options object');
  const project = checkProject(options.project);
  const conn = acquire({ url: 'http://127.0.0.1:50051', ...options });
  return new Kv(conn, project, true);
}

module.exports = { connect, Kv, entryOf, checkProject, checkKeys, checkDelta };
