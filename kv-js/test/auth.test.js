'use strict';
// Tokens: the admin token, a project token, a read-only token and a revoked
// one, through the admin client.

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');

const { connect, KvError } = require('..');
const { startServer } = require('./helpers/server');

const ADMIN = crypto.randomBytes(24).toString('hex');
let server;
const open = [];
function client(options) {
  const kv = connect({ url: server.url, timeoutMs: 10_000, ...options });
  open.push(kv);
  return kv;
}
const code = (name) => (e) => {
  assert.ok(e instanceof KvError, `expected a KvError, got ${e}`);
  assert.equal(e.code, name, e.message);
  return true;
};

test.before(async () => {
  server = await startServer({ env: { KV_ADMIN_TOKEN: ADMIN } });
});

test.after(async () => {
  open.forEach((kv) => kv.close());
  await server.stop();
});

test('without a token, or with a wrong one, calls are UNAUTHENTICATED', async () => {
  await assert.rejects(client({ project: 'shop' }).get('k'), code('UNAUTHENTICATED'));
  await assert.rejects(client({ project: 'shop', token: 'kv_0000_wrong' }).set('k', 1), code('UNAUTHENTICATED'));
  await assert.rejects(client({ token: 'kv_0000_wrong' }).admin.listProjects(), code('UNAUTHENTICATED'));
});

test('admin client, project token, read-only token, revocation', async () => {
  const admin = client({ token: ADMIN }).admin;
  const created = await admin.createProject('shop', { maxKeys: 100 });
  assert.equal(created.name, 'shop');
  assert.deepEqual(created.quota, { maxKeys: 100 });
  await assert.rejects(admin.createProject('shop'), code('ALREADY_EXISTS'));

  const rw = await admin.createToken('shop');
  assert.match(rw.token, /^kv_/);
  assert.equal(rw.info.project, 'shop');
  assert.equal(rw.info.readOnly, false);
  const ro = await admin.createToken('shop', { readOnly: true, limits: { opsPerSecond: 1000 } });
  assert.equal(ro.info.readOnly, true);
  assert.deepEqual(ro.info.limits, { opsPerSecond: 1000 });

  // A project token needs no project: it is its own.
  const shop = client({ token: rw.token });
  await shop.set('cart:1', { items: 2 });
  assert.deepEqual(await shop.get('cart:1'), { items: 2 });
  assert.equal(await shop.incr('n'), 1);
  // Naming its own project is fine, another is not.
  assert.equal(await client({ token: rw.token, project: 'shop' }).has('cart:1'), true);
  await assert.rejects(client({ token: rw.token, project: 'blog' }).get('k'), code('PERMISSION_DENIED'));
  await assert.rejects(shop.admin.listProjects(), code('PERMISSION_DENIED'));

  const reader = client({ token: ro.token });
  assert.deepEqual(await reader.get('cart:1'), { items: 2 });
  assert.equal(await reader.has('cart:1'), true);
  await assert.rejects(reader.set('cart:1', 0), code('PERMISSION_DENIED'));
  await assert.rejects(reader.incr('n'), code('PERMISSION_DENIED'));
  await assert.rejects(reader.delete('cart:1'), code('PERMISSION_DENIED'));
  await assert.rejects(reader.clear(), code('PERMISSION_DENIED'));
  assert.deepEqual(await shop.get('cart:1'), { items: 2 }, 'nothing was written');

  // The admin token reaches any project by name.
  const asAdmin = client({ token: ADMIN, project: 'shop' });
  assert.equal(await asAdmin.get('n'), 1);

  const projects = await admin.listProjects();
  assert.ok(projects.some((p) => p.name === 'shop' && p.keys === 2));
  const tokens = await admin.listTokens('shop');
  assert.equal(tokens.length, 2);
  assert.ok(tokens.every((t) => !('token' in t)));
  assert.equal((await admin.setQuota('shop', { maxKeys: 5 })).quota.maxKeys, 5);

  // A backup of the project streams the backup file's bytes.
  const chunks = [];
  for await (const chunk of admin.backup({ project: 'shop' })) chunks.push(chunk);
  const file = Buffer.concat(chunks);
  assert.ok(file.length > 32, `a backup of ${file.length} bytes`);
  assert.ok(file.includes(Buffer.from('cart:1')), 'the backup holds the key');
  await assert.rejects(
    (async () => {
      for await (const _ of admin.backup({ project: 'no-such' })) void _;
    })(),
    code('NOT_FOUND'),
  );
  await assert.rejects(
    (async () => {
      for await (const _ of shop.admin.backup()) void _;
    })(),
    code('PERMISSION_DENIED'),
  );

  assert.equal(await admin.revokeToken(rw.info.id), true);
  assert.equal(await admin.revokeToken(rw.info.id), false);
  await assert.rejects(shop.get('cart:1'), code('UNAUTHENTICATED'));
  assert.equal(await admin.deleteProject('shop'), 2);
  await assert.rejects(admin.getProject('shop'), code('NOT_FOUND'));
});

test('a rate limit refuses with RESOURCE_EXHAUSTED and a hint, which honourRetryAfter follows', async () => {
  const admin = client({ token: ADMIN }).admin;
  await admin.createProject('limited', { opsPerSecond: 10 });
  const { token } = await admin.createToken('limited');
  const eager = client({ token });
  const outcomes = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => eager.set(`k${i}`, i)));
  const refused = outcomes.filter((o) => o.status === 'rejected').map((o) => o.reason);
  // At most two windows' worth (10 each) can get in, should the calls straddle a window's end.
  assert.ok(refused.length >= 10, `${refused.length} of 30 refused`);
  for (const e of refused) {
    code('RESOURCE_EXHAUSTED')(e);
    assert.ok(e.retryAfterMs >= 0 && e.retryAfterMs <= 1000, `retryAfterMs ${e.retryAfterMs}`);
  }
  // Waiting as told, every call gets in within its deadline.
  const patient = client({ token, honourRetryAfter: true, timeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 1000));
  const started = Date.now();
  await Promise.all(Array.from({ length: 25 }, (_, i) => patient.incr('admitted', 1, { requestId: `admit-${i}` })));
  assert.equal(await patient.get('admitted'), 25);
  assert.ok(Date.now() - started >= 1000, 'the calls waited for later windows');
});

test('the admin token serves its default project and named ones on one stream', async () => {
  const asAdmin = client({ token: ADMIN });
  const shop2 = asAdmin.withProject('shop2');
  await asAdmin.admin.createProject('shop2');
  // Calls of the stream's own project ("default") and of a named one,
  // interleaved in the same turn: each runs in its own project.
  const writes = [];
  for (let i = 0; i < 20; i++) writes.push(shop2.set(`k${i}`, 'shop2'), asAdmin.set(`k${i}`, 'default'));
  await Promise.all(writes);
  assert.deepEqual(await shop2.getMany(['k0', 'k19']), ['shop2', 'shop2']);
  assert.deepEqual(await asAdmin.getMany(['k0', 'k19']), ['default', 'default']);
});
