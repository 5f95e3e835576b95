'use strict';
// Every method and value type against the real server, and the errors it
// answers with.

const test = require('node:test');
const assert = require('node:assert/strict');

const { connect, KvError, newRequestId } = require('..');
const { startServer } = require('./helpers/server');

let server;
let kv;

test.before(async () => {
  server = await startServer();
  kv = connect({ url: server.url, project: 'basic', timeoutMs: 10_000 });
});

test.after(async () => {
  kv.close();
  await server.stop();
});

const code = (name) => (e) => {
  assert.ok(e instanceof KvError, `expected a KvError, got ${e}`);
  assert.equal(e.code, name, e.message);
  return true;
};

test('the five methods with every value type', async () => {
  const values = {
    string: 'hello ✓',
    empty: '',
    int: 42,
    negative: -7,
    float: 3.25,
    big: 2 ** 53,
    tiny: 5e-324,
    yes: true,
    no: false,
    nothing: null,
    list: [1, 'two', null, false, [3, [4]], { five: 5 }],
    object: { name: 'Ada', tags: ['a', 'b'], nested: { deep: { deeper: [] } }, nil: null, 'odd key': 1, '': 'empty key' },
    emptyList: [],
    emptyObject: {},
    'ключ 🙂': 'ünïcødé \u{1F600} 中文',
  };
  for (const [key, value] of Object.entries(values)) {
    assert.equal(await kv.set(key, value), undefined);
  }
  for (const [key, value] of Object.entries(values)) {
    assert.deepEqual(await kv.get(key), value, key);
    assert.equal(await kv.has(key), true, key);
  }
  // Like JSON.stringify: undefined members dropped, a Date as its string.
  await kv.set('shaped', { a: 1, gone: undefined, when: new Date(Date.UTC(2026, 0, 2)), list: [undefined] });
  assert.deepEqual(await kv.get('shaped'), { a: 1, when: '2026-01-02T00:00:00.000Z', list: [null] });
  await kv.set('date', new Date(0));
  assert.equal(await kv.get('date'), '1970-01-01T00:00:00.000Z');

  assert.equal(await kv.get('missing'), null);
  assert.equal(await kv.has('missing'), false);
  assert.equal(await kv.delete('string'), true);
  assert.equal(await kv.delete('string'), false);
  assert.equal(await kv.get('string'), null);
  assert.equal(await kv.clear(), undefined);
  for (const key of Object.keys(values)) assert.equal(await kv.has(key), false, key);
  assert.equal(await kv.clearCount(), 0);
});

test('a stored null and a missing key are told apart by getEntry', async () => {
  await kv.set('null', null);
  assert.equal(await kv.get('null'), null);
  assert.equal(await kv.has('null'), true);
  const entry = await kv.getEntry('null');
  assert.equal(entry.value, null);
  assert.ok(entry.version >= 1);
  assert.equal(entry.expiresAtMs, null);
  assert.equal(entry.incarnation, 0);
  assert.equal(await kv.getEntry('never-set'), null);
});

test('TTLs: expired keys read as null; the deadline is reported', async () => {
  const before = Date.now();
  await kv.set('short', 'soon gone', 300);
  await kv.set('long', 'stays', 3_600_000);
  const entry = await kv.getEntry('short');
  assert.equal(entry.value, 'soon gone');
  assert.ok(entry.expiresAtMs >= before + 300 && entry.expiresAtMs <= Date.now() + 300, `${entry.expiresAtMs}`);
  await new Promise((r) => setTimeout(r, 450));
  assert.equal(await kv.get('short'), null);
  assert.equal(await kv.getEntry('short'), null);
  assert.equal(await kv.has('short'), false);
  assert.equal(await kv.delete('short'), false);
  assert.equal(await kv.get('long'), 'stays');
  // A set without TTL removes the earlier one; keepTtl keeps it.
  await kv.set('long', 'forever');
  assert.equal((await kv.getEntry('long')).expiresAtMs, null);
  await kv.set('kept', 1, 60_000);
  const deadline = (await kv.getEntry('kept')).expiresAtMs;
  await kv.setWith('kept', 2, { keepTtl: true });
  assert.deepEqual(await kv.getEntry('kept').then((e) => [e.value, e.expiresAtMs]), [2, deadline]);
});

