'use strict';
// Watch: the changes to a key, a prefix or a whole project, as an async
// iterator of events, reopened by itself after breaks.
//
// A stream that ends in a way another stream can pick up from (the
// connection broke, the server said UNAVAILABLE while shutting down, or it
// cut a lagging watcher naming the version to resume after in the
// `x-kv-resume-from` trailer) is reopened after a backoff, from the last
// event delivered (or where the watch started, or the point the server
// named), in the incarnation seen, so the caller sees every change once, in
// version order, and no error. Other ends are final and thrown from the
// iterator: OUT_OF_RANGE (the resume point left the history: read again and
// watch from the read's version), FAILED_PRECONDITION (the project was
// recreated), NOT_FOUND, UNAUTHENTICATED, PERMISSION_DENIED.

const { checkKey, fromValue } = require('./values');
const { fromGrpc, numberHeader, KvError } = require('./errors');
const { backoffMs, sleep } = require('./retry');

const WATCH_START_HEADER = 'x-kv-watch-start';
const INCARNATION_HEADER = 'x-kv-incarnation';
const RESUME_FROM_HEADER = 'x-kv-resume-from';

const KINDS = {
  EVENT_KIND_SET: 'set',
  EVENT_KIND_DELETED: 'deleted',
  EVENT_KIND_EXPIRED: 'expired',
  EVENT_KIND_CLEARED: 'cleared',
};

function eventOf(e) {
  const event = {
    kind: KINDS[e.kind] || 'unspecified',
    key: e.key,
    version: Number(e.version),
    incarnation: Number(e.incarnation || 0),
  };
  if (event.kind === 'set') {
    event.value = fromValue(e.value);
    event.expiresAtMs = e.expiresAtMs === undefined || e.expiresAtMs === null ? null : Number(e.expiresAtMs);
  }
  return event;
}

function checkOptionalVersion(v, what) {
  if (v === undefined || v === null) return undefined;
  if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`${what} must be a whole number`);
  return v;
}

/** A watch; iterate it with `for await`. */
class Watch {
  constructor(kv, options) {
    if (options.key !== undefined && options.prefix !== undefined) {
      throw new TypeError('watch takes key or prefix, not both');
    }
    this._kv = kv;
    this._request = {};
    if (options.key !== undefined) this._request.key = checkKey(options.key);
    if (options.prefix !== undefined) this._request.prefix = checkKey(options.prefix, 'prefix');
    const from = checkOptionalVersion(options.fromVersion, 'fromVersion');
    if (from !== undefined) this._request.fromVersion = from;
    const incarnation = checkOptionalVersion(options.incarnation, 'incarnation');
    if (incarnation !== undefined) this._request.incarnation = incarnation;
    this._resume = options.resume !== false;
    /** The version of the last event delivered (null before the first). */
    this.lastVersion = null;
    /** The incarnation of the project watched (null until known). */
    this.lastIncarnation = incarnation === undefined ? null : incarnation;
    /** The version the watch delivers changes after (from the server's headers). */
    this.startVersion = null;
    /** How many times the watch reopened itself after a break. */
    this.resumes = 0;
    this._stream = null;
    this._done = false;
    let opened;
    let failed;
    /** Resolves once the server has accepted the watch (its first stream is open). */
    this.ready = new Promise((resolve, reject) => {
      opened = resolve;
      failed = reject;
    });
    this.ready.catch(() => {});
    this._opened = opened;
    this._failed = failed;
    this._events = this._run();
    // Start now, so `await watch.ready` works before iterating.
    this._first = this._events.next();
    this._first.catch(() => {});
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  next() {
    if (this._first) {
      const first = this._first;
      this._first = null;
      return first;
    }
    return this._events.next();
  }

  async return() {
    this.close();
    this._first = null;
    await this._events.return();
    return { done: true, value: undefined };
  }

  /** Ends the watch; the iterator finishes. */
  close() {
    this._done = true;
    if (this._stream) this._stream.cancel();
  }

  /** Opens one stream; resolves once the server has sent its headers. */
  _open() {
    const conn = this._kv._conn;
    const request = { ...this._request };
    if (this.lastVersion !== null || this._resumeFrom !== undefined) {
      request.fromVersion = this._resumeFrom;
    }
    if (this.lastIncarnation !== null) request.incarnation = this.lastIncarnation;
    return new Promise((resolve, reject) => {
      const stream = conn.kv.Watch(request, conn.metadata(this._kv.project));
      this._stream = stream;
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        stream.cancel();
        reject(new KvError('UNAVAILABLE', `the server did not accept the watch within ${conn.timeoutMs} ms`));
      }, conn.timeoutMs);
      stream.once('metadata', (md) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ stream, start: numberHeader(md, WATCH_START_HEADER), incarnation: numberHeader(md, INCARNATION_HEADER) });
      });
      stream.once('error', (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(fromGrpc(err));
      });
    });
  }

  async *_run() {
    const retry = this._kv._conn.retry;
    let attempts = 0;
    let accepted = false;
    for (;;) {
      if (this._done) return;
      let opened;
      try {
        opened = await this._open();
      } catch (error) {
        if (this._done) return;
        attempts++;
        // The server unreachable is worth another attempt, first opening
        // included; a limit only on a reopening, since the same watch was
        // accepted before (the memory limit, a rate limit: they pass).
        const passing = error.code === 'UNAVAILABLE' || (accepted && error.code === 'RESOURCE_EXHAUSTED');
        if (!passing || attempts >= retry.maxAttempts) {
          this._failed(error);
          throw error;
        }
        await sleep(error.retryAfterMs !== undefined ? error.retryAfterMs : backoffMs(retry, attempts));
        continue;
      }
      attempts = 0;
      const { stream } = opened;
      if (!accepted) {
        accepted = true;
        this.startVersion = opened.start === undefined ? null : opened.start;
        if (opened.incarnation !== undefined) this.lastIncarnation = opened.incarnation;
        this._opened({ startVersion: this.startVersion, incarnation: this.lastIncarnation });
      } else if (opened.incarnation !== undefined && this.lastIncarnation === null) {
        this.lastIncarnation = opened.incarnation;
      }
      if (this._resumeFrom === undefined && opened.start !== undefined) this._resumeFrom = opened.start;
      let end;
      try {
        for await (const message of stream) {
          const event = eventOf(message);
          // A reopened stream may repeat what the last one delivered.
          if (this.lastVersion !== null && event.version <= this.lastVersion) continue;
          this.lastVersion = event.version;
          this._resumeFrom = event.version;
          this.lastIncarnation = event.incarnation;
          yield event;
        }
        end = new KvError('UNAVAILABLE', 'the server ended the watch');
      } catch (err) {
        end = fromGrpc(err);
      } finally {
        stream.cancel();
      }
      if (this._done) return;
      const after = numberHeader(end.metadata, RESUME_FROM_HEADER);
      const resumable = end.code === 'UNAVAILABLE' || after !== undefined;
      if (!this._resume || !resumable) throw end;
      if (after !== undefined) this._resumeFrom = Math.max(after, this._resumeFrom || 0);
      this.resumes++;
      attempts++;
      if (attempts > retry.maxAttempts) throw end;
      await sleep(backoffMs(retry, attempts));
    }
  }
}

module.exports = { Watch, eventOf };
