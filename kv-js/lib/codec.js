'use strict';
// The Pipeline stream's frames, encoded and decoded with protobufjs
// directly. Unary calls go through proto-loader, which copies every message
// into and out of plain objects (fromObject, toObject); on the stream that
// carries every batched call those copies were a good part of the client's
// CPU and garbage, so frames are encoded from the plain objects the client
// builds and replies are read straight off the decoded messages.

const path = require('node:path');
const protobuf = require('protobufjs');

let types;
function load() {
  if (!types) {
    const dir = path.join(__dirname, '..', 'proto');
    const root = new protobuf.Root();
    root.resolvePath = (origin, target) => (path.isAbsolute(target) ? target : path.join(dir, target));
    root.loadSync('kv/v1/kv.proto', { keepCase: false });
    types = {
      request: root.lookupType('kv.v1.PipelineRequest'),
      response: root.lookupType('kv.v1.PipelineResponse'),
    };
  }
  return types;
}

/** A uint64 as decoded (a Long, or a number) as a number. */
function num(v) {
  return typeof v === 'number' ? v : v.toNumber();
}

const has = (m, field) => Object.prototype.hasOwnProperty.call(m, field);

/** A reply's response as the plain object the unary call would have given. */
function plain(kind, r) {
  switch (kind) {
    case 'get':
      return {
        found: r.found,
        value: r.value,
        version: num(r.version),
        expiresAtMs: has(r, 'expiresAtMs') ? num(r.expiresAtMs) : undefined,
        incarnation: num(r.incarnation),
      };
    case 'set':
      return { applied: r.applied, version: num(r.version) };
    case 'has':
      return { exists: r.exists };
    case 'delete':
      return { deleted: r.deleted, version: num(r.version) };
    case 'incr':
      return { value: r.value, version: num(r.version) };
    case 'merge':
      return { value: r.value, version: num(r.version) };
    case 'error':
      return {
        code: r.code,
        message: r.message,
        retryAfterMs: has(r, 'retryAfterMs') ? num(r.retryAfterMs) : undefined,
      };
    default:
      return r;
  }
}

/** Encodes a PipelineRequest given as { calls: [{ id, timeoutMs, get|set|...: request, project? }], project }. */
function encodeFrame(frame) {
  return load().request.encode(frame).finish();
}

/** Decodes a PipelineResponse into [{ id, kind, response }]. */
function decodeFrame(buffer) {
  const frame = load().response.decode(buffer);
  return frame.replies.map((reply) => {
    const kind = reply.response;
    return { id: num(reply.id), kind, response: kind ? plain(kind, reply[kind]) : undefined };
  });
}

module.exports = { encodeFrame, decodeFrame };