test('race-free extras: incr, merge, setIfAbsent, compareAndSwap, deleteIfVersion', async () => {
  assert.equal(await kv.incr('counter'), 1);
  assert.equal(await kv.incr('counter', 5), 6);
  assert.equal(await kv.incr('counter', -2.5), 3.5);

  assert.deepEqual(await kv.merge('prefs', { theme: 'dark', beta: true, nested: { a: 1 } }), {
    theme: 'dark',
    beta: true,
    nested: { a: 1 },
  });
  assert.deepEqual(await kv.merge('prefs', { beta: null, nested: { b: 2 } }), { theme: 'dark', nested: { a: 1, b: 2 } });

  assert.equal(await kv.setIfAbsent('flag', 'first'), true);
  assert.equal(await kv.setIfAbsent('flag', 'second'), false);
  assert.equal(await kv.get('flag'), 'first');

  const { version } = await kv.getEntry('flag');
  const stale = await kv.compareAndSwap('flag', version + 100, 'nope');
  assert.deepEqual(stale, { applied: false, version });
  const swapped = await kv.compareAndSwap('flag', version, 'swapped');
  assert.equal(swapped.applied, true);
  assert.ok(swapped.version > version);
  assert.equal(await kv.get('flag'), 'swapped');
  assert.deepEqual(await kv.compareAndSwap('fresh', null, 1), { applied: true, version: swapped.version + 1 });
  assert.equal((await kv.compareAndSwap('fresh', null, 2)).applied, false);

  assert.equal((await kv.deleteIfVersion('flag', version)).deleted, false);
  assert.equal((await kv.deleteIfVersion('flag', swapped.version)).deleted, true);
  assert.equal(await kv.has('flag'), false);
});

test('batch, getMany, setMany, deleteMany', async () => {
  const versions = await kv.setMany({ m1: 1, m2: { two: 2 }, m3: [3] });
  assert.equal(versions.length, 3);
  assert.deepEqual(await kv.getMany(['m1', 'm2', 'nope', 'm3', 'm1']), [1, { two: 2 }, null, [3], 1]);
  const entries = await kv.getManyEntries(['m1', 'nope']);
  assert.equal(entries[0].version, versions[0]);
  assert.equal(entries[1], null);
  await kv.setMany([{ key: 'm4', value: 'ttl', ttlMs: 60_000 }]);
  assert.ok((await kv.getEntry('m4')).expiresAtMs > Date.now());
  assert.equal(await kv.deleteMany(['m1', 'm2', 'm3', 'm4', 'nope']), 4);

  const ok = await kv.batch().checkAbsent('stock').set('stock', 10).incr('orders', 1).merge('order:1', { state: 'new' }).delete('nope').commit();
  assert.equal(ok.applied, true);
  assert.equal(ok.results.length, 4);
  assert.equal(ok.results[1].value, 1);
  assert.deepEqual(ok.results[2].value, { state: 'new' });
  assert.equal(ok.results[3].deleted, false);
  const stockVersion = ok.results[0].version;
  const refused = await kv.batch().checkVersion('stock', stockVersion).checkAbsent('stock').set('stock', 0).commit();
  assert.deepEqual(refused, { applied: false, failedCheck: 1, currentVersion: stockVersion });
  assert.equal(await kv.get('stock'), 10);
});

test('list pages through every key once, in byte order', async () => {
  await kv.clear();
  const keys = [];
  for (let i = 0; i < 25; i++) keys.push(`item:${String(i).padStart(2, '0')}`);
  await kv.setMany(keys.map((key, i) => ({ key, value: { i } })));
  await kv.set('other', 1);
  const seen = [];
  let pages = 0;
  for await (const page of kv.list({ prefix: 'item:', limit: 10 })) {
    pages++;
    for (const e of page.entries) {
      seen.push(e.key);
      assert.deepEqual(e.value, { i: Number(e.key.slice(5)) });
    }
    assert.ok(page.version > 0);
  }
  assert.equal(pages, 3);
  assert.deepEqual(seen, keys);
  const keysOnly = await kv.listPage({ keysOnly: true, limit: 1000 });
  assert.equal(keysOnly.entries.length, 26);
  assert.equal(keysOnly.nextStartAfter, null);
  assert.ok(!('value' in keysOnly.entries[0]));
});

test('watch delivers every change in order, and resumes from a version', async () => {
  const watch = kv.watch({ prefix: 'w:' });
  const { startVersion } = await watch.ready;
  assert.ok(startVersion > 0);
  await kv.set('w:a', 1, 200);
  await kv.merge('w:b', { x: 1 });
  await kv.delete('w:b');
  await kv.set('not-watched', 1);
  const events = [];
  for await (const e of watch) {
    events.push(e);
    if (events.length === 4) break;
  }
  assert.deepEqual(
    events.map((e) => [e.kind, e.key, e.value]),
    [
      ['set', 'w:a', 1],
      ['set', 'w:b', { x: 1 }],
      ['deleted', 'w:b', undefined],
      ['expired', 'w:a', undefined],
    ],
  );
  assert.ok(events[0].expiresAtMs > 0);
  assert.ok(events.every((e, i) => i === 0 || e.version > events[i - 1].version));
  assert.equal(watch.lastVersion, events[3].version);

  // From a version: the history replays.
  const replay = kv.watch({ prefix: 'w:', fromVersion: startVersion });
  const again = [];
  for await (const e of replay) {
    again.push(e.version);
    if (again.length === 4) break;
  }
  assert.deepEqual(again, events.map((e) => e.version));

  await kv.clear();
  const all = kv.watch({ fromVersion: events[3].version });
  const first = await all.next();
  assert.ok(first.value.kind === 'set' || first.value.kind === 'cleared');
  all.close();
});

