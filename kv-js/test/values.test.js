'use strict';
// Value conversion without a server: what is refused is refused before
// anything is sent, and the shipped proto files are those of the repo.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const { connect, KvError } = require('..');
const { toValue, fromValue } = require('../lib/values');

const roundTrip = (v) => fromValue(JSON.parse(JSON.stringify(normalise(toValue(v)[0]))));
// proto-loader decodes a Value with its oneof named in `kind`.
function normalise(m) {
  const kind = Object.keys(m)[0];
  const out = { kind, [kind]: m[kind] };
  if (kind === 'structValue') {
    const fields = {};
    for (const [k, v] of Object.entries(m.structValue.fields)) fields[k] = normalise(v);
    out.structValue = { fields };
  } else if (kind === 'listValue') {
    out.listValue = { values: m.listValue.values.map(normalise) };
  }
  return out;
}

test('values convert like JSON.stringify', () => {
  const samples = ['', 'text ✓', 'pair \u{1F600}', 0, -1.5, 2 ** 53, true, false, null, [], {}, [1, [2, [3]]], { a: { b: [null, 'x'] } }];
  for (const v of samples) assert.deepEqual(roundTrip(v), v);
  assert.deepEqual(roundTrip({ a: 1, gone: undefined }), { a: 1 });
  assert.deepEqual(roundTrip([1, undefined, 3]), [1, null, 3]);
  assert.equal(roundTrip(new Date(0)), '1970-01-01T00:00:00.000Z');
  assert.deepEqual(roundTrip({ when: new Date(86_400_000) }), { when: '1970-01-02T00:00:00.000Z' });
  assert.deepEqual(roundTrip({ toJSON: () => ({ custom: true }) }), { custom: true });
  assert.deepEqual(roundTrip([new Number(2), new String('s'), new Boolean(false)]), [2, 's', false]);
  const shared = { x: 1 };
  assert.deepEqual(roundTrip({ a: shared, b: shared }), { a: { x: 1 }, b: { x: 1 } });
  // A member named __proto__ is an ordinary member, as with JSON.parse.
  const fields = JSON.parse('{"__proto__": {"kind": "numberValue", "numberValue": 1}}');
  const proto = fromValue({ kind: 'structValue', structValue: { fields } });
  assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  assert.deepEqual(Object.entries(proto), [['__proto__', 1]]);
});

test('values JSON cannot hold are refused with a TypeError naming them', () => {
  const cyclic = { a: [] };
  cyclic.a.push(cyclic);
  let deep = 1;
  for (let i = 0; i < 33; i++) deep = [deep];
  const cases = [
    [NaN, /NaN/],
    [Infinity, /Infinity/],
    [{ n: -Infinity }, /-Infinity at \.n/],
    [10n, /BigInt 10n/],
    [{ big: [1n] }, /at \.big\[0\]/],
    [() => 1, /function/],
    [{ f() {} }, /function \(f\) at \.f/],
    [Symbol('s'), /symbol/],
    [{ s: Symbol('t') }, /at \.s/],
    [undefined, /undefined/],
    [cyclic, /cyclic reference at \.a\[0\]/],
    [deep, /deeper than 32/],
    ['\uD800', /lone surrogate as the value/],
    [{ a: ['ok \u{1F600}', 'x\uDC00'] }, /lone surrogate at \.a\[1\]/],
    [{ ['\uDBFF']: 1 }, /member name with a lone surrogate/],
  ];
  for (const [value, message] of cases) {
    assert.throws(() => toValue(value), (e) => e instanceof TypeError && message.test(e.message), String(message));
  }
});

test('refused values and keys never reach the network', async () => {
  // Nothing listens on port 1: a call that got as far as sending would fail
  // with UNAVAILABLE, not TypeError.
  const kv = connect({ url: 'http://127.0.0.1:1', project: 'p', timeoutMs: 2000, retry: false });
  try {
    for (const v of [NaN, Infinity, 1n, () => 0, Symbol('x')]) {
      await assert.rejects(kv.set('k', v), TypeError);
      await assert.rejects(kv.merge('k', { v }), TypeError);
      await assert.rejects(kv.setMany({ k: v }), TypeError);
      assert.throws(() => kv.batch().set('k', v), TypeError);
    }
    await assert.rejects(kv.get(7), TypeError);
    await assert.rejects(kv.get('k\uD800'), /lone surrogate/);
    await assert.rejects(kv.set('k', 'v\uDFFF'), /lone surrogate/);
    await assert.rejects(kv.set('k', 1, -5), /ttlMs must be a whole number/);
    await assert.rejects(kv.set('k', 1, 1.5), TypeError);
    await assert.rejects(kv.incr('k', NaN), /delta must be a finite number/);
    await assert.rejects(kv.compareAndSwap('k', 1.5, 1), TypeError);
    assert.throws(() => connect({ project: 'no/slash' }), /project "no\/slash" is not a project name/);
    assert.throws(() => kv.withProject('x'.repeat(65)), TypeError);
    // And a well-formed call does try the network.
    await assert.rejects(kv.get('k'), (e) => e instanceof KvError && e.code === 'UNAVAILABLE');
  } finally {
    kv.close();
  }
});

