#!/usr/bin/env node
'use strict';
// Node client throughput: @kv/client against a release kv-server, and
// ioredis against a redis-server on the same machine, both with the same
// number of concurrent calls in one Node process. The systems alternate
// within each round (the order flips every round), so each round's ratio
// compares runs made back to back on this shared, noisy machine.
//
//   cargo build --release -p kv-server --locked
//   node kv-js/bench/bench.js [--rounds 3] [--seconds 4] [--warmup 1]
//        [--concurrency 50] [--keys 10000] [--value-bytes 100]
//        [--kv-server target/release/kv-server] [--redis-server redis-server]
//
// kv-server runs with --fsync never --worker-threads 1 (its log writer is a
// thread of its own); redis-server with --save '' --appendonly no (it runs
// commands on one thread); the clients share this one Node thread.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const Redis = require('ioredis');
const { connect } = require('..');

function args() {
  const out = {
    rounds: 3,
    seconds: 4,
    warmup: 1,
    concurrency: 50,
    keys: 10_000,
    valueBytes: 100,
    kvServer: path.join(__dirname, '..', '..', 'target', 'release', 'kv-server'),
    redisServer: 'redis-server',
  };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '').replace(/-(\w)/g, (_, c) => c.toUpperCase());
    if (!(name in out)) throw new Error(`unknown flag ${argv[i]}`);
    out[name] = typeof out[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return out;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

function waitForLine(child, pattern, what) {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`${what} did not start:\n${text}`)), 15_000);
    const onData = (chunk) => {
      text += chunk;
      const m = pattern.exec(text);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${what} exited with ${code}:\n${text}`)));
  });
}

async function startKv(binary) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kv-js-bench-'));
  const child = spawn(binary, ['--listen', '127.0.0.1:0', '--data-dir', dir, '--fsync', 'never', '--worker-threads', '1'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: 'info' },
  });
  const m = await waitForLine(child, /listening on (\d+\.\d+\.\d+\.\d+:\d+)/, 'kv-server');
  child.stderr.resume();
  return { child, url: `http://${m[1]}`, dir };
}

async function startRedis(binary) {
  const port = await freePort();
  const child = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await waitForLine(child, /Ready to accept connections/, 'redis-server');
  child.stdout.resume();
  return { child, port };
}

const key = (i) => `key:${String(i).padStart(12, '0')}`; // 16 bytes

/** Runs `op` from `concurrency` loops for warmup + seconds; ops/s and latency percentiles of the measured part. */
async function measure(op, { concurrency, seconds, warmup, keys }) {
  const start = performance.now();
  const measureFrom = start + warmup * 1000;
  const end = measureFrom + seconds * 1000;
  const latencies = [];
  let ops = 0;
  const loop = async () => {
    for (;;) {
      const t0 = performance.now();
      if (t0 >= end) return;
      await op(key(Math.floor(Math.random() * keys)));
      const t1 = performance.now();
      if (t0 >= measureFrom && t1 <= end) {
        ops++;
        if (latencies.length < 2_000_000) latencies.push(t1 - t0);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  latencies.sort((a, b) => a - b);
  const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((latencies.length * p) / 100))] * 1000;
  return { opsPerSec: ops / seconds, p50us: pct(50), p99us: pct(99) };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function main() {
  const o = args();
  const value = 'v'.repeat(o.valueBytes);
  const kvServer = await startKv(o.kvServer);
  const redisServer = await startRedis(o.redisServer);
  const kv = connect({ url: kvServer.url, project: 'bench', timeoutMs: 30_000 });
  const redis = new Redis({ host: '127.0.0.1', port: redisServer.port });
  const redisAuto = new Redis({ host: '127.0.0.1', port: redisServer.port, enableAutoPipelining: true });
  try {
    for (let i = 0; i < o.keys; i += 1000) {
      const chunk = {};
      const pipe = redis.pipeline();
      for (let j = i; j < Math.min(o.keys, i + 1000); j++) {
        chunk[key(j)] = value;
        pipe.set(key(j), value);
      }
      await kv.setMany(chunk);
      await pipe.exec();
    }
    const systems = {
      kv: { get: (k) => kv.get(k), set: (k) => kv.set(k, value) },
      ioredis: { get: (k) => redis.get(k), set: (k) => redis.set(k, value) },
      'ioredis-auto': { get: (k) => redisAuto.get(k), set: (k) => redisAuto.set(k, value) },
    };
    const names = Object.keys(systems);
    const results = {};
    for (let round = 0; round < o.rounds; round++) {
      const order = round % 2 === 0 ? names : [...names].reverse();
      for (const workload of ['get', 'set']) {
        for (const name of order) {
          const r = await measure(systems[name][workload], o);
          ((results[workload] ||= {})[name] ||= []).push(r);
          console.error(
            `round ${round + 1} ${workload.padEnd(3)} ${name.padEnd(12)} ${Math.round(r.opsPerSec).toString().padStart(7)} ops/s  p50 ${r.p50us.toFixed(0)} µs  p99 ${r.p99us.toFixed(0)} µs`,
          );
        }
      }
    }
    console.log(
      `\n${o.rounds} rounds × ${o.seconds} s (+${o.warmup} s warm-up), ${o.concurrency} concurrent calls, ${o.keys} keys of 16 bytes, ${o.valueBytes}-byte values; node ${process.version}`,
    );
    console.log('| workload | system | ops/s (median) | p50 µs | p99 µs | kv / system (median of round ratios, range) |');
    console.log('|---|---|---|---|---|---|');
    for (const workload of Object.keys(results)) {
      for (const name of names) {
        const runs = results[workload][name];
        const ratios = runs.map((r, i) => results[workload].kv[i].opsPerSec / r.opsPerSec);
        const ratio = name === 'kv' ? '' : `${median(ratios).toFixed(2)}× (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})`;
        console.log(
          `| ${workload} | ${name} | ${Math.round(median(runs.map((r) => r.opsPerSec)))} | ${median(runs.map((r) => r.p50us)).toFixed(0)} | ${median(runs.map((r) => r.p99us)).toFixed(0)} | ${ratio} |`,
        );
      }
    }
  } finally {
    kv.close();
    redis.disconnect();
    redisAuto.disconnect();
    kvServer.child.kill('SIGTERM');
    redisServer.child.kill('SIGTERM');
    fs.rmSync(kvServer.dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
