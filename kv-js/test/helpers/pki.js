'use strict';
// A test CA with a server certificate for 127.0.0.1/localhost and a client
// certificate: from KV_TEST_PKI_DIR when the Rust test wrote them (ca.pem,
// server.pem, server.key, client.pem, client.key), else made with openssl.
// Null when neither is available.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const NAMES = ['ca.pem', 'server.pem', 'server.key', 'client.pem', 'client.key'];

function openssl(dir) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  try {
    run('version');
  } catch {
    return false;
  }
  // Extensions make v3 certificates, the only version rustls accepts.
  const ext = path.join(dir, 'server.ext');
  fs.writeFileSync(ext, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  const clientExt = path.join(dir, 'client.ext');
  fs.writeFileSync(clientExt, 'subjectAltName=DNS:kv-test-client\nextendedKeyUsage=clientAuth\n');
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=kv test CA');
  for (const [name, cn, extra] of [
    ['server', 'localhost', ['-extfile', ext]],
    ['client', 'kv-test-client', ['-extfile', clientExt]],
  ]) {
    run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    run('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', ...extra);
  }
  return true;
}

/** { dir, ca, serverCert, serverKey, clientCert, clientKey } (paths and PEM), or null. */
function testPki() {
  let dir = process.env.KV_TEST_PKI_DIR;
  if (!dir || !NAMES.every((n) => fs.existsSync(path.join(dir, n)))) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kv-js-pki-'));
    if (!openssl(dir)) return null;
  }
  const read = (n) => fs.readFileSync(path.join(dir, n), 'utf8');
  return {
    dir,
    paths: Object.fromEntries(NAMES.map((n) => [n, path.join(dir, n)])),
    ca: read('ca.pem'),
    clientCert: read('client.pem'),
    clientKey: read('client.key'),
  };
}

module.exports = { testPki };
