'use strict';
// The common patterns, each run by many concurrent "invocations" (separate
// connect() calls, as separate function invocations would make, sharing
// the process's connection).

const test = require('node:test');
const assert = require('node:assert/strict');

const { connect } = require('..');
const { startServer } = require('./helpers/server');

let server;
const open = [];
function invocation(project = 'patterns') {
  const kv = connect({ url: server.url, project, timeoutMs: 20_000 });
  open.push(kv);
  return kv;
}

test.before(async () => {
  server = await startServer();
});

test.after(async () => {
  open.forEach((kv) => kv.close());
  await server.stop();
});

test('counter: 64 concurrent functions x 100 incr = exactly 6400', async () => {
  const fn = async () => {
    const kv = invocation();
    for (let i = 0; i < 100; i++) await kv.incr('page:views');
  };
  await Promise.all(Array.from({ length: 64 }, fn));
  assert.equal(await invocation().get('page:views'), 6400);
});

test('fixed-window rate limiter admits exactly its limit', async () => {
  const limit = 25;
  const window = 60_000;
  // One window key per client and minute: the first incr creates it with
  // the TTL, later ones keep it.
  const allow = async (kv, client) => {
    const key = `rate:${client}:${Math.floor(Date.now() / window)}`;
    return (await kv.incr(key, 1, { ttlMs: window })) <= limit;
  };
  const minute = Math.floor(Date.now() / window);
  const results = await Promise.all(Array.from({ length: 200 }, () => allow(invocation(), '10.0.0.1')));
  if (Math.floor(Date.now() / window) !== minute) {
    // The calls straddled two windows: each admitted at most its limit.
    assert.ok(results.filter(Boolean).length <= 2 * limit);
  } else {
    assert.equal(results.filter(Boolean).length, limit);
  }
  const entry = await invocation().getEntry(`rate:10.0.0.1:${minute}`);
  assert.ok(entry.expiresAtMs > Date.now() && entry.expiresAtMs <= Date.now() + window);
});

test('leaderboard updated by CAS from 32 concurrent invocations keeps every score', async () => {
  const key = 'leaderboard:weekly';
  const submit = async (player, score) => {
    const kv = invocation();
    for (let attempt = 0; attempt < 1000; attempt++) {
      const entry = await kv.getEntry(key);
      const board = entry ? { ...entry.value } : {};
      board[player] = Math.max(board[player] || 0, score);
      const r = await kv.compareAndSwap(key, entry ? entry.version : null, board);
      if (r.applied) return attempt;
    }
    throw new Error(`${player} never got its score in`);
  };
  const retries = await Promise.all(Array.from({ length: 32 }, (_, i) => submit(`player-${i}`, 100 + i)));
  const board = await invocation().get(key);
  assert.equal(Object.keys(board).length, 32);
  for (let i = 0; i < 32; i++) assert.equal(board[`player-${i}`], 100 + i);
  assert.ok(retries.some((r) => r > 0), 'the invocations did race (some CAS had to retry)');
});

test('sessions expire; feature flags are set once; carts and preferences merge without loss', async () => {
  const kv = invocation();
  await kv.set('session:abc', { user: 'ada' }, 250);
  assert.deepEqual(await kv.get('session:abc'), { user: 'ada' });

  const winners = await Promise.all(Array.from({ length: 16 }, (_, i) => invocation().setIfAbsent('flag:new-ui', { on: true, by: i })));
  assert.equal(winners.filter(Boolean).length, 1);

  // Preferences: concurrent merges of different fields all land.
  await Promise.all(Array.from({ length: 20 }, (_, i) => invocation().merge('prefs:ada', { [`opt${i}`]: i })));
  assert.equal(Object.keys(await kv.get('prefs:ada')).length, 20);

  // Cart: concurrent adds by CAS, none lost.
  const add = async (sku) => {
    const c = invocation();
    for (;;) {
      const e = await c.getEntry('cart:7');
      const items = e ? e.value.items : [];
      const r = await c.compareAndSwap('cart:7', e ? e.version : null, { items: [...items, { sku, qty: 1 }] });
      if (r.applied) return;
    }
  };
  await Promise.all(Array.from({ length: 12 }, (_, i) => add(`sku-${i}`)));
  assert.equal((await kv.get('cart:7')).items.length, 12);

  // Share link: created once with a TTL, resolved by anyone.
  assert.equal(await kv.setIfAbsent('share:Xy12', { doc: 42 }, 60_000), true);
  assert.deepEqual(await invocation().get('share:Xy12'), { doc: 42 });

  await new Promise((r) => setTimeout(r, 350));
  assert.equal(await kv.get('session:abc'), null);
});
