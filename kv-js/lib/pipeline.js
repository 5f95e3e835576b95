'use strict';
// Auto-batching: concurrent single-key calls (get, set, has, delete, incr,
// merge) of one connection share one long-lived `Pipeline` stream, whatever
// their project, like the Rust SDK.
//
// A call queues itself and asks for a flush on the next turn of the event
// loop (setImmediate), so everything a function starts together, such as
// `await Promise.all(keys.map(k => kv.get(k)))`, leaves in one frame, and a
// lone call waits one turn at most. While frames are being written, new
// calls gather into the next one. Replies come back by call id.
//
// The stream opens without `x-kv-project`; each frame names the project of
// its first call and a call names its own only when it differs. A server
// that does not answer the stream's headers with `x-kv-call-projects` would
// run every call in the stream's project, so then calls go unary instead.
//
// Breaks: when the stream breaks (UNAVAILABLE: the transport failed or the
// server is going away), the calls it carried that are unanswered, and the
// calls queued behind them, are sent again on the next stream in their
// original order, ahead of newer calls, so calls on a key keep their order.
// Writes carry request ids, so one the server had applied is answered from
// its idempotency record rather than applied twice; a write without one
// that may have been sent fails instead. Other ends (a revoked token's
// UNAUTHENTICATED, a deleted project's NOT_FOUND) fail the calls with that
// code. Every stream a call went out on, and every failed opening while it
// waited, is one of its attempts; before reopening the client backs off as
// its retry policy says.

const { KvError, fromGrpc, fromCallError, deadlineError } = require('./errors');
const { backoffMs, sleep } = require('./retry');
const { encodeFrame, decodeFrame } = require('./codec');

const MAX_FRAME_CALLS = 1024;
const MAX_FRAME_BYTES = 1 << 20;
/** Calls larger than this go unary: one oversized call must fail alone. */
const MAX_CALL_BYTES = MAX_FRAME_BYTES;
/** Frames handed to the transport but not yet written. */
const FRAMES_IN_FLIGHT = 2;
const CALL_PROJECTS_HEADER = 'x-kv-call-projects';

/** Returned by call() when the server cannot take calls on a shared stream. */
const UNARY = Symbol('unary');

class Pipeline {
  constructor(conn) {
    this.conn = conn;
    this.nextSeq = 1;
    /** Calls not yet sent, in submission order. */
    this.queue = [];
    /** The open stream, once its headers have come. */
    this.link = null;
    this.opening = false;
    this.flushScheduled = false;
    this.unsupported = false;
    this.closed = false;
  }

  /**
   * Runs one call: resolves with the reply's response (of `kind`), rejects
   * with a KvError, or resolves with UNARY when the call must be made unary.
   */
  call(project, kind, request, { safe, requestId, bytes }) {
    if (this.unsupported || this.closed || bytes > MAX_CALL_BYTES) return Promise.resolve(UNARY);
    return new Promise((resolve, reject) => {
      const timeoutMs = this.conn.timeoutMs;
      const call = {
        seq: this.nextSeq++,
        project,
        kind,
        request,
        safe,
        requestId,
        bytes: bytes + 16,
        deadline: Date.now() + timeoutMs,
        timeoutMs,
        attempts: 0,
        sent: false,
        done: false,
        resolve,
        reject,
        timer: null,
      };
      call.timer = setTimeout(() => {
        this.settle(call, deadlineError(timeoutMs, Math.max(call.attempts, 1), call.sent, requestId || undefined));
      }, timeoutMs);
      this.queue.push(call);
      this.schedule();
    });
  }

  settle(call, error, value) {
    if (call.done) return;
    call.done = true;
    clearTimeout(call.timer);
    if (error) call.reject(error);
    else call.resolve(value);
  }

