'use strict';
// The Pipeline stream's frames. Unary calls go through proto-loader, which
// copies every message into and out of plain objects (fromObject,
// toObject); on the stream that carries every batched call those copies
// were a good part of the client's CPU and garbage, so frames are encoded
// with protobufjs straight from the plain objects the client builds.

const path = require('node:path');
const protobuf = require('protobufjs');

let types;
function load() {
  if (!types) {
    const dir = path.join(__dirname, '..', 'proto');
    const root = new protobuf.Root();
    root.resolvePath = (origin, target) => (path.isAbsolute(target) ? target : path.join(dir, target));
    root.loadSync('kv/v1/kv.proto', { keepCase: false });
    types = { request: root.lookupType('kv.v1.PipelineRequest') };
  }
  return types;
}

// Replies are decoded by hand, straight into the plain objects and JSON
// values the client hands back: protobufjs would build a message object per
// reply, response and value, and a Long per 64-bit number, only for them to
// be copied again.

/** A cursor over one encoded message. */
class Cursor {
  constructor(buf, pos, end) {
    this.buf = buf;
    this.pos = pos;
    this.end = end;
  }

  /** A varint as a number (exact up to 2^53, which versions and deadlines stay under). */
  varint() {
    const buf = this.buf;
    let result = 0;
    let scale = 1;
    for (;;) {
      if (this.pos >= this.end) throw new Error('a truncated varint in a Pipeline reply');
      const b = buf[this.pos++];
      result += (b & 0x7f) * scale;
      if (b < 0x80) return result;
      scale *= 128;
    }
  }

  double() {
    if (this.pos + 8 > this.end) throw new Error('a truncated double in a Pipeline reply');
    const v = this.buf.readDoubleLE(this.pos);
    this.pos += 8;
    return v;
  }

  /** The bounds of a length-delimited field, skipping it. */
  sub() {
    const len = this.varint();
    const start = this.pos;
    this.pos += len;
    if (this.pos > this.end) throw new Error('a truncated field in a Pipeline reply');
    return start;
  }

  string() {
    const start = this.sub();
    return this.buf.toString('utf8', start, this.pos);
  }

  skip(wire) {
    switch (wire) {
      case 0:
        this.varint();
        break;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.sub();
        break;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new Error(`wire type ${wire} in a Pipeline reply`);
    }
  }
}

function define(target, key, value) {
  if (key === '__proto__') {
    Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    target[key] = value;
  }
}

/** A google.protobuf.Value, as the JSON value it holds. */
function readValue(c, end) {
  let value = null;
  const outer = c.end;
  c.end = end;
  while (c.pos < end) {
    const tag = c.varint();
    const field = tag >>> 3;
    if (field === 1 && (tag & 7) === 0) {
      c.varint();
      value = null;
    } else if (field === 2 && (tag & 7) === 1) {
      value = c.double();
    } else if (field === 3 && (tag & 7) === 2) {
      value = c.string();
    } else if (field === 4 && (tag & 7) === 0) {
      value = c.varint() !== 0;
    } else if (field === 5 && (tag & 7) === 2) {
      const start = c.sub();
      value = readStruct(new Cursor(c.buf, start, c.pos));
    } else if (field === 6 && (tag & 7) === 2) {
      const start = c.sub();
      value = readList(new Cursor(c.buf, start, c.pos));
    } else {
      c.skip(tag & 7);
    }
  }
  c.end = outer;
  return value;
}

function readStruct(c) {
  const out = {};
  while (c.pos < c.end) {
    const tag = c.varint();
    if (tag !== 10) {
      c.skip(tag & 7);
      continue;
    }
    const start = c.sub();
    const entry = new Cursor(c.buf, start, c.pos);
    let key = '';
    let value = null;
    while (entry.pos < entry.end) {
      const t = entry.varint();
      if (t === 10) key = entry.string();
      else if (t === 18) {
        const s = entry.sub();
        value = readValue(new Cursor(entry.buf, s, entry.pos), entry.pos);
      } else entry.skip(t & 7);
    }
    define(out, key, value);
  }
  return out;
}

function readList(c) {
  const out = [];
  while (c.pos < c.end) {
    const tag = c.varint();
    if (tag !== 10) {
      c.skip(tag & 7);
      continue;
    }
    const start = c.sub();
    out.push(readValue(new Cursor(c.buf, start, c.pos), c.pos));
  }
  return out;
}

const KINDS = [null, null, 'get', 'set', 'has', 'delete', 'incr', 'merge', 'error'];

/**
 * One response message, by kind, as the client uses it: `json` holds a
 * value already converted (get, merge); optional fields are undefined when
 * absent.
 */
function readResponse(kind, c) {
  const r =
    kind === 'get'
      ? { found: false, json: null, version: 0, expiresAtMs: undefined, incarnation: 0 }
      : kind === 'error'
        ? { code: 0, message: '', retryAfterMs: undefined }
        : { applied: false, exists: false, deleted: false, value: 0, json: null, version: 0 };
  while (c.pos < c.end) {
    const tag = c.varint();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (kind === 'error') {
      if (field === 1 && wire === 0) r.code = c.varint();
      else if (field === 2 && wire === 2) r.message = c.string();
      else if (field === 3 && wire === 0) r.retryAfterMs = c.varint();
      else c.skip(wire);
    } else if (field === 1 && wire === 0) {
      // found / applied / exists / deleted: the first field of each.
      const b = c.varint() !== 0;
      if (kind === 'get') r.found = b;
      else if (kind === 'set') r.applied = b;
      else if (kind === 'has') r.exists = b;
      else if (kind === 'delete') r.deleted = b;
    } else if (kind === 'incr' && field === 1 && wire === 1) {
      r.value = c.double();
    } else if ((kind === 'get' && field === 2 && wire === 2) || (kind === 'merge' && field === 1 && wire === 2)) {
      const start = c.sub();
      r.json = readValue(new Cursor(c.buf, start, c.pos), c.pos);
    } else if (wire === 0 && ((kind === 'get' && field === 3) || (kind !== 'get' && kind !== 'has' && field === 2))) {
      r.version = c.varint();
    } else if (kind === 'get' && field === 4 && wire === 0) {
      r.expiresAtMs = c.varint();
    } else if (kind === 'get' && field === 5 && wire === 0) {
      r.incarnation = c.varint();
    } else {
      c.skip(wire);
    }
  }
  return r;
}

/** Decodes a PipelineResponse into [{ id, kind, response }]. */
function decodeFrame(buffer) {
  const c = new Cursor(buffer, 0, buffer.length);
  const replies = [];
  while (c.pos < c.end) {
    const tag = c.varint();
    if (tag !== 10) {
      c.skip(tag & 7);
      continue;
    }
    const start = c.sub();
    const rc = new Cursor(buffer, start, c.pos);
    const reply = { id: 0, kind: undefined, response: undefined };
    while (rc.pos < rc.end) {
      const t = rc.varint();
      const field = t >>> 3;
      if (field === 1 && (t & 7) === 0) {
        reply.id = rc.varint();
      } else if (field >= 2 && field <= 8 && (t & 7) === 2) {
        const s = rc.sub();
        reply.kind = KINDS[field];
        reply.response = readResponse(reply.kind, new Cursor(buffer, s, rc.pos));
      } else {
        rc.skip(t & 7);
      }
    }
    replies.push(reply);
  }
  return replies;
}

/** Encodes a PipelineRequest given as { calls: [{ id, timeoutMs, get|set|...: request, project? }], project }. */
function encodeFrame(frame) {
  return load().request.encode(frame).finish();
}

module.exports = { encodeFrame, decodeFrame, readValue, Cursor };
