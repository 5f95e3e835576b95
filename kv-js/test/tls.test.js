'use strict';
// TLS and mutual TLS with a test CA.

const test = require('node:test');
const assert = require('node:assert/strict');

const { connect, KvError } = require('..');
const { startServer } = require('./helpers/server');
const { testPki } = require('./helpers/pki');

const pki = testPki();
const skip = pki ? false : 'no test certificates: set KV_TEST_PKI_DIR or install openssl';
if (skip && process.env.KV_TEST_REQUIRE_ALL === '1') throw new Error(skip);

test('TLS: a client trusting the test CA works; others fail cleanly', { skip }, async () => {
  const server = await startServer({ args: ['--tls-cert', pki.paths['server.pem'], '--tls-key', pki.paths['server.key']] });
  const url = `https://127.0.0.1:${server.port}`;
  const open = [];
  const client = (options) => {
    const kv = connect({ timeoutMs: 3000, retry: { maxAttempts: 2 }, ...options });
    open.push(kv);
    return kv;
  };
  try {
    const kv = client({ url, project: 'secure', tls: { ca: pki.ca } });
    await kv.set('k', 'over TLS');
    assert.equal(await kv.get('k'), 'over TLS');
    assert.equal(await kv.incr('n'), 1);
    // localhost is also in the certificate.
    assert.equal(await client({ url: `https://localhost:${server.port}`, tls: { ca: pki.ca }, project: 'secure' }).get('k'), 'over TLS');

    const started = Date.now();
    // The system roots do not trust a test CA.
    await assert.rejects(client({ url, project: 'secure' }).get('k'), (e) => e instanceof KvError && e.code === 'UNAVAILABLE');
    // Plaintext against TLS.
    await assert.rejects(client({ url: `http://127.0.0.1:${server.port}`, project: 'secure' }).get('k'), KvError);
    // The name must match the certificate.
    await assert.rejects(client({ url, tls: { ca: pki.ca, serverName: 'not-this-server.example' } }).get('k'), KvError);
    assert.ok(Date.now() - started < 15_000);
  } finally {
    open.forEach((kv) => kv.close());
    await server.stop();
  }
});

test('mutual TLS: the server requires a client certificate from its CA', { skip }, async () => {
  const server = await startServer({
    args: ['--tls-cert', pki.paths['server.pem'], '--tls-key', pki.paths['server.key'], '--tls-client-ca', pki.paths['ca.pem']],
  });
  const url = `https://127.0.0.1:${server.port}`;
  const withCert = connect({ url, project: 'm', tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } });
  const without = connect({ url, project: 'm', tls: { ca: pki.ca }, timeoutMs: 3000, retry: { maxAttempts: 2 } });
  try {
    await withCert.set('k', 1);
    assert.equal(await withCert.get('k'), 1);
    await assert.rejects(without.get('k'), KvError);
  } finally {
    withCert.close();
    without.close();
    await server.stop();
  }
});