  schedule() {
    if (this.closed || this.queue.length === 0) return;
    if (this.link) {
      if (!this.flushScheduled && this.link.writing < FRAMES_IN_FLIGHT) {
        this.flushScheduled = true;
        setImmediate(() => {
          this.flushScheduled = false;
          this.flush();
        });
      }
    } else if (!this.opening) {
      this.open();
    }
  }

  /** Opens the next stream (after the retry policy's backoff, once calls have tried). */
  async open() {
    this.opening = true;
    const tried = this.queue.reduce((m, c) => (c.done ? m : Math.max(m, c.attempts)), 0);
    if (tried > 0) {
      await sleep(backoffMs(this.conn.retry, tried));
    }
    this.queue = this.queue.filter((c) => !c.done);
    if (this.closed || this.queue.length === 0) {
      this.opening = false;
      return;
    }
    const stream = this.conn.kv.makeBidiStreamRequest(
      '/kv.v1.KvService/Pipeline',
      encodeFrame,
      decodeFrame,
      this.conn.metadata(''),
    );
    const link = { stream, inflight: new Map(), writing: 0, ended: false, ready: false };
    let openTimer = setTimeout(() => {
      openTimer = null;
      stream.cancel();
    }, this.conn.timeoutMs);
    stream.on('error', () => {
      // The outcome arrives as the 'status' event.
    });
    stream.on('metadata', (metadata) => {
      if (link.ended) return;
      clearTimeout(openTimer);
      openTimer = null;
      if (this.closed) {
        // Closed while it opened: nothing will use it.
        link.ended = true;
        stream.cancel();
        return;
      }
      if (metadata.get(CALL_PROJECTS_HEADER).length === 0) {
        link.ended = true;
        stream.cancel();
        this.goUnary();
        return;
      }
      link.ready = true;
      this.link = link;
      this.opening = false;
      this.schedule();
    });
    stream.on('data', (frame) => this.answer(link, frame));
    stream.on('status', (status) => {
      if (openTimer) clearTimeout(openTimer);
      if (link.ended) return;
      link.ended = true;
      if (!link.ready) {
        this.openFailed(status, openTimer === null && status.code === 1);
      } else {
        this.ended(link, status);
      }
    });
  }

  goUnary() {
    this.unsupported = true;
    this.opening = false;
    const queue = this.queue;
    this.queue = [];
    for (const call of queue) this.settle(call, null, UNARY);
  }

  /** The stream did not open: each waiting call had an attempt. */
  openFailed(status, timedOut) {
    this.opening = false;
    if (status.code === 12) {
      this.goUnary();
      return;
    }
    const error = timedOut
      ? new KvError('UNAVAILABLE', `the server did not answer the opening of the call stream within ${this.conn.timeoutMs} ms`)
      : fromGrpc(status);
    const retryable = error.code === 'UNAVAILABLE' || error.code === 'RESOURCE_EXHAUSTED';
    const queue = this.queue;
    this.queue = [];
    for (const call of queue) {
      if (call.done) continue;
      call.attempts++;
      if (!retryable || call.attempts >= this.conn.retry.maxAttempts) {
        this.settle(call, new KvError(error.code, error.message, { retryAfterMs: error.retryAfterMs }));
      } else {
        this.queue.push(call);
      }
    }
    this.schedule();
  }

