'use strict';
// Breaks: the server restarts (SIGTERM, then SIGKILL) under concurrent
// writes and a watch. Writes carry request ids and are replayed on the
// next stream, so every increment counts exactly once; the watch reopens
// from its last event and sees every change once, in order.

const test = require('node:test');
const assert = require('node:assert/strict');

const { connect } = require('..');
const { startServer } = require('./helpers/server');

test('incr and watch ride through server restarts without loss or duplicates', async (t) => {
  let server = await startServer({ args: ['--fsync', 'always'] });
  const kv = connect({ url: server.url, project: 'resume', timeoutMs: 20_000, retry: { maxAttempts: 50, maxBackoffMs: 200 } });
  try {
    await kv.set('seed', 0);
    const watch = kv.watch({ key: 'count' });
    await watch.ready;
    const seen = [];
    const watching = (async () => {
      for await (const e of watch) {
        seen.push(e);
        if (e.value === 16 * 60) return;
      }
    })();

    const started = Date.now();
    const workers = Array.from({ length: 16 }, async () => {
      let done = 0;
      for (let i = 0; i < 60; i++) {
        await kv.incr('count');
        done++;
        await new Promise((r) => setTimeout(r, 10));
      }
      return done;
    });
    for (const signal of ['SIGTERM', 'SIGKILL']) {
      await new Promise((r) => setTimeout(r, 150));
      await server.stop(signal);
      await new Promise((r) => setTimeout(r, 200));
      server = await server.restart();
    }
    const restarted = Date.now();
    const done = await Promise.all(workers);
    assert.ok(Date.now() > restarted, 'the writes went on past the restarts');
    t.diagnostic(`restarts done after ${restarted - started} ms, writes after ${Date.now() - started} ms`);
    assert.deepEqual(done, Array(16).fill(60));
    assert.equal(await kv.get('count'), 16 * 60);
    let timer;
    await Promise.race([
      watching,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the watch saw ${seen.length} events`)), 15_000);
      }),
    ]);
    clearTimeout(timer);
    assert.deepEqual(
      seen.map((e) => e.value),
      Array.from({ length: 16 * 60 }, (_, i) => i + 1),
      'every value once, in order',
    );
    assert.ok(watch.resumes >= 1, `the watch reopened ${watch.resumes} times`);
    watch.close();
  } finally {
    kv.close();
    await server.stop();
  }
});

test('a watch whose resume point left the history ends with OUT_OF_RANGE', async () => {
  const server = await startServer({ args: ['--watch-history-events', '5'] });
  const kv = connect({ url: server.url, project: 'history' });
  try {
    for (let i = 0; i < 20; i++) await kv.set('k', i);
    const old = kv.watch({ fromVersion: 1 });
    await assert.rejects(old.next(), (e) => e.code === 'OUT_OF_RANGE' && /older than the retained history/.test(e.message));
    // From a read's version it works.
    const { version } = await kv.getEntry('k');
    const fresh = kv.watch({ fromVersion: version });
    await fresh.ready;
    await kv.set('k', 'next');
    const { value } = await fresh.next();
    assert.deepEqual([value.kind, value.value, value.version], ['set', 'next', version + 1]);
    fresh.close();
  } finally {
    kv.close();
    await server.stop();
  }
});
