'use strict';
// Auto-batching: concurrent calls of one client share one Pipeline stream
// and few frames, counted on the server's side (its /metrics).

const test = require('node:test');
const assert = require('node:assert/strict');

const { connect } = require('..');
const { startServer, scrape, metric } = require('./helpers/server');

let server;

test.before(async () => {
  server = await startServer({ metrics: true });
});

test.after(async () => {
  await server.stop();
});

async function counts() {
  const text = await scrape(server.metricsUrl);
  return {
    frames: metric(text, 'kv_pipeline_calls_per_frame_count'),
    calls: metric(text, 'kv_pipeline_calls_per_frame_sum'),
    pipelines: metric(text, 'kv_calls_open', { method: 'Pipeline' }),
    unaryGets: metric(text, 'kv_requests_total', { method: 'Get' }),
  };
}

test('1000 concurrent gets go over one stream in few frames', async (t) => {
  const kv = connect({ url: server.url, project: 'batching' });
  try {
    await kv.setMany(Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${i}`, i])));
    // Opens the stream.
    assert.equal(await kv.get('k0'), 0);
    const before = await counts();
    assert.equal(before.pipelines, 1);
    const values = await Promise.all(Array.from({ length: 1000 }, (_, i) => kv.get(`k${i}`)));
    assert.deepEqual(values, Array.from({ length: 1000 }, (_, i) => i));
    const after = await counts();
    const frames = after.frames - before.frames;
    t.diagnostic(`1000 concurrent gets: ${frames} frame(s) on one Pipeline stream`);
    assert.equal(after.calls - before.calls, 1000, 'every get went over the stream');
    assert.ok(frames >= 1 && frames <= 4, `1000 gets took ${frames} frames`);
    assert.equal(after.pipelines, 1, 'one stream');
    assert.equal(after.unaryGets, 0, 'no unary Get');
  } finally {
    kv.close();
  }
});

test('calls of several projects and invocations share the one stream', async () => {
  const first = connect({ url: server.url, project: 'one' });
  const second = connect({ url: server.url, project: 'one' });
  const other = first.withProject('two');
  try {
    await Promise.all([first.set('k', 1), other.set('k', 2)]);
    const before = await counts();
    const got = await Promise.all([
      ...Array.from({ length: 100 }, () => first.get('k')),
      ...Array.from({ length: 100 }, () => second.get('k')),
      ...Array.from({ length: 100 }, () => other.get('k')),
    ]);
    assert.deepEqual(got.slice(0, 200), Array(200).fill(1));
    assert.deepEqual(got.slice(200), Array(100).fill(2));
    const after = await counts();
    assert.equal(after.calls - before.calls, 300);
    assert.ok(after.frames - before.frames <= 3, `${after.frames - before.frames} frames`);
    assert.equal(after.pipelines, 1);
  } finally {
    first.close();
    second.close();
  }
});

test('calls on a key apply in the order they were made', async () => {
  const kv = connect({ url: server.url, project: 'order' });
  try {
    const writes = [];
    for (let i = 1; i <= 500; i++) writes.push(kv.set('seq', i));
    const reads = Promise.all(Array.from({ length: 50 }, () => kv.get('seq')));
    await Promise.all(writes);
    assert.equal(await kv.get('seq'), 500);
    for (const v of await reads) assert.equal(v, 500);
  } finally {
    kv.close();
  }
});

test('without auto-batching every call is its own unary request', async () => {
  const kv = connect({ url: server.url, project: 'unary', autoBatching: false });
  try {
    const before = await counts();
    await Promise.all(Array.from({ length: 20 }, (_, i) => kv.set(`u${i}`, i)));
    assert.deepEqual(await Promise.all(Array.from({ length: 20 }, (_, i) => kv.get(`u${i}`))), Array.from({ length: 20 }, (_, i) => i));
    const after = await counts();
    assert.equal(after.calls - before.calls, 0);
    assert.equal(after.unaryGets - before.unaryGets, 20);
  } finally {
    kv.close();
  }
});
