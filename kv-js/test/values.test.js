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
