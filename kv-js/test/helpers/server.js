'use strict';
// Runs the real kv-server binary for a test: on a free loopback port, in a
// temporary data directory, killed when the test process ends.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');

/** The binary: KV_SERVER_BIN (the Rust test passes it), else the workspace's debug build. */
function binary() {
  const bin = process.env.KV_SERVER_BIN || path.join(__dirname, '..', '..', '..', 'target', 'debug', 'kv-server');
  if (!fs.existsSync(bin)) {
    throw new Error(`kv-server binary not found at ${bin}: build it (cargo build -p kv-server) or set KV_SERVER_BIN`);
  }
  return bin;
}

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * Starts a server with `args`; resolves with { url, port, metricsUrl,
 * dataDir, stop(signal), restart() } once it logs its address (10 s at most).
 */
async function startServer({ args = [], env = {}, metrics = false, dataDir, port = 0 } = {}) {
  const dir = dataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'kv-js-test-'));
  const full = ['--listen', `127.0.0.1:${port}`, '--data-dir', dir, ...args];
  if (metrics) full.push('--metrics-listen', '127.0.0.1:0');
  const child = spawn(binary(), full, {
    env: { ...process.env, RUST_LOG: 'info', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  running.add(child);
  const log = [];
  const found = await new Promise((resolve, reject) => {
    let addr = null;
    let metricsAddr = null;
    let buffered = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kv-server did not report its address within 10 s; log:\n${log.join('\n')}`));
    }, 10_000);
    const check = () => {
      if (addr && (!metrics || metricsAddr)) {
        clearTimeout(timer);
        resolve({ addr, metricsAddr });
      }
    };
    child.stderr.on('data', (chunk) => {
      buffered += chunk.toString();
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        log.push(line);
        const a = /listening on (\d+\.\d+\.\d+\.\d+:\d+)/.exec(line);
        if (a) addr = a[1];
        const m = /metrics on http:\/\/([^/\s"]+)\/metrics/.exec(line);
        if (m) metricsAddr = m[1];
        check();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kv-server exited with ${code} before listening; log:\n${log.join('\n')}`));
    });
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  exited.then(() => running.delete(child));
  const listenPort = Number(found.addr.split(':')[1]);
  const server = {
    port: listenPort,
    addr: found.addr,
    url: `http://${found.addr}`,
    metricsUrl: found.metricsAddr ? `http://${found.metricsAddr}/metrics` : null,
    dataDir: dir,
    log,
    /** Stops it (SIGTERM by default) and waits for the exit. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
    /** Starts it again on the same port and data directory. */
    restart() {
      return startServer({ args, env, metrics, dataDir: dir, port: listenPort });
    },
  };
  return server;
}

/** The server's /metrics text. */
function scrape(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

/** The value of one series in /metrics text (0 when absent). */
function metric(text, name, labels = {}) {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = m[2] || '';
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) total += Number(m[3]);
  }
  return total;
}

module.exports = { startServer, scrape, metric, binary };