test('the package ships the repository\'s proto files unchanged', () => {
  const repo = path.join(__dirname, '..', '..', 'proto', 'kv', 'v1');
  const shipped = path.join(__dirname, '..', 'proto', 'kv', 'v1');
  const names = fs.readdirSync(repo).filter((n) => n.endsWith('.proto')).sort();
  assert.deepEqual(fs.readdirSync(shipped).sort(), names, 'kv-js/proto/kv/v1 must hold exactly proto/kv/v1/*.proto');
  for (const name of names) {
    assert.equal(
      fs.readFileSync(path.join(shipped, name), 'utf8'),
      fs.readFileSync(path.join(repo, name), 'utf8'),
      `kv-js/proto/kv/v1/${name} differs from proto/kv/v1/${name}: copy it again`,
    );
  }
});

test('Pipeline replies decode into the values and fields the server sent', () => {
  const protobuf = require('protobufjs');
  const { decodeFrame } = require('../lib/codec');
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => (path.isAbsolute(target) ? target : path.join(__dirname, '..', 'proto', target));
  root.loadSync('kv/v1/kv.proto');
  const Response = root.lookupType('kv.v1.PipelineResponse');
  const value = {
    structValue: {
      fields: {
        s: { stringValue: 'ünï 🙂' },
        n: { numberValue: -1.5e300 },
        t: { boolValue: true },
        z: { nullValue: 0 },
        l: { listValue: { values: [{ numberValue: 0 }, { listValue: { values: [] } }, { structValue: { fields: {} } }] } },
      },
    },
  };
  const frame = Response.encode({
    replies: [
      { id: 2 ** 40 + 7, get: { found: true, value, version: 2 ** 52 + 1, expiresAtMs: 1_800_000_000_000, incarnation: 5 } },
      { id: 2, get: { found: false } },
      { id: 3, set: { applied: true, version: 9 } },
      { id: 4, has: { exists: true } },
      { id: 5, delete: { deleted: false, version: 0 } },
      { id: 6, incr: { value: -0.25, version: 12 } },
      { id: 7, merge: { value: { stringValue: 'm' }, version: 13 } },
      { id: 8, error: { code: 8, message: 'over the rate limit', retryAfterMs: 250 } },
      { id: 9, get: { found: true, value: { nullValue: 0 }, version: 1 } },
    ],
  }).finish();
  // An unknown field at the end of the frame (a newer server) is skipped.
  const extended = Buffer.concat([Buffer.from(frame), Buffer.from([0x9a, 0x01, 0x02, 0x68, 0x69])]);
  const replies = decodeFrame(extended);
  assert.deepEqual(
    replies.map((r) => [r.id, r.kind]),
    [[2 ** 40 + 7, 'get'], [2, 'get'], [3, 'set'], [4, 'has'], [5, 'delete'], [6, 'incr'], [7, 'merge'], [8, 'error'], [9, 'get']],
  );
  const [get, missing, set, has, del, incr, merge, error, storedNull] = replies.map((r) => r.response);
  assert.deepEqual(get.json, { s: 'ünï 🙂', n: -1.5e300, t: true, z: null, l: [0, [], {}] });
  assert.deepEqual([get.found, get.version, get.expiresAtMs, get.incarnation], [true, 2 ** 52 + 1, 1_800_000_000_000, 5]);
  assert.deepEqual([missing.found, missing.json, missing.expiresAtMs], [false, null, undefined]);
  assert.deepEqual([set.applied, set.version], [true, 9]);
  assert.equal(has.exists, true);
  assert.deepEqual([del.deleted, del.version], [false, 0]);
  assert.deepEqual([incr.value, incr.version], [-0.25, 12]);
  assert.deepEqual([merge.json, merge.version], ['m', 13]);
  assert.deepEqual(error, { code: 8, message: 'over the rate limit', retryAfterMs: 250 });
  assert.deepEqual([storedNull.found, storedNull.json], [true, null]);
  // A member named __proto__ is an ordinary member.
  const proto = Response.encode({ replies: [{ id: 1, merge: { value: { structValue: { fields: JSON.parse('{"__proto__":{"numberValue":1}}') } } } }] }).finish();
  const merged = decodeFrame(Buffer.from(proto))[0].response.json;
  assert.equal(Object.getPrototypeOf(merged), Object.prototype);
  assert.deepEqual(Object.entries(merged), [['__proto__', 1]]);
  assert.throws(() => decodeFrame(Buffer.from([0x0a, 0x05, 0x08])), /truncated/);
});

test('a watch on an unreachable server fails with UNAVAILABLE after its attempts', async () => {
  const kv = connect({ url: 'http://127.0.0.1:1', timeoutMs: 2000, retry: { maxAttempts: 3, initialBackoffMs: 10 } });
  try {
    const watch = kv.watch({ prefix: 'p' });
    await assert.rejects(watch.ready, (e) => e instanceof KvError && e.code === 'UNAVAILABLE');
    await assert.rejects(watch.next(), (e) => e instanceof KvError && e.code === 'UNAVAILABLE');
  } finally {
    kv.close();
  }
});