  /** Sends the queued calls, as many as a frame takes. */
  flush() {
    const link = this.link;
    if (!link || link.ended || this.queue.length === 0) return;
    const calls = [];
    let frameProject = null;
    let bytes = 0;
    let taken = 0;
    const now = Date.now();
    while (taken < this.queue.length && calls.length < MAX_FRAME_CALLS) {
      const call = this.queue[taken];
      if (call.done) {
        taken++;
        continue;
      }
      const left = call.deadline - now;
      if (left <= 0) {
        taken++;
        this.settle(call, deadlineError(call.timeoutMs, Math.max(call.attempts, 1), call.sent, call.requestId || undefined));
        continue;
      }
      if (frameProject === null) frameProject = call.project;
      const own = call.project !== frameProject;
      // A call of the stream's own project ('') cannot say so inside a frame
      // that names another: it starts the next frame.
      if (own && call.project === '') break;
      const size = call.bytes + (own ? call.project.length + 2 : 0);
      if (calls.length > 0 && bytes + size > MAX_FRAME_BYTES) break;
      bytes += size;
      taken++;
      const message = { id: call.seq, timeoutMs: Math.ceil(left), [call.kind]: call.request };
      if (own) message.project = call.project;
      calls.push(message);
      call.attempts++;
      call.sent = true;
      link.inflight.set(call.seq, call);
    }
    this.queue.splice(0, taken);
    if (calls.length === 0) return;
    link.writing++;
    link.stream.write({ calls, project: frameProject || '' }, () => {
      link.writing--;
      if (link === this.link) this.schedule();
    });
    this.schedule();
  }

  answer(link, replies) {
    for (const reply of replies) {
      const call = link.inflight.get(reply.id);
      if (!call) continue;
      link.inflight.delete(reply.id);
      if (call.done) continue;
      const kind = reply.kind;
      if (kind === 'error') {
        const error = fromCallError(reply.response);
        const wait = this.retryWait(call, error);
        if (wait !== null) {
          setTimeout(() => {
            if (call.done) return;
            this.queue.push(call);
            this.schedule();
          }, wait);
          continue;
        }
        this.settle(call, error);
      } else if (kind === call.kind) {
        this.settle(call, null, reply.response);
      } else {
        this.settle(call, new KvError('INTERNAL', `the server answered a ${call.kind} call with a ${kind || 'empty'} reply`));
      }
    }
  }

  /**
   * How long to wait before sending a call the server refused again, or
   * null to fail it: an UNAVAILABLE (its store could not do it now) is
   * retried after a backoff when sending it twice is safe; a rate limit's
   * refusal (it never ran) after the server's hint, when the client honours
   * hints and the wait ends before the deadline.
   */
  retryWait(call, error) {
    if (call.attempts >= this.conn.retry.maxAttempts) return null;
    if (error.code === 'UNAVAILABLE' && call.safe) return backoffMs(this.conn.retry, call.attempts);
    if (
      error.code === 'RESOURCE_EXHAUSTED' &&
      this.conn.honourRetryAfter &&
      error.retryAfterMs !== undefined &&
      Date.now() + error.retryAfterMs < call.deadline
    ) {
      return error.retryAfterMs;
    }
    return null;
  }

  /** The open stream ended: replay what may be replayed, fail the rest. */
  ended(link, status) {
    if (this.link === link) this.link = null;
    let code = status.code;
    let message = status.details;
    if (code === 0) {
      code = 14;
      message = 'the server ended the stream';
    }
    const error = fromGrpc({ code, details: message, metadata: status.metadata });
    const retryable = error.code === 'UNAVAILABLE' && !this.closed;
    const orphans = [...link.inflight.values()].sort((a, b) => a.seq - b.seq);
    link.inflight.clear();
    const replay = [];
    for (const call of orphans) {
      if (call.done) continue;
      if (retryable && call.safe && call.attempts < this.conn.retry.maxAttempts) {
        replay.push(call);
      } else {
        this.settle(
          call,
          new KvError(
            error.code,
            `the stream to the server ended before this call was answered (it may or may not have run): ${error.message}`,
          ),
        );
      }
    }
    if (!retryable) {
      for (const call of this.queue) {
        this.settle(call, new KvError(error.code, `${error.message}; the call was not sent, so it did not run`));
      }
      this.queue = [];
    }
    this.queue = replay.concat(this.queue);
    this.schedule();
  }

  close() {
    this.closed = true;
    if (this.link) {
      this.link.stream.end();
      this.link = null;
    }
    for (const call of this.queue) this.settle(call, new KvError('CANCELLED', 'the client was closed'));
    this.queue = [];
  }
}

module.exports = { Pipeline, UNARY, MAX_CALL_BYTES };