test('request ids make retries safe', async () => {
  const id = newRequestId();
  assert.equal(await kv.incr('paid', 1, { requestId: id }), 1);
  assert.equal(await kv.incr('paid', 1, { requestId: id }), 1, 'a retry gets the first outcome');
  assert.equal(await kv.get('paid'), 1);
  await assert.rejects(kv.incr('paid', 2, { requestId: id }), code('FAILED_PRECONDITION'));
  const batchId = newRequestId();
  const once = await kv.batch().incr('paid', 10).commit({ requestId: batchId });
  const twice = await kv.batch().incr('paid', 10).commit({ requestId: batchId });
  assert.deepEqual(twice, once);
  assert.equal(await kv.get('paid'), 11);
});

test('server errors surface as KvError with the code name and the server message', async () => {
  await assert.rejects(kv.get(''), (e) => code('INVALID_ARGUMENT')(e) && /key is empty/.test(e.message));
  await assert.rejects(kv.set('x'.repeat(5000), 1), (e) => code('RESOURCE_EXHAUSTED')(e) && /4096/.test(e.message));
  await assert.rejects(kv.set('k', 1, 0), code('INVALID_ARGUMENT'));
  await kv.set('text', 'not a number');
  await assert.rejects(kv.incr('text'), (e) => code('FAILED_PRECONDITION')(e) && /text/.test(e.message));
  await assert.rejects(kv.listPage({ limit: 1001 }), code('INVALID_ARGUMENT'));
  await assert.rejects(kv.getMany([]), code('INVALID_ARGUMENT'));
  await assert.rejects(kv.setWith('k', 1, { ttlMs: 5, keepTtl: true }), code('INVALID_ARGUMENT'));
  const ahead = kv.watch({ fromVersion: 1e12 });
  await assert.rejects(ahead.next(), code('INVALID_ARGUMENT'));
  await assert.rejects(kv.admin.getProject('no-such-project'), code('NOT_FOUND'));
  assert.throws(() => kv.watch({ key: 'a', prefix: 'b' }), TypeError);
});

test('projects never see each other\'s keys; one connection serves several', async () => {
  const a = connect({ url: server.url, project: 'tenant-a' });
  const b = a.withProject('tenant-b');
  try {
    await Promise.all([a.set('same', 'a'), b.set('same', 'b')]);
    assert.deepEqual(await Promise.all([a.get('same'), b.get('same')]), ['a', 'b']);
    await a.clear();
    assert.equal(await b.get('same'), 'b');
    // connect() with the same options reuses the connection.
    const again = connect({ url: server.url, project: 'tenant-a' });
    assert.equal(again._conn, a._conn);
    again.close();
  } finally {
    a.close();
  }
});

test('every call has a deadline', async () => {
  // A server that accepts the connection and never answers.
  const net = require('node:net');
  const sockets = [];
  const silent = net.createServer((s) => sockets.push(s));
  await new Promise((r) => silent.listen(0, '127.0.0.1', r));
  const slow = connect({ url: `http://127.0.0.1:${silent.address().port}`, timeoutMs: 300 });
  try {
    const started = Date.now();
    await assert.rejects(slow.get('k'), code('DEADLINE_EXCEEDED'));
    await assert.rejects(slow.set('k', 1), (e) => code('DEADLINE_EXCEEDED')(e) && /deadline of 300 ms passed/.test(e.message));
    await assert.rejects(slow.getMany(['k']), code('DEADLINE_EXCEEDED'));
    assert.ok(Date.now() - started < 3000);
  } finally {
    slow.close();
    sockets.forEach((s) => s.destroy());
    silent.close();
  }
});

test('large values: over a frame\'s size they go unary; over the server\'s limit they are refused', async () => {
  const big = 'x'.repeat(2 << 20);
  await kv.set('big', { big });
  assert.equal((await kv.get('big')).big.length, big.length);
  await assert.rejects(kv.set('huge', 'y'.repeat(17 << 20)), (e) => code('RESOURCE_EXHAUSTED')(e) && /16777216|16 MiB/.test(e.message));
  assert.equal(await kv.has('huge'), false);
});

test('a closed kv refuses calls cleanly', async () => {
  const once = connect({ url: server.url, project: 'closing' });
  await once.set('k', 1);
  once.close();
  await assert.rejects(once.get('k'), code('CANCELLED'));
  await assert.rejects(once.getMany(['k']), code('CANCELLED'));
  // A new connect() works again.
  const again = connect({ url: server.url, project: 'closing' });
  assert.equal(await again.get('k'), 1);
  again.close();
});
